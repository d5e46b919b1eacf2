# Two commands for a fresh Debian/Ubuntu machine with Python 3.11 (see README.md):
#   make run    set everything up, then train the offline default and print its summary
#   make test   set everything up, then run the test suite (this is what CI runs)
# Both are idempotent: the virtual environment is built once and reused.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.learndrop-installed
FASHION := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test setup data lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,lightning,tensorboard]'
	touch $(STAMP)

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package where apt is available.
data:
	@if [ ! -d $(FASHION) ] && command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q dataset-fashion-mnist >/dev/null; } || \
	  echo "note: could not install dataset-fashion-mnist; see README (Data)"; \
	fi

run: setup data
	$(BIN)/learndrop train --out runs/quickstart --overwrite

test: setup data
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4

lint: setup
	$(BIN)/ruff check learndrop tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
