"""benchmarks/gpu_check.py in its CPU mode (`--device cpu --tiny`), run as users run it, so the GPU script
cannot rot: every stage reports finite numbers, and the fidelity stage really compares with the fixture."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from benchmarks.gpu_check import PEAK_BF16_TFLOPS, STAGES, peak_tflops

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "assets" / "vggt_tiny_reference.safetensors"


def run_check(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.gpu_check",
            "--device",
            "cpu",
            "--tiny",
            "--out",
            str(out),
            "--budget-s",
            "400",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def finite_numbers(value) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in finite_numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in finite_numbers(v)]
    return []


def test_tiny_cpu_mode_runs_every_stage(tmp_path):
    proc = run_check(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    stages = report["stages"]
    assert list(stages) == list(STAGES)
    assert {name: st["status"] for name, st in stages.items()} == dict.fromkeys(STAGES, "ok"), stages
    assert all(math.isfinite(x) for x in finite_numbers(stages))
    assert stages["env"]["sdpa"]["math"] == "ok" and stages["env"]["torch"] == torch.__version__
    fid = stages["fidelity"]
    assert 0 <= fid["fp32_max_rel_err"] < 1e-5 and fid["fp32_outputs_compared"] == 14
    assert all(0 < e <= fid["bf16_bound"] for e in fid["bf16_rel_err"].values())
    rows = {r["strategy"]: r for r in stages["steps"]["rows"]}
    assert set(rows) == {"a", "b", "c"}
    for r in rows.values():
        assert r["status"] == "ok" and r["median_s"] > 0 and r["losses_finite"]
        # The same step, measured (live tensor bytes) and traced with fake tensors: same order of size.
        assert 0.5 < r["peak_gb"] / r["traced_gb"] < 2.0, r
        assert r["flops_hardware"] >= r["flops_model"] > 0 and r["tflops"] > 0
    assert rows["a"]["trainable"] < rows["b"]["trainable"] < rows["c"]["trainable"]
    loop = stages["loop"]
    assert loop["steps"] == report["plan"]["loop_steps"] and loop["losses_finite"] and loop["samples_per_s"] > 0
    assert 0 <= loop["data_wait_pct"] <= 100
    opt = stages["optional"]
    assert opt["compile"]["speedup"] > 0 and [r["frames"] for r in opt["forward"]] == [1, 8, 24, 100]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| fidelity | ok |" in md and "| B |" in md


def test_fidelity_fails_on_a_corrupted_weight(tmp_path):
    tensors = load_file(str(FIXTURE))
    key = "model.aggregator.frame_blocks.0.mlp.fc1.weight"
    tensors[key] = tensors[key] * 1.001  # 0.1 % on one layer: far below what a glance at outputs would see
    bad = tmp_path / "corrupted.safetensors"
    save_file(tensors, str(bad))
    proc = run_check(tmp_path / "out", "--stages", "fidelity", "--fixture", str(bad))
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    fid = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["stages"]["fidelity"]
    assert fid["status"] == "fail" and fid["fp32_max_rel_err"] > 1e-5 and "off the fixture" in fid["note"]


def test_peak_table_lookup():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0 and peak_tflops("NVIDIA H100 NVL") == 835.0
    assert peak_tflops("NVIDIA H200") == 989.0 and peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("NVIDIA L40S") == 362.0 and peak_tflops("NVIDIA L4") == 121.0
    assert peak_tflops("Tesla V100-SXM2-16GB") is None
    assert all(v > 0 for _, v in PEAK_BF16_TFLOPS)
