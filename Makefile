# Two commands: `make demo` and `make test`. Both create .venv once and reuse it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.se-inject-installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
DEMO_OUT ?= runs/demo

.PHONY: demo test venv data clean

venv: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-installs only when pyproject.toml changes; an already complete venv is reused as is.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,hf]'
	touch $(STAMP)

data: $(FASHION_MNIST)

$(FASHION_MNIST):
	apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist)

# Two workers (CI has 2 cores); whole files per worker, so a file's module fixtures run once.
test: $(STAMP) $(FASHION_MNIST)
	$(PY) -m pytest -q -n 2 --dist loadfile

demo: $(STAMP) $(FASHION_MNIST)
	$(PY) examples/demo.py --out $(DEMO_OUT)

clean:
	rm -rf runs build *.egg-info
