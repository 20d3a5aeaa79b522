"""The whole pipeline through the command lines, as `make demo` runs it: synthetic ETH3D scene →
engine shards → strategy-B LoRA on the tiny model → base-vs-adapter evaluation report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ASSETS = Path(__file__).parent / "assets"


def run(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_synth_to_shards_to_training_to_report(synth_root: Path, tmp_path: Path):
    shards, run_dir, report = tmp_path / "shards", tmp_path / "run", tmp_path / "eval"
    run(
        "dataengine",
        "build",
        "--root",
        str(synth_root),
        "--out",
        str(shards),
        "--scenes",
        "synth_facade",
        "--size",
        "56",
        "--frames",
        "4",
        "--stride",
        "2",
        "--samples-per-shard",
        "1",
        "--quiet",
    )
    assert "OK" in run("dataengine", "verify", str(shards)).upper()
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["splits"]["train"]["samples"] >= 2 and manifest["splits"]["val"]["samples"] >= 1

    log = run(
        "trainer",
        "train",
        "--config",
        "configs/demo.yaml",
        "--shards",
        str(shards),
        "--out",
        str(run_dir),
        "--max-steps",
        "12",
        "--set",
        "val_every=12",
        "save_every=12",
        "log_every=4",
    )
    assert "trainable params: 198,176" in log
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/objective"] for r in records if "train/objective" in r]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and adapter_config["lora_alpha"] == 32

    out = run(
        "trainer",
        "eval",
        "--shards",
        str(shards),
        "--split",
        "val",
        "--run",
        str(run_dir),
        "--device",
        "cpu",
        "--max-pictures",
        "1",
        "--out",
        str(report),
    )
    assert "AbsRel base" in out
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["counts"]["frames"] == 4 * manifest["splits"]["val"]["samples"]
    assert metrics["counts"]["pixels"] > 0
    for model in ("base", "adapter"):
        assert 0 <= metrics["overall"][model]["abs_rel"] < 10
    text = (report / "report.md").read_text()
    assert "| abs_rel |" in text and "sequence" in text
    for picture in metrics["pictures"]:
        with Image.open(report / picture) as png:
            assert png.format == "PNG" and png.width > 300
