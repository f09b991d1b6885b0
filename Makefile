# Two commands for a newcomer:  `make demo` (install + run the demo)  and  `make test`.
# Each creates .venv itself. GPU users: TORCH_INDEX=<PyTorch wheel index for your CUDA version>
# selects the torch build; see README "GPU".
PYTHON ?= python3
VENV ?= .venv
TORCH_INDEX ?=
WORKERS ?= 2
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# The quickstart, end to end on a CPU: pre-train the tiny backbones (cached), plan the isoFLOP sweep,
# train every run on local workers, fit the scaling laws and draw the figures (runs/quickstart/fit/).
demo: install
	$(BIN)/scaling backbone tiny
	$(BIN)/scaling sweep sweeps/quickstart.toml
	$(BIN)/scaling launch runs/quickstart --executor local --array-parallelism $(WORKERS) --wait
	$(BIN)/scaling fit runs/quickstart

lint: install
	$(BIN)/ruff check scaling tests
	$(BIN)/ruff format --check scaling tests

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
