# Every target creates .venv when it is missing and installs the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench fuzz chaos firmware pi-check clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,dev]'
	@touch $(STAMP)

demo: $(STAMP)
	@scripts/system-deps.sh demo || echo "(continuing: the demo skips what is missing)"
	@$(MAKE) -s -C firmware-bridge all || echo "(no C toolchain: the demo runs without the serial device)"
	$(BIN)/fieldgate demo

firmware:
	$(MAKE) -C firmware-bridge

test: $(STAMP)
	scripts/system-deps.sh test
	$(MAKE) -C firmware-bridge test
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check gateway adapters pushservice fieldgate_common
	$(BIN)/mypy

bench: $(STAMP)
	scripts/system-deps.sh bench
	$(MAKE) -C firmware-bridge
	$(BIN)/python -m bench

chaos: $(STAMP)
	scripts/system-deps.sh test
	$(MAKE) -C firmware-bridge all
	$(BIN)/python -m tests.chaos --messages 20000 $(if $(SEED),--seed $(SEED))

fuzz: $(STAMP)
	scripts/system-deps.sh test
	$(MAKE) -C firmware-bridge fuzz
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -k "property or fuzz or hypothesis"

# Install and run the checkout on emulated Raspberry Pi OS roots (arm64, armhf); as root.
pi-check:
	scripts/pi-check

clean:
	rm -rf $(VENV) firmware-bridge/build .pytest_cache .mypy_cache .ruff_cache
