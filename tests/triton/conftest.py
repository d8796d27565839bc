"""The Triton backend's own paths: tiles, launch plans and launch counts, the int64 index
variant, launch configurations, non-finite weights without a host check, tracing and AOT
compilation. (Its values against the reference are in the kernel suite,
tests/test_backends.py, whose ``triton-interpreter`` cases run in the same process.)

TRITON_INTERPRET must be set before the kernels are imported (``triton.jit`` reads it when it
decorates them: torchshift2.backends.triton), so this directory runs in its own
pytest process (tests/test_triton_interpreter.py launches it); the main run skips it
(tests/conftest.py). Run it directly with::

    TRITON_INTERPRET=1 python -m pytest -q tests/triton -p no:cacheprovider

With ``TORCHSHIFT2_TEST_DEVICE=cuda`` the same tests run the compiled kernels on CUDA
tensors instead (benchmarks/gpu_run.sh does this on a GPU machine).

The interpreter's bfloat16 is unreliable upstream (it stores bfloat16 as raw 16-bit
integers): reduced-precision *arithmetic* is only evidence on a GPU; bit copies through
integer views are exact everywhere.
"""

import os
import sys

ON_CUDA = os.environ.get("TORCHSHIFT2_TEST_DEVICE", "cpu").startswith("cuda")
_ALREADY_IMPORTED = ("torchshift2.backends.triton" in sys.modules
                     and os.environ.get("TRITON_INTERPRET") != "1")
if not ON_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "triton" in item.path.parts:
            item.add_marker(pytest.mark.triton)


@pytest.fixture(autouse=True, scope="session")
def _kernels_on_the_test_device():
    """The kernels run on CUDA tensors with TORCHSHIFT2_TEST_DEVICE=cuda, else under the
    interpreter (tests/conftest.py checks that it is on and speeds it up)."""
    if ON_CUDA:
        import torch

        if not torch.cuda.is_available():
            pytest.exit("TORCHSHIFT2_TEST_DEVICE=cuda but torch.cuda.is_available() is False",
                        returncode=3)
    elif _ALREADY_IMPORTED:
        pytest.exit(
            "tests/triton: the kernels were imported before TRITON_INTERPRET=1 was set; run this "
            "directory in its own process with TRITON_INTERPRET=1 in the environment",
            returncode=3,
        )
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
