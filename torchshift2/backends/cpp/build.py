"""Compile the C++ kernels at first use with ``load_inline`` and cache the library.

The build goes to ``$TORCHSHIFT2_BUILD_DIR`` (default ``~/.cache/torchshift2``) under a name
that hashes the source, the torch version and the flags: an unchanged source reuses the
cached library (in later processes too), a changed one rebuilds.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Optional

import torch


_SOURCE_PATHS = [
    Path(__file__).with_name(name) for name in ("output_cache.cpp", "shift.cpp", "channels_last.cpp", "ops.cpp")
]
# -march=native is safe because every machine builds its own library: the cache key
# includes this CPU's identity (see _cpu_identity).
# -mprefer-vector-width=512: GCC otherwise keeps auto-vectorised loops at 256 bits on
# AVX-512 Xeons (float32 backward 8-17% faster; benchmarks/NOTES.md v9).
# -fno-trapping-math: without it GCC vectorises the flat runs' per-tap selects only with
# AVX-512 masks; on AVX2 they stayed scalar branches (Active Shift forward and the backward
# 3-8x slower; v10). Nothing here reads floating-point exception flags, and results are
# unchanged (no reassociation).
_CFLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fno-trapping-math", "-fopenmp", "-DNDEBUG"]
_LDFLAGS = ["-fopenmp"]
#: A lock file older than this was left by a killed build (a normal build takes ~1 min).
STALE_LOCK_SECONDS = 600

_lock = threading.Lock()
_ops = None
_error: Optional[BaseException] = None


def _cpu_identity() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = [line for line in cpuinfo if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        import platform

        return platform.machine() + platform.processor()


def _build_directory(name: str) -> Path:
    root = os.environ.get("TORCHSHIFT2_BUILD_DIR") or Path.home() / ".cache" / "torchshift2"
    return Path(root) / name


def _remove_stale_lock(directory: Path) -> None:
    # torch's FileBaton waits forever on a lock left by a build that was killed.
    lock = directory / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age > STALE_LOCK_SECONDS:
        warnings.warn(
            f"torchshift2: removing {lock}, a lock {age:.0f} s old left by an interrupted build "
            "of the C++ kernel; rebuilding",
            RuntimeWarning,
            stacklevel=4,
        )
        lock.unlink(missing_ok=True)


def load():
    """Build (or reuse) the C++ library and return its op namespace ``torch.ops.torchshift2_cpu``.

    Raises the build error if it fails; a failure is remembered for the process.
    """
    global _ops, _error
    with _lock:
        if _ops is not None:
            return _ops
        if _error is not None:
            raise RuntimeError(f"the C++ kernel failed to build earlier: {_error}") from _error
        from torch.utils import cpp_extension

        sources = [path.read_text() for path in _SOURCE_PATHS]
        digest = hashlib.sha256(
            "\0".join([*sources, torch.__version__, _cpu_identity(), *_CFLAGS, *_LDFLAGS]).encode()
        ).hexdigest()[:16]
        name = f"torchshift2_cpu_{digest}"
        directory = _build_directory(name)
        directory.mkdir(parents=True, exist_ok=True)
        _remove_stale_lock(directory)
        try:
            cpp_extension.load_inline(
                name=name,
                cpp_sources=sources,
                extra_cflags=_CFLAGS,
                extra_ldflags=_LDFLAGS,
                build_directory=str(directory),
                is_python_module=False,
                no_implicit_headers=True,
                verbose=bool(os.environ.get("TORCHSHIFT2_VERBOSE_BUILD")),
            )
        except Exception as error:  # compiler missing, build failure, ...
            _error = error
            raise
        _ops = torch.ops.torchshift2_cpu
        return _ops


def unavailable_reason() -> Optional[str]:
    """``None`` if the C++ kernel is usable, else why not (building it if needed)."""
    if _ops is not None:
        return None
    try:
        load()
    except Exception as error:
        return f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
    return None


def loaded():
    """The op namespace ``torch.ops.torchshift2_cpu`` if the library is loaded, else ``None``."""
    return _ops


def ops():
    """The op namespace, building or loading the library first if needed."""
    return _ops if _ops is not None else load()
