"""Build the C++ kernels of ``csrc/`` once per environment and load the library.

The library is compiled by ``torch.utils.cpp_extension.load`` (ninja, one translation unit
per ``csrc/*.cpp``, in parallel) at the first CPU call, or ahead of time by
``python -m torchshift2.build``, into ``$TORCHSHIFT2_BUILD_DIR`` (default
``~/.cache/torchshift2``) under a name that hashes everything that changes the binary
(:func:`_key_inputs`): sources and headers, the torch install and build, the Python ABI,
the compiler, the flags and the CPU. Later processes load it in a fraction of a second; two
environments never share (or invalidate) a build. ``README.md`` here explains the flags.

A build runs in a fresh directory of its own while holding an ``flock`` on ``build.lock``
(which the kernel releases however the builder dies), and publishes the library by an
atomic rename: a process that finds the lock held waits, saying so once on stderr; one that
takes it after a killed builder simply builds again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import torch

try:
    import fcntl
except ImportError:  # not POSIX: no lock (builds are still published atomically)
    fcntl = None

CSRC = Path(__file__).with_name("csrc")
_LDFLAGS = ["-fopenmp"]
#: Environment variable naming the cache root.
BUILD_DIR_VARIABLE = "TORCHSHIFT2_BUILD_DIR"

_lock = threading.Lock()
_ops = None
_error: Optional[BaseException] = None
_library: Optional[Path] = None
_built = False


def _cflags() -> list:
    # Why each flag: README.md, "Compiler flags". TORCHSHIFT2_MARCH (default native) builds
    # for another instruction set, e.g. haswell to run the AVX2-only kernels on an AVX-512
    # machine.
    march = os.environ.get("TORCHSHIFT2_MARCH") or "native"
    return ["-O3", f"-march={march}", "-mprefer-vector-width=512", "-fno-trapping-math",
            "-fopenmp", "-DNDEBUG"]


def _sources() -> list:
    return sorted(CSRC.glob("*.cpp"))


def _cpu_identity() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = [line for line in cpuinfo if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        import platform

        return platform.machine() + platform.processor()


@functools.lru_cache(maxsize=None)
def _compiler_identity(cxx: str) -> str:
    """The resolved compiler and the first line of its ``--version`` (once per process)."""
    path = shutil.which(cxx) or cxx
    try:
        result = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
        version = (result.stdout or result.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError) as error:
        version = f"unavailable ({type(error).__name__})"
    return f"{os.path.realpath(path) if os.path.exists(path) else path}: {version}"


def _key_inputs() -> dict:
    """Everything that changes the built library, by name (hashed into its directory's name)."""
    sources = hashlib.sha256()
    for path in sorted(CSRC.iterdir()):
        if path.suffix in (".cpp", ".h"):
            sources.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return {
        "sources": sources.hexdigest(),
        "torch": " ".join([torch.__version__, str(torch.version.git_version),
                           f"debug={torch.version.debug}", f"cuda={torch.version.cuda}",
                           f"cxx11abi={torch._C._GLIBCXX_USE_CXX11_ABI}"]),
        "torch_path": os.path.dirname(os.path.abspath(torch.__file__)),
        "python": f"{sys.implementation.cache_tag} {sysconfig.get_config_var('EXT_SUFFIX')}",
        "compiler": _compiler_identity(os.environ.get("CXX") or "c++"),
        "flags": " ".join(_cflags() + _LDFLAGS),
        "cpu": _cpu_identity(),
    }


def _name(inputs: dict) -> str:
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    return f"torchshift2_cpu_{digest}"


def _build_root() -> Path:
    return Path(os.environ.get(BUILD_DIR_VARIABLE) or Path.home() / ".cache" / "torchshift2")


def _unwritable(directory: Path, error: OSError) -> RuntimeError:
    return RuntimeError(
        f"torchshift2: cannot write the C++ kernel cache {directory} "
        f"({type(error).__name__}: {error.strerror or error}); set {BUILD_DIR_VARIABLE} to a "
        "writable directory")


def _say(message: str) -> None:
    print(f"torchshift2: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _build_lock(directory: Path):
    """Hold ``directory/build.lock`` (an flock, released when the holder dies) for a build."""
    try:
        fd = os.open(directory / "build.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise _unwritable(directory, error) from error
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                _say(f"waiting for process {holder}, which is building the C++ CPU kernels "
                     f"into {directory}")
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                pass  # a file system without locks: build unlocked
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _ensure_library(directory: Path, name: str, build: Callable[[Path], Path],
                    force: bool = False) -> tuple:
    """``(library, built)``: the published library of ``directory``, built first (by
    ``build(scratch_directory) -> built library``) if missing or ``force``."""
    library = directory / f"{name}.so"
    if library.exists() and not force:
        return library, False
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _unwritable(directory, error) from error
    with _build_lock(directory):
        if library.exists() and not force:  # built by the process we waited for
            return library, False
        # Holding the lock, every other scratch directory is a dead builder's (or its
        # orphaned compiler's): never reused, so never a stale lock to wait on.
        for stale in directory.glob("build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        scratch = directory / f"build-{os.getpid()}-{time.time_ns()}"
        try:
            scratch.mkdir()
        except OSError as error:
            raise _unwritable(directory, error) from error
        _say(f"building the C++ CPU kernels into {directory} (about a minute, once per "
             "environment)")
        start = time.monotonic()
        try:
            built = build(scratch)
            os.replace(built, library)  # atomic: readers see no library or a whole one
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        _say(f"built in {time.monotonic() - start:.0f} s")
        return library, True


def _compile(name: str) -> Callable[[Path], Path]:
    """torch's builder for the sources of csrc/ into a scratch directory (which also loads
    the library into this process)."""

    def build(scratch: Path) -> Path:
        from torch.utils import cpp_extension

        (scratch / "key.json").write_text(json.dumps(_key_inputs(), indent=1, sort_keys=True))
        cpp_extension.load(
            name=name,
            sources=[str(path) for path in _sources()],
            extra_cflags=_cflags(),
            extra_ldflags=_LDFLAGS,
            extra_include_paths=[str(CSRC)],
            build_directory=str(scratch),
            is_python_module=False,
            verbose=bool(os.environ.get("TORCHSHIFT2_VERBOSE_BUILD")),
        )
        return scratch / f"{name}.so"

    return build


def load(force: bool = False):
    """Build (or reuse) the C++ library and return its op namespace ``torch.ops.torchshift2_cpu``.

    ``force``: rebuild even if the cache holds a library for this environment (not once
    this process has loaded one). Raises the build error if it fails; a failure is
    remembered for the process.
    """
    global _ops, _error, _library, _built
    with _lock:
        if _ops is not None:
            return _ops
        if _error is not None:
            raise RuntimeError(f"the C++ kernel failed to build earlier: {_error}") from _error
        try:
            name = _name(_key_inputs())
            library, built = _ensure_library(_build_root() / name, name, _compile(name), force)
            if not built:
                torch.ops.load_library(str(library))
        except Exception as error:  # compiler missing, build failure, unwritable cache, ...
            _error = error
            raise
        _library, _built = library, built
        _ops = torch.ops.torchshift2_cpu
        return _ops


def unavailable_reason() -> Optional[str]:
    """``None`` if the C++ kernel is usable, else why not (building it if needed)."""
    if _ops is not None:
        return None
    try:
        load()
    except Exception as error:
        lines = str(error).strip().splitlines()
        return f"{type(error).__name__}: {lines[-1] if lines else ''}"
    return None


def loaded():
    """The op namespace ``torch.ops.torchshift2_cpu`` if the library is loaded, else ``None``."""
    return _ops


def ops():
    """The op namespace, building or loading the library first if needed."""
    return _ops if _ops is not None else load()


def library_path() -> Optional[Path]:
    """The loaded library's file in the cache (``None`` before :func:`load`)."""
    return _library


def built_here() -> bool:
    """Whether this process built the loaded library (else it came from the cache)."""
    return _built
