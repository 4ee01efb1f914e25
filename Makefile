# Two commands do all the set-up on a fresh machine:
#   make demo   -- virtual environments, local Label Studio + S3 server, digits, real rounds
#   make test   -- virtual environments, then the whole test suite against real servers
# The connector and the Label Studio server live in separate virtual environments, as they
# would in a real deployment (Label Studio pins its own versions of shared libraries).

PYTHON ?= python3
VENV ?= .venv
LS_VENV ?= .venv-ls
LABEL_STUDIO_VERSION ?= 1.23.2
PIP_FLAGS ?= --disable-pip-version-check --quiet

BIN := $(VENV)/bin
LS_BIN := $(LS_VENV)/bin
export ALC_TEST_LABEL_STUDIO_BIN ?= $(abspath $(LS_BIN))/label-studio

.PHONY: help venv ls-venv browser test test-fault test-fast lint format demo bench clean

help:
	@echo "make demo   run the connector end to end on a local Label Studio + S3 with digits"
	@echo "make test   install everything and run the test suite"
	@echo "make lint   ruff + mypy"
	@echo "make bench  run the benchmarks and print their tables"

# constraints.txt pins every version (the ones the tests pass with), here and in the image.
$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "al-connector needs Python >= 3.10"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) --upgrade pip
	$(BIN)/pip install $(PIP_FLAGS) -c constraints.txt -e '.[demo,test,dev,bench,ray]'
	touch $@

$(LS_BIN)/.installed:
	test -x $(LS_BIN)/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_BIN)/pip install $(PIP_FLAGS) --upgrade pip
	$(LS_BIN)/pip install $(PIP_FLAGS) 'label-studio==$(LABEL_STUDIO_VERSION)'
	touch $@

venv: $(BIN)/.installed
ls-venv: $(LS_BIN)/.installed

test: venv ls-venv browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# 30 SIGKILLs of a running daemon against the real servers (docs/reliability.md), alone
# (`make test` runs it too), with its figures printed.
test-fault: venv ls-venv
	$(BIN)/python -m pytest -m fault -s $(PYTEST_ARGS)

# tests/test_browser.py drives Debian's headless Chromium; install it when it is missing.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver; }

# Unit tests only: no Label Studio server, no S3 server.
test-fast: venv
	$(BIN)/python -m pytest -m "not labelstudio and not s3 and not slow" $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: venv ls-venv
	$(BIN)/al-connector demo --label-studio-bin $(ALC_TEST_LABEL_STUDIO_BIN) $(DEMO_ARGS)

bench: venv ls-venv
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(LS_VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
