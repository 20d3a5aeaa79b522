"""Metric-step benchmark of the held-out evaluation (CPU): points/s of the point-map metric, Umeyama,
the MVD depth metrics and pose AUC, at the size of one ETH3D protocol sample.

One VGGT point-map sample is 10 frames at 518x518 with ~50 % valid GT pixels: ~1.3 M predicted and
~1.3 M GT points. The scene here is analytic (three planes and a cylinder, like a facade with a
column), the prediction a similarity of it plus noise; the metric cost depends only on the counts.

  kdtree   trainer.metrics.pointmap_accuracy_completeness (scipy cKDTree, all cores and 1 thread)
  brute    the O(N·M) baseline: torch.cdist in chunks, min over the reference (same process, same
           points; measured on a subset because it is quadratic, and compared at that size)

    .venv/bin/python benchmarks/eval_metrics.py [--points 1300000] [--brute-points 40000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from functools import partial

import numpy as np
import torch

from trainer.metrics import (
    apply_similarity,
    mvd_depth_metrics,
    pointmap_accuracy_completeness,
    pose_auc,
    ransac_umeyama,
    umeyama,
)


def scene_points(count: int, rng: np.random.Generator) -> np.ndarray:
    """Points on a facade-like surface: a wall, a ground plane, a side wall and a column."""
    kind = rng.integers(0, 4, count)
    u, v = rng.random(count), rng.random(count)
    points = np.empty((count, 3))
    points[kind == 0] = np.stack([20 * u, 10 * v, np.full(count, 15.0)], 1)[kind == 0]  # wall
    points[kind == 1] = np.stack([20 * u, np.full(count, 10.0), 15 * v], 1)[kind == 1]  # ground
    points[kind == 2] = np.stack([np.zeros(count), 10 * v, 15 * u], 1)[kind == 2]  # side wall
    angle = 2 * np.pi * u
    column = np.stack([10 + np.cos(angle), 10 * v, 10 + np.sin(angle)], 1)
    points[kind == 3] = column[kind == 3]
    return points


def brute_force_nearest(query: np.ndarray, reference: np.ndarray, chunk: int = 2048) -> np.ndarray:
    q, r = torch.from_numpy(query), torch.from_numpy(reference)
    return torch.cat([torch.cdist(q[i : i + chunk], r).min(1).values for i in range(0, len(q), chunk)]).numpy()


def timed(fn, repeats: int = 3) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1_300_000, help="predicted (= GT) points of one sample")
    ap.add_argument("--brute-points", type=int, default=40_000, help="points for the brute-force comparison")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cores = len(os.sched_getaffinity(0))
    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min": os.getloadavg()[0],
    }
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        pass
    print(f"machine: {info}")
    results: dict = {"machine": info, "points": args.points}

    gt = scene_points(args.points, rng)
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    rotation *= np.sign(np.linalg.det(rotation))
    pred_raw = apply_similarity(gt, 0.13, rotation, np.array([0.5, -1.0, 2.0])) + rng.normal(scale=0.002, size=gt.shape)

    t, fit = timed(lambda: umeyama(pred_raw, gt))
    results["umeyama_s"] = t
    print(f"umeyama on {args.points:,} pairs: {t * 1e3:.0f} ms ({args.points / t / 1e6:.1f} M points/s)")
    t, _ = timed(lambda: ransac_umeyama(pred_raw, gt, inlier_threshold=0.2), repeats=1)
    results["ransac_umeyama_s"] = t
    print(f"ransac_umeyama (256 hypotheses + refits): {t * 1e3:.0f} ms")
    pred = apply_similarity(pred_raw, *fit)

    for workers, name in ((-1, "all cores"), (1, "1 thread")):
        t, scores = timed(partial(pointmap_accuracy_completeness, pred, gt, workers=workers), repeats=2)
        rate = 2 * args.points / t
        results[f"kdtree_{workers}_s"] = t
        print(
            f"accuracy/completeness {args.points:,} + {args.points:,} points, KD-tree ({name}): {t:.2f} s "
            f"({rate / 1e6:.2f} M points/s); acc {scores[0]:.4f} comp {scores[1]:.4f}"
        )

    n = args.brute_points
    small_pred, small_gt = pred[:n], gt[:n]
    t_brute, brute = timed(
        lambda: (brute_force_nearest(small_pred, small_gt).mean(), brute_force_nearest(small_gt, small_pred).mean()),
        repeats=1,
    )
    t_kd, kd = timed(lambda: pointmap_accuracy_completeness(small_pred, small_gt)[:2])
    assert abs(brute[0] - kd[0]) < 1e-9 * max(1.0, kd[0]) and abs(brute[1] - kd[1]) < 1e-9 * max(1.0, kd[1])
    results.update(brute_points=n, brute_s=t_brute, kdtree_small_s=t_kd)
    print(
        f"at {n:,} + {n:,} points: brute force (torch.cdist, chunked) {t_brute:.2f} s, KD-tree {t_kd * 1e3:.0f} ms "
        f"-> {t_brute / t_kd:.0f}x; same means (|diff| < 1e-9)"
    )
    quadratic = t_brute * (args.points / n) ** 2
    print(f"brute force extrapolated (quadratic) to {args.points:,} points: ~{quadratic / 60:.0f} min per sample")

    frames, side = 10, 518
    gt_depth = 2 + 20 * rng.random((frames, side, side))
    valid = rng.random((frames, side, side)) > 0.5
    pred_depth = gt_depth * rng.uniform(0.5, 2.0, (frames, 1, 1)) * (1 + 0.01 * rng.normal(size=gt_depth.shape))
    t, _ = timed(
        lambda: (
            mvd_depth_metrics(pred_depth, gt_depth, valid, "frame"),
            mvd_depth_metrics(pred_depth, gt_depth, valid, "sequence"),
        )
    )
    results["mvd_s"] = t
    print(f"MVD metrics (frame + sequence scaling) on {frames}x{side}x{side}: {t * 1e3:.0f} ms")
    extrinsics = np.concatenate(
        [np.stack([np.linalg.qr(rng.normal(size=(3, 3)))[0] for _ in range(76)]), rng.normal(size=(76, 3, 1))], 2
    )
    t, _ = timed(lambda: pose_auc(extrinsics, extrinsics + 0.01 * rng.normal(size=extrinsics.shape)))
    results["pose_auc_76_frames_s"] = t
    print(f"pose AUC on 76 frames (2,850 pairs): {t * 1e3:.0f} ms")

    per_scene = 2 * 2 * results["kdtree_-1_s"] + 4 * results["umeyama_s"] + 2 * results["mvd_s"]
    results["metric_step_per_scene_s"] = per_scene
    print(
        f"metric step per held-out scene (2 models x 2 point-map sources + MVD + pose): ~{per_scene:.1f} s; "
        f"8 scenes: ~{8 * per_scene:.0f} s on this CPU"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
