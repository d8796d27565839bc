"""The C++ kernel's build: lazy, cached per environment, robust to killed builders, says
what it does, and falls back to the reference.

Only test_killed_first_build_is_rebuilt compiles the library (about a minute or two on two
cores); the lock logic is tested against fake builders, which _ensure_library takes as an
argument, in separate processes so that they can be killed.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
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


def _run(env_updates, code=RUN, timeout=600, backend=None):
    env = dict(os.environ, **env_updates)
    env.pop("TORCHSHIFT2_BACKEND", None)
    if backend is not None:
        env["TORCHSHIFT2_BACKEND"] = backend
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_import_does_not_build_and_cache_is_reused():
    loader.load()  # make sure this process's cache exists
    start = time.time()
    result = _run({})
    assert result.returncode == 0, result.stderr
    assert "BACKEND cpp" in result.stdout
    # A cached build loads in seconds, silently; a rebuild takes far longer on this machine.
    assert time.time() - start < 20
    assert "torchshift2: build" not in result.stderr, result.stderr


def test_missing_compiler_falls_back_to_reference_with_one_warning(tmp_path):
    result = _run({"TORCHSHIFT2_BUILD_DIR": str(tmp_path), "CXX": "/nonexistent/c++"})
    assert result.returncode == 0, result.stderr
    assert "BACKEND reference" in result.stdout
    assert result.stderr.count("C++ CPU kernel is unavailable") == 1, result.stderr


def test_explicit_cpp_backend_raises_when_the_build_fails(tmp_path):
    result = _run({"TORCHSHIFT2_BUILD_DIR": str(tmp_path), "CXX": "/nonexistent/c++"},
                  code="import torch, torchshift2 as ts; "
                       "ts.shift(torch.randn(1, 1, 4), torch.zeros(1, 1))", backend="cpp")
    assert result.returncode != 0


def test_backend_environment_variable_selects_reference():
    code = ("import torch, torchshift2 as ts; from torchshift2 import backends as backend; "
            "print(backend.resolve(torch.device('cpu')))")
    result = _run({}, code=code, backend="reference")
    assert result.stdout.strip() == "reference"
    with __import__("torchshift2").use_backend("cpp"):
        from torchshift2 import backends as backend
        assert backend.resolve(torch.device("cpu")) == "cpp"


# --- Item 4: a killed builder never blocks the next process ------------------------------

# A process that builds with a fake builder: `mode` "hang" stops inside the build (after
# leaving a torch FileBaton `lock` in its scratch directory and the cache directory, as a
# killed torch build would), "slow" takes `seconds`, "fast" writes the library at once.
BUILDER = """
import sys, time
from pathlib import Path
from torchshift2.backends.cpp import build as loader
directory, mode, ready = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
def build(scratch):
    (scratch / "lock").write_text("")
    (directory / "lock").write_text("")
    ready.write_text("inside")
    if mode == "hang":
        time.sleep(600)
    if mode == "slow":
        time.sleep(float(sys.argv[4]))
    library = scratch / "fake.so"
    library.write_text("built by " + mode)
    return library
library, built = loader._ensure_library(directory, "fake", build)
print("RESULT", built, library.read_text())
"""


def _builder(directory, mode, ready, *extra):
    return subprocess.Popen([sys.executable, "-c", BUILDER, str(directory), mode, str(ready),
                             *map(str, extra)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(path: Path, process, limit=60):
    deadline = time.time() + limit
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "the builder never started"
        time.sleep(0.05)


def test_a_killed_builder_leaves_nothing_that_blocks_the_next_one(tmp_path):
    directory = tmp_path / "cache"
    hung = _builder(directory, "hang", tmp_path / "hung")
    _wait_for(tmp_path / "hung", hung)
    hung.send_signal(signal.SIGKILL)
    hung.wait()
    assert (directory / "lock").exists() and list(directory.glob("build-*"))
    result = subprocess.run([sys.executable, "-c", BUILDER, str(directory), "fast",
                             str(tmp_path / "next")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "RESULT True built by fast" in result.stdout
    assert "waiting" not in result.stderr
    assert [p.name for p in directory.glob("build-*")] == []  # the dead one's scratch is gone


def test_waiting_on_a_live_builder_says_so_once(tmp_path):
    directory = tmp_path / "cache"
    # The slow build outlasts the waiter's start (importing torchshift2 takes seconds on a
    # loaded machine; with 3 s the waiter sometimes arrived after it and never waited).
    slow = _builder(directory, "slow", tmp_path / "slow", 15)
    _wait_for(tmp_path / "slow", slow)
    result = subprocess.run([sys.executable, "-c", BUILDER, str(directory), "fast",
                             str(tmp_path / "waiter")], capture_output=True, text=True, timeout=60)
    slow_out, slow_err = slow.communicate(timeout=60)
    assert "RESULT True built by slow" in slow_out, slow_err
    assert "RESULT False built by slow" in result.stdout, result.stderr  # it took that build
    assert result.stderr.count(f"torchshift2: waiting for process {slow.pid}") == 1, result.stderr
    assert not (tmp_path / "waiter").exists()  # and never built


def test_killed_first_build_is_rebuilt_by_the_next_process(tmp_path):
    """End to end, the one real build of this file: a first build killed while it compiles
    (with its compiler) leaves torch's lock file behind; the next process builds and runs."""
    env = dict(os.environ, TORCHSHIFT2_BUILD_DIR=str(tmp_path))
    env.pop("TORCHSHIFT2_BACKEND", None)
    first = subprocess.Popen(
        [sys.executable, "-c", "from torchshift2.backends.cpp import build; build.load()"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob("torchshift2_cpu_*/build-*/build.ninja")):
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.1)
    time.sleep(2)  # compiling
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    for directory in tmp_path.glob("torchshift2_cpu_*"):
        (directory / "lock").write_text("")  # where the old builder kept torch's FileBaton
    result = _run({"TORCHSHIFT2_BUILD_DIR": str(tmp_path)}, timeout=900, backend="cpp")
    assert result.returncode == 0, result.stderr
    assert "BACKEND cpp" in result.stdout
    assert result.stderr.count("torchshift2: building the C++ CPU kernels into") == 1, result.stderr
    assert result.stderr.count("torchshift2: built in") == 1, result.stderr


# --- Item 5: the cache key covers the environment -----------------------------------------

def test_cache_key_separates_environments_and_is_stable(monkeypatch, tmp_path):
    name = loader._name(loader._key_inputs())
    assert loader._name(loader._key_inputs()) == name  # same inputs, same directory

    monkeypatch.setattr(torch, "__file__",
                        "/elsewhere/venv/lib/python3.11/site-packages/torch/__init__.py")
    other_install = loader._name(loader._key_inputs())
    monkeypatch.undo()
    assert other_install != name

    monkeypatch.setattr(sys.implementation, "cache_tag", "cpython-399")
    assert loader._name(loader._key_inputs()) != name
    monkeypatch.undo()

    monkeypatch.setenv("CXX", "/nonexistent/c++")
    assert loader._name(loader._key_inputs()) != name
    monkeypatch.delenv("CXX")

    # Another target than this environment's (which may itself set one).
    march = os.environ.get("TORCHSHIFT2_MARCH")
    monkeypatch.setenv("TORCHSHIFT2_MARCH", "x86-64" if march == "haswell" else "haswell")
    assert loader._name(loader._key_inputs()) != name
    monkeypatch.undo()

    copy = tmp_path / "csrc"
    copy.mkdir()
    for path in loader.CSRC.iterdir():
        if path.suffix in (".cpp", ".h"):
            (copy / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(loader, "CSRC", copy)
    assert loader._name(loader._key_inputs()) == name
    (copy / "geometry.h").write_text((copy / "geometry.h").read_text() + "\n// changed\n")
    assert loader._name(loader._key_inputs()) != name  # headers are part of the key


# --- Item 6: the build says what it does --------------------------------------------------

def test_build_messages_once_at_start_and_end_and_none_when_cached(tmp_path, capsys):
    def build(scratch):
        library = scratch / "fake.so"
        library.write_text("")
        return library

    directory = tmp_path / "cache"
    library, built = loader._ensure_library(directory, "fake", build)
    err = capsys.readouterr().err.splitlines()
    assert built and library == directory / "fake.so" and library.exists()
    assert err == [f"torchshift2: building the C++ CPU kernels into {directory} (about a "
                   "minute, once per environment)", "torchshift2: built in 0 s"], err
    assert loader._ensure_library(directory, "fake", build) == (library, False)
    assert capsys.readouterr().err == ""


def test_build_cli_prints_the_library():
    loader.load()
    result = subprocess.run([sys.executable, "-m", "torchshift2.build"], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.split()[0])
    assert path.exists() and path.name.endswith(".so"), result.stdout
    assert "cached" in result.stdout and "torchshift2: build" not in result.stderr


@pytest.mark.parametrize("backend", ["cpp", None])
def test_an_unwritable_cache_names_TORCHSHIFT2_BUILD_DIR(tmp_path, backend):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = _run({"TORCHSHIFT2_BUILD_DIR": str(blocker / "cache")}, backend=backend)
    text = result.stderr
    if backend == "cpp":
        assert result.returncode != 0
    else:
        assert result.returncode == 0 and "BACKEND reference" in result.stdout, text
        assert text.count("C++ CPU kernel is unavailable") == 1, text
    assert "TORCHSHIFT2_BUILD_DIR" in text and str(blocker / "cache") in text, text


def test_builder_module_documents_itself():
    # The one place a user reads about the cache besides the docs: the CLI's help.
    result = subprocess.run([sys.executable, "-m", "torchshift2.build", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "--force" in result.stdout and "TORCHSHIFT2_BUILD_DIR" in result.stdout

