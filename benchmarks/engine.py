"""Data engine benchmark on full-size synthetic ETH3D frames (not a test; numbers → RESULTS.md).

Per frame: ~6200x4130 undistorted JPEG + 6048x4032 raw float32 GT + mask → one 518² frame with laser
depth. Compares, single thread (CPU time, median):
  engine    DCT-scaled decode + numba area resample + numba laser pooling (dataengine.build)
  baseline  the existing fork's way: PIL full-resolution decode + resize, depth mapping and pooling
            in plain numpy (no numba, no DCT scaling)
  floor     DCT-scaled decode alone + reading the depth file
plus 1 vs 2 worker threads (wall), the sparse mode, and a 214-frame (5-scene-sized) build on all
cores, whose frames are symlinks to the generated ones (warm page cache).

    NUMBA_CACHE_DIR=.numba_cache .venv/bin/python benchmarks/engine.py [--frames 4] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def cpu_time(fn, *args):
    t0 = time.thread_time()
    fn(*args)
    return time.thread_time() - t0


# ------------------------------------------------------------------------------------------ baseline
def baseline_frame(frame, width=518, height=518, k=8):
    """PIL full decode + centre-crop resize; numpy thin-prism mapping and nan-median pooling."""
    from PIL import Image

    from dataengine.camera import thin_prism_project
    from dataengine.images import encode_jpeg, fit_geometry

    geom = fit_geometry(frame.pinhole.width, frame.pinhole.height, width, height, "crop")
    with Image.open(frame.image_path) as im:
        im = im.convert("RGB")
        box = (geom.bx, geom.by, geom.bx + geom.ax * width, geom.by + geom.ay * height)
        rgb = np.asarray(im.resize((width, height), Image.Resampling.LANCZOS, box=box))
    encode_jpeg(rgb)
    prism = frame.prism
    gt = np.fromfile(frame.depth_path, dtype="<f4").reshape(prism.height, prism.width).copy()
    if frame.mask_path is not None:
        gt[np.asarray(Image.open(frame.mask_path)) > 0] = np.inf
    fx, fy, cx, cy = frame.pinhole.params
    out = np.zeros((height, width), np.float32)
    offs = (np.arange(k) + 0.5) / k
    for i in range(height):  # row by row keeps the sample arrays small
        ys = geom.ay * (i + offs) + geom.by
        xs = geom.ax * (np.arange(width)[:, None] + offs[None, :]).ravel() + geom.bx
        gx, gy = np.meshgrid(xs, ys)
        d = thin_prism_project(np.stack([(gx.ravel() - cx) / fx, (gy.ravel() - cy) / fy,
                                         np.ones(gx.size)], 1), prism.params)
        ix, iy = np.floor(d[:, 0]).astype(np.int64), np.floor(d[:, 1]).astype(np.int64)
        ok = (ix >= 0) & (iy >= 0) & (ix < prism.width) & (iy < prism.height)
        vals = np.full(gx.size, np.nan, np.float32)
        vals[ok] = gt[iy[ok], ix[ok]]
        vals[~np.isfinite(vals) | (vals <= 0)] = np.nan
        vals = vals.reshape(k, width, k).transpose(1, 0, 2).reshape(width, k * k)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                med = np.nanmedian(vals, axis=1)
        out[i] = np.nan_to_num(med, nan=0.0)
    return rgb, out


def floor_frame(frame, reduction=4):
    import simplejpeg

    data = frame.image_path.read_bytes()
    w, h = frame.pinhole.width, frame.pinhole.height
    simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=-(-w // reduction),
                           min_height=-(-h // reduction))
    np.fromfile(frame.depth_path, dtype="<f4")


# ------------------------------------------------------------------------------------------ main
def machine_info() -> dict:
    import numba
    import simplejpeg

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__, "simplejpeg": simplejpeg.__version__,
            "load_avg_at_start": os.getloadavg()}


def replicate_scene(src: Path, dst: Path, n_frames: int) -> None:
    """A scene of n_frames whose files are symlinks cycling over src's frames (calibration rewritten)."""
    from dataengine.colmap import read_model

    for calib in ("dslr_calibration_undistorted", "dslr_calibration_jpg"):
        model = read_model(src / calib, need_points=False)
        imgs = sorted(model.images.values(), key=lambda im: im.name)
        (dst / calib).mkdir(parents=True)
        shutil.copy(src / calib / "cameras.txt", dst / calib / "cameras.txt")
        (dst / calib / "points3D.txt").write_text("")
        lines = []
        for n in range(n_frames):
            im = imgs[n % len(imgs)]
            folder, base = im.name.rsplit("/", 1)
            name = f"{folder}/DSC_{n:04d}.JPG"
            q, t = im.qvec, im.tvec
            nums = " ".join(f"{v:.17g}" for v in [*q, *t])
            lines.append(f"{n} {nums} {im.camera_id} {name}\n\n")
            targets = {"dslr_calibration_undistorted": [("images", im.name)],
                       "dslr_calibration_jpg": [("ground_truth_depth", im.name),
                                                ("masks_for_images", im.name[:-4] + ".png")]}[calib]
            for top, rel in targets:
                source = src / top / rel
                if source.exists():
                    link = dst / top / (name if top != "masks_for_images" else name[:-4] + ".png")
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(source.resolve())
        (dst / calib / "images.txt").write_text("".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--frames", type=int, default=4, help="full-size frames to generate")
    parser.add_argument("--work", type=Path, default=None, help="work dir (default: a temp dir)")
    parser.add_argument("--build-frames", type=int, default=214)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()

    from dataengine.build import BuildConfig, build_shards, process_frame
    from dataengine.depth import LaserDepthConfig
    from dataengine.eth3d import load_scene
    from dataengine.synth import generate_scene

    work = args.work or Path(tempfile.mkdtemp(prefix="engine-bench-"))
    root = work / "eth3d"
    scene_dir = root / "bench_facade"
    t0 = time.perf_counter()
    if not (scene_dir / "dslr_calibration_undistorted").is_dir():
        generate_scene(root, scene="bench_facade", images=args.frames, scale=1.0, seed=0)
    gen_s = time.perf_counter() - t0
    info = machine_info()
    print(json.dumps(info))
    scene = load_scene(scene_dir, "auto")
    frames = [f for f in scene.frames if f.depth_source == "laser"]
    jpeg_mb = statistics.mean(f.image_path.stat().st_size for f in frames) / 1e6
    cfg = BuildConfig(root=root, out=work / "unused", progress=False)
    sparse_cfg = BuildConfig(root=root, out=work / "unused", depth="sparse", progress=False)
    sparse_scene = load_scene(scene_dir, "sparse")

    process_frame(frames[0], scene, cfg)  # numba load/compile outside the timing
    process_frame(sparse_scene.frames[0], sparse_scene, sparse_cfg)
    reps = 2
    engine = [cpu_time(process_frame, f, scene, cfg) for _ in range(reps) for f in frames]
    floor = [cpu_time(floor_frame, f) for _ in range(reps) for f in frames]
    base = [cpu_time(baseline_frame, f) for f in frames[:2]]
    sparse = [cpu_time(process_frame, f, sparse_scene, sparse_cfg) for f in sparse_scene.frames]

    def wall(workers, items):
        t = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda f: process_frame(f, scene, cfg), items))
        return time.perf_counter() - t

    items = frames * max(1, 8 // len(frames))
    w1 = wall(1, items)
    w2 = wall(2, items)

    results = {
        "machine": info, "frames_generated": len(frames), "generate_s": round(gen_s, 1),
        "source": {"undistorted_size": [frames[0].pinhole.width, frames[0].pinhole.height],
                   "depth_size": [frames[0].prism.width, frames[0].prism.height],
                   "jpeg_mb_mean": round(jpeg_mb, 2)},
        "per_frame_cpu_ms_median": {"engine_laser": 1e3 * statistics.median(engine),
                                    "baseline": 1e3 * statistics.median(base),
                                    "floor": 1e3 * statistics.median(floor),
                                    "engine_sparse": 1e3 * statistics.median(sparse)},
        "threads_wall_s": {"1": w1, "2": w2, "frames": len(items), "speedup": w1 / w2},
    }
    per = results["per_frame_cpu_ms_median"]
    results["ratios"] = {"engine_vs_baseline": per["baseline"] / per["engine_laser"],
                         "engine_vs_floor": per["floor"] / per["engine_laser"],
                         "two_workers_vs_one": w1 / w2}
    print(json.dumps(results, indent=1))

    big = work / "eth3d_big"
    if not big.exists():
        counts = [76, 45, 26, 23, 44][: 5]
        scale = args.build_frames / sum(counts)
        for i, n in enumerate(counts):
            replicate_scene(scene_dir, big / f"scene{i}", max(8, round(n * scale)))
    out = work / "shards_big"
    shutil.rmtree(out, ignore_errors=True)
    n_frames = sum(len(load_scene(big / s).frames) for s in sorted(os.listdir(big)))
    t = time.perf_counter()
    manifest = build_shards(BuildConfig(root=big, out=out, scenes=tuple(sorted(os.listdir(big))),
                                        progress=False, laser=LaserDepthConfig()))
    build_s = time.perf_counter() - t
    results["build_214"] = {"frames": n_frames, "wall_s": build_s, "frames_per_s": n_frames / build_s,
                            "workers": os.cpu_count(),
                            "samples": {k: v["samples"] for k, v in manifest["splits"].items()},
                            "shard_bytes": sum(s["bytes"] for v in manifest["splits"].values()
                                               for s in v["shards"])}
    print(json.dumps(results["build_214"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
