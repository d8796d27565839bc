"""SPEC §5: misuse raises a clear error naming the argument, before any kernel runs."""

import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import torchshift2 as ts

X2 = torch.randn(2, 3, 4, 5)
W2 = torch.randn(3, 2)

CASES = [
    ("input 2D", lambda: ts.shift(torch.randn(3, 4), torch.randn(3, 0)), ValueError, "input"),
    ("input 6D", lambda: ts.shift(torch.randn(1, 1, 2, 2, 2, 2), torch.randn(1, 4)), ValueError,
     "input"),
    ("not a tensor", lambda: ts.shift([1, 2, 3], W2), TypeError, "input"),
    ("weight not a tensor", lambda: ts.shift(X2, 1.5), TypeError, "weight"),
    ("shift2d on 3D", lambda: ts.shift2d(torch.randn(1, 3, 4), torch.randn(3, 1)), ValueError,
     "input"),
    ("shift1d on 4D", lambda: ts.shift1d(X2, W2), ValueError, "input"),
    ("weight rows", lambda: ts.shift(X2, torch.randn(4, 2)), ValueError, "weight"),
    ("weight cols", lambda: ts.shift(X2, torch.randn(3, 3)), ValueError, "weight"),
    ("weight 1D", lambda: ts.shift(X2, torch.randn(6)), ValueError, "weight"),
    ("weight int", lambda: ts.shift(X2, torch.ones(3, 2, dtype=torch.int64)), TypeError, "weight"),
    ("padding name", lambda: ts.shift(X2, W2, "mirror"), ValueError, "padding"),
    ("padding type", lambda: ts.shift(X2, W2, 3), TypeError, "padding"),
    ("crop pairs", lambda: ts.shift(X2, W2, crop=[(1, 1)]), ValueError, "crop"),
    ("crop shape", lambda: ts.shift(X2, W2, crop=[(1, 1, 1), (0, 0)]), ValueError, "crop"),
    ("crop negative", lambda: ts.shift(X2, W2, crop=[(-1, 0), (0, 0)]), ValueError, "crop"),
    ("crop too large", lambda: ts.shift(X2, W2, crop=[(3, 2), (0, 0)]), ValueError, "crop"),
    ("crop float", lambda: ts.shift(X2, W2, crop=[(1.5, 0), (0, 0)]), TypeError, "crop"),
    ("crop not pairs", lambda: ts.shift(X2, W2, crop=5), TypeError, "crop"),
    ("active not bool", lambda: ts.shift(X2, W2, active="yes"), TypeError, "active"),
    ("int active", lambda: ts.shift(X2.to(torch.int32), W2, active=True), TypeError, "input"),
    ("int with grad", lambda: ts.shift(X2.to(torch.uint8), W2.clone().requires_grad_()),
     RuntimeError, "weight"),
    ("complex", lambda: ts.shift(X2.to(torch.complex64), W2), TypeError, "input"),
    ("nan weight", lambda: ts.shift(X2, torch.full((3, 2), float("nan"))), ValueError, "weight"),
    ("inf weight", lambda: ts.shift(X2, torch.tensor([[0.0, 1.0], [float("inf"), 0], [0, 0]])),
     ValueError, "weight"),
    ("nan weight, empty input",
     lambda: ts.shift(torch.randn(0, 3, 4), torch.full((3, 1), float("nan"))),
     ValueError, "weight"),
    ("meta weight", lambda: ts.shift(X2, W2.to("meta")), RuntimeError, "weight"),
    ("weight rows not a multiple", lambda: ts.shift(X2, torch.randn(5, 2)), ValueError, "k·C"),
    ("weight no rows", lambda: ts.shift(X2, torch.randn(0, 2)), ValueError, "weight"),
    ("multiplier in place", lambda: ts.shift_(X2.clone(), torch.randn(6, 2)), ValueError,
     "weight"),
    # Issue 18 item 8: each raised an internal error before.
    ("sparse input", lambda: ts.shift(X2.to_sparse(), W2), TypeError, "input: expected a dense"),
    ("sparse weight", lambda: ts.shift(X2, W2.to_sparse()), TypeError, "weight: expected a dense"),
    ("quint4x2", lambda: ts.shift(torch.quantize_per_tensor(torch.rand(1, 3, 4, 4), 0.1, 0,
                                                            torch.quint4x2), W2),
     TypeError, "input: expected a quantized dtype"),
    ("raw op padding", lambda: torch.ops.torchshift2.shift(X2, W2, "mirror", False, [0] * 4),
     ValueError, "padding"),
    ("raw backward padding", lambda: torch.ops.torchshift2.shift_backward(
        X2, X2, W2, "mirror", False, [0] * 4, [True, True]), ValueError, "padding"),
    ("sparsity_term nan", lambda: ts.Shift2d(3, sparsity_term=float("nan")), ValueError,
     "sparsity_term"),
    ("sparsity_term inf", lambda: ts.Shift2d(3, sparsity_term=float("inf")), ValueError,
     "sparsity_term"),
    ("out_channels", lambda: ts.Shift2d(3, out_channels=7), ValueError, "out_channels"),
    ("emulated kernel larger than input",
     lambda: ts.Shift2d(3, emulate_dw=dict(kernel_size=7))(X2), ValueError,
     r"input: spatial dim 0 has size 4, smaller than the emulated depthwise conv needs \(6"),
]


@pytest.mark.parametrize("name,call,error,argument", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_naming_the_argument(name, call, error, argument):
    with pytest.raises(error, match=argument):
        call()


def test_quantized_with_active_raises():
    q = torch.quantize_per_tensor(torch.randn(1, 2, 5), 0.1, 3, torch.quint8)
    with pytest.raises(TypeError, match="input"):
        ts.shift(q, torch.zeros(2, 1), active=True)


def test_unknown_backend_names_it():
    with pytest.raises(ValueError, match="use_backend"):
        with ts.use_backend("cuda-magic"):
            pass
    result = subprocess.run(
        [sys.executable, "-c", "import torch, torchshift2 as ts; "
         "ts.shift(torch.randn(1, 1, 4), torch.zeros(1, 1))"],
        capture_output=True, text=True, env={"TORCHSHIFT2_BACKEND": "fast", "PATH": ""},
    )
    assert result.returncode == 1 and "TORCHSHIFT2_BACKEND" in result.stderr


@given(
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=6),
    weight_shape=st.lists(st.integers(0, 4), min_size=0, max_size=3),
    value=st.sampled_from([0.0, 1.5, -3.0, 1e6, -1e30, float("nan"), float("inf")]),
    padding=st.sampled_from(list(ts.PADDINGS) + ["circular", "bogus"]),
    active=st.booleans(),
    transpose=st.booleans(),
)
def test_fuzz_never_crashes(shape, weight_shape, value, padding, active, transpose):
    # Whatever the sizes and values: a result or one of the three documented exceptions.
    x = torch.randn(shape)
    if transpose and x.dim() >= 2:
        x = x.transpose(0, -1)
    weight = torch.full(weight_shape, value)
    try:
        out = ts.shift(x, weight, padding, active)
    except (ValueError, TypeError, RuntimeError) as error:
        assert str(error)
    else:
        assert out.shape[:2] == x.shape[:2] and torch.isfinite(weight).all()
