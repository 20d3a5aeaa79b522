"""Training-step benchmark per LoRA strategy: step time, samples/s, data-wait %, peak memory.

Runs the real loop (`trainer.train.train`) on engine-built shards, one fresh process per strategy,
and reports the steady-state window (the second half of the steps; the first half holds start-up).

  CPU (always):  the tiny model (test fixture weights), fp32, S frames at --cpu-size²;
                 peak memory = the process's peak RSS.
  CUDA (if any): VGGT-1B with random init, bf16 autocast, 8 × 518², activation checkpointing as in
                 each strategy's config; peak memory = torch.cuda.max_memory_allocated, next to
                 the fake-tensor trace of the same step (trainer/memory.py).
                 Prints "skipped: no CUDA" on a machine without a GPU.

The existing ETH3D LoRA fork's claims (RTX 5090, labelled estimates there) are printed alongside.

    NUMBA_CACHE_DIR=.numba_cache .venv/bin/python benchmarks/train_step.py [--steps 8] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY_WEIGHTS = ROOT / "tests" / "assets" / "vggt_tiny_reference.safetensors"
PEER_CLAIMS = {"a": "12 GB, 15 min/epoch", "b": "20 GB, 30 min/epoch", "c": "28 GB, 45 min/epoch"}


def build_shards(work: Path, size: int, frames: int, scale: float) -> Path:
    from dataengine.build import build_shards
    from dataengine.config import BuildConfig
    from dataengine.synth import generate_scene
    from dataengine.windows import WindowConfig

    root, out = work / f"eth3d_{scale}", work / f"shards_{size}_{frames}"
    if not (root / "bench_facade" / "images").exists():
        generate_scene(root, scene="bench_facade", images=16, scale=scale, seed=0)
    if not (out / "manifest.json").exists():
        build_shards(
            BuildConfig(
                root=root,
                out=out,
                scenes=("bench_facade",),
                width=size,
                height=size,
                samples_per_shard=1,
                progress=False,
                windows=WindowConfig(frames=frames, stride=2, val_fraction=0.0),
            )
        )
    return out


def child(args: argparse.Namespace) -> None:
    """One strategy in this process; prints one JSON line."""
    from trainer.config import load_config
    from trainer.train import train

    cuda = args.device == "cuda"
    sets = [
        f"data.shards={args.shards}",
        f"out={args.out}",
        f"max_steps={args.steps}",
        f"log_every={max(1, args.steps // 2)}",
        "val_every=0",
        "val_batches=0",
        "save_every=0",
        "optim.accum_steps=1",
        "data.batch_size=1",
        f"data.num_workers={args.workers}",
    ]
    if cuda:
        sets += ["model=vggt-1b", "weights=none", "precision=bf16"]
    else:
        sets += ["model=tiny", f"weights={TINY_WEIGHTS}", "precision=fp32"]
    cfg = load_config(ROOT / "configs" / f"strategy_{args.strategy}.yaml", sets)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    train(cfg)
    records = [json.loads(line) for line in (Path(args.out) / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "perf/step_time_s" in r][-1]
    meta = (Path(args.out) / "config.yaml").read_text()
    trainable = int(next(line.split(":")[1] for line in meta.splitlines() if "trainable_params" in line))
    result = {
        "strategy": args.strategy,
        "trainable": trainable,
        "step_time_s": last["perf/step_time_s"],
        "samples_per_s": last["perf/samples_per_s"],
        "data_wait_pct": last["perf/data_wait_pct"],
        "peak_mem_gb": last["perf/peak_mem_gb"] if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "activation_checkpointing": cfg.activation_checkpointing,
    }
    if cuda:  # the fake-tensor trace of the same step (trainer/memory.py), to check it against the allocator
        from trainer.memory import estimate_step_memory

        result["traced_gb"] = estimate_step_memory(cfg, frames=8, size=518).total / 1e9
    print("RESULT " + json.dumps(result))


def run_strategy(strategy: str, device: str, shards: Path, work: Path, steps: int, workers: int) -> dict:
    out = work / f"run_{device}_{strategy}"
    cmd = [
        sys.executable,
        __file__,
        "--child",
        strategy,
        "--device",
        device,
        "--shards",
        str(shards),
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--workers",
        str(workers),
    ]
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"strategy {strategy} on {device} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def print_table(title: str, rows: list[dict], mem_label: str, peers: bool) -> None:
    print(title)
    header = (
        f"  {'strategy':8} {'trainable':>11} {'ckpt':>5} {'step s':>8} {'samples/s':>10} {'data-wait':>10} "
        f"{mem_label:>12}"
    )
    print(header + ("   peer claim (RTX 5090)" if peers else ""))
    for r in rows:
        line = (
            f"  {r['strategy']:8} {r['trainable']:>11,} {'on' if r['activation_checkpointing'] else 'off':>5} "
            f"{r['step_time_s']:8.3f} {r['samples_per_s']:10.2f} {r['data_wait_pct']:9.2f}% {r['peak_mem_gb']:12.2f}"
        )
        traced = f"   traced {r['traced_gb']:.2f} GB" if "traced_gb" in r else ""
        print(line + traced + (f"   {PEER_CLAIMS[r['strategy']]}" if peers else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="steps per strategy (second half is measured)")
    parser.add_argument("--gpu-steps", type=int, default=12)
    parser.add_argument("--strategies", nargs="+", default=["a", "b", "c"])
    parser.add_argument("--cpu-size", type=int, default=126, help="CPU image size (multiple of 14)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.strategy = args.child
        child(args)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="train-step-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {}

    shards = build_shards(work, args.cpu_size, args.frames, scale=0.1)
    rows = [run_strategy(s, "cpu", shards, work, args.steps, args.workers) for s in args.strategies]
    print_table(f"CPU, tiny model, fp32, {args.frames} x {args.cpu_size}², batch 1:", rows, "peak RSS GB", False)
    report["cpu"] = rows

    if torch.cuda.is_available():
        shards = build_shards(work, 518, 8, scale=0.25)
        rows = [run_strategy(s, "cuda", shards, work, args.gpu_steps, args.workers) for s in args.strategies]
        print_table(
            f"{torch.cuda.get_device_name()}, VGGT-1B (random init), bf16, 8 x 518², batch 1:", rows, "peak GB", True
        )
        report["cuda"] = rows
    else:
        print("full-size VGGT-1B bf16 8 x 518²: skipped: no CUDA")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
