"""Freeze Open3D's voxel down-sampling and DA3's evaluate_3d_reconstruction (with down-sampling) on small clouds.

Produces tests/assets/da3_open3d_reference.npz for tests/trainer/test_da3_reference.py. Open3D (~400 MB) is
not a project dependency, so run this once in a separate environment that has it:

    python3.11 -m venv /tmp/o3d && /tmp/o3d/bin/pip install --no-deps open3d==0.20.0 depth-anything-3==0.1.1
    /tmp/o3d/bin/pip install "numpy<2" scipy torch addict einops
    /tmp/o3d/bin/python tests/assets/make_da3_open3d_reference.py

(Open3D 0.20's wheel also needs libusb-1.0.so.0 at import, e.g. from the `libusb-package` wheel via
LD_LIBRARY_PATH, and imports plotly and dash for its visualisation module: empty stand-ins on PYTHONPATH
will do, none of that code runs here.)

Coordinates are multiples of 2^-10 m (exact in float64, and they compress): some points fall exactly on
voxel boundaries, which pins down the boundary rule too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d
from depth_anything_3.bench.utils import evaluate_3d_reconstruction

OUT = Path(__file__).with_name("da3_open3d_reference.npz")
KEYS = ("acc", "comp", "overall", "precision", "recall", "fscore")
# (predicted points, GT points, extent in metres, voxel size, threshold): the last two are DA3's ETH3D settings.
CASES = (
    (700, 900, 1.0, 0.0390625, 0.25),
    (900, 700, 0.6, 0.0390625, 0.05),
    (600, 800, 6.0, 0.25, 0.5),
    (800, 600, 0.3, 0.015625, 0.02),
    (500, 500, 2.0, 0.1, 0.1),
)


def quantised(points: np.ndarray) -> np.ndarray:
    return np.round(points * 1024) / 1024


def surface(rng: np.random.Generator, n: int, extent: float) -> np.ndarray:
    """Points on a gently curved sheet (dense enough that voxels merge points)."""
    xy = rng.uniform(0, extent, size=(n, 2))
    return quantised(np.concatenate([xy, 0.1 * extent * np.sin(3 * xy[:, :1])], axis=1))


def down_sample(points: np.ndarray, voxel: float) -> np.ndarray:
    cloud = o3d.geometry.PointCloud()
    cloud.points = o3d.utility.Vector3dVector(points)
    return np.asarray(cloud.voxel_down_sample(voxel).points)


def main() -> None:
    rng = np.random.default_rng(2026)
    arrays: dict[str, np.ndarray] = {"cases": np.array(len(CASES)), "keys": np.array(KEYS)}
    for i, (n_pred, n_gt, extent, voxel, threshold) in enumerate(CASES):
        gt = surface(rng, n_gt, extent)
        # Close points plus 20 % outliers up to an extent away, so that precision and recall are not 1.
        noise = rng.normal(0, extent / 50, size=(n_pred, 3))
        outliers = rng.random(n_pred) < 0.2
        noise[outliers] = rng.uniform(-extent, extent, size=(int(outliers.sum()), 3))
        pred = quantised(gt[rng.choice(n_gt, n_pred)] + noise)
        metrics = evaluate_3d_reconstruction(pred, gt, threshold=threshold, down_sample=voxel)
        arrays.update(
            {
                f"pred_{i}": pred,
                f"gt_{i}": gt,
                f"voxel_{i}": np.array(voxel),
                f"threshold_{i}": np.array(threshold),
                f"pred_down_{i}": down_sample(pred, voxel),
                f"gt_down_{i}": down_sample(gt, voxel),
                f"metrics_{i}": np.array([metrics[k] for k in KEYS]),
            }
        )
        print(i, len(arrays[f"pred_down_{i}"]), len(arrays[f"gt_down_{i}"]), metrics)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes) with open3d {o3d.__version__}")


if __name__ == "__main__":
    main()
