"""torchshift2: learnable per-channel shift layers (Grouped Shift, Active Shift, Sparse Shift Layer).

See SPEC.md / the docs for the exact contract.
"""

from . import functional, nn, reference
from ._spec import PADDINGS, PADDING_ALIASES
from .backend import BACKENDS, selected_backend, use_backend
from .functional import shift, shift1d, shift2d, shift3d, shift_
from .nn import Shift1d, Shift2d, Shift3d

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "PADDINGS",
    "PADDING_ALIASES",
    "Shift1d",
    "Shift2d",
    "Shift3d",
    "functional",
    "nn",
    "reference",
    "selected_backend",
    "shift",
    "shift_",
    "shift1d",
    "shift2d",
    "shift3d",
    "use_backend",
]
