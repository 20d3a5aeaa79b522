"""Loader benchmark: 8-frame samples/s from 518² shards vs a naive loader on full-size JPEGs.

  shards  trainer.data.make_loader over engine-built shards (simplejpeg decode of 8 × 518² JPEGs,
          depth/mask .npy, cameras.json → uint8 batch tensors), 0 and 2 DataLoader workers
  naive   what the existing ETH3D LoRA fork does per sample: parse the COLMAP text model, then
          PIL-decode each of the 8 full-size (6048×4032-class) undistorted JPEGs and resize to 518²

The full-size scene is synthetic (dataengine.synth at scale 1.0, 8 images, one window); its single
shard is replicated so an epoch holds `--samples` samples (same bytes, warm page cache).

    NUMBA_CACHE_DIR=.numba_cache .venv/bin/python benchmarks/loader.py [--samples 32] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def build_dataset(work: Path, samples: int) -> tuple[Path, Path]:
    from dataengine.build import BuildConfig, build_shards
    from dataengine.synth import generate_scene
    from dataengine.windows import WindowConfig

    root, shards = work / "eth3d", work / "shards"
    scene_dir = root / "bench_facade"
    if not (scene_dir / "images").exists():
        t0 = time.perf_counter()
        generate_scene(root, scene="bench_facade", images=8, scale=1.0, seed=0)
        print(f"generated 8 full-size frames in {time.perf_counter() - t0:.0f} s")
    if not (shards / "manifest.json").exists():
        build_shards(BuildConfig(root=root, out=shards, scenes=("bench_facade",), samples_per_shard=1,
                                 progress=False, windows=WindowConfig(frames=8, stride=8, val_fraction=0.0)))
    replicated = work / "replicated"
    shutil.rmtree(replicated, ignore_errors=True)
    replicated.mkdir()
    source = sorted(shards.glob("train-*.tar"))[0]
    for i in range(samples):
        os.link(source, replicated / f"train-{i:05d}.tar")
    return scene_dir, replicated


def shard_rate(shards: Path, workers: int, epochs: int) -> float:
    from trainer.data import make_loader

    loader = make_loader(shards, "train", batch_size=1, shuffle=True, num_workers=workers, seed=0)
    for _ in loader.epoch_batches(0):  # warm-up: worker start, page cache
        pass
    t0, n = time.perf_counter(), 0
    for epoch in range(1, epochs + 1):
        for batch in loader.epoch_batches(epoch):
            n += batch["images"].shape[0]
    return n / (time.perf_counter() - t0)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--samples", type=int, default=32, help="samples per shard epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--naive-samples", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="work dir (kept; default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="loader-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    scene_dir, shards = build_dataset(work, args.samples)
    frame = sorted((scene_dir / "images").rglob("*.JPG"))[0]
    from PIL import Image

    with Image.open(frame) as im:
        full_size = im.size
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "full_size_jpeg": list(full_size),
        "naive_samples_per_s": naive_rate(scene_dir, args.naive_samples),
    }
    for workers in (0, 2):
        results[f"shards_samples_per_s_workers{workers}"] = shard_rate(shards, workers, args.epochs)
    best = max(results["shards_samples_per_s_workers0"], results["shards_samples_per_s_workers2"])
    results["speedup"] = best / results["naive_samples_per_s"]
    print(f"8-frame samples/s (518² output; full-size JPEG {full_size[0]}x{full_size[1]}):")
    print(f"  naive (COLMAP text + PIL full decode + resize): {results['naive_samples_per_s']:8.2f}")
    print(f"  shards, 0 workers:                              {results['shards_samples_per_s_workers0']:8.2f}")
    print(f"  shards, 2 workers:                              {results['shards_samples_per_s_workers2']:8.2f}")
    print(f"  speed-up: {results['speedup']:.0f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
