"""The C++ kernel's build: lazy, cached, stale-lock aware, and a reference fallback."""

import os
import subprocess
import sys
import time

import torch

from torchshift2.backends.cpp import build as loader

RUN = """
import time, warnings, torch
warnings.simplefilter("always")
start = time.time()
import torchshift2 as ts
from torchshift2 import backends as backend
imported = time.time() - start
out = ts.shift(torch.arange(4.).reshape(1, 1, 4), torch.tensor([[1.0]]))
assert out.flatten().tolist() == [0.0, 0.0, 1.0, 2.0], out
print("IMPORT", imported, "BACKEND", backend.resolve(torch.device("cpu")))
"""


def _run(env_updates):
    env = dict(os.environ, **env_updates)
    env.pop("TORCHSHIFT2_BACKEND", None)
    return subprocess.run([sys.executable, "-c", RUN], capture_output=True, text=True, env=env,
                          timeout=600)


def test_import_does_not_build_and_cache_is_reused():
    loader.load()  # make sure this process's cache exists
    start = time.time()
    result = _run({})
    assert result.returncode == 0, result.stderr
    assert "BACKEND cpp" in result.stdout
    # A cached build loads in seconds; a rebuild takes far longer on this machine.
    assert time.time() - start < 20


def test_missing_compiler_falls_back_to_reference_with_one_warning(tmp_path):
    result = _run({"TORCHSHIFT2_BUILD_DIR": str(tmp_path), "CXX": "/nonexistent/c++"})
    assert result.returncode == 0, result.stderr
    assert "BACKEND reference" in result.stdout
    assert result.stderr.count("C++ CPU kernel is unavailable") == 1, result.stderr


def test_explicit_cpp_backend_raises_when_the_build_fails(tmp_path):
    env = dict(os.environ, TORCHSHIFT2_BUILD_DIR=str(tmp_path), CXX="/nonexistent/c++",
               TORCHSHIFT2_BACKEND="cpp")
    result = subprocess.run(
        [sys.executable, "-c", "import torch, torchshift2 as ts; "
         "ts.shift(torch.randn(1, 1, 4), torch.zeros(1, 1))"],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode != 0


def test_stale_lock_is_removed_with_a_warning(tmp_path, recwarn):
    lock = tmp_path / "lock"
    lock.write_text("")
    loader._remove_stale_lock(tmp_path)
    assert lock.exists()  # fresh: another process may be building
    old = time.time() - loader.STALE_LOCK_SECONDS - 10
    os.utime(lock, (old, old))
    loader._remove_stale_lock(tmp_path)
    assert not lock.exists()
    assert any("interrupted build" in str(w.message) for w in recwarn)


def test_backend_environment_variable_selects_reference():
    env = dict(os.environ, TORCHSHIFT2_BACKEND="reference")
    code = ("import torch, torchshift2 as ts; from torchshift2 import backends as backend; "
            "print(backend.resolve(torch.device('cpu')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.stdout.strip() == "reference"
    with __import__("torchshift2").use_backend("cpp"):
        from torchshift2 import backends as backend
        assert backend.resolve(torch.device("cpu")) == "cpp"
