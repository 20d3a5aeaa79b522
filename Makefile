# Developer interface. `make demo` and `make test` work on a fresh machine with Python 3.11 + pip.
#
# TORCH selects how torch is installed before the project (the project itself only needs torch>=2.4):
#   default             torch==2.13.0   (pip picks the build for the platform: CUDA on a Linux GPU box
#                                        from PyPI; a local CPU wheel where one is provided, as on our CI)
#   force a CPU build   make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
#   force a CUDA build  make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON     ?= $(shell command -v python3.11 || command -v python3)
VENV       ?= .venv
TORCH      ?= torch==2.13.0
PY         := $(VENV)/bin/python
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache

# Real-data path
ETH3D_ROOT ?= data/eth3d
# `training` = facade,electro,office,terrace,delivery_area (dataengine/scenes.py); `heldout`, `eth3d` also work
SCENES     ?= training
SHARDS     ?= shards/eth3d
STRATEGY   ?= b
WEIGHTS    ?= facebook/VGGT-1B
RUN        ?= runs/strategy_$(STRATEGY)
# Held-out evaluation (the 8 ETH3D training scenes not trained on; docs/evaluation.md)
HELDOUT_SHARDS ?= shards/eth3d_heldout
EVAL_FRAMES    ?= 10
EVAL_SEED      ?= 0
# Model and device of eval-heldout / eval-base (default: the run's model, the base's preset, cuda if any):
# MODEL=tiny DEVICE=cpu, or any other `trainer eval` arguments in EVAL_MODEL_ARGS.
MODEL          ?=
DEVICE         ?=
EVAL_MODEL_ARGS ?= $(if $(MODEL),--model $(MODEL)) $(if $(DEVICE),--device $(DEVICE))
BASE_EVAL_OUT  ?= runs/base_eval_heldout
# The held-out path on synthetic scenes (make demo-heldout; docs/evaluation.md "Synthetic recipe")
DEMO_HELDOUT   ?= build/demo_heldout
# The demo
DEMO       ?= build/demo
DEMO_COLMAP ?= build/demo_colmap
# Offline install over an existing (CUDA) torch, and the GPU check (README: GPU clusters / offline)
WHEELHOUSE     ?= wheelhouse
PYTHON_VERSION ?= 3.12
PLATFORM       ?= manylinux_2_28_x86_64
EXTRAS         ?= engine
TORCH_SPEC     ?= torch
SKIP           ?=
PIP_ARGS       ?=
BUDGET         ?= 420
GPU_CHECK_OUT  ?= build/gpu_check
CHECK_PY       ?= $(if $(wildcard $(VENV)/.installed),$(PY),$(PYTHON))

.PHONY: help setup constraints test lint demo demo-colmap demo-heldout download shards train eval bench wheelhouse setup-system gpu-check heldout-shards eval-heldout eval-base da3-shards eval-base-da3
.DEFAULT_GOAL := help

help:
	@echo "make demo                 whole pipeline on a generated ETH3D-format scene, tiny model, CPU"
	@echo "make demo-colmap          the same from a generated COLMAP project (distorted photos, MVS depth)"
	@echo "make demo-heldout         the held-out evaluation path (eval-heldout, eval-base) on synthetic scenes, CPU"
	@echo "make test                 the test suite (CPU)"
	@echo "make lint                 ruff check + ruff format --check (pyproject.toml [tool.ruff])"
	@echo "make download             fetch ETH3D scenes into ETH3D_ROOT=$(ETH3D_ROOT)"
	@echo "make shards               build + verify shards SHARDS=$(SHARDS) from ETH3D_ROOT"
	@echo "make train STRATEGY=a|b|c LoRA fine-tune VGGT-1B (WEIGHTS=$(WEIGHTS)) on SHARDS"
	@echo "make eval RUN=runs/NAME   base vs adapter report on the val split"
	@echo "make heldout-shards       download + build the 8 held-out scenes as evaluation samples"
	@echo "make eval-heldout RUN=... published ETH3D protocols, base vs adapter, held-out + in-domain val"
	@echo "make eval-base            the same protocols for the base model alone (compare with the papers)"
	@echo "make da3-shards           download + build DA3's ETH3D pose set (11 scenes, its frame draw)"
	@echo "make eval-base-da3        base-model pose AUC on that set, DA3's rule next to DA3 Tab. 2"
	@echo "make bench                engine, loader, model-forward, train-step and step-memory benchmarks"
	@echo "make setup                create $(VENV) and install (TORCH=... chooses the torch build)"
	@echo "make constraints          re-pin constraints.txt to the versions installed in $(VENV)"
	@echo "make wheelhouse           wheels for PYTHON_VERSION=$(PYTHON_VERSION) PLATFORM=$(PLATFORM), no torch/CUDA (SKIP=what the target has)"
	@echo "make setup-system         install into PYTHON from WHEELHOUSE offline, keeping its torch"
	@echo "make gpu-check            bounded GPU check (BUDGET=$(BUDGET) s) -> GPU_CHECK_OUT=$(GPU_CHECK_OUT)"

# constraints.txt pins every dependency (torch aside) to the versions the suite last passed with, so a
# fresh install months from now resolves the same set; `make constraints` refreshes it from .venv.
# peers.txt: pinned peer packages (other models' code the tests run as references) installed without their
# dependencies into $(VENV)/peers, off the interpreter's path (examples/peer_env.activate() adds it): its
# torchvision would break `import transformers`, i.e. PEFT; the few small modules they import are the `peers` extra.
$(VENV)/.installed: pyproject.toml constraints.txt peers.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all]"
	$(PY) -m pip install --quiet --no-deps --upgrade --target $(VENV)/peers -r peers.txt
	$(PY) -m dataengine.zlib_first --install
	touch $@

constraints:
	@{ echo "# Tested dependency versions (torch and its own dependencies excluded: TORCH chooses them)."; \
	   echo "# Regenerate with 'make constraints' after a green 'make test' on upgraded packages."; \
	   $(PY) -m pip freeze --exclude-editable | grep -v -i -E '^(torch|triton|nvidia-|sympy|mpmath|networkx|#)'; \
	 } > constraints.txt
	@echo "constraints.txt: $$(grep -c '==' constraints.txt) pinned packages"

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q --durations=20

# `$(PY) -m ruff format .` applies the formatting that the second command checks.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

demo: setup
	rm -rf $(DEMO)
	$(PY) -m dataengine synth $(DEMO)/eth3d --scene demo_facade --images 12 --scale 0.1 --seed 0
	$(PY) -m dataengine build --root $(DEMO)/eth3d --out $(DEMO)/shards --scenes demo_facade \
		--size 112 --frames 4 --stride 2 --samples-per-shard 1 --quiet
	$(PY) -m dataengine verify $(DEMO)/shards
	$(PY) -m dataengine inspect $(DEMO)/shards --png $(DEMO)/sample.png
	$(PY) -m trainer train --config configs/demo.yaml --shards $(DEMO)/shards --out $(DEMO)/run
	$(PY) -m trainer eval --shards $(DEMO)/shards --split val --run $(DEMO)/run --device cpu \
		--max-pictures 2 --out $(DEMO)/eval
	@echo "demo done: shards in $(DEMO)/shards, run in $(DEMO)/run, report in $(DEMO)/eval/report.md"

# Own captures (docs/own-captures.md) on a synthetic COLMAP project: OPENCV, SIMPLE_RADIAL and
# OPENCV_FISHEYE photos under shuffled names, a binary sparse model and MVS depth maps.
demo-colmap: setup
	rm -rf $(DEMO_COLMAP)
	$(PY) -m dataengine synth --format colmap $(DEMO_COLMAP)/colmap --scene demo_capture --images 12 \
		--scale 0.25 --seed 0
	$(PY) -m dataengine build --format colmap --root $(DEMO_COLMAP)/colmap --out $(DEMO_COLMAP)/shards \
		--windows covisible --size 112 --frames 4 --stride 2 --samples-per-shard 1 --quiet
	$(PY) -m dataengine verify $(DEMO_COLMAP)/shards
	$(PY) -m dataengine inspect $(DEMO_COLMAP)/shards --png $(DEMO_COLMAP)/sample.png
	$(PY) -m trainer train --config configs/demo.yaml --shards $(DEMO_COLMAP)/shards --out $(DEMO_COLMAP)/run
	$(PY) -m trainer eval --shards $(DEMO_COLMAP)/shards --split val --run $(DEMO_COLMAP)/run --device cpu \
		--max-pictures 2 --out $(DEMO_COLMAP)/eval
	@echo "demo-colmap done: shards in $(DEMO_COLMAP)/shards, run in $(DEMO_COLMAP)/run," \
		"report in $(DEMO_COLMAP)/eval/report.md"

download: setup
	$(PY) -m dataengine download --root $(ETH3D_ROOT) --scenes $(SCENES)

shards: setup
	@test -d $(ETH3D_ROOT) || { echo "$(ETH3D_ROOT) is missing. Run 'make download' (per scene it fetches" \
		"<scene>_dslr_undistorted.7z, <scene>_dslr_jpg.7z, <scene>_dslr_depth.7z and" \
		"<scene>_dslr_occlusion.7z from https://www.eth3d.net/data/ and extracts them), or set ETH3D_ROOT."; exit 1; }
	$(PY) -m dataengine build --root $(ETH3D_ROOT) --out $(SHARDS) --scenes $(SCENES)
	$(PY) -m dataengine verify $(SHARDS)

train: setup
	$(PY) -m trainer train --config configs/strategy_$(STRATEGY).yaml --shards $(SHARDS) \
		--weights $(WEIGHTS) --out $(RUN)

eval: setup
	$(PY) -m trainer eval --shards $(SHARDS) --split val --run $(RUN) --out $(RUN)/eval

heldout-shards: setup
	$(PY) -m dataengine download --root $(ETH3D_ROOT) --scenes heldout
	$(PY) -m dataengine build --root $(ETH3D_ROOT) --out $(HELDOUT_SHARDS)/random$(EVAL_FRAMES) --scenes heldout \
		--sampling random --frames $(EVAL_FRAMES) --seed $(EVAL_SEED) --samples-per-shard 1
	$(PY) -m dataengine build --root $(ETH3D_ROOT) --out $(HELDOUT_SHARDS)/all_frames --scenes heldout \
		--sampling uniform --frames 100 --samples-per-shard 1
	$(PY) -m dataengine verify $(HELDOUT_SHARDS)/random$(EVAL_FRAMES)
	$(PY) -m dataengine verify $(HELDOUT_SHARDS)/all_frames

# Point maps + depth on EVAL_FRAMES random frames per scene (VGGT protocol), pose AUC on all frames
# (DA3 protocol, <= 100), and all three on the in-domain val windows of SHARDS.
EVAL_MODEL = $(if $(filter eval-base,$@),--weights $(WEIGHTS),--run $(RUN)) $(EVAL_MODEL_ARGS)
EVAL_OUT   = $(if $(filter eval-base,$@),$(BASE_EVAL_OUT),$(RUN)/eval_heldout)
eval-heldout eval-base: setup
	@test -d $(HELDOUT_SHARDS)/all_frames || { echo "$(HELDOUT_SHARDS) is missing: run 'make heldout-shards'"; exit 1; }
	$(PY) -m trainer eval --protocol eth3d-pointmap,eth3d-mvd --shards $(HELDOUT_SHARDS)/random$(EVAL_FRAMES) \
		$(EVAL_MODEL) --out $(EVAL_OUT)/pointmap_mvd
	$(PY) -m trainer eval --protocol eth3d-pose --shards $(HELDOUT_SHARDS)/all_frames $(EVAL_MODEL) \
		--out $(EVAL_OUT)/pose
	$(PY) -m trainer eval --protocol all --shards $(SHARDS) --split val $(EVAL_MODEL) --out $(EVAL_OUT)/in_domain_val

# Depth Anything 3's ETH3D pose setup (11 scenes, its filtered images dropped, <= 100 frames by its
# random.seed(42) draw; docs/evaluation.md): the base model's sanity check against DA3 Tab. 2.
DA3_SHARDS ?= shards/eth3d_da3
da3-shards: setup
	$(PY) -m dataengine download --root $(ETH3D_ROOT) --scenes da3
	$(PY) -m dataengine build --root $(ETH3D_ROOT) --out $(DA3_SHARDS) --scenes da3 --sampling da3 --frames 100 \
		--samples-per-shard 1
	$(PY) -m dataengine verify $(DA3_SHARDS)

eval-base-da3: setup
	@test -d $(DA3_SHARDS) || { echo "$(DA3_SHARDS) is missing: run 'make da3-shards'"; exit 1; }
	$(PY) -m trainer eval --protocol eth3d-pose --shards $(DA3_SHARDS) --weights $(WEIGHTS) --out runs/base_eval_da3/pose

# The whole held-out path in minutes on CPU: one synthetic scene to train on, two held-out ones built as
# evaluation samples (5 random frames; all_frames = 10 of their 12 frames), then eval-heldout and eval-base
# with the tiny model.
demo-heldout: setup
	rm -rf $(DEMO_HELDOUT)
	$(PY) -m dataengine synth $(DEMO_HELDOUT)/eth3d --scene synth_train --images 12 --scale 0.1 --seed 0
	$(PY) -m dataengine synth $(DEMO_HELDOUT)/eth3d --scene synth_heldout_a --images 12 --scale 0.1 --seed 1
	$(PY) -m dataengine synth $(DEMO_HELDOUT)/eth3d --scene synth_heldout_b --images 12 --scale 0.1 --seed 2
	$(PY) -m dataengine build --root $(DEMO_HELDOUT)/eth3d --out $(DEMO_HELDOUT)/shards --scenes synth_train \
		--size 112 --frames 4 --stride 2 --samples-per-shard 1 --quiet
	$(PY) -m dataengine build --root $(DEMO_HELDOUT)/eth3d --out $(DEMO_HELDOUT)/heldout/random5 \
		--scenes synth_heldout_a,synth_heldout_b --size 112 --sampling random --frames 5 --seed 0 \
		--samples-per-shard 1 --quiet
	$(PY) -m dataengine build --root $(DEMO_HELDOUT)/eth3d --out $(DEMO_HELDOUT)/heldout/all_frames \
		--scenes synth_heldout_a,synth_heldout_b --size 112 --sampling uniform --frames 10 \
		--samples-per-shard 1 --quiet
	$(PY) -m trainer train --config configs/demo.yaml --shards $(DEMO_HELDOUT)/shards --out $(DEMO_HELDOUT)/run \
		--max-steps 10
	$(MAKE) eval-heldout RUN=$(DEMO_HELDOUT)/run SHARDS=$(DEMO_HELDOUT)/shards \
		HELDOUT_SHARDS=$(DEMO_HELDOUT)/heldout EVAL_FRAMES=5 DEVICE=cpu
	$(MAKE) eval-base WEIGHTS=tests/assets/vggt_tiny_reference.safetensors MODEL=tiny DEVICE=cpu \
		SHARDS=$(DEMO_HELDOUT)/shards HELDOUT_SHARDS=$(DEMO_HELDOUT)/heldout EVAL_FRAMES=5 \
		BASE_EVAL_OUT=$(DEMO_HELDOUT)/base_eval_heldout
	@echo "demo-heldout done: reports in $(DEMO_HELDOUT)/run/eval_heldout/*/report.md and" \
		"$(DEMO_HELDOUT)/base_eval_heldout/*/report.md"

bench: setup
	$(PY) benchmarks/engine.py --work build/bench/engine --json build/bench/engine.json
	$(PY) benchmarks/loader.py --work build/bench/loader --json build/bench/loader.json
	$(PY) benchmarks/model_forward.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/train_memory.py --json build/bench/train_memory.json
	$(PY) benchmarks/eval_metrics.py --json build/bench/eval_metrics.json

wheelhouse:
	$(PYTHON) tools/offline.py wheelhouse --out $(WHEELHOUSE) --python-version $(PYTHON_VERSION) \
		--platform $(PLATFORM) --extras "$(EXTRAS)" --torch "$(TORCH_SPEC)" --skip "$(SKIP)"

setup-system:
	$(PYTHON) tools/offline.py setup-system --wheelhouse $(WHEELHOUSE) --extras "$(EXTRAS)" --pip-args "$(PIP_ARGS)"
	$(PYTHON) -m dataengine.zlib_first --install

gpu-check:
	$(CHECK_PY) -m benchmarks.gpu_check --budget-s $(BUDGET) --out $(GPU_CHECK_OUT)
