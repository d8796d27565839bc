"""Shared test configuration: hypothesis profiles and tolerances."""

import os

import torch
from hypothesis import HealthCheck, settings

# First calls compile kernels, so no per-example deadline. The "ci" profile is the default;
# TORCHSHIFT2_HYPOTHESIS=thorough runs many more examples locally.
settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=500,
                          derandomize=False)
settings.load_profile(os.environ.get("TORCHSHIFT2_HYPOTHESIS", "ci"))

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_ignore_collect(collection_path, config):
    """tests/triton runs the Triton kernels under TRITON_INTERPRET=1 in its own process
    (tests/test_triton_interpreter.py launches it): skip it in any other run, unless it is
    named on the command line (its conftest then sets TRITON_INTERPRET=1 itself)."""
    triton_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "triton")
    if os.path.abspath(str(collection_path)) != triton_dir:
        return None
    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    named = [os.path.abspath(str(arg).split("::")[0]) for arg in config.args]
    if any(arg == triton_dir or arg.startswith(triton_dir + os.sep) for arg in named):
        return None
    return True
