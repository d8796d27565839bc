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
