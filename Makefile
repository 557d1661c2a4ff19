# The README's commands. `make run` and `make test` each set everything up first: `make run` what the
# main job needs (the package and its dependencies), the others the extras too (tests, Ray, rl-zoo3).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORE := $(VENV)/.installed-core
STAMP := $(VENV)/.installed

.PHONY: setup run test bench lint clean

$(CORE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned exactly: a looser spec makes pip fetch a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .
	touch $(CORE)

$(STAMP): $(CORE)
	$(BIN)/pip install --quiet -e ".[test,ray,zoo]"
	touch $(STAMP)

setup: $(STAMP)

run: $(CORE)
	$(BIN)/python -m experiments.reproduce autoscale --quick --scenarios bursty --agents ppo --total-timesteps 100000 --workers 3 --out runs/main/autoscale --run-dir runs/main/grid

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

bench: $(STAMP)
	$(BIN)/python -m experiments.benchmark

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
