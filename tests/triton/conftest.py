"""The Triton kernels on CPU tensors through the Triton interpreter.

TRITON_INTERPRET must be set before triton is imported, so this directory runs in its own
pytest process (tests/test_triton_interpreter.py launches it); the main run skips it
(tests/conftest.py). Run it directly with::

    TRITON_INTERPRET=1 python -m pytest -q tests/triton -p no:cacheprovider
"""

import os
import sys

_ALREADY_IMPORTED = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("TORCHSHIFT2_BACKEND", "triton")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.triton)


@pytest.fixture(autouse=True, scope="session")
def _interpreted_kernels():
    from torchshift2.triton import kernels

    if _ALREADY_IMPORTED or type(kernels._forward_kernel).__name__ != "InterpretedFunction":
        pytest.exit(
            "tests/triton: triton was imported before TRITON_INTERPRET=1 was set; run this "
            "directory in its own process with TRITON_INTERPRET=1 in the environment",
            returncode=3,
        )
    yield
