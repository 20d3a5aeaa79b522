"""Engine throughput for distorted photos (`--format colmap`) against the ETH3D path, same run.

Input: a synthetic ETH3D scene (dataengine.synth, `--scale`) and a COLMAP project made from the SAME
JPEGs: each photo is declared taken by an OPENCV camera with real distortion (k1 = -0.12,
k2 = 0.04, tangential terms), so the engine undistorts it through a genuine per-camera map; the
dense workspace holds MVS depth maps of the analytic scene at half the photo size (as
patch_match_stereo --max_image_size writes), noise, holes and outliers like dataengine.synth.colmap_project.
Per frame, one thread, CPU time (time.thread_time), median over frames x reps, paths interleaved
frame by frame (background load hits them alike):

  eth3d laser    frames.process_frame on the ETH3D scene (DCT decode, area resample, laser depth)
  eth3d sparse   the same with --depth sparse
  colmap sparse  frames.process_frame --format colmap --depth sparse: the undistortion image path
  colmap mvs     --depth mvs: + consistency filter against the 4 most covisible maps + plane pooling

plus the one-off map build per camera. Ratios colmap / eth3d per depth kind are the result.

    NUMBA_CACHE_DIR=.numba_cache .venv/bin/python benchmarks/colmap_engine.py [--scale 0.5]
        [--frames 5] [--reps 3] [--work DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import cpu_time, machine_info  # noqa: E402  benchmarks/engine.py, importable after the sys.path line

OPENCV_DISTORTION = (-0.12, 0.04, 4e-4, -3e-4)


def make_colmap_project(eth3d_scene: Path, project: Path, neighbours_maps: bool = True) -> None:
    """The ETH3D scene's undistorted JPEGs as a COLMAP project with OPENCV cameras + MVS maps."""
    from dataengine.colmap_text import read_model
    from dataengine.mvs import write_depth_map
    from dataengine.synth import SceneGeometry

    model = read_model(eth3d_scene / "dslr_calibration_undistorted")
    sparse = project / "sparse" / "0"
    sparse.mkdir(parents=True)
    dense_sparse = project / "dense" / "sparse"
    dense_sparse.mkdir(parents=True)
    src_sparse = eth3d_scene / "dslr_calibration_undistorted"
    for name in ("images.txt", "points3D.txt"):
        shutil.copy(src_sparse / name, sparse / name)
        shutil.copy(src_sparse / name, dense_sparse / name)
    lines, dense_lines = [], []
    for cid, cam in sorted(model.cameras.items()):
        fx, fy, cx, cy = (float(v) for v in cam.params)
        lines.append(
            f"{cid} OPENCV {cam.width} {cam.height} {fx!r} {fy!r} {cx!r} {cy!r} "
            + " ".join(repr(v) for v in OPENCV_DISTORTION)
        )
        dense_lines.append(f"{cid} PINHOLE {cam.width} {cam.height} {fx!r} {fy!r} {cx!r} {cy!r}")
    (sparse / "cameras.txt").write_text("\n".join(lines) + "\n")
    (dense_sparse / "cameras.txt").write_text("\n".join(dense_lines) + "\n")
    (project / "images").symlink_to((eth3d_scene / "images").resolve())
    geometry = SceneGeometry.from_scene_dir(eth3d_scene)
    rng = np.random.default_rng(0)
    maps = project / "dense" / "stereo" / "depth_maps"
    for img in model.images.values():
        cam = model.cameras[img.camera_id]
        w, h = cam.width // 2, cam.height // 2
        fx, fy, cx, cy = cam.params
        sx, sy = w / cam.width, h / cam.height
        K = np.array([[fx * sx, 0, cx * sx - 0.5], [0, fy * sy, cy * sy - 0.5], [0, 0, 1.0]])
        z = geometry.zdepth(K, img.rotation, img.tvec, w, h)
        depth = np.where(np.isfinite(z), z, 0.0) * (1 + rng.normal(0, 0.002, z.shape))
        depth[rng.random(z.shape) < 0.02] *= 0.6
        path = maps / f"{img.name}.geometric.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_depth_map(path, depth.astype(np.float32))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=0.5, help="ETH3D synth scale (1 = 6048x4032)")
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("build/bench/colmap_engine"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--reuse", action="store_true", help="keep the inputs of a previous run in --work")
    args = ap.parse_args()

    from dataengine.config import BuildConfig
    from dataengine.eth3d import load_scene
    from dataengine.frames import process_frame
    from dataengine.mvs import MvsConfig
    from dataengine.synth import generate_scene
    from dataengine.undistort import _cache as map_cache
    from dataengine.undistort import undistort_map

    info = machine_info()
    eth3d_root, colmap_root = args.work / "eth3d", args.work / "colmap"
    if not (args.reuse and (colmap_root / "bench" / "dense").is_dir()):
        shutil.rmtree(args.work, ignore_errors=True)
        t0 = time.time()
        generate_scene(eth3d_root, scene="bench", images=args.frames, scale=args.scale, seed=0)
        make_colmap_project(eth3d_root / "bench", colmap_root / "bench")
        print(f"inputs generated in {time.time() - t0:.0f} s")

    base = BuildConfig(root=eth3d_root, out=args.work / "out", scenes=("bench",))
    cfgs = {
        "eth3d laser": base,
        "eth3d sparse": replace(base, depth="sparse"),
        "colmap sparse": replace(base, root=colmap_root, format="colmap", depth="sparse"),
        "colmap mvs": replace(base, root=colmap_root, format="colmap", depth="mvs", mvs=MvsConfig(neighbours=4)),
    }
    scenes = {
        "eth3d laser": load_scene(eth3d_root / "bench", "laser"),
        "eth3d sparse": load_scene(eth3d_root / "bench", "sparse"),
        "colmap sparse": cfgs["colmap sparse"].source.load(cfgs["colmap sparse"], ["bench"])[0],
        "colmap mvs": cfgs["colmap mvs"].source.load(cfgs["colmap mvs"], ["bench"])[0],
    }
    src = scenes["colmap sparse"].frames[0]
    map_cache.clear()
    map_s = cpu_time(undistort_map, src.camera, base.width, base.height, base.fit, "valid")
    umap = undistort_map(src.camera, base.width, base.height, base.fit, "valid")
    for name in cfgs:  # warm numba, page cache and the per-camera maps
        process_frame(cfgs[name].source, scenes[name].frames[0], scenes[name], cfgs[name])
    times = {name: [] for name in cfgs}
    for _ in range(args.reps):
        for i in range(args.frames):
            for name in cfgs:
                frame = scenes[name].frames[i]
                times[name].append(cpu_time(process_frame, cfgs[name].source, frame, scenes[name], cfgs[name]))
    med = {name: 1e3 * statistics.median(v) for name, v in times.items()}
    result = {
        "machine": info,
        "scale": args.scale,
        "frames": args.frames,
        "reps": args.reps,
        "photo_size": [src.camera.width, src.camera.height],
        "output": [base.width, base.height],
        "decode_reduction": umap.reduction,
        "taps": umap.taps,
        "map_build_ms": round(1e3 * map_s, 1),
        "per_frame_cpu_ms": {k: round(v, 1) for k, v in med.items()},
        "ratio_sparse": round(med["colmap sparse"] / med["eth3d sparse"], 3),
        "ratio_mvs_vs_laser": round(med["colmap mvs"] / med["eth3d laser"], 3),
        "load_avg_at_end": info and [round(x, 2) for x in __import__("os").getloadavg()],
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
