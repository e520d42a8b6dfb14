# Every target installs what it needs into .venv first (pinned CPU torch), so a fresh machine
# runs `make demo` or `make test` directly.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv demo test lint format clean bench

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[train,eval,dev,codec]"
	touch $@

## the main job: train the tiny config on the built-in corpus, save, reload with the Auto classes, report
## (accelerate launch, one CPU process: the form that works on a CPU-only machine, notes §7)
demo: venv
	$(VENV)/bin/accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no \
		--dynamo_backend no --num_cpu_threads_per_process 2 examples/train.py --config configs/tiny.yaml --output-dir runs/tiny

## the test suite (CPU, under 15 minutes on 2 cores), then the linters
test: venv
	$(PY) -m pytest -q --durations=15 tests
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf runs .pytest_cache .ruff_cache

## the benchmark against the peers (issues 10, 20): each family at its best frontier size (bench/frontier.md),
## Tiny Shakespeare scored after the 40 KB that chose hier_ae's config; about 95 minutes on 2 cores; resumes
bench: venv
	$(PY) -m bench.run --peer-params llama=1379232 --peer-params blt=8963904 --val-skip-bytes 40000
