# inline-cmr: `make train` and `make test` are all a new user needs; both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: install train test test-slow bench export promote clean

install: $(STAMP)

# Idempotent: creates .venv if missing, (re)installs only when the dependency files change.
# The scanner-side runtime alone: pip install -c constraints.txt . (no training stack).
# Every pip call passes -c constraints.txt, which pins torch==2.13.0 (the CPU wheel).
$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e ".[train,dev,onnx]"
	@touch $(STAMP)

train: install  ## train, test and deploy the default AIF model (3CS MONAI BasicUNet on synthetic phantoms)
	$(PY) train.py $(ARGS)

test: install  ## fast test suite (< 10 min on 2 cores)
	$(PY) -m pytest -q $(ARGS)

test-slow: install  ## long tests marked `slow`
	$(PY) -m pytest -q -m slow $(ARGS)

bench: install  ## benchmarks that print figures (never part of the test suite)
	$(PY) benchmarks/train_throughput.py $(ARGS)

export: install  ## export a checkpoint as the scanner artifact: make export CKPT=logs/train/runs/<run>/checkpoints/<best>.ckpt
	@test -n "$(CKPT)" || { echo "usage: make export CKPT=<run dir>/checkpoints/<file>.ckpt [ARGS='--onnx --output PATH']"; exit 2; }
	$(PY) -m callbacks.export "$(CKPT)" $(ARGS)

promote: install  ## deploy a run's export (or roll back): make promote RUN=<run dir | .ts | NAME@VERSION>
	@test -n "$(RUN)" || { echo "usage: make promote RUN=<run dir | exported .ts | NAME@VERSION> [ARGS='--name NAME']"; exit 2; }
	$(PY) -m sweeps.promotion "$(RUN)" $(ARGS)

clean:  ## remove the environment, run outputs and caches (keeps data/ and artifacts/)
	rm -rf $(VENV) logs outputs multirun wandb .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
