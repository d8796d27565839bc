"""Shared test configuration: hypothesis profiles, the kernel suite's ``backend_device``
parameter, and the Triton interpreter's process."""

import importlib.util
import os

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings

from helpers import BACKEND_DEVICES

#: This process runs the Triton kernels through the interpreter: tests/test_triton_interpreter.py
#: starts it with TRITON_INTERPRET=1 (it must be on before the kernels are imported).
INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"

# First calls compile kernels, so no per-example deadline. The "ci" profile is the default;
# TORCHSHIFT2_HYPOTHESIS=thorough runs many more examples locally. Under the interpreter every
# program of a grid runs in numpy: few examples, and no shrinking (it can take minutes; a
# failure prints its example).
settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=500,
                          derandomize=False)
settings.register_profile("interpreter", parent=settings.get_profile("ci"), max_examples=10,
                          phases=(Phase.explicit, Phase.generate))
settings.load_profile(os.environ.get("TORCHSHIFT2_HYPOTHESIS",
                                     "interpreter" if INTERPRETER else "ci"))

torch.set_num_threads(min(2, torch.get_num_threads()))

#: Names the ``backend_device`` cases to run (comma-separated ids of helpers.BACKEND_DEVICES).
KERNEL_BACKENDS_ENV = "TORCHSHIFT2_KERNEL_BACKENDS"
#: The modules of the kernel suite: in a run restricted to some of its cases, their tests
#: without ``backend_device`` are deselected (they ran in the main process already).
KERNEL_SUITE = ("test_backends.py", "test_regressions.py")


def _unavailable(case):
    """Why ``case`` cannot run in this process, or None."""
    if case.backend != "triton":
        return None
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if case.interpreted and not INTERPRETER:
        return ("runs in its own process with TRITON_INTERPRET=1 "
                "(tests/test_triton_interpreter.py)")
    if not case.interpreted:
        if INTERPRETER:
            return "this process runs the Triton interpreter"
        if not torch.cuda.is_available():
            return "needs a CUDA GPU"
    return None


def kernel_cases():
    """The ``backend_device`` cases of this run: ``TORCHSHIFT2_KERNEL_BACKENDS``, else the
    interpreted ones (``triton-interpreter``) in the interpreter's process and all the others
    everywhere else."""
    names = [n.strip() for n in os.environ.get(KERNEL_BACKENDS_ENV, "").split(",") if n.strip()]
    if not names:
        names = [name for name, case in BACKEND_DEVICES.items()
                 if case.interpreted == INTERPRETER]
    unknown = [n for n in names if n not in BACKEND_DEVICES]
    if unknown:
        raise pytest.UsageError(f"{KERNEL_BACKENDS_ENV}: unknown {unknown}; expected some of "
                                f"{list(BACKEND_DEVICES)}")
    params = []
    for name in names:
        reason = _unavailable(BACKEND_DEVICES[name])
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(BACKEND_DEVICES[name], id=name, marks=marks))
    return params


def pytest_generate_tests(metafunc):
    if "backend_device" in metafunc.fixturenames:
        metafunc.parametrize("backend_device", kernel_cases())


def pytest_collection_modifyitems(config, items):
    """In a run restricted to some kernel cases (the interpreter's process, or
    ``TORCHSHIFT2_KERNEL_BACKENDS``), only the kernel suite's tests that take
    ``backend_device`` run from its modules."""
    if not (INTERPRETER or os.environ.get(KERNEL_BACKENDS_ENV)):
        return
    selected, deselected = [], []
    for item in items:
        if (item.path.name in KERNEL_SUITE
                and "backend_device" not in getattr(item, "fixturenames", ())):
            deselected.append(item)
        else:
            selected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


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


@pytest.fixture(autouse=True, scope="session")
def _triton_interpreter():
    """Under TRITON_INTERPRET=1 (set at start, or by tests/triton/conftest.py before the
    kernels are imported): check that the kernels really are interpreted, and speed them up."""
    if os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton"):
        from torchshift2.backends import triton as backend

        if not backend._interpreted():
            pytest.exit("TRITON_INTERPRET=1, but the kernels were imported before it was set: run "
                        "the Triton tests in their own process with TRITON_INTERPRET=1 in the "
                        "environment (tests/test_triton_interpreter.py)", returncode=3)
        _memoize_nested_patching()
    yield
