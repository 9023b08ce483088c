# Two commands: `make demo` and `make test`. Both create .venv once and reuse it.
# `make docs`: the documentation site (mkdocs.yml, docs/) into site/, warnings as errors.
# `make compat TORCH=2.11.0`: the engine's tests on another torch (benchmarks/compat.py).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.se-inject-installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
# Debian's PostgreSQL server: tests/test_search_runner.py starts one in a temporary folder (the several-machines
# path of `se-inject search`); only the test target needs it.
POSTGRES := /usr/lib/postgresql
DEMO_OUT ?= runs/demo

CONSTRAINTS := constraints/dev.txt

.PHONY: demo test docs venv data postgres clean compat compat-usage

venv: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-installs only when pyproject.toml or the constraints change; an already complete venv is reused
# as is. pyproject.toml declares ranges (for users); constraints/dev.txt pins this venv's exact
# versions (torch 2.14.1, torchvision 0.29.1, ...), so a fresh machine gets the same venv.
$(STAMP): pyproject.toml $(CONSTRAINTS) | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

data: $(FASHION_MNIST)

$(FASHION_MNIST):
	apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist)

postgres: $(POSTGRES)

$(POSTGRES):
	apt-get install -y postgresql || (apt-get update && apt-get install -y postgresql)

# Two workers (CI has 2 cores); whole files per worker, so a file's module fixtures run once.
test: $(STAMP) $(FASHION_MNIST) $(POSTGRES)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25

# --strict: a warning (a broken link, a page missing from the nav, a docstring mkdocstrings cannot read)
# fails the build. tests/test_docs_pages.py builds it too and runs every code block of the pages.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# A separate venv per torch (.compat/torch-<version>, kept), the wheel installed into it, the engine's
# tests run, a row appended to benchmarks/results/compat.md. COMPAT_ARGS=--lowest also pins the other
# core dependencies at their declared lower bounds.
compat: compat-usage $(STAMP)
	$(PY) benchmarks/compat.py --torch $(TORCH) $(COMPAT_ARGS)

compat-usage:   # before the venv is built
	@test -n "$(TORCH)" || { echo "usage: make compat TORCH=2.11.0 [COMPAT_ARGS=--lowest]"; exit 2; }

demo: $(STAMP) $(FASHION_MNIST)
	$(PY) examples/demo.py --out $(DEMO_OUT)

clean:
	rm -rf runs build site *.egg-info
