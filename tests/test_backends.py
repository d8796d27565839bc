"""The kernel-correctness suite: every backend, on every device it runs on, against the
pure-torch reference (SPEC §1-§5).

The tests of a backend take ``backend_device`` (tests/conftest.py), one of:

* ``reference-cpu``: :mod:`torchshift2.backends.reference` (the oracle run in blocks of
  samples and channels, as a backend);
* ``cpp-cpu``: the C++ kernels;
* ``triton-interpreter``: the Triton kernels on CPU tensors through ``TRITON_INTERPRET=1``.
  The interpreter must be on before triton is imported, so these cases run in a process of
  their own: tests/test_triton_interpreter.py runs this module there (with
  test_regressions.py and tests/triton), where ``backend_device`` is ``triton-interpreter``
  alone, hypothesis draws fewer examples and fixed shapes are smaller
  (:meth:`helpers.BackendDevice.shape`). By hand::

      TRITON_INTERPRET=1 python -m pytest -q -p no:cacheprovider tests/test_backends.py

* ``triton-cuda``: the compiled Triton kernels on a GPU (skipped without one;
  benchmarks/gpu_run.sh runs them).

``TORCHSHIFT2_KERNEL_BACKENDS=cpp-cpu,triton-cuda`` runs the named cases only. Values are
compared with :func:`torchshift2.reference.shift` and its autograd gradients, or with an
independent definition (``np.pad``, ``torch.roll``, a literal loop), never with another
backend or with the backend itself. The paths of one backend (the C++ kernel selection,
Triton tiles, launch plans and launch counts) are tested in test_cpu_kernels.py,
test_cpu_kernel_table.py and tests/triton.
"""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import torchshift2 as ts
from helpers import (FORMATS, INTEGER_DTYPES, assert_close, layout, oracle_with_grads,
                     shift_cases, shift_with_grads)
from torchshift2 import _spec


def _on(backend_device, case):
    """A drawn ``(x, weight, padding, active, crop)`` on the case's device."""
    x, weight, *rest = case
    return (x.to(backend_device.device), weight.to(backend_device.device), *rest)


def _grad_output(shape, dtype, device, seed=7, like=None):
    generator = torch.Generator().manual_seed(seed)
    g = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype).to(device)
    if like is not None:  # the layout of ``like``
        g = _spec.empty_like_layout(like, shape).copy_(g)
    return g


def _compare_grad_weight(got, want, dtype):
    """grad_weight sums many products: compared relative to its scale below float64."""
    if dtype == torch.float64:
        assert_close(got, want, got.dtype)
        return
    scale = max(1.0, float(want.abs().max()))
    assert_close(got / scale, want / scale, dtype)


# --- the oracle itself, against independent definitions ----------------------------------

NP_MODES = {"zeros": "constant", "border": "edge", "periodic": "wrap", "reflect": "reflect",
            "symmetric": "symmetric"}


@given(length=st.integers(1, 9), shift=st.integers(-40, 40),
       padding=st.sampled_from(ts.PADDINGS))
def test_oracle_matches_numpy_pad(length, shift, padding):
    # The oracle itself is checked against np.pad, an independent definition of SPEC §2.
    x = np.arange(1, length + 1, dtype=np.float64)
    width = abs(shift) + 1
    if padding == "reflect" and length == 1:
        expected = np.full(length, x[0])
    else:
        expected = np.pad(x, width, mode=NP_MODES[padding])[width - shift: width - shift + length]
    out = ts.reference.shift(torch.from_numpy(x).reshape(1, 1, -1),
                             torch.tensor([[float(shift)]]), padding)
    np.testing.assert_array_equal(out.flatten().numpy(), expected)


def test_oracle_active_matches_loop_definition():
    # SPEC §3 written as a literal loop over corners, on a 2D example with borders.
    torch.manual_seed(3)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64)
    weight = torch.tensor([[0.3, -1.7], [2.5, 0.0]], dtype=torch.float64)
    out = ts.reference.shift(x, weight, "symmetric", True, [(1, 0), (0, 2)])
    expected = torch.zeros_like(out)
    for c, o0, o1 in itertools.product(range(2), range(3), range(3)):
        i0, i1 = o0 + 1, o1
        total = 0.0
        for a0, a1 in itertools.product((0, 1), repeat=2):
            coeff = 1.0
            for w, a in ((weight[c, 0], a0), (weight[c, 1], a1)):
                f = float(w - torch.floor(w))
                coeff *= f if a else 1 - f
            k0 = i0 - int(torch.floor(weight[c, 0])) - a0
            k1 = i1 - int(torch.floor(weight[c, 1])) - a1
            src = np.pad(x[0, c].numpy(), 20, mode="symmetric")[k0 + 20, k1 + 20]
            total += coeff * src
        expected[0, c, o0, o1] = total
    assert_close(out, expected)


# --- forward and gradients through ts.shift (the op, its autograd) ------------------------

@given(case=shift_cases())
def test_float64_matches_oracle(backend_device, case):
    x, weight, padding, active, crop = _on(backend_device, case)
    out, (grad_input, grad_weight) = shift_with_grads(backend_device.backend, x, weight,
                                                      padding, active, crop)
    ref, (ref_input, ref_weight) = shift_with_grads("oracle", x, weight, padding, active, crop)
    assert out.shape == ref.shape and out.stride() == ref.stride()
    assert_close(out, ref)
    assert grad_input.dtype == x.dtype
    assert_close(grad_input, ref_input)
    assert grad_weight.dtype == weight.dtype
    assert_close(grad_weight, ref_weight, weight.dtype)


@given(case=shift_cases(), data=st.data())
def test_low_precision_matches_oracle(backend_device, case, data):
    x, weight, padding, active, crop = _on(backend_device, case)
    dtype = data.draw(st.sampled_from(backend_device.low_precision), label="dtype")
    x = x.to(dtype)  # keeps the layout
    out, (grad_input, grad_weight) = shift_with_grads(backend_device.backend, x, weight,
                                                      padding, active, crop)
    ref, (ref_input, ref_weight) = shift_with_grads("oracle", x, weight, padding, active, crop)
    assert out.dtype == dtype and grad_input.dtype == dtype and out.stride() == ref.stride()
    assert grad_weight.dtype == weight.dtype
    assert_close(out, ref, dtype)
    assert_close(grad_input, ref_input, dtype)
    _compare_grad_weight(grad_weight, ref_weight, dtype)


@given(case=shift_cases(), dtype=st.sampled_from(INTEGER_DTYPES))
def test_integer_dtypes_shift_exactly(backend_device, case, dtype):
    x, weight, padding, _, crop = _on(backend_device, case)
    x = (x.abs() * 100).to(dtype)
    with torch.no_grad(), ts.use_backend(backend_device.backend):
        out = ts.shift(x, weight, padding, False, crop)
    # The unsigned types torch's gather lacks (issue 18 item 8) are checked through int64.
    expected = ts.reference.shift(x.to(torch.int64), weight, padding, False, crop).to(dtype)
    assert out.dtype == dtype and out.stride() == expected.stride()
    assert torch.equal(out, expected)


def test_ssl_forward_copies_float_bits_exactly(backend_device):
    device = backend_device.device
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, device=device)
    x[0, 0, 0, 0] = float("nan")
    x[0, 1, 1, 1] = float("-inf")
    x[1, 2, 2, 2] = -0.0
    weight = torch.tensor([[1.0, -1.0], [0.4, 2.6], [-3.5, 0.5]], device=device)
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        with torch.no_grad(), ts.use_backend(backend_device.backend):
            out = ts.shift(x.to(dtype), weight, "periodic")
        expected = ts.reference.shift(x.to(dtype), weight, "periodic")
        bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[out.element_size()]
        assert torch.equal(out.view(bits), expected.view(bits)), dtype


def test_quantized_zeros_padding_fills_with_zero_point(backend_device):
    if backend_device.device.type != "cpu":
        pytest.skip("quantized tensors are CPU-only")
    x = torch.quantize_per_tensor(torch.randn(2, 3, 6), 0.1, 17, torch.quint8)
    weight = torch.tensor([[2.0], [-3.0], [0.0]])
    with ts.use_backend(backend_device.backend):
        out = ts.shift(x, weight)
    expected = ts.reference.shift(x, weight)
    assert torch.equal(out.int_repr(), expected.int_repr())
    assert out.q_zero_point() == 17 and (out.int_repr()[0, 0, :2] == 17).all()


@given(
    ndim=st.integers(1, 3),
    size=st.sampled_from([1, 2, 3, 7]),
    padding=st.sampled_from(ts.PADDINGS),
    active=st.booleans(),
    magnitude=st.sampled_from([10.0, 1e3, 1e6, 1e30, 1e300]),
    channels_last=st.booleans(),
    data=st.data(),
)
def test_extreme_shifts_and_size_one_dims(backend_device, ndim, size, padding, active,
                                          magnitude, channels_last, data):
    if backend_device.interpreted:  # border adjoints of huge shifts sum whole runs
        size = min(size, 4)
    sizes = [data.draw(st.sampled_from([1, size])) for _ in range(ndim)]
    x = torch.randn(2, 3, *sizes, dtype=torch.float64)
    if channels_last:
        x = layout(x, "channels_last")
    signs = torch.tensor(data.draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=3 * ndim,
                                            max_size=3 * ndim)), dtype=torch.float64)
    weight = signs.reshape(3, ndim) * (magnitude + torch.rand(3, ndim, dtype=torch.float64))
    if magnitude < 1e38:  # float32 would turn 1e300 into inf (rejected on CPU)
        weight = weight.to(data.draw(st.sampled_from([torch.float32, torch.float64])))
    crop = [(s // 2, 0) for s in sizes] if data.draw(st.booleans()) else None
    x, weight = x.to(backend_device.device), weight.to(backend_device.device)
    out, (grad_input, grad_weight) = shift_with_grads(backend_device.backend, x, weight,
                                                      padding, active, crop)
    ref, (ref_input, ref_weight) = shift_with_grads("oracle", x, weight, padding, active, crop)
    assert torch.isfinite(out).all()
    assert_close(out, ref)
    assert_close(grad_input, ref_input)
    assert_close(grad_weight, ref_weight, weight.dtype)


@pytest.mark.parametrize("padding", ts.PADDINGS)
def test_exact_reduction_of_huge_shifts(backend_device, padding):
    """1e30 and friends are exact integers in float64: the reduction of a shift modulo the
    padding's period must give the true residue (torch.remainder of the reference is exact
    too)."""
    length = 7
    x = torch.arange(float(length), dtype=torch.float64, device=backend_device.device)
    x = x.reshape(1, 1, length).repeat(1, 6, 1)
    weight = torch.tensor([[1e30], [-1e30], [3.7e22], [-(2.0**70)], [2.0**62 + 2**12],
                           [1e300]], dtype=torch.float64, device=backend_device.device)
    with torch.no_grad(), ts.use_backend(backend_device.backend):
        out = ts.shift(x, weight, padding)
    ref = ts.reference.shift(x, weight, padding)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_periodic_ssl_is_torch_roll(backend_device, ndim):
    torch.manual_seed(ndim)
    x = torch.randn(2, 4, *[5, 6, 3][:ndim]).to(backend_device.device)
    weight = (torch.randint(-9, 9, (4, ndim)).float() + 0.2).to(backend_device.device)
    with ts.use_backend(backend_device.backend):
        out = ts.shift(x, weight, "periodic")
    for c in range(4):
        shifts = tuple(int(round(float(v))) for v in weight[c])
        expected = torch.roll(x[:, c], shifts, dims=tuple(range(1, ndim + 1)))
        assert torch.equal(out[:, c], expected)


@pytest.mark.parametrize("memory_format", FORMATS)
def test_output_memory_format(backend_device, memory_format):
    for ndim in (1, 2, 3):
        x = layout(torch.randn(2, 3, *[4] * ndim), memory_format).to(backend_device.device)
        weight = torch.randn(3, ndim).to(backend_device.device)
        with ts.use_backend(backend_device.backend):
            out = ts.shift(x, weight, "reflect", True, [(1, 0)] * ndim)
        expected_channels_last = memory_format == "channels_last"
        assert _spec.is_channels_last(out) == expected_channels_last
        if ndim == 2 and expected_channels_last:
            assert out.is_contiguous(memory_format=torch.channels_last)
        if ndim == 3 and expected_channels_last:
            assert out.is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("padding", ts.PADDINGS)
@pytest.mark.parametrize("shape", [(4, 3, 5), (2, 3, 4, 5), (2, 2, 3, 4, 3)])
@pytest.mark.parametrize("crop_kind", ["none", "crop"])
def test_gradcheck(backend_device, padding, shape, crop_kind):
    if backend_device.interpreted and (len(shape) > 3 or crop_kind == "none"):
        pytest.skip("under the interpreter, 1D with a crop only: every launch costs "
                    "milliseconds (the backward of every dim and layout is compared with the "
                    "reference's in test_every_padding_dim_mode_crop_and_layout)")
    torch.manual_seed(0)
    shape = backend_device.shape(shape)
    ndim = len(shape) - 2
    crop = None if crop_kind == "none" else [(1, 0)] + [(0, 1)] * (ndim - 1)
    x = torch.randn(shape, dtype=torch.float64).to(backend_device.device).requires_grad_()
    # Fractions away from integers: the active forward is smooth there, so finite
    # differences of the weight are meaningful.
    weight = (torch.randint(-6, 6, (shape[1], ndim)) + torch.rand(shape[1], ndim) * 0.6 + 0.2)
    weight = weight.double().to(backend_device.device).requires_grad_()
    # Under the interpreter: random projections of the Jacobian (fast_mode), not every row.
    fast = backend_device.interpreted
    with ts.use_backend(backend_device.backend):
        # Active: input and weight. SSL: the input (its weight gradient is straight-through
        # by design, checked against the active one in test_ssl_weight_gradient_...).
        assert torch.autograd.gradcheck(
            lambda x, w: ts.shift(x, w, padding, True, crop), (x, weight), fast_mode=fast)
        assert torch.autograd.gradcheck(
            lambda x: ts.shift(x, weight.detach(), padding, False, crop), (x,),
            fast_mode=fast)


@given(case=shift_cases())
def test_ssl_weight_gradient_is_the_active_one_of_the_oracle(backend_device, case):
    # SPEC §4: the SSL grad_weight is the active derivative at the unrounded weight.
    x, weight, padding, _, crop = _on(backend_device, case)
    _, (_, ssl) = shift_with_grads(backend_device.backend, x, weight, padding, False, crop)
    _, (_, active) = shift_with_grads("oracle", x, weight, padding, True, crop)
    assert_close(ssl, active, weight.dtype)


@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 0, 4, 4), (2, 3, 0, 4), (1, 2, 3, 0, 2)])
def test_empty_tensors(backend_device, shape):
    ndim = len(shape) - 2
    x = torch.randn(shape).to(backend_device.device).requires_grad_()
    weight = torch.randn(shape[1], ndim).to(backend_device.device).requires_grad_()
    with ts.use_backend(backend_device.backend):
        out = ts.shift(x, weight, "periodic", True)
        out.sum().backward()
    assert out.shape == x.shape
    assert x.grad.shape == x.shape and weight.grad.shape == weight.shape


@pytest.mark.parametrize("shape, crop, padding", [((2, 3, 4), [(2, 2)], "zeros"),
                                                  ((2, 3, 4, 5), [(2, 2), (0, 0)], "border")])
def test_crop_to_nothing_gives_zero_gradients(backend_device, shape, crop, padding):
    x = torch.randn(shape).to(backend_device.device).requires_grad_()
    weight = torch.randn(shape[1], len(shape) - 2).to(backend_device.device).requires_grad_()
    with ts.use_backend(backend_device.backend):
        out = ts.shift(x, weight, padding, True, crop)
        grad_input, grad_weight = torch.autograd.grad(out.sum(), (x, weight))
    assert out.shape == (shape[0], shape[1], 0, *shape[3:])
    assert torch.equal(grad_input, torch.zeros_like(x))
    assert torch.equal(grad_weight, torch.zeros_like(weight))


def test_output_never_aliases_input(backend_device):
    x = torch.randn(1, 2, 5).to(backend_device.device)
    with ts.use_backend(backend_device.backend):
        out = ts.shift(x, torch.zeros(2, 1).to(backend_device.device))
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_double_backward_raises(backend_device):
    x = torch.randn(1, 2, 5, dtype=torch.float64).to(backend_device.device).requires_grad_()
    weight = torch.randn(2, 1, dtype=torch.float64).to(backend_device.device).requires_grad_()
    with ts.use_backend(backend_device.backend):
        out = ts.shift(x, weight, "zeros", True)
        (grad_x,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="double backward"):
            grad_x.sum().backward()


@pytest.mark.parametrize("needs", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("crop", [None, [(1, 0)]])
def test_eager_training_bypasses_the_custom_ops(backend_device, monkeypatch, needs, crop):
    # Plain eager calls of the C++ and Triton backends run one autograd node around the
    # backend's kernels (torchshift2._eager), not the custom ops and their Python wrappers
    # (issue 20: host time per call); with and without crop, for every gradient subset.
    if backend_device.backend == "reference":
        pytest.skip("the reference backend runs through the custom ops")
    from torchshift2 import ops

    def refuse(*args, **kwargs):
        raise AssertionError("an eager call went through a custom op")

    device = backend_device.device
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(backend_device.shape((2, 3, 6)), generator=gen, dtype=torch.float64)
    weight = torch.randn(x.shape[1], 1, generator=gen, dtype=torch.float64) * 2
    x, weight = x.to(device).requires_grad_(needs[0]), weight.to(device).requires_grad_(needs[1])
    with ts.use_backend(backend_device.backend), monkeypatch.context() as patch:
        patch.setattr(ops, "shift", refuse)
        patch.setattr(ops, "shift_backward", refuse)
        out = ts.shift(x, weight, "reflect", True, crop)
        grad_output = _grad_output(out.shape, out.dtype, device)
        wanted = [t for t, n in zip((x, weight), needs) if n]
        grads = torch.autograd.grad(out, wanted, grad_output)
    ref, ref_grads = oracle_with_grads(x, weight, "reflect", True, crop, grad_output, needs)
    assert_close(out, ref, torch.float64)
    for got, want in zip(grads, [g for g in ref_grads if g is not None]):
        assert_close(got, want, torch.float64)


@pytest.mark.parametrize("active", [False, True])
def test_any_strides_for_weight_and_grad_output(backend_device, active):
    device = backend_device.device
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64, device=device)
    weight = (torch.randn(2, 4, dtype=torch.float64, device=device) * 3).t()  # not contiguous
    x1, w1 = x.clone().requires_grad_(), weight.clone().requires_grad_()
    with ts.use_backend(backend_device.backend):
        out = ts.shift(x1, w1, "symmetric", active)
        out.sum().backward()  # grad_output is expanded: stride 0 everywhere
    x2, w2 = x.clone().requires_grad_(), weight.clone().requires_grad_()
    ts.reference.shift(x2, w2, "symmetric", active).sum().backward()
    assert_close(x1.grad, x2.grad)
    assert_close(w1.grad, w2.grad)


def test_grad_output_in_the_other_layout(backend_device):
    shape = backend_device.shape((2, 16, 20, 24))
    x = layout(torch.randn(shape, dtype=torch.float64), "channels_last").to(backend_device.device)
    weight = (torch.randn(shape[1], 2, dtype=torch.float64) * 3).to(backend_device.device)
    g = _grad_output(shape, torch.float64, backend_device.device)  # contiguous
    xs = x.detach().requires_grad_()
    with ts.use_backend(backend_device.backend):
        out = ts.shift(xs, weight, "border", True)
        (grad_input,) = torch.autograd.grad(out, xs, g)
    _, (expected, _) = oracle_with_grads(x, weight, "border", True, None, g, (True, False))
    assert_close(grad_input, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_many_tiles_and_channel_blocks(backend_device, memory_format, dtype):
    """Shapes with many tiles per plane and channel blocks per position, as in the
    benchmark (on a GPU the benchmark's tile counts; smaller on CPU), against the reference
    in float64."""
    if dtype not in backend_device.low_precision:
        pytest.skip(f"{dtype} arithmetic is no evidence here")
    shape = {"cuda": (4, 48, 33, 70)}.get(backend_device.device.type, (2, 40, 9, 20))
    shape = backend_device.shape(shape)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator, dtype=torch.float64)
    weight = torch.randn(shape[1], 2, generator=generator, dtype=torch.float64) * 3
    x = layout(x.to(dtype), memory_format).to(backend_device.device)
    weight = weight.float().to(backend_device.device)
    for padding in ts.PADDINGS:
        for active in (False, True):
            xs, ws = x.detach().requires_grad_(), weight.detach().requires_grad_()
            with ts.use_backend(backend_device.backend):
                out = ts.shift(xs, ws, padding, active)
                g = _grad_output(out.shape, dtype, x.device, like=out)
                grads = torch.autograd.grad(out, (xs, ws), g)
            ref, ref_grads = oracle_with_grads(x.double(), weight.double(), padding, active,
                                               None, g.double())
            assert out.stride() == ref.stride()
            if not active:  # SSL forward copies bits
                assert torch.equal(out, ref.to(dtype))
            assert_close(out.double(), ref, dtype)
            assert_close(grads[0].double(), ref_grads[0], dtype)
            _compare_grad_weight(grads[1].double(), ref_grads[1], dtype)


# --- the Backend functions: forward, backward with output_mask -----------------------------

SHAPES = {1: (1, 2, 10), 2: (1, 2, 4, 6), 3: (1, 2, 3, 3, 4)}
CL_CHANNELS = 4  # channels-last cases: enough channels for the channel blocks' fast paths
CROPS = {1: [(2, 1)], 2: [(1, 0), (0, 2)], 3: [(0, 1), (1, 0), (2, 0)]}


def _module_case(backend_device, ndim, memory_format, seed, k=1, dtype=torch.float64):
    """A tiny case that still reaches the kernels' vector paths: float64 rows of even
    length, 4 channels when channels-last; integer and half-integer shifts in row 0."""
    shape = list(SHAPES[ndim])
    if memory_format == "channels_last":
        shape[1] = CL_CHANNELS
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)
    weight = torch.randn(shape[1] * k, ndim, generator=generator, dtype=torch.float64) * 2.5
    weight[0] = torch.round(weight[0] * 2) / 2  # rounding and floor edges
    return layout(x, memory_format).to(backend_device.device), weight.to(backend_device.device)


def _check_module(backend_device, x, weight, padding, active, crop, mask=(True, True)):
    """The backend's ``forward`` and ``backward(..., output_mask)`` against the reference;
    returns the backend's output."""
    backend = backend_device.module
    flat = _spec.flat_crop(_spec.normalize_crop(crop, x.shape[2:]))
    out = backend.forward(x, weight, padding, active, flat, 0)
    g = _grad_output(out.shape, x.dtype, x.device, like=out)
    grads = backend.backward(g, x, weight, padding, active, flat, mask)
    ref, ref_grads = oracle_with_grads(x, weight, padding, active, crop, g, mask)
    assert out.shape == ref.shape and out.stride() == ref.stride()
    assert_close(out, ref, x.dtype)
    for got, want, wanted in zip(grads, ref_grads, mask):
        if not wanted:
            assert got is None
            continue
        assert got.shape == want.shape and got.dtype == want.dtype
        assert_close(got, want, x.dtype)
    return out


@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("padding", ts.PADDINGS)
def test_every_padding_dim_mode_crop_and_layout(backend_device, padding, ndim, memory_format):
    seed = 10 * ndim + ts.PADDINGS.index(padding)
    x, weight = _module_case(backend_device, ndim, memory_format, seed)
    for active, cropped in itertools.product((False, True), (False, True)):
        _check_module(backend_device, x, weight, padding, active,
                      CROPS[ndim] if cropped else None)


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
@pytest.mark.parametrize("active", [False, True])
@pytest.mark.parametrize("mask", [(True, False), (False, True)])
def test_masked_backward_computes_what_is_asked(backend_device, mask, active, memory_format):
    x, weight = _module_case(backend_device, 2, memory_format, 5)
    _check_module(backend_device, x, weight, "symmetric", active, CROPS[2], mask)


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("padding", ["zeros", "periodic"])
def test_grad_input_alone_without_crop(backend_device, padding, ndim, memory_format):
    # grad_input alone with zeros / periodic padding and no crop: the C++ backend runs it as
    # the forward with the negated shift ("[inverse shift]"), for SSL and Active Shift.
    for active, dtype in itertools.product((False, True),
                                           (torch.float64, *backend_device.low_precision)):
        x, weight = _module_case(backend_device, ndim, memory_format, 30 + ndim, dtype=dtype)
        _check_module(backend_device, x, weight, padding, active, None, (True, False))


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
@pytest.mark.parametrize("k", [2, 3])
def test_channel_multiplier(backend_device, k, memory_format):
    """SPEC §1: output channel o reads input channel o // k; grad_input sums the k readers."""
    for ndim, (padding, active) in zip((1, 2, 3), [("reflect", True), ("border", False),
                                                   ("periodic", True)]):
        x, weight = _module_case(backend_device, ndim, memory_format, 40 + k + ndim, k=k)
        out = _check_module(backend_device, x, weight, padding, active, CROPS[ndim])
        assert out.shape[1] == k * x.shape[1]


def test_multiplier_output_channels_are_depthwise_conv_groups(backend_device):
    x, weight = _module_case(backend_device, 2, "contiguous", 3, k=2)
    weight = torch.round(weight)
    out = backend_device.module.forward(x, weight, "zeros", False, [0, 0, 0, 0], 0)
    for o in range(weight.shape[0]):
        expected = ts.reference.shift(x[:, o // 2:o // 2 + 1], weight[o:o + 1], "zeros")
        assert torch.equal(out[:, o:o + 1], expected)


@given(case=shift_cases(dtypes=(torch.float64, torch.float32)), k=st.integers(2, 3))
def test_channel_multiplier_equals_shifting_the_repeated_input(backend_device, case, k):
    # SPEC §1 through ts.shift: the oracle shifts the input repeated k times along channels.
    x, weight, padding, active, crop = _on(backend_device, case)
    weight = weight.repeat_interleave(k, 0) + torch.linspace(
        -2, 2, k * weight.shape[0], dtype=weight.dtype, device=weight.device)[:, None]
    out, (grad_input, grad_weight) = shift_with_grads(backend_device.backend, x, weight,
                                                      padding, active, crop)
    repeated = x.detach().requires_grad_()
    w = weight.detach().requires_grad_()
    ref = ts.reference.shift(repeated.repeat_interleave(k, 1), w, padding, active, crop)
    grad_output = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1),
                              dtype=torch.float64).to(device=x.device, dtype=x.dtype)
    ref_input, ref_weight = torch.autograd.grad(ref, (repeated, w), grad_output)
    # (repeat_interleave made the oracle's input contiguous: the layout is the input's)
    flat_crop = _spec.flat_crop(_spec.normalize_crop(crop, x.shape[2:]))
    assert out.shape == ref.shape
    assert out.stride() == _spec.empty_output(x, flat_crop, weight).stride()
    assert_close(out, ref.detach(), x.dtype)
    assert_close(grad_input, ref_input, x.dtype)
    _compare_grad_weight(grad_weight, ref_weight, x.dtype)


def test_wide_shift_spread_matches_oracle(backend_device):
    """Channels-last blocks whose shifts span more than a kernel's box of candidate
    offsets (the C++ taps, the Triton candidates) fall back to gathers."""
    x, _ = _module_case(backend_device, 2, "channels_last", 8)
    weight = torch.tensor([[0.0, 9.0], [-9.0, 0.4], [3.5, -7.0], [6.0, 6.0]],
                          dtype=torch.float64, device=backend_device.device)
    for padding in ("zeros", "symmetric"):
        for active in (False, True):
            _check_module(backend_device, x, weight, padding, active, None)


@pytest.mark.parametrize("memory_format", FORMATS)
def test_backward_is_deterministic(backend_device, memory_format):
    """Under torch.use_deterministic_algorithms: the reference's values, twice over."""
    generator = torch.Generator().manual_seed(3)
    x = layout(torch.randn(2, 3, 5, 6, generator=generator, dtype=torch.float64),
               memory_format).to(backend_device.device)
    weight = (torch.randn(3, 2, generator=generator, dtype=torch.float64) * 3)
    weight = weight.to(backend_device.device)
    g = _grad_output((2, 3, 5, 6), torch.float64, backend_device.device, like=x)
    results = []
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(2):
            results.append(backend_device.module.backward(g, x, weight, "border", True,
                                                          [0, 0, 0, 0], (True, True)))
    finally:
        torch.use_deterministic_algorithms(False)
    _, (ref_input, ref_weight) = oracle_with_grads(x, weight, "border", True, None, g)
    assert_close(results[0][0], ref_input)
    assert_close(results[0][1], ref_weight)
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


# --- shift_: the in-place SSL forward ------------------------------------------------------

@given(case=shift_cases(dtypes=(torch.float32, torch.float64, torch.int16, torch.uint8)),
       sparsity=st.sampled_from([0.0, 0.5, 0.9, 1.0]))
def test_in_place_matches_oracle(backend_device, case, sparsity):
    x, weight, padding, _, _ = _on(backend_device, case)
    keep = torch.rand(weight.shape[0], 1) >= sparsity
    weight = weight * keep.to(weight.device)
    expected = ts.reference.shift(x, weight, padding)
    y = x.clone()  # keeps x's memory format
    with torch.no_grad(), ts.use_backend(backend_device.backend):
        result = ts.shift_(y, weight, padding)
    assert result is y and torch.equal(y, expected)
    assert y.stride() == x.stride() or not y.is_contiguous()


def _sentinels(shape, dtype):
    """NaNs with distinct payloads (bit patterns no arithmetic would produce)."""
    bits = torch.arange(math.prod(shape), dtype=torch.int64) % 4093 + 1
    if dtype == torch.float64:
        return (bits | 0x7FF4000000000000).view(torch.float64).reshape(shape)
    return (bits.to(torch.int32) | 0x7FA00000).view(torch.float32).reshape(shape)


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("padding", ts.PADDINGS)
def test_in_place_writes_only_the_moving_channels(backend_device, padding, ndim, memory_format):
    """The channels that do not move keep their bits (NaN payloads included); the others
    get the reference's values."""
    shape = list(SHAPES[ndim])
    shape[1] = 4
    generator = torch.Generator().manual_seed(ndim)
    dtype = torch.float32 if ndim == 2 else torch.float64
    x = torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)
    still = [1, 3]
    x[:, still] = _sentinels([shape[0], 2] + shape[2:], dtype)
    x = layout(x, memory_format).to(backend_device.device)
    weight = torch.zeros(4, ndim, dtype=torch.float64)
    weight[0, -1] = 1.4
    weight[2] = torch.tensor([-2.6, 3.0, 1.0][:ndim], dtype=torch.float64)
    weight[1, 0] = 0.3  # rounds to 0: does not move
    weight = weight.to(backend_device.device)
    before = x.clone()
    expected = ts.reference.shift(before, weight, padding)
    with torch.no_grad(), ts.use_backend(backend_device.backend):
        assert ts.shift_(x, weight, padding) is x
    bits = {torch.float32: torch.int32, torch.float64: torch.int64}[dtype]
    assert torch.equal(x[:, still].contiguous().view(bits),
                       before[:, still].contiguous().view(bits))
    assert torch.equal(x[:, [0, 2]], expected[:, [0, 2]])


# --- one backend's own way of running ------------------------------------------------------

@given(case=shift_cases(), k=st.integers(1, 2), block=st.sampled_from([1, 7, 40]))
def test_reference_backend_in_blocks_matches_the_oracle(case, k, block):
    # The reference backend runs in blocks of samples and channels (bounded temporaries,
    # SPEC §5): tiny blocks must give the oracle's values and gradients.
    from torchshift2.backends import reference as backend

    x, weight, padding, active, crop = case
    weight = weight.repeat_interleave(k, 0)
    saved = backend.BLOCK_ELEMENTS
    backend.BLOCK_ELEMENTS = block
    try:
        out, (grad_input, grad_weight) = shift_with_grads("reference", x, weight, padding,
                                                          active, crop)
    finally:
        backend.BLOCK_ELEMENTS = saved
    oracle = x.repeat_interleave(k, 1) if k > 1 else x
    ref, (ref_input, ref_weight) = shift_with_grads("oracle", oracle, weight, padding, active,
                                                    crop)
    assert_close(out, ref)
    if k > 1:
        ref_input = ref_input.unflatten(1, (-1, k)).sum(2)
    assert_close(grad_input, ref_input)
    assert_close(grad_weight, ref_weight, weight.dtype)
