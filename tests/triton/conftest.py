"""The Triton kernels against the reference: on CPU tensors through the Triton interpreter,
or on a GPU.

TRITON_INTERPRET must be set before triton is imported, so this directory runs in its own
pytest process (tests/test_triton_interpreter.py launches it); the main run skips it
(tests/conftest.py). Run it directly with::

    TRITON_INTERPRET=1 python -m pytest -q tests/triton -p no:cacheprovider

With ``TORCHSHIFT2_TEST_DEVICE=cuda`` the same tests run the compiled kernels on CUDA
tensors instead (benchmarks/gpu_run.sh does this on a GPU machine).

The interpreter's bfloat16 is unreliable upstream (it stores bfloat16 as raw 16-bit
integers): reduced-precision *arithmetic* is only evidence on a GPU, so those tests run on
CUDA only; bit copies through integer views are exact everywhere.
"""

import os
import sys

ON_CUDA = os.environ.get("TORCHSHIFT2_TEST_DEVICE", "cpu").startswith("cuda")
_ALREADY_IMPORTED = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
if not ON_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("TORCHSHIFT2_BACKEND", "triton")

import pytest  # noqa: E402


def _memoize_nested_patching():
    """Speed only: the interpreter re-patches ``triton.language`` on *every* call of a
    nested ``@triton.jit`` function (inspect.getmembers over the whole module, ~0.2 ms,
    thousands of times per launch). The patch is the same each time, so do it once per
    module set per launch; what the kernels compute is unchanged."""
    import triton.language as tl
    import triton.runtime.interpreter as interpreter

    patched = set()
    run_grid = interpreter.GridExecutor.__call__

    def grid_call(self, *args, **kwargs):
        patched.clear()
        try:
            return run_grid(self, *args, **kwargs)
        finally:
            patched.clear()

    def nested_call(self, *args, **kwargs):
        key = frozenset(id(v) for v in self.fn.__globals__.values() if v is tl or v is tl.core)
        if key not in patched:
            interpreter._patch_lang(self.fn)
            patched.add(key)
        fn = self.rewrite()
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            raise interpreter.InterpreterError(repr(error)) from error

    interpreter.GridExecutor.__call__ = grid_call
    interpreter.InterpretedFunction.__call__ = nested_call


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.triton)


@pytest.fixture(autouse=True, scope="session")
def _interpreted_kernels():
    from torchshift2.backends import triton as backend

    if ON_CUDA:
        import torch

        if not torch.cuda.is_available():
            pytest.exit("TORCHSHIFT2_TEST_DEVICE=cuda but torch.cuda.is_available() is False",
                        returncode=3)
        yield
        return
    if _ALREADY_IMPORTED or not backend._interpreted():
        pytest.exit(
            "tests/triton: triton was imported before TRITON_INTERPRET=1 was set; run this "
            "directory in its own process with TRITON_INTERPRET=1 in the environment",
            returncode=3,
        )
    _memoize_nested_patching()
    yield


@pytest.fixture
def config():
    """Set ``torchshift2.backends.triton.CONFIG`` entries for one test (plans are cached per
    configuration, so no cache needs clearing)."""
    from torchshift2.backends import triton as backend

    saved = dict(backend.CONFIG)

    def apply(**values):
        unknown = set(values) - set(saved)
        assert not unknown, f"unknown CONFIG keys {unknown}"
        backend.CONFIG.update(values)

    yield apply
    backend.CONFIG.clear()
    backend.CONFIG.update(saved)
