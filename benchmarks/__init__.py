"""The repository's benchmark scripts (not part of the torchshift2 wheel); the harness is
:mod:`benchmarks.harness`. A package so that ``python -m benchmarks.harness`` and the tests
can import it from the repository root."""
