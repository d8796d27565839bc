"""Channel grouping for inference: each shift layer's moving channels made adjacent.

After sparse (SSL) training most channels of a shift layer do not move. In-place inference
(:func:`torchshift2.shift_`, ``inplace=True`` layers) only touches the moving channels, but in
channels-last memory the channels of one position share cache lines, so moving channels spread
over all of them make the in-place shift touch most of the tensor. :func:`group_channels`
permutes each layer's channels so that the moving channels come first, those with equal shifts
next to each other, and folds the permutation into the weights around it: the output channels
of the producing conv (and the per-channel ops between it and the shift: BatchNorm,
activations, depthwise convs, pooling), the shift's own rows, and the input channels of the
consuming conv(s). The model computes the same function; only the order of the channels in
between changes.

The analysis runs on a :mod:`torch.fx` trace, with the shift layers as leaves. A layer is
grouped only when every tensor that carries its channels, followed backwards to the convs that
make them and forwards to the convs that read them, passes through ops that provably act on
each channel separately; otherwise it is left alone and the report says why.
"""

from __future__ import annotations

import copy
import dataclasses
import operator
import warnings
from collections import Counter, deque
from typing import Dict, List, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn.functional as TF
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

from . import nn as shift_nn
from .convert import DepthwiseShift

__all__ = ["ORDERS", "GroupingReport", "LayerGrouping", "group_channels", "grouping_permutation"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

# Modules that act on each channel separately and hold no per-channel state.
_STATELESS_MODULES = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid,
    nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Hardtanh, nn.Mish, nn.Softplus,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)
# Per-channel only in eval mode: in training a dropout mask is drawn in memory order.
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_INSTANCENORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_MAXPOOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
             nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)

# Functions / methods of one tensor whose other arguments are not tensors.
_UNARY_FUNCTIONS = {
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.abs, torch.neg, torch.clamp,
    torch.clip, torch.exp, torch.square, torch.sqrt, torch.erf,
    TF.relu, TF.relu6, TF.gelu, TF.silu, TF.hardswish, TF.hardsigmoid, TF.sigmoid, TF.tanh,
    TF.leaky_relu, TF.elu, TF.hardtanh, TF.mish, TF.softplus, TF.dropout, TF.dropout1d,
    TF.dropout2d, TF.dropout3d, TF.avg_pool1d, TF.avg_pool2d, TF.avg_pool3d, TF.max_pool1d,
    TF.max_pool2d, TF.max_pool3d, TF.adaptive_avg_pool1d, TF.adaptive_avg_pool2d,
    TF.adaptive_avg_pool3d, TF.adaptive_max_pool1d, TF.adaptive_max_pool2d,
    TF.adaptive_max_pool3d, operator.neg, operator.pos, operator.abs,
}
_UNARY_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "abs", "neg", "clamp", "clamp_",
    "clip", "clip_", "exp", "square", "sqrt", "contiguous", "float", "double", "half",
    "bfloat16", "hardtanh", "hardtanh_",
}
# Elementwise functions / methods of several operands: each tensor operand must carry the
# same permuted channels, in the same shape (no broadcasting across channels).
_ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div,
    torch.maximum, torch.minimum,
}
_ELEMENTWISE_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
# The dropout functions take ``training`` as their third argument (default True).
_FUNCTIONAL_DROPOUTS = {TF.dropout, TF.dropout1d, TF.dropout2d, TF.dropout3d}


@dataclasses.dataclass
class LayerGrouping:
    """What :func:`group_channels` did to one shift layer.

    Attributes:
        name: qualified name of the layer in the model (a ``Shift1d/2d/3d`` or a
            :class:`~torchshift2.DepthwiseShift`).
        grouped: whether its channels were reordered.
        reason: why not (``None`` when grouped).
        channels: its number of channels C.
        moving: how many of them move (rounded shift non-zero; for Active Shift, shift
            non-zero).
        permutation: ``(C,)`` int64, new channel ``i`` is old channel ``permutation[i]``
            (``None`` when not grouped).
        producers: modules whose output channels were permuted (the convs making the channels).
        consumers: modules whose input channels were permuted (the convs reading them).
        per_channel: modules between them whose per-channel parameters and buffers were
            permuted (BatchNorm, PReLU, depthwise convs; the shift layer itself).
    """

    name: str
    grouped: bool
    reason: Optional[str]
    channels: int
    moving: int
    permutation: Optional[Tensor] = None
    producers: Tuple[str, ...] = ()
    consumers: Tuple[str, ...] = ()
    per_channel: Tuple[str, ...] = ()


@dataclasses.dataclass
class GroupingReport:
    """The outcome of :func:`group_channels`, one :class:`LayerGrouping` per shift layer.

    Attributes:
        layers: the shift layers in the order the model runs them.
        max_abs_diff: largest absolute difference between the outputs of the grouped and the
            original model on ``example_input`` (``None`` with ``check=False``). Zero up to
            the rounding of the consumers' sums, see :func:`group_channels`.
    """

    layers: List[LayerGrouping]
    max_abs_diff: Optional[float] = None

    @property
    def grouped(self) -> List[str]:
        """Names of the grouped layers."""
        return [layer.name for layer in self.layers if layer.grouped]

    @property
    def skipped(self) -> Dict[str, str]:
        """``{name: reason}`` of the layers left alone."""
        return {layer.name: layer.reason for layer in self.layers if not layer.grouped}

    def __str__(self) -> str:
        lines = [f"{len(self.grouped)} of {len(self.layers)} shift layers grouped"]
        for layer in self.layers:
            state = "grouped" if layer.grouped else f"skipped: {layer.reason}"
            lines.append(f"  {layer.name} ({layer.moving}/{layer.channels} moving): {state}")
        if self.max_abs_diff is not None:
            lines.append(f"  max |grouped - original| on example_input: {self.max_abs_diff:.3g}")
        return "\n".join(lines)


ORDERS = ("moving", "shift")
"""The channel orders of :func:`group_channels` (see :func:`grouping_permutation`)."""


def grouping_permutation(weight: Tensor, active: bool = False, order: str = "moving") -> Tensor:
    """The channel order :func:`group_channels` gives a shift layer with shifts ``weight``.

    The moving channels first, then those that do not move. ``order="moving"`` keeps the
    relative order of the channels within each of the two parts; ``order="shift"`` also sorts
    the moving channels by their rounded shift (lexicographically over the spatial dims), so
    that equal shifts are adjacent. Both sorts are stable.

    Args:
        weight: ``(C, D)`` shifts of the layer.
        active: ``True`` for an Active Shift layer: a channel moves when its shift is
            non-zero (SSL: when its rounded shift is).
        order: ``"moving"`` or ``"shift"``.

    Returns:
        ``(C,)`` int64 tensor: new channel ``i`` is old channel ``result[i]``.

    Example:
        >>> import torch
        >>> from torchshift2.grouping import grouping_permutation
        >>> w = torch.tensor([[0.2, 0.0], [1.0, -1.0], [0.0, 0.4], [-2.0, 0.0], [1.1, -0.7]])
        >>> grouping_permutation(w)
        tensor([1, 3, 4, 0, 2])
        >>> grouping_permutation(w, order="shift")
        tensor([3, 1, 4, 0, 2])
    """
    if not isinstance(weight, Tensor) or weight.dim() != 2 or not weight.dtype.is_floating_point:
        raise ValueError(
            "weight: expected a floating (C, D) tensor, got "
            + (f"{weight.dtype} of shape {tuple(weight.shape)}" if isinstance(weight, Tensor)
               else type(weight).__name__)
        )
    if order not in ORDERS:
        raise ValueError(f"order: expected one of {ORDERS}, got {order!r}")
    rounded = torch.round(weight.detach().to("cpu", torch.float64))
    moving = (weight.detach().cpu() != 0 if active else rounded != 0).any(1).tolist()
    if order == "moving":
        key = lambda c: not moving[c]  # noqa: E731
    else:
        shifts = [tuple(row) for row in rounded.tolist()]
        key = lambda c: (not moving[c], shifts[c])  # noqa: E731
    return torch.tensor(sorted(range(weight.shape[0]), key=key), dtype=torch.int64)


def group_channels(
    model: nn.Module,
    example_input,
    *,
    order: str = "moving",
    check: bool = True,
    warn: bool = True,
) -> Tuple[fx.GraphModule, GroupingReport]:
    """Reorder the channels of each shift layer of ``model``: its moving channels adjacent.

    For inference after sparse (SSL) training: in channels-last memory an in-place shift
    (``inplace=True`` layers, :func:`torchshift2.shift_`) of a layer whose few moving
    channels are spread over the channel dim touches nearly every cache line; grouped, it
    touches those of a contiguous block of channels. Per layer, the channels are reordered by
    :func:`grouping_permutation` (moving first; with ``order="shift"`` equal rounded shifts
    adjacent too), and the permutation is folded into the weights: the output channels of the
    conv(s) producing the layer's input, the per-channel ops on the way (BatchNorm, PReLU,
    depthwise convs; any activation, pooling, dropout in eval mode, elementwise ops with
    scalars or with other tensors of the same permuted channels, e.g. a residual add whose
    both operands are permuted), the layer's own shift rows, and the input channels of the
    conv(s) reading its output. Producers and consumers are ``nn.Conv1d/2d/3d`` and
    ``nn.ConvTranspose1d/2d/3d`` with ``groups == 1``.

    A layer is skipped, with the reason in the report, when any tensor carrying its channels
    comes from or reaches anything else (the model input or output, a ``Linear``, a
    concatenation, a reshape, a grouped conv, another shift layer, a module in training mode,
    a module called more than once or whose parameters are shared, channels already permuted
    for another layer). A warning lists the skipped layers. The analysis runs on a
    :mod:`torch.fx` trace of ``model`` (shift layers as leaves); a model that cannot be traced
    raises.

    Exactness: the producers, the per-channel ops and the shift compute every channel as
    before, bit for bit, only stored in the new order. A consumer conv sums over its input
    channels in the new order, which rounds differently: its output differs from the
    original by float rounding (a few ulps of the sum), not bitwise.

    Args:
        model: the model; not modified (the result is built on a deep copy). Should be in
            eval mode (modules in training mode block the layers whose channels they carry).
        example_input: a tensor, or a tuple of positional arguments, on which ``model`` runs;
            used to check the channel dim of every tensor involved and, with ``check``, to
            compare the grouped model with the original.
        order: ``"moving"``: the moving channels first, each part in its old order;
            ``"shift"``: the moving channels also sorted by rounded shift. See
            :func:`grouping_permutation`. ``"moving"`` is enough for the in-place kernel, and
            keeps the out-of-place channels-last forward as fast as before (sorting dense
            layers by shift slowed it down on some CPUs, see the docs).
        check: run the grouped model on ``example_input`` and record in the report the
            largest difference to the original outputs.
        warn: warn (once per call) when some shift layer was skipped.

    Returns:
        ``(grouped, report)``: a :class:`torch.fx.GraphModule` computing ``model``'s function
        (the traced graph, with ``model``'s submodules copied and permuted), and a
        :class:`GroupingReport`.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: an unknown ``order``.
        RuntimeError: ``model`` cannot be traced by :mod:`torch.fx`, or does not run on
            ``example_input``.

    Example:
        >>> import torch, torchshift2 as ts
        >>> model = torch.nn.Sequential(
        ...     torch.nn.Conv2d(3, 8, 1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        ...     ts.DepthwiseShift(ts.Shift2d(8, inplace=True)), torch.nn.Conv2d(8, 4, 1)).eval()
        >>> with torch.no_grad():
        ...     _ = model[3].shift.weight.zero_()
        ...     model[3].shift.weight[[1, 4, 6]] = torch.tensor([[1., 0.], [0., -2.], [1., 0.]])
        >>> x = torch.randn(2, 3, 6, 6)
        >>> grouped, report = ts.group_channels(model, x)
        >>> report.grouped, report.layers[0].permutation.tolist()
        (['3'], [1, 4, 6, 0, 2, 3, 5, 7])
        >>> grouped.get_submodule("3.shift").weight[:4].tolist()
        [[1.0, 0.0], [0.0, -2.0], [1.0, 0.0], [0.0, 0.0]]
        >>> with torch.no_grad():
        ...     torch.testing.assert_close(grouped(x), model(x))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if order not in ORDERS:
        raise ValueError(f"order: expected one of {ORDERS}, got {order!r}")
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    copied = copy.deepcopy(model)
    try:
        graph = _Tracer().trace(copied)
    except Exception as error:
        raise RuntimeError(
            f"model: torch.fx could not trace {type(model).__name__} ({type(error).__name__}: "
            f"{error}); group_channels needs a symbolically traceable forward"
        ) from error
    module = fx.GraphModule(copied, graph, type(model).__name__)
    module.training = model.training
    with torch.no_grad():
        try:
            expected = ShapeProp(module).propagate(*_cloned(args))
        except Exception as error:
            raise RuntimeError(
                f"example_input: the traced model does not run on it ({type(error).__name__}: "
                f"{error})"
            ) from error
    layers = _Analysis(module, order).run()
    report = GroupingReport(layers)
    if check:
        with torch.no_grad():
            report.max_abs_diff = _max_abs_diff(module(*_cloned(args)), expected)
    if warn and report.skipped:
        warnings.warn(
            f"group_channels: {len(report.skipped)} of {len(layers)} shift layers were not "
            f"grouped: " + "; ".join(f"{k}: {v}" for k, v in report.skipped.items()),
            stacklevel=2,
        )
    return module, report


class _Tracer(fx.Tracer):
    """Shift layers are leaves: their forward checks its arguments in Python."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (shift_nn._ShiftBase, DepthwiseShift)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _cloned(args):
    # In-place shift layers may modify the model input: never hand over the caller's tensors.
    return tuple(a.clone() if isinstance(a, Tensor) else a for a in args)


def _max_abs_diff(result, expected) -> float:
    if isinstance(result, Tensor):
        if result.shape != expected.shape:
            return float("inf")
        if result.numel() == 0:
            return 0.0
        return (result.double() - expected.double()).abs().max().item()
    if isinstance(result, (tuple, list)):
        return max([_max_abs_diff(r, e) for r, e in zip(result, expected)], default=0.0)
    if isinstance(result, dict):
        return max([_max_abs_diff(result[k], expected[k]) for k in result], default=0.0)
    return 0.0


class _Skip(Exception):
    """Raised while exploring a layer's channels: the reason it cannot be grouped."""


@dataclasses.dataclass
class _Plan:
    """What grouping one layer takes: the graph values carrying its channels, the modules by
    role, the ``(module, attribute, dim)`` tensors to permute, the ``(module, dim)`` claims."""

    values: set
    producers: List[str]
    consumers: List[str]
    per_channel: List[str]
    edits: List[Tuple[str, str, int]]
    claims: List[Tuple[str, str]]


class _Analysis:
    def __init__(self, module: fx.GraphModule, order: str) -> None:
        self.module = module
        self.order = order
        self.modules = dict(module.named_modules())
        self.calls = Counter(n.target for n in module.graph.nodes if n.op == "call_module")
        self.positions = {n.target: i for i, n in enumerate(module.graph.nodes)
                          if n.op == "call_module"}
        self.attrs = [n.target for n in module.graph.nodes if n.op == "get_attr"]
        self.owners: Dict[int, List[str]] = {}
        for name, tensor in list(module.named_parameters(remove_duplicate=False)) + list(
            module.named_buffers(remove_duplicate=False)
        ):
            self.owners.setdefault(id(tensor), []).append(name)
        self.claimed_values: Dict[fx.Node, str] = {}
        self.claimed_dims: Dict[Tuple[str, str], str] = {}

    def run(self) -> List[LayerGrouping]:
        results = []
        for node in self.module.graph.nodes:
            if node.op != "call_module":
                continue
            layer = self.modules[node.target]
            shift = layer.shift if isinstance(layer, DepthwiseShift) else layer
            if not isinstance(layer, (shift_nn._ShiftBase, DepthwiseShift)):
                continue
            results.append(self._layer(node, layer, shift))
        return results

    def _layer(self, node: fx.Node, layer: nn.Module, shift: nn.Module) -> LayerGrouping:
        name = node.target
        weight = getattr(shift, "weight", None)
        if not isinstance(shift, shift_nn._ShiftNd) or not isinstance(weight, Tensor):
            return LayerGrouping(name, False, f"{type(shift).__name__} is not a float shift "
                                 "layer (Shift1d/2d/3d)", 0, 0)
        weight = weight.detach()
        channels = weight.shape[0]
        active = shift.active_flag
        moving = int((weight != 0 if active else torch.round(weight) != 0).any(1).sum())
        try:
            if not bool(torch.isfinite(weight).all()):
                raise _Skip("its shifts are not all finite")
            plan = self._explore(node, layer, shift, channels)
        except _Skip as skip:
            return LayerGrouping(name, False, str(skip), channels, moving)
        perm = grouping_permutation(weight, active, self.order)
        for value in plan.values:
            self.claimed_values[value] = name
        for claim in plan.claims:
            self.claimed_dims[claim] = name
        with torch.no_grad():
            for owner, attr, dim in plan.edits:
                tensor = getattr(self.modules[owner], attr)
                tensor.copy_(tensor.index_select(dim, perm.to(tensor.device)))
        in_order = lambda names: tuple(sorted(names, key=self._position))  # noqa: E731
        return LayerGrouping(name, True, None, channels, moving, perm, in_order(plan.producers),
                             in_order(plan.consumers), in_order(plan.per_channel))

    def _position(self, name: str) -> int:
        """Where module ``name`` (or the DepthwiseShift around it) runs in the graph."""
        return self.positions.get(name, self.positions.get(name.rsplit(".", 1)[0], -1))

    # -- exploring the tensors that carry the layer's channels ------------------------------

    def _explore(self, node, layer, shift, channels) -> _Plan:
        plan = _Plan(set(), [], [], [], [], [])
        shift_name = node.target + ".shift" if isinstance(layer, DepthwiseShift) else node.target
        self._own(plan, node.target, "layer")
        self._edit(plan, shift_name, shift, "weight", 0)
        plan.per_channel.append(shift_name)
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
            raise _Skip("it is not called with one tensor argument")
        outputs = self._shift_outputs(node, isinstance(layer, DepthwiseShift))
        # (tensor, how it was reached): its definition must keep the channels apart, and so
        # must every op reading it.
        todo = deque([(node.args[0], "come from")] + [(out, "reach") for out in outputs])
        explained = {node}
        while todo:
            value, verb = todo.popleft()
            if value in plan.values:
                continue
            plan.values.add(value)
            if value not in outputs:
                todo.extend((v, "come from") for v in self._backward(plan, value, verb))
            self._check_value(value, channels)
            for user in value.users:
                if user not in explained:
                    explained.add(user)
                    todo.extend((v, "reach") for v in self._forward(plan, user))
        return plan

    def _shift_outputs(self, node, wrapped: bool) -> List[fx.Node]:
        if wrapped:
            return [node]
        outputs = []
        for user in node.users:
            index = user.args[1] if user.target is operator.getitem else None
            if index == 0:
                outputs.append(user)
            elif index != 1:  # the loss is a sum over all channels, whatever their order
                raise _Skip(f"its (output, loss) tuple is used whole by {self._describe(user)}")
        return outputs

    def _check_value(self, value: fx.Node, channels: int) -> None:
        if value in self.claimed_values:
            raise _Skip(f"its channels are already permuted for '{self.claimed_values[value]}'")
        meta = value.meta.get("tensor_meta")
        shape = getattr(meta, "shape", None)
        if shape is None or len(shape) < 2 or shape[1] != channels:
            raise _Skip(f"{self._describe(value)} does not give a tensor with {channels} "
                        f"channels in dim 1 (got {'no tensor' if shape is None else tuple(shape)})")

    def _backward(self, plan, value: fx.Node, verb: str) -> List[fx.Node]:
        """Account for how ``value`` is made; return the tensors whose channels it keeps."""
        if value.op == "placeholder":
            raise _Skip(f"its channels come from the model input '{value.target}' (no conv to "
                        "permute)")
        if value.op == "call_module":
            module = self.modules[value.target]
            role = self._conv_role(module)
            if role is not None:
                self._single_input(value)
                self._own(plan, value.target, "out")
                self._edit(plan, value.target, module, "weight", 1 if role == "transpose" else 0)
                self._edit(plan, value.target, module, "bias", 0)
                plan.producers.append(value.target)
                return []
        return self._per_channel(plan, value, verb)

    def _forward(self, plan, user: fx.Node) -> List[fx.Node]:
        """Account for ``user`` reading permuted channels; return what it makes of them (its
        output, whose definition is checked in turn), or nothing for a consumer conv."""
        if user.op == "output":
            raise _Skip("its channels reach the model output (permuting them would change it)")
        if user.op == "call_module":
            module = self.modules[user.target]
            role = self._conv_role(module)
            if role is not None:
                self._single_input(user)
                self._own(plan, user.target, "in")
                self._edit(plan, user.target, module, "weight", 0 if role == "transpose" else 1)
                plan.consumers.append(user.target)
                return []
        return [user]

    def _per_channel(self, plan, node: fx.Node, verb: str) -> List[fx.Node]:
        """``node`` must act on each channel separately: own its per-channel state and return
        its tensor operands, which then carry the same channels."""
        what = self._describe(node)
        tensors = [a for a in [*node.args, *node.kwargs.values()] if isinstance(a, fx.Node)]
        if any(not isinstance(a, (fx.Node, int, float, bool, type(None), torch.dtype,
                                  torch.memory_format, tuple, list, str))
               for a in [*node.args, *node.kwargs.values()]):
            raise _Skip(f"its channels {verb} {what}, with arguments that are not understood")
        if any(isinstance(a, (tuple, list)) and any(isinstance(b, fx.Node) for b in a)
               for a in [*node.args, *node.kwargs.values()]):
            raise _Skip(f"its channels {verb} {what}, which takes a sequence of tensors "
                        "(e.g. a concatenation)")
        if node.op == "call_module":
            module = self.modules[node.target]
            self._module_per_channel(plan, node, module, verb)
            expected = 1
        elif node.op == "call_function" and node.target in _UNARY_FUNCTIONS:
            if node.target in _FUNCTIONAL_DROPOUTS and _argument(node, 2, "training", True):
                raise _Skip(f"its channels {verb} {what} in training mode (its mask is drawn "
                            "in memory order)")
            if (node.target in (TF.max_pool1d, TF.max_pool2d, TF.max_pool3d)
                    and _argument(node, 6, "return_indices", False)):
                raise _Skip(f"its channels {verb} {what}, which returns indices")
            expected = 1
        elif node.op == "call_method" and node.target in _UNARY_METHODS:
            expected = 1
        elif (node.op == "call_function" and node.target in _ELEMENTWISE_FUNCTIONS) or (
                node.op == "call_method" and node.target in _ELEMENTWISE_METHODS):
            expected = len(tensors)
            shape = node.meta.get("tensor_meta")
            for operand in tensors:
                meta = operand.meta.get("tensor_meta")
                if getattr(meta, "shape", None) != getattr(shape, "shape", 0):
                    raise _Skip(f"its channels {verb} {what}, whose operands have different "
                                "shapes (broadcasting)")
        else:
            raise _Skip(f"its channels {verb} {what}, which is not a conv with groups == 1 or "
                        "an op known to act on each channel separately")
        if len(tensors) != expected or (expected == 1 and node.args[:1] != (tensors[0],)):
            raise _Skip(f"its channels {verb} {what}, with tensor arguments besides its input")
        return tensors

    def _module_per_channel(self, plan, node: fx.Node, module: nn.Module, verb: str) -> None:
        what = self._describe(node)
        if isinstance(module, (shift_nn._ShiftBase, DepthwiseShift)):
            raise _Skip(f"its channels {verb} the shift layer '{node.target}' with no conv "
                        "between them")
        if isinstance(module, _STATELESS_MODULES):
            return
        if isinstance(module, _MAXPOOLS):
            if module.return_indices:
                raise _Skip(f"its channels {verb} {what}, which returns indices")
            return
        if isinstance(module, _DROPOUTS):
            if module.training:
                raise _Skip(f"{what} is in training mode (its mask is drawn in memory order); "
                            "group an eval() model")
            return
        if isinstance(module, _BATCHNORMS + _INSTANCENORMS):
            if module.training and isinstance(module, _BATCHNORMS):
                raise _Skip(f"{what} is in training mode; group an eval() model")
            self._own(plan, node.target, "layer")
            for attr in ("weight", "bias", "running_mean", "running_var"):
                self._edit(plan, node.target, module, attr, 0)
        elif isinstance(module, nn.PReLU):
            self._own(plan, node.target, "layer")
            if module.weight.numel() != 1:
                self._edit(plan, node.target, module, "weight", 0)
        elif (type(module) in _CONVS and module.groups == module.in_channels
              == module.out_channels):
            self._own(plan, node.target, "layer")
            self._edit(plan, node.target, module, "weight", 0)
            self._edit(plan, node.target, module, "bias", 0)
        elif type(module) in _CONVS + _CONV_TRANSPOSES:
            raise _Skip(f"its channels {verb} {what}, a grouped conv (groups={module.groups}); "
                        "only groups == 1 and depthwise convs are permuted")
        else:
            raise _Skip(f"its channels {verb} {what}, which is not a conv with groups == 1 or "
                        "a module known to act on each channel separately")
        plan.per_channel.append(node.target)

    # -- bookkeeping ------------------------------------------------------------------------

    def _conv_role(self, module: nn.Module) -> Optional[str]:
        if type(module) in _CONVS and module.groups == 1:
            return "conv"
        if type(module) in _CONV_TRANSPOSES and module.groups == 1:
            return "transpose"
        return None

    def _single_input(self, node: fx.Node) -> None:
        if len(node.args) != 1 or node.kwargs:
            raise _Skip(f"{self._describe(node)} is called with more than one argument")

    def _own(self, plan, name: str, dim: str) -> None:
        """Claim channel dim ``dim`` (``"in"``, ``"out"`` or ``"layer"``: both) of module
        ``name`` for this layer."""
        if self.calls[name] != 1:
            raise _Skip(f"'{name}' is called {self.calls[name]} times (one permutation cannot "
                        "serve every call)")
        for attr in self.attrs:
            if attr == name or attr.startswith(name + "."):
                raise _Skip(f"the graph reads '{attr}' directly")
        for key in ((name, "in"), (name, "out")) if dim == "layer" else ((name, dim),):
            if key in self.claimed_dims:
                raise _Skip(f"'{name}' is already permuted for '{self.claimed_dims[key]}'")
            plan.claims.append(key)

    def _edit(self, plan, name: str, module: nn.Module, attr: str, dim: int) -> None:
        tensor = getattr(module, attr, None)
        if tensor is None:
            return
        names = self.owners.get(id(tensor), [])
        if len(names) > 1:
            raise _Skip(f"'{names[0]}' is shared with '{names[1]}'")
        plan.edits.append((name, attr, dim))

    def _describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"'{node.target}' ({type(self.modules[node.target]).__name__})"
        if node.op == "call_function":
            target = node.target
            return f"{getattr(target, '__module__', None) or 'function'}." \
                   f"{getattr(target, '__name__', str(target))}"
        if node.op == "call_method":
            return f"the method .{node.target}()"
        if node.op == "get_attr":
            return f"the attribute '{node.target}'"
        if node.op == "placeholder":
            return f"the model input '{node.target}'"
        return "the model output"


def _argument(node: fx.Node, index: int, name: str, default):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)
