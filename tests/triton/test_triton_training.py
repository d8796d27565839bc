"""The training path of the Triton backend (issue 20) beyond its values: how many kernels a
backward with an output mask launches, results that do not depend on which kernel path or
launch configuration ran (grad_weight bitwise), non-finite weights (reached on CUDA without
a host check), the in-place kernel's single launch, and the launchers on fake tensors.

The values of every padding x D x mode x crop x layout, the channel multiplier, masked
backwards and the in-place kernel against the reference are the kernel suite's
(tests/test_backends.py). Path and configuration variants here are compared with each other
bit for bit, and non-finite cases with the reference on the finite channels. Shapes are tiny
(the interpreter runs every program in numpy) but chosen so that the fast paths run:
float64 rows of even length (2-element vectors) for the funnelled planar reads, 4 channels
for the channels-last candidates.
"""

import pytest
import torch

import torchshift2 as ts
import torchshift2.backends.triton as backend
from torchshift2 import _spec
from helpers import TEST_DEVICE as DEVICE, assert_close, layout, oracle_with_grads

SHAPES = {1: (1, 2, 10), 2: (1, 2, 4, 6), 3: (1, 2, 3, 3, 4)}
CL_CHANNELS = 4
CROPS = {1: [(2, 1)], 2: [(1, 0), (0, 2)], 3: [(0, 1), (1, 0), (2, 0)]}


def _weights(rows, ndim, seed, scale=2.5):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, ndim, generator=generator, dtype=torch.float64) * scale
    weight[0] = torch.round(weight[0] * 2) / 2  # integers / halves: rounding and floor edges
    return weight.to(DEVICE)


def _case(ndim, memory_format, seed, k=1, dtype=torch.float64):
    shape = list(SHAPES[ndim])
    if memory_format == "channels_last":
        shape[1] = CL_CHANNELS
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)
    x = layout(x, memory_format).to(DEVICE)
    return x, _weights(shape[1] * k, ndim, seed + 1)


def _grad_output(out, seed=7):
    generator = torch.Generator().manual_seed(seed)
    g = torch.randn(out.shape, generator=generator, dtype=torch.float64).to(out.dtype)
    return _spec.empty_like_layout(out, out.shape).copy_(g.to(out.device))


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
@pytest.mark.parametrize("active", [False, True])
@pytest.mark.parametrize("mask", [(True, False), (False, True)])
def test_output_mask_launches_only_what_is_asked(mask, active, memory_format):
    x, weight = _case(2, memory_format, 5)
    g = _grad_output(ts.reference.shift(x, weight, "symmetric", active, CROPS[2]))
    calls = []
    saved = backend._launch
    backend._launch = lambda kernel: (calls.append(kernel), kernel)[1]
    try:
        backend.backward(g, x, weight, "symmetric", active, _spec.flat_crop(CROPS[2]), mask)
    finally:
        backend._launch = saved
    names = [getattr(kernel, "__name__", None) or kernel.fn.__name__ for kernel in calls]
    assert len(names) == (1 if mask == (True, False) else 2), names
    assert ("reduce_partials" in names) == mask[1]


def test_masked_gradients_equal_the_full_backward_bitwise():
    for memory_format in ("contiguous", "channels_last"):
        x, weight = _case(2, memory_format, 6)
        out = backend.forward(x, weight, "reflect", True, [1, 0, 0, 0], 0)
        g = _grad_output(out)
        full = backend.backward(g, x, weight, "reflect", True, [1, 0, 0, 0], (True, True))
        gi, none = backend.backward(g, x, weight, "reflect", True, [1, 0, 0, 0], (True, False))
        none2, gw = backend.backward(g, x, weight, "reflect", True, [1, 0, 0, 0], (False, True))
        assert none is None and none2 is None
        assert torch.equal(gi, full[0]) and torch.equal(gw, full[1])


# --- the same bits whichever path or configuration ran -----------------------------------

VARIANTS = [
    dict(CMAX_FWD=0, CMAX_BWD=(0, 0, 0), CPAD=0),         # every gather / general path
    dict(CMAX_FWD=64, CMAX_BWD=(64, 64, 64), CPAD=64),    # candidates / funnel everywhere
    dict(TILE_BYTES=1024, CHUNK_TILES=1, WARPS=1, BWD_WARPS=2, CL_BYTES=32),
]


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
@pytest.mark.parametrize("padding, ndims", [("zeros", (2,)), ("border", (2,)),
                                            ("reflect", (1, 2, 3))])
def test_results_do_not_depend_on_path_or_configuration(padding, ndims, memory_format, config):
    """grad_weight bitwise across configurations: the partials' layout is canonical and
    their sums order-independent (on CUDA this also varies the warps)."""
    for ndim in ndims:
        x, weight = _case(ndim, memory_format, 60 + ndim)
        crop = _spec.flat_crop(_spec.normalize_crop(CROPS[ndim], x.shape[2:]))
        results = []
        for variant in [{}] + VARIANTS:
            config(**variant)
            for active in (False, True):
                out = backend.forward(x, weight, padding, active, crop, 0)
                g = _grad_output(out)
                results.append((active, out, *backend.backward(g, x, weight, padding, active,
                                                               crop)))
        baseline = results[:2]
        for i, (active, out, gi, gw) in enumerate(results):
            ref = baseline[i % 2]
            assert torch.equal(out, ref[1]), (ndim, i)
            assert torch.equal(gi, ref[2]), (ndim, i)
            assert torch.equal(gw, ref[3]), (ndim, i)


# --- non-finite weights on CUDA: NaN, never a finite value (SPEC §5) ---------------------

@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy: inf - inf in the interpreter
@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
@pytest.mark.parametrize("active", [False, True])
@pytest.mark.parametrize("padding", ["zeros", "periodic", "symmetric"])
def test_non_finite_weight_makes_its_channel_nan(padding, active, memory_format):
    """The CPU ops refuse such weights before any kernel runs; the kernels (reached on CUDA
    without a check, which would synchronise) must make the channel NaN: output, the
    grad_input of the input channel it reads, its grad_weight row."""
    x, weight = _case(2, memory_format, 9, k=2)
    weight[1, 0] = float("nan")
    weight[3, 1] = float("inf") if active else float("-inf")
    bad_out = [1, 3]
    crop = [1, 0, 0, 1]
    out = _spec.empty_output(x, crop, weight)
    backend.forward_into(out, x, weight, padding, active, crop, 0)
    g = _grad_output(out)
    grad_input = _spec.empty_like_layout(x, x.shape)
    grad_weight = torch.empty_like(weight)
    backend.backward_into(grad_input, grad_weight, g, x, weight, padding, active, crop)
    clean = weight.clone()
    clean[bad_out] = 0.0
    ref_out, (ref_gi, ref_gw) = oracle_with_grads(x, clean, padding, active,
                                                  _spec.pair_crop(crop), g)
    good_out = [o for o in range(weight.shape[0]) if o not in bad_out]
    good_in = [c for c in range(x.shape[1]) if all(o // 2 != c for o in bad_out)]
    assert torch.isnan(out[:, bad_out]).all()
    assert torch.equal(out[:, good_out], ref_out[:, good_out])
    assert torch.isnan(grad_input[:, [o // 2 for o in bad_out]]).all()
    assert_close(grad_input[:, good_in], ref_gi[:, good_in])
    assert torch.isnan(grad_weight[bad_out]).all()
    assert_close(grad_weight[good_out], ref_gw[good_out])


def test_non_finite_weight_on_integer_data_gives_the_fill():
    """Integer dtypes have no NaN: the channel reads as zeros padding everywhere."""
    x = torch.arange(24, dtype=torch.int32, device=DEVICE).reshape(1, 2, 12)
    weight = torch.tensor([[float("nan")], [2.0]], dtype=torch.float64, device=DEVICE)
    out = torch.empty_like(x)
    backend.forward_into(out, x, weight, "periodic", False, [0, 0], 5)
    assert (out[0, 0] == 5).all()
    assert torch.equal(out[0, 1], torch.roll(x[0, 1], 2))


# --- the in-place kernel -----------------------------------------------------------------

@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_in_place_kernel_is_one_launch(ndim, memory_format):
    """(Its values, and that it writes only the moving channels: the kernel suite's.)"""
    x, _ = _case(ndim, memory_format, 2)
    weight = torch.zeros(x.shape[1], ndim, dtype=torch.float64, device=DEVICE)
    weight[0, -1] = 1.4
    weight[-1, 0] = -2.6
    expected = ts.reference.shift(x, weight, "reflect")
    calls = []
    saved = backend._launch
    backend._launch = lambda kernel: (calls.append(kernel), kernel)[1]
    try:
        backend.shift_inplace(x, weight, "reflect")
    finally:
        backend._launch = saved
    assert len(calls) == 1
    assert torch.equal(x, expected)


def test_in_place_kernel_nan_weight_and_strided_input():
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, device=DEVICE)
    weight = torch.tensor([[1.0, -1.0], [float("nan"), 0.0], [0.0, 0.0]], dtype=torch.float64,
                          device=DEVICE)
    keep = x[:, 2].clone()
    moved = ts.reference.shift(x, torch.nan_to_num(weight), "border")
    backend.launch_shift_inplace(x, weight, "border")  # no CPU finiteness check here
    assert torch.equal(x[:, 0], moved[:, 0])
    assert torch.isnan(x[:, 1]).all()
    assert torch.equal(x[:, 2], keep)
    y = torch.randn(3, 4, 5, 2, dtype=torch.float64, device=DEVICE).permute(3, 1, 2, 0)
    weight = torch.tensor([[2.0, 1.0], [0.0, 0.0], [-1.0, 0.0], [0.0, 3.0]],
                          dtype=torch.float64, device=DEVICE)
    expected = ts.reference.shift(y, weight, "reflect")
    backend.shift_inplace(y, weight, "reflect")
    assert torch.equal(y, expected)


# --- the launchers inside a triton_op: shapes only, no data, no host sync ----------------

def test_launchers_run_on_fake_tensors():
    """What a ``triton_op`` body does under tracing: plan from sizes and strides, allocate
    with torch ops, launch through the launcher. FakeTensors raise on any data access."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    launched = []

    def recorder(kernel):
        class Grid:
            def __getitem__(self, grid):
                return lambda *args, **meta: launched.append((kernel.fn.__name__
                                                              if hasattr(kernel, "fn")
                                                              else kernel.__name__, grid))
        return Grid()

    with FakeTensorMode():
        for channels_last in (False, True):
            x = torch.empty(2, 8, 6, 7)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            weight = torch.empty(16, 2)
            out = _spec.empty_output(x, [1, 0, 0, 0], weight)
            backend.launch_forward(out, x, weight, "reflect", True, [1, 0, 0, 0],
                                   launcher=recorder)
            gi, gw = _spec.empty_grads(x, weight)
            backend.launch_backward(gi, gw, out, x, weight, "reflect", True, [1, 0, 0, 0],
                                    launcher=recorder)
            backend.launch_backward(gi, None, out, x, weight, "reflect", True, [1, 0, 0, 0],
                                    launcher=recorder)
            backend.launch_shift_inplace(x, weight[:8], "zeros", launcher=recorder)
    kinds = [name for name, _ in launched]
    assert kinds == ["planar_forward", "planar_backward", "reduce_partials", "planar_backward",
                     "planar_inplace", "cl_forward", "cl_backward", "reduce_partials",
                     "cl_backward", "cl_inplace"]
