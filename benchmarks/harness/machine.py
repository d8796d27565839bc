"""Where and with what numbers were taken: the one machine-info helper of the repository's
tools (the benchmark harness, ``examples/demo.py``, ``benchmarks/onnx_latency.py``,
``benchmarks/grouping_bench.py``).

Only the standard library and torch are needed; torchshift2's backend is added when
torchshift2 imports. ``torchshift2/backends/cpp/build.py`` reads ``/proc/cpuinfo`` for its
own reason (the CPU flags in the build cache key) and does not use this module.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Optional, Union

import torch

__all__ = ["cpu_model", "total_memory_bytes", "git_commit", "load_average", "machine_info",
           "machine_line"]

ROOT = Path(__file__).resolve().parents[2]
#: ``/proc/cpuinfo`` keys that name the CPU: x86 first, then ARM / other kernels.
_MODEL_KEYS = ("model name", "Model", "Hardware", "cpu model")


def cpu_model() -> str:
    """The CPU's marketing name from ``/proc/cpuinfo``, else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in _MODEL_KEYS and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def total_memory_bytes() -> Optional[int]:
    """Physical memory in bytes, or ``None`` where neither /proc/meminfo nor sysconf say."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def git_commit(root: Path = ROOT) -> Optional[str]:
    """``HEAD`` of the checkout, with ``-dirty`` if tracked files differ; ``None`` outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10)
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def load_average() -> Optional[float]:
    """The 1-minute load average: on a shared machine it says how far to trust a timing."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _torchshift2_info(device: torch.device) -> dict:
    try:
        import torchshift2
        from torchshift2 import backends
    except ImportError:
        return {}
    return {
        "backend_selected": backends.selected_backend(),
        # resolving may build the C++ kernel: the backend that actually runs, not the wish
        "backend": backends.resolve(device),
        "torchshift2_version": getattr(torchshift2, "__version__", None),
    }


def machine_info(device: Union[str, torch.device, None] = "cpu") -> dict:
    """CPU model, cores, memory, threads, versions, git commit, load and time; with a
    ``device``, also the GPU name and torchshift2's backend for that device."""
    info = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "memory_gib": round((total_memory_bytes() or 0) / 2**30, 1),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "load_average": load_average(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if device is not None:
        device = torch.device(device)
        info["device"] = str(device)
        info["gpu_model"] = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
        info.update(_torchshift2_info(device))
    return info


def machine_line(info: Optional[dict] = None) -> str:
    """One line for the top of a printed table: ``Machine: <cpu>, <n> logical CPUs, ...``."""
    info = machine_info(None) if info is None else info
    parts = [info["cpu_model"] + (f" / {info['gpu_model']}" if info.get("gpu_model") else ""),
             f"{info['logical_cpus']} logical CPUs", f"{info['memory_gib']} GiB",
             f"{info['threads']} torch threads", f"torch {info['torch_version']}"]
    if info.get("backend"):
        parts.append(f"backend {info['backend']} (selected: {info.get('backend_selected')})")
    if info.get("git_commit"):
        parts.append(f"commit {info['git_commit'][:12]}"
                     + ("-dirty" if info["git_commit"].endswith("-dirty") else ""))
    if info.get("load_average") is not None:
        parts.append(f"load {info['load_average']}")
    return "Machine: " + ", ".join(parts)
