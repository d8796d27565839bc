"""torchshift2: learnable per-channel shift layers (Grouped Shift, Active Shift, Sparse Shift Layer).

See SPEC.md / the docs for the exact contract.
"""  # noqa: E501 (the first line is the package description, see pyproject.toml)

from . import functional, nn, reference
from ._spec import PADDINGS, PADDING_ALIASES
from .backends import BACKENDS, selected_backend, use_backend
from .functional import shift, shift1d, shift2d, shift3d, shift_
from .nn import GroupedShift1d, GroupedShift2d, GroupedShift3d, Shift1d, Shift2d, Shift3d
from . import convert, quantized
from .convert import ConversionSummary, DepthwiseShift, replace_depthwise, sparsity_loss
from .grouping import group_channels
from .quantized import QuantizedShift1d, QuantizedShift2d, QuantizedShift3d, quant_mapping

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "ConversionSummary",
    "DepthwiseShift",
    "GroupedShift1d",
    "GroupedShift2d",
    "GroupedShift3d",
    "PADDINGS",
    "PADDING_ALIASES",
    "QuantizedShift1d",
    "QuantizedShift2d",
    "QuantizedShift3d",
    "Shift1d",
    "Shift2d",
    "Shift3d",
    "convert",
    "functional",
    "group_channels",
    "nn",
    "quant_mapping",
    "quantized",
    "reference",
    "replace_depthwise",
    "selected_backend",
    "shift",
    "shift_",
    "shift1d",
    "shift2d",
    "shift3d",
    "sparsity_loss",
    "use_backend",
]
