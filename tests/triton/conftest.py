"""The Triton kernels against the reference: on CPU tensors through the Triton interpreter,
or on a GPU.

TRITON_INTERPRET must be set before triton is imported, so this directory runs in its own
pytest process (tests/test_triton_interpreter.py launches it); the main run skips it
(tests/conftest.py). Run it directly with::

    TRITON_INTERPRET=1 python -m pytest -q tests/triton -p no:cacheprovider

With ``TORCHSHIFT2_TEST_DEVICE=cuda`` the same tests run the compiled kernels on CUDA
tensors instead (benchmarks/gpu_run.sh does this on a GPU machine).
"""

import os
import sys

ON_CUDA = os.environ.get("TORCHSHIFT2_TEST_DEVICE", "cpu").startswith("cuda")
_ALREADY_IMPORTED = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
if not ON_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("TORCHSHIFT2_BACKEND", "triton")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.triton)


@pytest.fixture(autouse=True, scope="session")
def _interpreted_kernels():
    from torchshift2.backends.triton import kernels

    if ON_CUDA:
        import torch

        if not torch.cuda.is_available():
            pytest.exit("TORCHSHIFT2_TEST_DEVICE=cuda but torch.cuda.is_available() is False",
                        returncode=3)
        yield
        return
    if _ALREADY_IMPORTED or type(kernels._forward_kernel).__name__ != "InterpretedFunction":
        pytest.exit(
            "tests/triton: triton was imported before TRITON_INTERPRET=1 was set; run this "
            "directory in its own process with TRITON_INTERPRET=1 in the environment",
            returncode=3,
        )
    yield
