# Everything a newcomer needs: `make run` starts the whole system, `make test` proves it works.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck unit integration e2e browser browser-test bench bench-stream screenshots lock schemas clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==0.13.8"
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/icc up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -m unit -q

integration: $(STAMP)
	$(BIN)/pytest -m integration -q

e2e: $(STAMP)
	$(BIN)/pytest -m e2e -q

# The browser tests drive Debian's Chromium; CI (root, Debian) gets it from apt when missing.
browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium)

browser-test: $(STAMP) browser
	$(BIN)/pytest -m browser -q

screenshots: $(STAMP) browser
	ICC_SCREENSHOT_DIR=docs/screenshots $(BIN)/pytest -m browser -q

test: $(STAMP) lint typecheck browser
	$(BIN)/pytest -q -ra

bench: $(STAMP)
	$(BIN)/python -m icc.bench
	$(BIN)/python -m icc.bench_hl7
	$(BIN)/python -m icc.bench_ingest_batch
	$(BIN)/python -m icc.bench_state
	$(BIN)/python -m icc.bench_stream

bench-stream: $(STAMP)
	$(BIN)/python -m icc.bench_stream

schemas: $(STAMP)
	$(BIN)/icc schemas docs/schemas

lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev -o requirements.lock --python-version 3.11

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
