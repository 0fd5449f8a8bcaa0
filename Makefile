# Developer and CI entry points. `make test` is what CI runs (through .ci/run), then
# `make test-pythons`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# One stamp per extra, touched after a successful install; editing pyproject.toml re-installs.
# The test extra includes the redis extra, so installing it satisfies the demo's stamp too.
TEST_STAMP := $(VENV)/.stamp-test
DEMO_STAMP := $(VENV)/.stamp-demo
# The unit tier and the install test also run on these (the package claims 3.10-3.13; `make
# test` runs everything on $(PYTHON)).
PYTHONS ?= 3.10 3.12 3.13

.PHONY: .venv test test-pythons lint format demo dist clean

.venv: $(TEST_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[test]'
	touch $@ $(DEMO_STAMP)

# What the demo runs (examples/): the package and the Redis client, no test or lint tools.
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[redis]'
	touch $@

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

# tests/unit and tests/acceptance/test_install.py's wheel test on each of $(PYTHONS), in
# .venv-X.Y (pyenv's interpreters); one not installed is skipped, or fails under CI=true.
test-pythons:
	$(PYTHON) tests/support/pythons.py $(PYTHONS)

format: $(TEST_STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: $(DEMO_STAMP)
	$(BIN)/python -m examples.demo

# The wheel and sdist into dist/, built in a throwaway venv (the build tools are no dependency).
dist:
	rm -rf dist
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
		$(PYTHON) -m venv "$$tmp" && "$$tmp/bin/pip" install --quiet build twine && \
		"$$tmp/bin/python" -m build --outdir dist . && "$$tmp/bin/twine" check --strict dist/*

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -path './$(VENV)-*' -prune -o -name __pycache__ -type d \
		-exec rm -rf {} +
