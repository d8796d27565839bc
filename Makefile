# `make test` and `make demo` work on a fresh machine: they create .venv and install
# everything. torch==2.13.0 comes first: it is the CPU wheel on this disk, and a plain
# `torch` requirement would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed-test

.PHONY: test venv clean demo docs lint

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) build dist site

# Benchmarks (benchmarks/README.md; the harness is benchmarks/harness/, run by
# benchmarks/bench.py): `make bench` writes CSV/JSON to benchmarks/results/; narrow it with
# e.g. BENCH_ARGS="--shapes 2d_56 --dtypes float32 --distributions sparse --plot".
# `make bench-fuzz` times random cases drawn from a seed (FUZZ_ARGS) and prints the worst
# ratios. `make bench-quick` is the smoke test (tiny shapes, prints only; numbers mean nothing).
BENCH_ARGS ?=
FUZZ_ARGS ?= --fuzz 24 --seed 0
.PHONY: bench bench-quick bench-fuzz
bench: $(STAMP)
	$(PY) benchmarks/bench.py --out benchmarks/results $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(PY) benchmarks/bench.py --quick --no-compile $(BENCH_ARGS)

bench-fuzz: $(STAMP)
	$(PY) benchmarks/bench.py --out benchmarks/results $(FUZZ_ARGS) $(BENCH_ARGS)

# Demo (examples/demo.py): depthwise conv vs SSL shift CNNs on scikit-learn's digits,
# under torch.compile; prints a table, writes demo-output/. e.g. DEMO_ARGS="--epochs 10".
DEMO_STAMP := $(VENV)/.installed-demo
DEMO_ARGS ?=
$(DEMO_STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[demo]'
	touch $@

demo: $(DEMO_STAMP)
	$(PY) examples/demo.py --out demo-output $(DEMO_ARGS)

# Docs (mkdocs.yml, docs/): regenerate the figures, then a strict build into site/.
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[docs]'
	touch $@

docs: $(DOCS_STAMP)
	$(PY) docs/make_figures.py
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# Lint: ruff over the Python sources ([tool.ruff] in pyproject.toml), clang-format over the
# C++ sources (.clang-format). Neither imports torch or torchshift2, so the stamp installs the
# `lint` extra's requirements alone (read from pyproject.toml), not the package.
LINT_STAMP := $(VENV)/.installed-lint
LINT_PY := $(wildcard torchshift2 tests benchmarks examples docs)
LINT_CPP := $(wildcard torchshift2/backends/cpp/csrc/*)
$(LINT_STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q $$($(PY) -c "import tomllib; print(' '.join(tomllib.load(\
	    open('pyproject.toml', 'rb'))['project']['optional-dependencies']['lint']))")
	touch $@

lint: $(LINT_STAMP)
	$(VENV)/bin/ruff check $(LINT_PY)
	$(VENV)/bin/clang-format --dry-run --Werror $(LINT_CPP)
