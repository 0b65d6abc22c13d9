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

.PHONY: run test test-fast bench bench-backbone bench-runtimes bench-deps install browser-deps prime-keras clean deploy-check

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

# DEBUG is off unless asked for; rundemo asks for it (DEBUG=1) for its web server, unless DEBUG is set.
run: install prime-keras
	$(PY) manage.py rundemo

# The browser tests drive Debian's Chromium (tests/ui/test_browser.py). Missing, it is installed here
# when we are root with apt-get (CI, containers); otherwise `make test` stops with the command to
# run. LOOKALIKE_SKIP_BROWSER=1 skips those tests instead, on purpose (and says so).
CHROMIUM := /usr/bin/chromium
CHROMIUM_PACKAGES := chromium chromium-driver

browser-deps:
	@if [ "$${LOOKALIKE_SKIP_BROWSER:-0}" != 0 ]; then \
	  echo "LOOKALIKE_SKIP_BROWSER=$$LOOKALIKE_SKIP_BROWSER: the browser tests are skipped."; \
	elif [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Debian's $(CHROMIUM_PACKAGES) for the browser tests..."; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CHROMIUM_PACKAGES) >/dev/null \
	      && test -x $(CHROMIUM) || { echo "Installing $(CHROMIUM_PACKAGES) failed (see above)." >&2; exit 1; }; \
	  else \
	    echo "The browser tests need Debian's Chromium ($(CHROMIUM) is missing). Install it with:" >&2; \
	    echo "    sudo apt-get install -y $(CHROMIUM_PACKAGES)" >&2; \
	    echo "or skip those tests on purpose: LOOKALIKE_SKIP_BROWSER=1 make test" >&2; \
	    exit 1; \
	  fi; \
	fi

test: install browser-deps
	$(PY) -m pytest

# The unit tier only (no worker processes, no browser): a quick loop while coding.
test-fast: install
	$(PY) -m pytest -m "not worker and not slow and not browser"

# bench/web_load.py drives GET levels with Debian's wrk (a compiled load generator); missing, it is
# installed here when we are root with apt-get, else the benchmark says so and uses its thread pool.
bench-deps:
	@if ! command -v wrk >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Debian's wrk for bench/web_load.py..."; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null || \
	      echo "Installing wrk failed: bench/web_load.py falls back to its thread pool." >&2; \
	  else \
	    echo "wrk is missing (sudo apt-get install -y wrk): bench/web_load.py falls back to its thread pool." >&2; \
	  fi; \
	fi

bench: install prime-keras bench-deps
	$(PY) bench/run_all.py --quick

# The backbone kind with a 12-epoch schedule (the product's is 6) on 15,000 images: ~30 min on 2 cores.
bench-backbone: install prime-keras
	$(PY) bench/run_all.py --quick --only backbone_training

# The backbone's inference runtimes side by side at 224 px (Keras, TF settings, OpenVINO fp32/bf16/int8,
# ONNX Runtime): ~10 min on 2 quiet cores; it waits for the machine to be quiet before each one.
bench-runtimes: install prime-keras
	$(PY) -m pip install --quiet -r requirements-bench.txt
	$(PY) -m pip install --quiet --no-deps nncf==3.4.0
	$(PY) bench/runtimes.py

# The deployment files (deploy/, docs/deployment.md), without a Docker engine or systemd running:
# what they name (tests/config/test_deploy_files.py), then `docker compose config` and
# `systemd-analyze verify` (deploy/check.sh). Needs: apt-get install -y --no-install-recommends
# docker-compose systemd (or Docker's docker-compose-plugin instead of docker-compose).
deploy-check: install
	$(PY) -m pytest -q tests/config/test_deploy_files.py
	bash deploy/check.sh

clean:
	rm -rf var .pytest_cache
