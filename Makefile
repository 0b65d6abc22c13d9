# One entry point. `make run` serves the demo; `make test` runs the test suite.
# Both create .venv with Python 3.12 and install the pinned requirements when they changed.
SHELL := /bin/bash
export PYENV_VERSION ?= 3.12.1
PYTHON ?= $(shell command -v python3.12 2>/dev/null || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
KERAS_HOME ?= $(HOME)/.keras
FASHION_MNIST_DIR ?= $(abspath ../shared/data/fashion-mnist)
export KERAS_HOME FASHION_MNIST_DIR

.PHONY: run test test-fast bench install prime-keras clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $@

install: $(VENV)/.installed

# Keras reads Fashion-MNIST from $KERAS_HOME/datasets/fashion-mnist/ before downloading it.
prime-keras:
	@mkdir -p $(KERAS_HOME)/datasets/fashion-mnist
	@for f in $(FASHION_MNIST_DIR)/*.gz; do \
	  [ -e "$$f" ] && [ ! -e $(KERAS_HOME)/datasets/fashion-mnist/$$(basename $$f) ] && cp "$$f" $(KERAS_HOME)/datasets/fashion-mnist/ || true; \
	done

run: install prime-keras
	$(PY) manage.py rundemo

test: install
	$(PY) -m pytest

# The unit tier only (no worker processes, no browser): a quick loop while coding.
test-fast: install
	$(PY) -m pytest -m "not worker and not slow"

bench: install prime-keras
	$(PY) bench/run_all.py --quick

clean:
	rm -rf var .pytest_cache
