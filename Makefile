# Two entry points: `make demo` (the main job on built-in synthetic data) and `make test` (the whole
# suite, what CI runs). `make test-fast` is the developer loop: every test not marked slow.
# All create or reuse the virtual environment in $(VENV).
VENV ?= .venv
PYTHON ?= $(shell command -v python3.11 || command -v python3)
PY := $(VENV)/bin/python
DEMO_OUT ?= demo_out

.PHONY: demo test test-fast lint install clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# constraints.txt pins the torch / torchvision pair this project is tested with; the package declares ranges.
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

demo: install
	HF_HUB_OFFLINE=1 PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh $(DEMO_OUT)

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest

test-fast: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean-demo:
	rm -rf $(DEMO_OUT)
