# recsys: run `make help` to list the targets.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
HOME_DIR ?= data

.DEFAULT_GOAL := help
.PHONY: help setup demo test lint format bench clean

help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/recsys: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

setup: $(BIN)/recsys ## Create .venv and install the project with its dev extras.

demo: $(BIN)/recsys ## Run the whole pipeline on the built-in simulator (home: ./data).
	$(BIN)/recsys pipeline --home $(HOME_DIR)

test: $(BIN)/recsys ## Run the test suite.
	$(BIN)/pytest -q

lint: $(BIN)/recsys ## Lint with ruff.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(BIN)/recsys ## Format and auto-fix with ruff.
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(BIN)/recsys ## Run every benchmark (prints figures; ~1 h; set REDIS_URL for Redis).
	$(BIN)/python benchmarks/simulate.py
	$(BIN)/python benchmarks/warehouse.py --sizes 1M,10M
	$(BIN)/python benchmarks/feature_store.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/baselines.py
	$(BIN)/python benchmarks/served_quality.py --events ../shared/data/taobao_user_behavior_sample.csv --format taobao --tz Asia/Shanghai

clean: ## Remove the default home (./data) and caches.
	rm -rf $(HOME_DIR) .pytest_cache .ruff_cache
