"""The backends behind the ops: their interface, and which one runs.

Three implementations of :class:`Backend`: :mod:`.reference` (pure torch, the oracle),
:mod:`.cpp` (C++ CPU kernels) and :mod:`.triton` (CUDA). ``auto`` runs the C++ kernel on
CPU, the Triton kernels on CUDA and the reference anywhere else; ``TORCHSHIFT2_BACKEND``
and :func:`use_backend` choose another. The choice is read when an op runs (not when it is
traced), so it also applies inside ``torch.compile``'d models.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import warnings
from typing import Iterator, List, Optional, Protocol, Sequence, Tuple

import torch
from torch import Tensor

from .cpp import build as _cpp_build

__all__ = ["BACKENDS", "Backend", "cpu_cache_info", "empty_cpu_cache", "module_for", "resolve",
           "selected_backend", "use_backend"]


class Backend(Protocol):
    """What :mod:`torchshift2.ops` calls: each backend module implements these functions.

    Arguments arrive checked by :mod:`torchshift2.functional` (``padding`` a canonical name,
    ``crop`` flat ``[before1, after1, ...]``); the backends still refuse anything that
    could make a kernel read or write out of bounds, and non-finite weights on CPU
    (``ValueError``). Outputs are new tensors in the layout of
    :func:`torchshift2._spec.is_channels_last`, never aliasing an argument.
    """

    name: str

    def forward(self, input: Tensor, weight: Tensor, padding: str, active: bool,
                crop: List[int], fill: float) -> Tensor:
        """SPEC §3. ``fill``: the value of zeros padding (a quantized zero point)."""

    def backward(self, grad_output: Tensor, input: Tensor, weight: Tensor, padding: str,
                 active: bool, crop: List[int],
                 output_mask: Sequence[bool] = (True, True)) -> Tuple[Optional[Tensor],
                                                                     Optional[Tensor]]:
        """SPEC §4: ``(grad_input, grad_weight)``; only those ``output_mask`` asks for are
        computed, the others are ``None``."""

    def shift_inplace(self, input: Tensor, weight: Tensor, padding: str) -> None:
        """SSL forward in place, without crop; touches only channels that move."""

#: Names accepted by ``TORCHSHIFT2_BACKEND`` and :func:`use_backend`.
BACKENDS = ("auto", "cpp", "triton", "reference")
ENV_VAR = "TORCHSHIFT2_BACKEND"

_override: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "torchshift2_backend", default=None
)
_warned = set()


def _checked(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source}: expected one of {list(BACKENDS)}, got {name!r}")
    return name


def selected_backend() -> str:
    """The backend name in force: :func:`use_backend`'s, else the environment's, else ``auto``.

    Returns:
        one of ``BACKENDS``.

    Raises:
        ValueError: ``TORCHSHIFT2_BACKEND`` holds an unknown name.

    Example:
        >>> import torchshift2 as ts
        >>> with ts.use_backend("cpp"):
        ...     ts.selected_backend()
        'cpp'
    """
    name = _override.get()
    if name is not None:
        return name
    return _checked(os.environ.get(ENV_VAR, "auto").strip() or "auto", ENV_VAR)


def forced_backend() -> Optional[str]:
    """The name :func:`use_backend` set for the current context, or ``None`` outside one."""
    return _override.get()


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the shift ops with backend ``name`` (one of ``BACKENDS``) inside the block.

    The override is a context variable: it applies to the current thread (or async task)
    and wins over ``TORCHSHIFT2_BACKEND``; blocks nest.

    Args:
        name: ``"auto"``, ``"cpp"``, ``"triton"`` or ``"reference"``.

    Raises:
        ValueError: ``name`` is not one of ``BACKENDS``.

    Example:
        >>> import torch, torchshift2 as ts
        >>> with ts.use_backend("reference"):
        ...     ts.shift(torch.arange(4.).reshape(1, 1, 4), torch.tensor([[1.0]]))
        tensor([[[0., 0., 1., 2.]]])
    """
    token = _override.set(_checked(name, "use_backend(name)"))
    try:
        yield
    finally:
        _override.reset(token)


def warn_once(key: str, message: str) -> None:
    """Emit ``message`` as a ``RuntimeWarning`` once per process for ``key``."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def resolve(device: torch.device) -> str:
    """The concrete backend (``cpp``, ``triton`` or ``reference``) for tensors on ``device``.

    With ``auto`` this builds the C++ kernel on first use for a CPU device, and falls back to
    ``reference`` (warning once) when it cannot be built or when triton is missing on CUDA.

    Example:
        >>> import torch, torchshift2 as ts
        >>> with ts.use_backend("reference"):
        ...     ts.backends.resolve(torch.device("cpu"))
        'reference'
    """
    name = selected_backend()
    if name != "auto":
        return name
    if device.type == "cpu":
        reason = _cpp_build.unavailable_reason()
        if reason is None:
            return "cpp"
        warn_once("cpp", f"torchshift2: the C++ CPU kernel is unavailable ({reason}); "
                  "falling back to the slow pure-torch reference")
        return "reference"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError as error:
            warn_once("triton", f"torchshift2: triton is not importable ({error}); "
                      "falling back to the slow pure-torch reference on CUDA")
            return "reference"
        return "triton"
    return "reference"


def cpu_cache_info() -> dict:
    """State of the C++ backend's output cache (see :func:`empty_cpu_cache`).

    The C++ kernels allocate their outputs (forward output, ``grad_input``) of 1 MiB and more
    from a cache of freed blocks, so that a training loop does not page-fault fresh memory
    in at every step. ``TORCHSHIFT2_CPU_CACHE_MB`` (read when the kernel loads) caps the
    bytes kept free; the default is an eighth of physical memory, at most 4 GiB; 0 disables
    the cache.

    Returns:
        dict with ``free_bytes`` and ``free_blocks`` (cached, not in use), ``limit_bytes``
        (``None`` before the kernel is built), ``hits`` and ``misses`` (allocations served
        from the cache / from the system).

    Example:
        >>> import torchshift2 as ts
        >>> sorted(ts.backends.cpu_cache_info())
        ['free_blocks', 'free_bytes', 'hits', 'limit_bytes', 'misses']
    """
    return _cpp().cache_info()


def empty_cpu_cache() -> None:
    """Return the free blocks of the C++ backend's output cache to the system.

    Tensors still in use keep their memory; it goes back to the cache when they are freed.

    Example:
        >>> import torchshift2 as ts
        >>> ts.backends.empty_cpu_cache()
        >>> ts.backends.cpu_cache_info()["free_bytes"]
        0
    """
    _cpp().empty_cache()


def _cpp():
    return importlib.import_module(".cpp", __name__)


def module_for(device: torch.device) -> Backend:
    """The backend module that runs ops on ``device`` (:func:`resolve`'s choice)."""
    name = resolve(device)
    if name == "cpp" and device.type != "cpu":
        raise RuntimeError(f"backend 'cpp': expected CPU tensors, got device {device}")
    return importlib.import_module(f".{name}", __name__)
