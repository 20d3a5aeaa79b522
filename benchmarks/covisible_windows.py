"""Mutual overlap of covisible vs sequential windows on synthetic COLMAP projects (numbers → RESULTS.md).

Overlap of a window = mean over its frame pairs of shared 3-D points / min(points seen by either)
(and Jaccard: shared / union); the table gives the mean over windows (train and val) for both
modes, same frames, same split. Sequential = image-name order, i.e. random for shuffled names.

    .venv/bin/python benchmarks/covisible_windows.py [--work DIR] [--images 24] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("build/bench/covisible"))
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()

    from dataengine.colmap_project import load_colmap_scene
    from dataengine.synth.colmap_project import generate_colmap_project
    from dataengine.windows import WindowConfig, covisible_windows, frame_covisibility, scene_windows, window_overlap

    print("| seed | images | frames/stride | overlap (min) sequential | covisible | Jaccard sequential | covisible |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for seed in (int(s) for s in args.seeds.split(",")):
        path = generate_colmap_project(
            args.work, scene=f"s{seed}", images=args.images, scale=0.1, seed=seed, dense=False
        )
        scene = load_colmap_scene(path.name, path, depth="sparse")
        cov = frame_covisibility([f.observed for f in scene.frames])
        for frames, stride in ((4, 2), (8, 4)):
            cfg = WindowConfig(frames=frames, stride=stride)
            seq = scene_windows(scene.name, len(cov), cfg)
            vis = covisible_windows(scene.name, cov, cfg)
            row = [window_overlap(w["train"] + w["val"], cov, kind) for kind in ("min", "jaccard") for w in (seq, vis)]
            print(f"| {seed} | {len(cov)} | {frames}/{stride} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
