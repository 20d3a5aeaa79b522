"""The trainer needs only the core dependencies: `python -m trainer` trains on shards with the engine's,
downloader's and tests' packages (numba, pycolmap, py7zr) made unimportable. The same run takes the CUDA-only
paths' CPU side: precision=bf16 is CPU autocast, pinned memory and fused AdamW are switched off cleanly."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
TINY_WEIGHTS = ROOT / "tests" / "assets" / "vggt_tiny_reference.safetensors"
BLOCKED = ("numba", "llvmlite", "pycolmap", "py7zr", "pytest")

# Runs `python -m trainer ARGS` with BLOCKED made unimportable, then proves the block held.
RUNNER = """
import importlib.abc, runpy, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked: the trainer must not need it")
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]
sys.meta_path.insert(0, Block())
sys.argv = ["trainer", *sys.argv[1:]]
try:
    runpy.run_module("trainer", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    if exc.code not in (0, None):
        raise
for name in BLOCKED:
    try:
        __import__(name)
        print("NOT BLOCKED", name)
    except ImportError:
        print("blocked", name)
"""


def run_trainer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", RUNNER.format(blocked=BLOCKED), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_help_and_bf16_cpu_training_without_engine_dependencies(shards, tmp_path):
    help_ = run_trainer("--help")
    assert help_.returncode == 0 and "train" in help_.stdout, help_.stderr[-2000:]
    out = tmp_path / "run"
    proc = run_trainer(
        "train",
        "--config",
        str(ROOT / "configs" / "strategy_b.yaml"),
        "--shards",
        str(shards),
        "--model",
        "tiny",
        "--weights",
        str(TINY_WEIGHTS),
        "--out",
        str(out),
        "--max-steps",
        "3",
        "--set",
        "precision=bf16",
        "data.pin_memory=true",
        "data.frames=2",
        "data.num_workers=0",
        "optim.accum_steps=1",
        "val_every=0",
        "save_every=0",
        "log_every=1",
        "lr=1e-3",
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert [line for line in proc.stdout.splitlines() if "blocked" in line] == [f"blocked {n}" for n in BLOCKED]
    meta = yaml.safe_load((out / "config.yaml").read_text())["meta"]
    assert meta["precision"] == "bf16" and meta["device"] == "cpu"
    losses = [
        json.loads(line)["train/objective"]
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if "train/objective" in json.loads(line)
    ]
    assert len(losses) == 3 and all(math.isfinite(x) and x > 0 for x in losses)
    # AdamW ran unfused on CPU (fused is CUDA-only here) and the step counter advanced.
    state = torch.load(out / "checkpoints" / "step_0000003" / "trainer_state.pt", weights_only=False)
    assert state["optimizer"]["param_groups"][0]["fused"] is False
    assert all(float(s["step"]) == 3 for s in state["optimizer"]["state"].values())


def test_bf16_autocast_really_runs_in_bf16_on_cpu(shards, tmp_path):
    """The loop's bf16 path on CPU: the aggregator's Linear outputs are bf16, the loss fp32 and finite."""
    from trainer.config import load_config
    from trainer.train import train
    from trainer.vggt import VGGT

    seen: list[torch.dtype] = []
    original = VGGT.forward

    def spy(self, images, *a, **k):
        hook = self.aggregator.frame_blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        try:
            return original(self, images, *a, **k)
        finally:
            hook.remove()

    cfg = load_config(
        ROOT / "configs" / "strategy_b.yaml",
        [
            "model=tiny",
            f"weights={TINY_WEIGHTS}",
            f"data.shards={shards}",
            f"out={tmp_path / 'bf16'}",
            "data.frames=2",
            "data.num_workers=0",
            "optim.accum_steps=1",
            "val_every=0",
            "save_every=0",
            "max_steps=2",
            "precision=bf16",
            "data.pin_memory=true",
        ],
    )
    VGGT.forward = spy
    try:
        result = train(cfg)
    finally:
        VGGT.forward = original
    assert seen and set(seen) == {torch.bfloat16}
    assert len(result.losses) == 2 and all(math.isfinite(x) for x in result.losses)


def test_pinned_memory_is_off_without_cuda(shards):
    from trainer.data import make_loader

    loader = make_loader(str(shards), "train", 1, shuffle=False, num_workers=0, frames=2, pin_memory=True)
    batch = next(iter(loader.epoch_batches(0)))
    assert loader.pin_memory and not torch.cuda.is_available()
    assert not batch["images"].is_pinned() and batch["images"].dtype == torch.uint8
