"""ONNX export (``torch.onnx.export(..., dynamo=True)`` with ``torchshift2.onnx.translation_table``)
run in ONNX Runtime, against ``ts.shift`` / the reference.

Exports are the slow part, so few models hold many cases: one model holds every D x mode x
padding x crop, exported twice: with static shapes and initializer weights (the exporter
folds the index arithmetic into constants) and with dynamic batch and sizes and the weights
as inputs (ONNX Runtime computes all of it), run at two other shapes. The demo ShiftNet and
a MobileNetV2-like model converted by ``replace_depthwise`` are exported whole and run at
other batch and image sizes than the example. Every exported graph passes ``onnx.checker``
with full checks.
"""

from __future__ import annotations

import functools
import itertools
import warnings

import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import torchshift2 as ts  # noqa: E402
import torchshift2.onnx as ts_onnx  # noqa: E402
from torchshift2 import reference  # noqa: E402

DYNAMIC = torch.export.Dim.DYNAMIC
SHAPES = {1: (9,), 2: (5, 6), 3: (3, 4, 5)}  # static export example
DYNAMIC_SHAPES = {1: [(2, 9), (3, 14)], 2: [(2, 5, 6), (3, 7, 4)], 3: [(2, 3, 4, 5), (1, 5, 3, 6)]}
CROPS = {1: ((2, 1),), 2: ((1, 0), (0, 2)), 3: ((1, 1), (0, 0), (0, 2))}
CHANNELS = 6


def demo_module():
    """The demo's model builder (examples/demo.py), imported in this one place."""
    from examples import demo

    return demo


def export(model, args, dynamic_shapes=None, table=None, optimize=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter
        program = torch.onnx.export(
            model, args, dynamo=True, verbose=False, dynamic_shapes=dynamic_shapes,
            custom_translation_table=ts_onnx.translation_table if table is None else table,
            optimize=optimize,
        )
    onnx.checker.check_model(program.model_proto, full_check=True)
    return program


def session(program):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # quiet
    return ort.InferenceSession(program.model_proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def run(sess, *inputs):
    feed = {arg.name: tensor.numpy() for arg, tensor in zip(sess.get_inputs(), inputs)}
    return [torch.from_numpy(out) for out in sess.run(None, feed)]


def shifts(rows, ndim, length, seed, dtype=torch.float32):
    """Shifts with the edge cases: halves (round half to even), integers (active = SSL),
    values beyond the sizes, and huge ones that must be reduced before indexing."""
    g = torch.Generator().manual_seed(seed)
    weight = (torch.rand(rows, ndim, generator=g, dtype=torch.float64) * 2 - 1) * (2 * length + 3)
    weight[0::3] = torch.round(weight[0::3] * 2) / 2
    special = torch.tensor([1e30, -1e30, 2.5, -0.5, 3e9, -7.0], dtype=torch.float64)
    weight[1::3, 0] = special[: len(weight[1::3])]
    return weight.to(dtype)


MODES = (False, True)  # SSL, active


class Matrix(nn.Module):
    """Every D x mode x padding x crop, inputs ``(x1, x2, x3, w1, w2, w3)`` for D = 1, 2, 3.

    The shifts are the initializers ``weights`` (the static export: the exporter folds the
    index arithmetic into constants) or the inputs ``w1, w2, w3`` (the dynamic export: ONNX
    Runtime computes all of it)."""

    def __init__(self):
        super().__init__()
        self.weights = nn.ParameterList([shifts(CHANNELS, d, 6, seed=d) for d in (1, 2, 3)])

    def forward(self, x1, x2, x3, w1=None, w2=None, w3=None):
        outputs = []
        for ndim, x, w in zip((1, 2, 3), (x1, x2, x3), (w1, w2, w3)):
            w = self.weights[ndim - 1] if w is None else w
            for active, padding, cropped in itertools.product(MODES, ts.PADDINGS, (False, True)):
                outputs.append(ts.shift(x, w, padding, active, CROPS[ndim] if cropped else None))
        return tuple(outputs)


def matrix_output(ndim, active, padding, cropped):
    return (((ndim - 1) * 2 + active) * len(ts.PADDINGS) + ts.PADDINGS.index(padding)) * 2 + cropped


@functools.lru_cache(maxsize=None)
def exported(dynamic):
    """``(model, session)`` of :class:`Matrix`: static shapes or dynamic batch and sizes."""
    model = Matrix().eval()
    args = [torch.randn(2, CHANNELS, *SHAPES[ndim]) for ndim in (1, 2, 3)]
    if not dynamic:
        return model, session(export(model, tuple(args)))
    args += [shifts(CHANNELS, ndim, 6, seed=10 + ndim) for ndim in (1, 2, 3)]
    dynamic_shapes = [{d: DYNAMIC for d in [0] + list(range(2, ndim + 2))} for ndim in (1, 2, 3)]
    # The exporter's optimizer (on by default) would spend most of this file's time on the
    # 60 translated shifts; it runs on the dynamic graphs of the end-to-end and channel
    # multiplier tests. Here ONNX Runtime evaluates the translation as built.
    program = export(model, tuple(args), tuple(dynamic_shapes + [None] * 3), optimize=False)
    return model, session(program)


def check(actual, expected, active):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    if active:
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(actual, expected)


@pytest.mark.parametrize("active", MODES, ids=["ssl", "active"])
@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("padding", ts.PADDINGS)
@pytest.mark.parametrize("cropped", [False, True], ids=["nocrop", "crop"])
def test_onnxruntime_matches_shift(padding, ndim, active, cropped):
    crop = CROPS[ndim] if cropped else None
    output = matrix_output(ndim, active, padding, cropped)
    g = torch.Generator().manual_seed(ndim)
    model, sess = exported(dynamic=False)
    xs = [torch.randn(2, CHANNELS, *SHAPES[d], generator=g) for d in (1, 2, 3)]
    weight = model.weights[ndim - 1].detach()
    actual = run(sess, *xs)[output]
    check(actual, ts.shift(xs[ndim - 1], weight, padding, active, crop), active)

    _, sess = exported(dynamic=True)
    for shapes in zip(*(DYNAMIC_SHAPES[d] for d in (1, 2, 3))):
        xs = [torch.randn(s[0], CHANNELS, *s[1:], generator=g) for s in shapes]
        ws = [shifts(CHANNELS, d, max(s), seed=sum(s)) for d, s in zip((1, 2, 3), shapes)]
        actual = run(sess, *xs, *ws)[output]
        check(actual, ts.shift(xs[ndim - 1], ws[ndim - 1], padding, active, crop), active)


class OneShift(nn.Module):
    def __init__(self, padding, active, crop=None):
        super().__init__()
        self.padding, self.active, self.crop = padding, active, crop

    def forward(self, x, weight):
        return ts.shift(x, weight, self.padding, self.active, self.crop)


class Several(nn.Module):
    """Runs each module on all the inputs and returns their outputs in a tuple."""

    def __init__(self, modules):
        super().__init__()
        self.parts = nn.ModuleList(modules)

    def forward(self, *inputs):
        return tuple(part(*inputs) for part in self.parts)


def test_size_one_dims():
    """Length-1 dims: reflect's period 2L - 2 is 0 there (every read is index 0), the
    others clamp or wrap to index 0."""
    g = torch.Generator().manual_seed(5)
    x1, x2 = torch.randn(1, 3, 1, generator=g), torch.randn(2, 3, 1, 6, generator=g)
    w1, w2 = shifts(3, 1, 3, seed=5), shifts(3, 2, 3, seed=6)
    cases = list(itertools.product(MODES, ts.PADDINGS))

    class Both(nn.Module):
        def forward(self, x1, x2, w1, w2):
            return tuple(ts.shift(x, w, p, a) for a, p in cases for x, w in ((x1, w1), (x2, w2)))

    outputs = run(session(export(Both(), (x1, x2, w1, w2))), x1, x2, w1, w2)
    for i, (active, padding) in enumerate(cases):
        check(outputs[2 * i], ts.shift(x1, w1, padding, active), active)
        check(outputs[2 * i + 1], ts.shift(x2, w2, padding, active), active)


DTYPE_CASES = [
    # (input dtype, weight dtype, active)
    (torch.float64, torch.float64, True),
    (torch.float64, torch.float32, False),
    (torch.float32, torch.float64, True),
    (torch.float16, torch.float32, True),
    (torch.float16, torch.float16, True),
    (torch.bfloat16, torch.float32, True),
    (torch.bfloat16, torch.bfloat16, False),
    (torch.int64, torch.float32, False),
    (torch.uint8, torch.float32, False),
    (torch.bool, torch.float32, False),
]
DTYPE_PADDINGS = ("zeros", "reflect")  # zeros reads a zero of the dtype, the others do not


class Cast(nn.Module):
    """Shifts ``x`` converted to ``dtype`` and returns float32: ONNX Runtime's Python API
    takes no bfloat16 arrays. Integer dtypes get ``|x|`` rounded, bool ``x > 0``; the casts
    are exact for the values drawn."""

    def __init__(self, dtype, weight, padding, active):
        super().__init__()
        self.dtype, self.padding, self.active = dtype, padding, active
        self.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self, x):
        if self.dtype == torch.bool:
            x = x > 0
        elif not self.dtype.is_floating_point:
            x = x.abs().round().to(self.dtype)
        else:
            x = x.to(self.dtype)
        shifted = ts.shift(x, self.weight, self.padding, self.active, [(1, 0), (0, 1)])
        return shifted.to(torch.float32)


@functools.lru_cache(maxsize=None)
def dtype_outputs():
    """``(ONNX Runtime, PyTorch)`` outputs of each dtype case, per padding; one export."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 5, 6, generator=g) * 3
    models = []
    for dtype, weight_dtype, active in DTYPE_CASES:
        weight = shifts(4, 2, 6, seed=7, dtype=weight_dtype)
        weight[1, 0] = 2.7  # a fraction, whose float32 and float64 coefficients differ
        models.append([Cast(dtype, weight, padding, active) for padding in DTYPE_PADDINGS])
    flat = [m for per_case in models for m in per_case]
    # A dynamic batch keeps the ops on the data (Expand, Concat, GatherElements, ...) in the
    # graph, where ONNX Runtime must have kernels for the dtype, instead of folded away.
    sess = session(export(Several(flat).eval(), (x,), (({0: DYNAMIC},),)))  # *inputs
    x = torch.cat([x, -x[:1]])
    actual = iter(run(sess, x))
    return [[(next(actual), m(x)) for m in per_case] for per_case in models]


@pytest.mark.parametrize("case", range(len(DTYPE_CASES)),
                         ids=[f"{a}-{w}-{'active' if m else 'ssl'}".replace("torch.", "")
                              for a, w, m in DTYPE_CASES])
def test_dtypes(case):
    dtype, _, active = DTYPE_CASES[case]
    for actual, expected in dtype_outputs()[case]:
        if active and dtype in (torch.float16, torch.bfloat16):
            # Both compute in float32 and round once to dtype; a sum of products may round
            # differently at its last float32 bit, one ulp of dtype at most.
            ulp = 2e-3 if dtype == torch.float16 else 1.6e-2
            torch.testing.assert_close(actual, expected, rtol=ulp, atol=ulp)
        else:
            check(actual, expected, active)


def test_graph_uses_standard_ops_and_opset():
    """The default domain only (no custom op for a runtime to provide)."""
    x = torch.randn(2, 3, 4, 5)
    program = export(OneShift("symmetric", True, [(1, 0), (0, 1)]), (x, shifts(3, 2, 5, 1)),
                     ({0: DYNAMIC, 3: DYNAMIC}, None))  # nothing to fold: the whole translation
    domains = {n.domain for n in program.model_proto.graph.node}
    for function in program.model_proto.functions:
        domains |= {n.domain for n in function.node}
    assert domains <= {"", "ai.onnx"}, domains
    opsets = {o.domain: o.version for o in program.model_proto.opset_import}
    assert opsets.get("", 0) >= ts_onnx.OPSET
    ops_used = {n.op_type for n in program.model_proto.graph.node}
    assert {"Range", "GatherElements", "Mod", "Floor"} <= ops_used, ops_used


# Channel multiplier (SPEC §1): weight (k*C, D), output channel o reads input channel o // k.
# An op of this test module stands in for torchshift2::shift with the same arguments and the
# (k*C)-channel output shape, so the translation is exercised whatever ts.shift accepts yet.
@torch.library.custom_op("torchshift2_onnx_test::shift_k", mutates_args=())
def _shift_k(input: torch.Tensor, weight: torch.Tensor, padding: str, active: bool,
             crop: list[int]) -> torch.Tensor:
    return multiplier_reference(input, weight, padding, active, crop)


@_shift_k.register_fake
def _(input, weight, padding, active, crop):
    shape = [input.shape[0], weight.shape[0]]
    for d, length in enumerate(input.shape[2:]):
        shape.append(length - crop[2 * d] - crop[2 * d + 1])
    return input.new_empty(shape)


def multiplier_reference(input, weight, padding, active, crop):
    k = weight.shape[0] // input.shape[1]
    pairs = [(crop[2 * d], crop[2 * d + 1]) for d in range(len(crop) // 2)]
    return reference.shift(input.repeat_interleave(k, dim=1), weight, padding, active, pairs)


class Multiplier(nn.Module):
    def __init__(self, active, crop):
        super().__init__()
        self.active, self.crop = active, crop

    def forward(self, x, weight):
        return tuple(torch.ops.torchshift2_onnx_test.shift_k(x, weight, p, self.active, self.crop)
                     for p in ts.PADDINGS)


@pytest.mark.parametrize("active", [False, True], ids=["ssl", "active"])
def test_channel_multiplier(active):
    table = {torch.ops.torchshift2_onnx_test.shift_k.default: ts_onnx.shift_translation}
    crop = [1, 0, 0, 2]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, 6, generator=g)
    weight = shifts(9, 2, 6, seed=3)  # k = 3
    dynamic_shapes = ({0: DYNAMIC, 1: DYNAMIC, 3: DYNAMIC}, {0: DYNAMIC})
    sess = session(export(Multiplier(active, crop), (x, weight), dynamic_shapes, table))
    for channels, k, width in ((3, 3, 6), (2, 4, 7)):
        x = torch.randn(2, channels, 5, width, generator=g)
        weight = shifts(k * channels, 2, width, seed=k)
        for padding, actual in zip(ts.PADDINGS, run(sess, x, weight)):
            check(actual, multiplier_reference(x, weight, padding, active, crop), active)


def test_channel_multiplier_through_ts_shift():
    """The same through ``ts.shift`` itself, once it takes ``(k*C, D)`` weights."""
    g = torch.Generator().manual_seed(4)
    x, weight = torch.randn(2, 3, 5, 6, generator=g), shifts(6, 2, 6, seed=4)  # k = 2
    try:
        ts.shift(x, weight)
    except ValueError as error:
        pytest.skip(f"ts.shift does not take a channel multiplier yet ({error})")
    for active in MODES:
        model = Several([OneShift(p, active, [(1, 0), (0, 2)]) for p in ts.PADDINGS])
        actuals = run(session(export(model, (x, weight))), x, weight)
        for padding, actual in zip(ts.PADDINGS, actuals):
            check(actual, multiplier_reference(x, weight, padding, active, [1, 0, 0, 2]), active)


def _randomize(model, seed):
    """Shifts beyond +-1 and non-trivial BatchNorm statistics, so the check sees them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (ts.Shift1d, ts.Shift2d, ts.Shift3d)):
                module.weight.copy_((torch.rand(module.weight.shape, generator=g) * 2 - 1) * 3)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=g) + 0.5)
    return model.eval()


def check_end_to_end(model, example, others):
    sess = session(export(model, (example,), ({0: DYNAMIC, 2: DYNAMIC, 3: DYNAMIC},)))
    for x in [example, *others]:
        (actual,) = run(sess, x)
        with torch.no_grad():
            expected = model(x)
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_demo_shiftnet_end_to_end():
    model = _randomize(demo_module().build_model("shift"), seed=0)
    g = torch.Generator().manual_seed(0)
    check_end_to_end(model, torch.randn(4, 1, 8, 8, generator=g),
                     [torch.randn(7, 1, 12, 12, generator=g),
                      torch.randn(1, 1, 9, 10, generator=g)])


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand, padding_mode):
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        self.layers = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False,  # depthwise
                      padding_mode=padding_mode),
            nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return x + self.layers(x) if self.residual else self.layers(x)


def mobilenet_v2_like():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        InvertedResidual(8, 8, 1, 1, "zeros"), InvertedResidual(8, 12, 2, 4, "reflect"),
        InvertedResidual(12, 12, 1, 4, "replicate"), InvertedResidual(12, 16, 2, 4, "circular"),
        nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def test_mobilenet_v2_like_end_to_end():
    model = ts.replace_depthwise(mobilenet_v2_like())
    layers = [m.shift for m in model.modules() if isinstance(m, ts.DepthwiseShift)]
    assert [layer.padding for layer in layers] == ["zeros", "reflect", "border", "periodic"]
    for layer in layers[1::2]:  # one stride-1 and one stride-2 block interpolate
        layer.active_flag = True
    model = _randomize(model, seed=1)
    g = torch.Generator().manual_seed(1)
    check_end_to_end(model, torch.randn(2, 3, 32, 32, generator=g),
                     [torch.randn(5, 3, 24, 40, generator=g),
                      torch.randn(1, 3, 17, 21, generator=g)])


def test_saved_file_runs(tmp_path):
    """The documented path: export, save to a file, load in ONNX Runtime."""
    model = nn.Sequential(nn.Conv2d(3, 6, 1), ts.DepthwiseShift(ts.Shift2d(6, padding="periodic")))
    x = torch.randn(1, 3, 7, 7)
    program = export(model.eval(), (x,))
    path = tmp_path / "model.onnx"
    program.save(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(actual), model(x), rtol=1e-5, atol=1e-6)


def test_without_the_table_the_exporter_names_the_op():
    """What a user sees without the one argument: an error naming the op."""
    with pytest.raises(Exception, match="torchshift2.shift"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(OneShift("zeros", False), (torch.randn(1, 2, 4), torch.zeros(2, 1)),
                              dynamo=True, verbose=False)


def test_importing_torchshift2_does_not_import_onnx():
    import subprocess
    import sys

    code = ("import sys, torchshift2, torchshift2.onnx; "
            "print(sorted(m for m in ('onnx', 'onnxscript', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert out.strip() == "[]"


def test_bad_crop_names_the_argument():
    with pytest.raises(TypeError, match="crop"):
        ts_onnx.shift_translation(None, None, "zeros", False, [1, 2, 3])
    with pytest.raises(ValueError, match="padding"):
        ts_onnx.shift_translation(None, None, "circular", False, [0, 0])
