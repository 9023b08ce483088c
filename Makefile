# Two commands: `make demo` and `make test`. Both create .venv once and reuse it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.se-inject-installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
# Debian's PostgreSQL server: tests/test_search_runner.py starts one in a temporary folder (the several-machines
# path of `se-inject search`); only the test target needs it.
POSTGRES := /usr/lib/postgresql
DEMO_OUT ?= runs/demo

.PHONY: demo test venv data postgres clean

venv: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-installs only when pyproject.toml changes; an already complete venv is reused as is.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

data: $(FASHION_MNIST)

$(FASHION_MNIST):
	apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist)

postgres: $(POSTGRES)

$(POSTGRES):
	apt-get install -y postgresql || (apt-get update && apt-get install -y postgresql)

# Two workers (CI has 2 cores); whole files per worker, so a file's module fixtures run once.
test: $(STAMP) $(FASHION_MNIST) $(POSTGRES)
	$(PY) -m pytest -q -n 2 --dist loadfile

demo: $(STAMP) $(FASHION_MNIST)
	$(PY) examples/demo.py --out $(DEMO_OUT)

clean:
	rm -rf runs build *.egg-info
