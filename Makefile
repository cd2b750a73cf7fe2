# rlar: `make run` trains the embedded default end to end; `make test` runs the fast tests, `make test-all` all of them.
# Both create .venv (if missing) and install the project into it first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision must be a matching pair; override e.g. TORCH_SPEC="torch==2.9.1 torchvision==0.24.1"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
TEST_WORKERS ?= 2

.PHONY: help install run test test-all bench gpu-check rehearsal ablation schedules lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev,sweep,slurm,clip,wandb,hub]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install rlar with its dependencies

run: $(STAMP)  ## fine-tune the embedded default (digits, VQ, GPT, GRPO, the default reward) on this machine
	$(VENV)/bin/rlar-run $(ARGS)

test: $(STAMP)  ## the fast tests: no training run, no subprocess (pytest -m "not slow", 2 single-threaded workers); PYTEST_ARGS passes on
	OMP_NUM_THREADS=1 RLAR_BUILD_THREADS=1 $(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --durations=15 $(PYTEST_ARGS)

test-all: $(STAMP)  ## every test, the slow ones too (training runs, subprocesses, servers, torchrun); what CI runs
	$(PY) -m pytest -q --durations=25 $(PYTEST_ARGS)

bench: $(STAMP)  ## sampler throughput (KV cache vs naive, vs HF generate), the time split of one iteration
	$(VENV)/bin/rlar-bench

gpu-check: $(STAMP)  ## on one GPU (<= 8 min): the CUDA paths, LlamaGen decode tokens/s and bandwidth (no GPU: says so)
	$(PY) -m rlar.studies.gpu_check $(ARGS)

rehearsal: $(STAMP)  ## the LlamaGen recipe on the CPU: GPT-B, random weights, 2-process FSDP2, sharded save, resume
	$(PY) -m rlar.studies.rehearsal $(ARGS)

ablation: $(STAMP)  ## run a study of experiments/ and write its report: make ablation STUDY=algorithms
	$(VENV)/bin/rlar-ablation $(STUDY) $(ARGS)

schedules: $(STAMP)  ## learned ARPG decoding schedule vs fixed arccos at 4/8/16/32 steps (experiments/arpg_schedule/)
	$(PY) -m rlar.studies.schedule_study $(ARGS)

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check rlar tests

clean:  ## remove the virtual environment, outputs and caches (not ~/.cache/rlar)
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
