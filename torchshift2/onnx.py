"""ONNX export of ``torchshift2::shift``: an ONNX Script translation for ``torch.onnx.export``.

``torch.onnx.export(..., dynamo=True)`` exports a model with :func:`torch.export.export` and
then translates each node of the graph with an ONNX Script function; the custom op
``torchshift2::shift`` has none among PyTorch's, so pass this module's
:data:`translation_table`::

    import torch, torchshift2 as ts, torchshift2.onnx

    program = torch.onnx.export(model, (x,), dynamo=True,
                                custom_translation_table=torchshift2.onnx.translation_table)

The exporter offers no public registry that a library could fill at import time (its
registry is rebuilt from PyTorch's and ONNX Script's built-in tables at every export), so the
table is the one argument to add. Importing this module needs neither ``onnx`` nor
``onnxscript``: they are imported when an export runs (``pip install 'torchshift2[onnx]'``).

How the translation computes SPEC §2/§3 with standard ONNX ops (opset 18, default domain):

- The shifts come from the weight in the graph: ``Round`` (half to even, as ``torch.round``)
  for SSL, ``Floor`` and the fraction ``weight - floor`` for active, in the weight's dtype as
  the reference does. The weight may be an initializer or any other graph value.
- Each shift is reduced in float64 before it becomes an index, as the reference's
  ``_reduce_shift``: clamped to ``±(L + 2)`` for zeros / border, ``Mod(fmod=1)`` by the period
  for periodic (``L``), reflect (``2L - 2``) and symmetric (``2L``); ``fmod`` is exact, so
  shifts like ``1e30`` stay exact and every later int64 operation is small.
- Per spatial dim ``d``, the output positions are ``Range(before, L - after)`` and the
  source positions ``k = position - shift (- corner)``; the padding becomes index arithmetic
  on ``k``: zeros a validity mask plus a clamp, border a clamp, periodic ``Mod``, reflect and
  symmetric a ``Mod`` folded back with ``Where``. Every index lies in ``[0, L)`` whatever the
  weight holds, so the gather never reads out of range.
- The indices of all dims and the channel read (``o // k`` for a channel multiplier ``k``,
  taken from the shapes) combine into one flat index per output element of one sample,
  which one ``GatherElements`` on the input viewed as ``(N, C * L1 * ... * LD)`` applies to
  every sample; with zeros padding the reads outside point at a zero put before each sample.
  With static sizes and an initializer weight all of the index arithmetic folds into
  constants at export (or when ONNX Runtime loads the model).
- Active Shift gathers the ``2^D`` corners and sums them weighted by the products of
  ``frac`` / ``1 - frac``, in float32 (float64 for float64 inputs), corner by corner in the
  reference's order; the sum is cast back to the input's dtype.

All sizes are read from the input's shape in the graph, so dynamic batch and spatial sizes
(``dynamic_shapes``) work; ``crop`` is part of the op's arguments and therefore fixed.
SSL gathers work for every dtype; active needs a floating input (as :func:`torchshift2.shift`).
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from . import _spec

__all__ = ["OPSET", "shift_translation", "translation_table"]

#: The ONNX opset (default domain) the translation is written in; the exporter's model
#: opset (``opset_version``, 18 or later) is what the file declares.
OPSET = 18


def _require_onnxscript():
    try:
        import onnx  # noqa: F401  (onnxscript needs it; a clear message beats its ImportError)
        from onnxscript import opset18
    except ImportError as error:
        raise ImportError(
            "torchshift2.onnx: exporting to ONNX needs the packages 'onnx' and 'onnxscript' "
            f"(pip install 'torchshift2[onnx]'); importing them failed: {error}"
        ) from None
    return opset18


_INT64, _FLOAT, _DOUBLE, _FLOAT16, _BFLOAT16 = 7, 1, 11, 10, 16  # onnx.TensorProto enums


def _dtype_code(value) -> int:
    dtype = getattr(value, "dtype", None)
    return -1 if dtype is None else int(dtype)


class _Shift:
    """The graph of one shift: the input's sizes, read once, and the per-dim index algebra.

    Python numbers and lists passed to ``op`` become constants that the exporter shares
    across the whole model, which keeps the graph small.
    """

    def __init__(self, op, input, weight, padding: str, crop: List[int]):
        self.op = op
        self.padding = padding
        self.crop = crop
        self.ndim = len(crop) // 2
        # 0-d sizes; one Shape(start, end) each, which the exporter's optimizer folds into a
        # constant when that dim is static even if others (the batch) are dynamic
        self.batch, self.channels, *self.lengths = [
            op.Squeeze(op.Shape(input, start=i, end=i + 1), [0]) for i in range(2 + self.ndim)
        ]
        self.rows = op.Squeeze(op.Shape(weight, start=0, end=1), [0])
        self.out_lengths = [
            op.Sub(length, crop[2 * d] + crop[2 * d + 1]) for d, length in enumerate(self.lengths)
        ]

    def shape(self, *sizes):
        """A shape for Reshape / Expand from 0-d sizes and Python ints."""
        op = self.op
        return op.Concat(*[op.Constant(value_ints=[s]) if isinstance(s, int) else
                           op.Unsqueeze(s, [0]) for s in sizes], axis=0)

    def period(self, length):
        """Period of the source index of periodic / reflect / symmetric, at least 1 (a
        length-1 reflect has period 0 in SPEC §2: every read is index 0, anything mod 1)."""
        op = self.op
        if self.padding == "periodic":
            period = length
        elif self.padding == "reflect":
            period = op.Sub(op.Mul(length, 2), 2)
        else:
            period = op.Mul(length, 2)
        return op.Max(period, 1)

    def reduce(self, shifts, length, period):
        """Integer-valued float64 shifts ``(rows,)`` -> equivalent small int64 shifts.

        Mirrors :func:`torchshift2.reference._reduce_shift`; fmod keeps a huge shift exact,
        and its sign does not matter (the source index is reduced after the subtraction).
        """
        op = self.op
        if period is None:  # zeros, border: anything beyond L + 2 reads the same
            bound = op.Cast(op.Add(length, 2), to=_DOUBLE)
            reduced = op.Max(op.Min(shifts, bound), op.Neg(bound))
        else:
            reduced = op.Mod(shifts, op.Cast(period, to=_DOUBLE), fmod=1)
        return op.Cast(reduced, to=_INT64)

    def source_index(self, position, length, period):
        """SPEC §2 ``P(k)`` for int64 positions ``k``: ``(index in [0, L), valid or None)``."""
        op = self.op
        if period is None:
            index = op.Max(op.Min(position, op.Sub(length, 1)), 0)
            # in range exactly where the clamp changed nothing
            return index, op.Equal(index, position) if self.padding == "zeros" else None
        folded = op.Mod(position, period)  # int64 Mod (fmod=0): the mathematical modulo, >= 0
        if self.padding == "periodic":
            return folded, None
        last = period if self.padding == "reflect" else op.Sub(period, 1)
        return op.Where(op.Less(folded, length), folded, op.Sub(last, folded)), None

    def flat_index(self, shifts, corners: bool):
        """Where each output element of one sample reads in the input viewed as ``(N, C*P)``.

        ``shifts`` is the integer-valued float64 ``(rows, D)`` shift; output row ``o`` at
        position ``i`` reads ``V(o // k, i - shift[o] - a)`` (SPEC §2/§3) for the corner
        offsets ``a``: none for SSL, ``{0, 1}^D`` with ``corners`` (active). Zeros padding
        adds 1 to every index and sends the reads outside to 0, where the caller puts a zero.

        Returns the int64 indices as ``(1, M)``, ``M = rows * prod(L_out)``, or with
        ``corners`` ``(1, 2^D * M)``: corner ``(a_1, ..., a_D)`` is block ``a_1 ... a_D`` in
        binary, the reference's order.
        """
        op = self.op
        ndim = self.ndim
        lead = ndim if corners else 0  # layout (2,) * lead + (rows,) + L_out
        rank = lead + 1 + ndim
        multiplier = op.Max(op.Div(self.rows, op.Max(self.channels, 1)), 1)
        # Output row o reads input channel o // multiplier: the leading digit of the index.
        channel = op.Div(op.Range(0, self.rows, 1), multiplier)
        flat = op.Unsqueeze(channel, [i for i in range(rank) if i != lead])
        mask = None
        for d, length in enumerate(self.lengths):
            before = self.crop[2 * d]
            period = None if self.padding in ("zeros", "border") else self.period(length)
            positions = op.Range(before, op.Add(self.out_lengths[d], before), 1)
            shift = self.reduce(op.Gather(shifts, d, axis=1), length, period)
            source = op.Sub(op.Unsqueeze(positions, [0]), op.Unsqueeze(shift, [1]))  # (rows, Lout)
            own = [lead, lead + 1 + d]
            if corners:  # (2, rows, Lout): offset a_d = 0, 1 on this dim's corner axis
                source = op.Sub(source, op.Unsqueeze(op.Constant(value_ints=[0, 1]), [1, 2]))
                own = [d] + own
            index, valid = self.source_index(source, length, period)
            axes = [i for i in range(rank) if i not in own]
            if axes:
                index = op.Unsqueeze(index, axes)
                valid = None if valid is None else op.Unsqueeze(valid, axes)
            flat = op.Add(op.Mul(flat, length), index)  # Horner: the row-major flat index
            if valid is not None:
                mask = valid if mask is None else op.And(mask, valid)
        if mask is not None:
            flat = op.Where(mask, op.Add(flat, 1), 0)
        return op.Reshape(flat, [1, -1])

    def gather(self, samples, index):
        """``samples`` ``(N, C*P)`` read at ``index`` ``(1, M)``, for each sample: ``(N, M)``.

        GatherElements with the indices broadcast over the batch, not Gather on axis 1:
        ONNX Runtime's Gather copies each single-element block through its generic block
        copy, GatherElements reads elements in a typed loop, much faster for this pattern.
        """
        op = self.op
        return op.GatherElements(samples, op.Expand(index, self.shape(self.batch, 1)), axis=1)


def shift_translation(input, weight, padding: str, active: bool, crop: Sequence[int]):
    """ONNX Script translation of ``torchshift2::shift(input, weight, padding, active, crop)``.

    Called by the exporter with graph values for ``input`` / ``weight`` and Python values for
    the other arguments (``padding`` canonical, ``crop`` flat ``[b1, a1, ..., bD, aD]``); it
    builds standard ONNX ops (see the module docstring) and returns the output value.
    Put it in ``custom_translation_table`` through :data:`translation_table`.
    """
    if padding not in _spec.PADDINGS:
        raise ValueError(f"padding: expected one of {list(_spec.PADDINGS)}, got {padding!r}")
    crop = list(crop)
    if len(crop) % 2 or not 1 <= len(crop) // 2 <= 3 or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in crop
    ):
        raise TypeError(
            "crop: expected a flat list of 2, 4 or 6 Python ints [before1, after1, ...] (a "
            f"crop that depends on dynamic sizes cannot be exported), got {crop!r}"
        )
    weight_dtype = _dtype_code(weight)
    input_dtype = _dtype_code(input)
    if weight_dtype not in (_FLOAT, _DOUBLE, _FLOAT16, _BFLOAT16) or input_dtype < 0:
        raise TypeError(
            "weight: expected a floating dtype and input a known one in the exported graph, "
            f"got ONNX dtypes {weight_dtype} and {input_dtype}"
        )
    op = _require_onnxscript()
    g = _Shift(op, input, weight, padding, crop)
    ndim = g.ndim
    # ONNX's Round takes no bfloat16, ONNX Runtime's CPU Floor / Sub neither: a half or
    # bfloat16 weight is widened to float32, where they are exact, and the fraction rounded
    # back to its dtype (what torch's half / bfloat16 arithmetic does).
    reduced_weight = weight_dtype in (_FLOAT16, _BFLOAT16)
    wide = op.Cast(weight, to=_FLOAT) if reduced_weight else weight
    samples = op.Reshape(input, op.Concat(op.Shape(input, start=0, end=1),
                                          op.ReduceProd(op.Shape(input, start=1), keepdims=1),
                                          axis=0))
    opmath = _DOUBLE if input_dtype == _DOUBLE else _FLOAT
    if active and input_dtype != opmath:
        samples = op.Cast(samples, to=opmath)
    if padding == "zeros":
        # A zero before each sample, where flat_index sends the reads outside: no Where on
        # the output, which ONNX Runtime's CPU kernels lack for bool and bfloat16 (as Expand
        # for bfloat16: the column is made in float32 and cast).
        zeros = op.CastLike(op.Expand(op.Constant(value_float=0.0), g.shape(g.batch, 1)), samples)
        samples = op.Concat(zeros, samples, axis=1)
    output_shape = g.shape(g.batch, g.rows, *g.out_lengths)

    if not active:
        index = g.flat_index(op.Cast(op.Round(wide), to=_DOUBLE), corners=False)
        return op.Reshape(g.gather(samples, index), output_shape)

    floor = op.Floor(wide)
    frac = op.Sub(wide, floor)
    if reduced_weight:
        frac = op.Cast(frac, to=weight_dtype)
    frac = op.Cast(frac, to=opmath)
    # pairs[a, o, d] = (1 - frac, frac)[a][o, d]; coeff[a_1..a_D, o] = prod_d pairs[a_d, o, d],
    # multiplied in dim order as the reference does
    pairs = op.Concat(op.Unsqueeze(op.Sub(op.CastLike(1, frac), frac), [0]),
                      op.Unsqueeze(frac, [0]), axis=0)  # (2, rows, D)
    coeff = None
    for d in range(ndim):
        factor = op.Gather(pairs, d, axis=2)  # (2, rows)
        axes = [i for i in range(ndim) if i != d]
        factor = op.Unsqueeze(factor, axes) if axes else factor
        coeff = factor if coeff is None else op.Mul(coeff, factor)
    corners = 2 ** ndim
    coeff = op.Reshape(coeff, [corners, -1, 1])  # (2^D, rows, 1)

    index = g.flat_index(op.Cast(floor, to=_DOUBLE), corners=True)
    plane = g.out_lengths[0]
    for length in g.out_lengths[1:]:
        plane = op.Mul(plane, length)
    reads = op.Reshape(g.gather(samples, index),  # (N, 2^D, rows, plane)
                       g.shape(g.batch, corners, g.rows, plane))
    terms = op.Split(op.Mul(reads, coeff), axis=1, num_outputs=corners)
    out = terms[0]
    for term in terms[1:]:  # the reference's summation order
        out = op.Add(out, term)
    out = op.Reshape(out, output_shape)
    return out if input_dtype == opmath else op.Cast(out, to=input_dtype)


#: ``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``: maps the op
#: ``torch.ops.torchshift2.shift.default`` to :func:`shift_translation`.
translation_table: Dict[object, object] = {torch.ops.torchshift2.shift.default: shift_translation}
