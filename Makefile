# MSC sweep platform. `make help` lists the targets.
SHELL := /bin/bash
PY_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
SPEC ?= experiments/sweeps/default.yaml
ABLATION ?= experiments/ablations/components.yaml
ADDRESS ?=
RESUME ?=
ARGS ?=
MLFLOW_PORT ?= 5000
export MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db

.PHONY: help setup lint test test-fast bench sweep ablation tables mlflow-ui cluster-up cluster-down clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PY_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install everything (torch CPU build first)

lint: $(STAMP) ## check the tree with ruff (pyflakes, isort, bugbear; pyproject.toml [tool.ruff])
	$(PY) -m ruff check .

test: lint ## lint, then run the whole test suite, slow Ray/MLflow tests included
	$(PY) -m pytest -q --timeout=600 tests

test-fast: $(STAMP) ## run the tests without the slow marker
	$(PY) -m pytest -q -m "not slow" tests

bench: $(STAMP) ## measure speed and memory; prints a table, writes bench/results.json
	$(PY) -m bench.run $(ARGS)

sweep: $(STAMP) ## run a Ray Tune sweep (SPEC=..., ADDRESS=host:port, RESUME=1, ARGS="key=value --option")
	$(VENV)/bin/msc sweep $(SPEC) $(if $(ADDRESS),--address $(ADDRESS)) $(if $(RESUME),--resume) $(ARGS)

ablation: $(STAMP) ## run the paper's Tab. 1 component grid and write its tables
	$(VENV)/bin/msc ablation $(ABLATION) $(if $(ADDRESS),--address $(ADDRESS)) $(if $(RESUME),--resume) $(ARGS)

tables: $(STAMP) ## write tables and plots for an MLflow experiment (EXPERIMENT=name)
	$(if $(EXPERIMENT),,$(error make tables needs EXPERIMENT=<MLflow experiment name>))
	$(VENV)/bin/msc tables --experiment $(EXPERIMENT) $(ARGS)

mlflow-ui: $(STAMP) ## open the MLflow UI on the same store; prints each experiment's runs page (MLFLOW_PORT=...)
	$(PY) -m msc_platform.reports.ui_pages --port $(MLFLOW_PORT) --tracking-uri $(MLFLOW_TRACKING_URI)
	$(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port $(MLFLOW_PORT)

cluster-up: $(STAMP) ## start a two-node Ray cluster here (head 127.0.0.2:6379 + worker); docs/sweeps.md
	$(PY) -m msc_platform.cluster up $(ARGS)

cluster-down: $(STAMP) ## stop the local Ray cluster
	$(PY) -m msc_platform.cluster down

clean: ## remove runs, caches and the local MLflow store (keeps .venv)
	rm -rf runs .cache mlflow.db mlartifacts
