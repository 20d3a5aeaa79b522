"""Loader benchmark: 8-frame samples/s from 518² shards vs a naive loader on full-size JPEGs.

  shards  trainer.data.make_loader over engine-built shards (simplejpeg decode of 8 × 518² JPEGs,
          depth/mask .npy, cameras.json → uint8 batch tensors): 0 DataLoader workers (default decode
          threads, and 1 thread = the per-core rate) and 2 workers; samples/s and CPU ms per sample
          (this process + its workers); `--baseline-rev REV` adds trainer/data.py of a git revision
          (one before the trainer/data/ package), interleaved, for a same-run before/after
  naive   what the existing ETH3D LoRA fork does per sample: parse the COLMAP text model, then
          PIL-decode each of the 8 full-size (6048×4032-class) undistorted JPEGs and resize to 518²

The full-size scene is synthetic (dataengine.synth at scale 1.0, 8 images, one window); its single
shard is replicated so an epoch holds `--samples` samples (same bytes, warm page cache).

Shard configurations are interleaved `--repeats` times (the machine is shared: report best and median
with the cores the other processes used meanwhile, /proc/stat busy time minus this benchmark's).

Then the data-wait of a training loop whose step leaves the CPU free for --step-ms (what a GPU
step does: CUDA kernels run asynchronously), across epoch boundaries, with and without starting
the next epoch's workers during the last batch (`Loader.batches_from`, used by the trainer).

    NUMBA_CACHE_DIR=.numba_cache .venv/bin/python benchmarks/loader.py [--samples 32] [--work DIR]
        [--repeats 3] [--baseline-rev 6636248] [--step-ms 300 100 50] [--fed-repeats 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def build_dataset(work: Path, samples: int) -> tuple[Path, Path]:
    from dataengine.build import build_shards
    from dataengine.config import BuildConfig
    from dataengine.synth import generate_scene
    from dataengine.windows import WindowConfig

    root, shards = work / "eth3d", work / "shards"
    scene_dir = root / "bench_facade"
    if not (scene_dir / "images").exists():
        t0 = time.perf_counter()
        generate_scene(root, scene="bench_facade", images=8, scale=1.0, seed=0)
        print(f"generated 8 full-size frames in {time.perf_counter() - t0:.0f} s")
    if not (shards / "manifest.json").exists():
        build_shards(
            BuildConfig(
                root=root,
                out=shards,
                scenes=("bench_facade",),
                samples_per_shard=1,
                progress=False,
                windows=WindowConfig(frames=8, stride=8, val_fraction=0.0),
            )
        )
    replicated = work / "replicated"
    shutil.rmtree(replicated, ignore_errors=True)
    replicated.mkdir()
    source = sorted(shards.glob("train-*.tar"))[0]
    for i in range(samples):
        os.link(source, replicated / f"train-{i:05d}.tar")
    return scene_dir, replicated


def load_make_loader(rev: str | None):
    """trainer.data.make_loader, or the one of git revision `rev` (for a same-run before/after)."""
    if rev is None:
        from trainer.data import make_loader

        return make_loader
    import importlib.util
    import subprocess

    shown = subprocess.run(
        ["git", "show", f"{rev}:trainer/data.py"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    if shown.returncode != 0:  # trainer/data/ is a package from the shardformat split on
        raise SystemExit(
            f"Error: {rev} has no single-file trainer/data.py ({shown.stderr.strip()}); "
            f"run benchmarks/loader.py in a worktree of {rev} instead"
        )
    source = shown.stdout
    path = Path(tempfile.mkdtemp(prefix="loader-rev-")) / f"data_{rev.replace('/', '_')}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # DataLoader workers (fork) find it by name
    spec.loader.exec_module(module)
    return module.make_loader


def busy_cpu_seconds() -> float:
    """CPU seconds all processes on the machine have used so far (/proc/stat; 0 where unavailable)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def shard_run(make_loader, shards: Path, workers: int, threads: int | None, epochs: int) -> dict[str, float]:
    """Steady-state samples/s over `epochs` epochs (after one warm-up epoch), and CPU ms per sample
    of this process plus its DataLoader workers (reaped at each epoch's end)."""
    options = {} if threads is None else {"decode_threads": threads}
    loader = make_loader(shards, "train", batch_size=1, shuffle=True, num_workers=workers, seed=0, **options)
    for _ in loader.epoch_batches(0):  # warm-up: worker start, page cache
        pass
    load = os.getloadavg()[0]
    c0, busy0, t0, n = os.times(), busy_cpu_seconds(), time.perf_counter(), 0
    for epoch in range(1, epochs + 1):
        for batch in loader.epoch_batches(epoch):
            n += batch["images"].shape[0]
    wall, c1, busy1 = time.perf_counter() - t0, os.times(), busy_cpu_seconds()
    cpu = sum(c1[:4]) - sum(c0[:4])  # user + system, self + children
    others = max(0.0, (busy1 - busy0 - cpu) / wall)  # cores the other processes used meanwhile
    return {"samples_per_s": n / wall, "cpu_ms_per_sample": 1000 * cpu / n, "load_before": load, "others_cores": others}


def fed_run(make_loader, shards: Path, step_s: float, steps: int, lookahead: bool) -> dict[str, float]:
    """Data-wait % of a training loop whose step leaves the CPU free for `step_s` (a GPU step: CUDA
    kernels run asynchronously) over `steps` steps crossing epoch boundaries; 2 DataLoader workers.
    lookahead=False iterates epoch by epoch (each epoch starts its workers when it is first asked)."""
    import itertools

    loader = make_loader(shards, "train", batch_size=1, shuffle=True, num_workers=2, seed=0)
    if lookahead:
        stream = loader.batches_from(0, 0)
    else:
        stream = (b for e in itertools.count() for b in loader.epoch_batches(e))
    next(stream)  # start-up (first fork, page cache) is not steady state
    wait, boundary_wait, n = 0.0, 0.0, loader.batches_per_epoch(0)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        time.sleep(step_s)
        t = time.perf_counter()
        next(stream)
        dt = time.perf_counter() - t
        wait += dt
        if step % n == 0:  # the first batch of an epoch
            boundary_wait += dt
    total = time.perf_counter() - t0
    return {
        "step_ms": 1000 * step_s,
        "data_wait_pct": 100 * wait / total,
        "per_batch_ms": 1000 * (wait - boundary_wait) / (steps - steps // n),
        "epoch_start_ms": 1000 * boundary_wait / max(1, steps // n),
    }


def naive_sample(scene_dir: Path, size: int = 518) -> np.ndarray:
    import pycolmap
    from PIL import Image

    model = pycolmap.Reconstruction(str(scene_dir / "dslr_calibration_undistorted"))
    frames = []
    for image in sorted(model.images.values(), key=lambda im: im.name)[:8]:
        with Image.open(scene_dir / "images" / image.name) as im:
            frames.append(np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)))
    return np.stack(frames)


def naive_rate(scene_dir: Path, samples: int) -> float:
    naive_sample(scene_dir)  # warm-up
    t0 = time.perf_counter()
    for _ in range(samples):
        naive_sample(scene_dir)
    return samples / (time.perf_counter() - t0)


# (label, DataLoader workers, decode threads; None = make_loader's default: CPUs / max(workers, 1))
CONFIGS = [("0 workers", 0, None), ("0 workers, 1 decode thread", 0, 1), ("2 workers", 2, None)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--samples", type=int, default=32, help="samples per shard epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every shard configuration")
    parser.add_argument("--naive-samples", type=int, default=3)
    parser.add_argument(
        "--baseline-rev",
        default=None,
        help="also time trainer/data.py of this git revision, interleaved (before/after)",
    )
    parser.add_argument("--work", type=Path, default=None, help="work dir (kept; default: a temp dir)")
    parser.add_argument(
        "--step-ms",
        type=float,
        nargs="*",
        default=[300.0, 100.0, 50.0],
        help="GPU-like step times for the data-wait runs (empty: skip them)",
    )
    parser.add_argument("--fed-repeats", type=int, default=1, help="interleaved repeats of the data-wait runs")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="loader-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    scene_dir, shards = build_dataset(work, args.samples)
    frame = sorted((scene_dir / "images").rglob("*.JPG"))[0]
    from PIL import Image

    with Image.open(frame) as im:
        full_size = im.size
    impls = {"current": load_make_loader(None)}
    if args.baseline_rev:
        impls[args.baseline_rev] = load_make_loader(args.baseline_rev)
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "full_size_jpeg": list(full_size),
        "samples_per_epoch": args.samples,
        "naive": {"load_before": os.getloadavg()[0], "samples_per_s": naive_rate(scene_dir, args.naive_samples)},
        "runs": [],
    }
    for repeat in range(args.repeats):
        for impl, make_loader in impls.items():
            for label, workers, threads in CONFIGS:
                if threads is not None and impl != "current":
                    continue  # older revisions have no decode threads
                run = shard_run(make_loader, shards, workers, threads, args.epochs)
                results["runs"].append({"impl": impl, "config": label, "repeat": repeat, **run})
                print(
                    f"  [{impl}, {label}, repeat {repeat}] {run['samples_per_s']:.1f} samples/s, "
                    f"{run['cpu_ms_per_sample']:.1f} CPU ms/sample, others used {run['others_cores']:.2f} cores, "
                    f"load {run['load_before']:.2f}",
                    flush=True,
                )
    naive = results["naive"]["samples_per_s"]
    print(
        f"8-frame samples/s (518² output; full-size JPEG {full_size[0]}x{full_size[1]}; "
        f"best / median of {args.repeats}; CPU ms per sample incl. workers, median):"
    )
    print(
        f"  naive (COLMAP text + PIL full decode + resize): {naive:8.2f}   (load {results['naive']['load_before']:.2f})"
    )
    summary = {}
    for impl in impls:
        for label, _, _ in CONFIGS:
            runs = [r for r in results["runs"] if r["impl"] == impl and r["config"] == label]
            if not runs:
                continue
            rates = [r["samples_per_s"] for r in runs]
            entry = {
                "best": max(rates),
                "median": float(np.median(rates)),
                "cpu_ms_per_sample": float(np.median([r["cpu_ms_per_sample"] for r in runs])),
                "load": [r["load_before"] for r in runs],
                "others_cores": [r["others_cores"] for r in runs],
            }
            summary[f"{impl}: {label}"] = entry
            others = ", ".join(f"{x:.2f}" for x in entry["others_cores"])
            print(
                f"  shards [{impl}], {label + ':':28s} {entry['best']:6.1f} / {entry['median']:6.1f}   "
                f"{entry['cpu_ms_per_sample']:5.1f} ms CPU   (others used {others} cores)"
            )
    best = max(summary["current: 0 workers"]["best"], summary["current: 2 workers"]["best"])
    results["summary"], results["speedup"] = summary, best / naive
    print(f"  speed-up (best current shard rate / naive): {results['speedup']:.0f}x")
    if args.step_ms:
        print(
            f"data-wait of a loop whose step leaves the CPU free (a GPU step), 2 workers, 2 epochs of "
            f"{args.samples} batches; epoch by epoch vs the next epoch started during the last batch:"
        )
        results["fed"] = []
        configs = itertools.product(range(args.fed_repeats), args.step_ms, impls.items(), (False, True))
        for repeat, step_ms, (impl, make_loader), lookahead in configs:  # implementations interleaved
            run = fed_run(make_loader, shards, step_ms / 1000, 2 * args.samples, lookahead)
            results["fed"].append({"impl": impl, "repeat": repeat, "lookahead": lookahead, **run})
            print(
                f"  [{impl}] step {step_ms:5.0f} ms, {'look-ahead   ' if lookahead else 'epoch by epoch'}: "
                f"data-wait {run['data_wait_pct']:5.2f} %  (per batch {run['per_batch_ms']:.1f} ms, "
                f"epoch start {run['epoch_start_ms']:.0f} ms)",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
