"""`build_shards`: ETH3D scenes → per-frame cache → windows → reproducible shards + manifest + card.

Stages: (1) parse and cross-check every scene; (2) render every frame (image, intrinsics, depth) in a
thread pool — simplejpeg and the numba kernels release the GIL — into an atomic per-frame cache, so a
killed build resumes where it stopped; (3) cut windows per split on the surviving frames; (4) write
the shards, the manifest and the dataset card, each through a temporary file renamed into place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dataengine import __version__
from dataengine.colmap import BadInputError
from dataengine.depth import LaserDepthConfig, SparseDepthConfig, laser_depth, sparse_depth
from dataengine.eth3d import ARCHIVES_HINT, Frame, Scene, list_scenes, load_scene
from dataengine.images import encode_jpeg, fit_geometry, output_intrinsics, render_frame
from dataengine.mvs import MvsConfig
from dataengine.shards import (FORMAT, SHARD_RE, json_bytes, sample_key, sample_members,
                               sha256_file, shard_name, write_bytes_atomic, write_tar)
from dataengine.windows import (WindowConfig, covisible_windows, frame_covisibility, scene_windows,
                                window_overlap)

log = logging.getLogger(__name__)

DEFAULT_SCENES = ("facade", "electro", "office", "terrace", "delivery_area")
CACHE_DIR = ".frame-cache"


@dataclass(frozen=True)
class BuildConfig:
    root: Path
    out: Path
    scenes: tuple[str, ...] | None = None  # None = the five defaults that exist under root
    width: int = 518
    height: int = 518
    fit: str = "crop"
    depth: str = "auto"
    windows: WindowConfig = field(default_factory=WindowConfig)
    laser: LaserDepthConfig = field(default_factory=LaserDepthConfig)
    sparse: SparseDepthConfig = field(default_factory=SparseDepthConfig)
    workers: int = 0  # 0 = os.cpu_count()
    samples_per_shard: int = 8
    depth_dtype: str = "float32"
    jpeg_quality: int = 95
    skip_bad: bool = False
    keep_cache: bool = False
    progress: bool = True
    # --format colmap (dataengine.colmap_build): any COLMAP project; eth3d keeps its bytes unchanged.
    format: str = "eth3d"
    metric_scale: float | None = None  # COLMAP units → metres; None = "arbitrary (COLMAP)"
    undistort_fov: str = "valid"  # valid | full | horizontal degrees (dataengine.undistort)
    mvs: MvsConfig = field(default_factory=MvsConfig)

    def _colmap_options(self) -> dict:
        if self.format != "colmap":
            return {}
        return {"format": self.format, "metric_scale": self.metric_scale, "undistort_fov": self.undistort_fov,
                "mvs": dataclasses.asdict(self.mvs)}

    def frame_options(self) -> dict:
        """Everything that changes a rendered frame (the cache key)."""
        return {"engine": __version__, "width": self.width, "height": self.height, "fit": self.fit,
                "depth": self.depth, "laser": dataclasses.asdict(self.laser),
                "sparse": dataclasses.asdict(self.sparse), "jpeg_quality": self.jpeg_quality,
                **self._colmap_options()}

    def manifest_options(self) -> dict:
        return {**self.frame_options(), "frames": self.windows.frames, "stride": self.windows.stride,
                "val_fraction": self.windows.val_fraction, "val_scenes": list(self.windows.val_scenes),
                "samples_per_shard": self.samples_per_shard, "depth_dtype": self.depth_dtype,
                "skip_bad": self.skip_bad,
                **({"windows": self.windows.mode} if self.windows.mode != "sequential" else {})}


@dataclass
class FrameResult:
    jpeg: bytes
    depth: np.ndarray  # (H, W) float32 metres, 0 = none
    K: np.ndarray
    meta: dict


def _stat_key(path: Path | None) -> list:
    if path is None:
        return [None]
    st = path.stat()
    return [str(path.name), st.st_size, st.st_mtime_ns]


def frame_cache_path(cfg: BuildConfig, frame: Frame) -> Path:
    if cfg.format == "colmap":
        digest = hashlib.sha256(json.dumps([cfg.frame_options(), frame.cache_ident()],
                                           sort_keys=True).encode()).hexdigest()[:16]
        return cfg.out / CACHE_DIR / frame.scene / f"{Path(frame.name).stem}.{digest}.npz"
    ident = json.dumps([cfg.frame_options(), frame.scene, frame.name, _stat_key(frame.image_path),
                        _stat_key(frame.depth_path), _stat_key(frame.mask_path),
                        frame.pinhole.params.tolist(),
                        None if frame.prism is None else frame.prism.params.tolist(),
                        frame.rotation.tolist(), frame.translation.tolist(), frame.depth_source,
                        len(frame.observed)], sort_keys=True)
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return cfg.out / CACHE_DIR / frame.scene / f"{Path(frame.name).stem}.{digest}.npz"


def process_frame(frame: Frame, scene: Scene, cfg: BuildConfig) -> FrameResult:
    """Image, intrinsics and depth of one frame at output resolution."""
    if cfg.format == "colmap":
        from dataengine.colmap_build import process_colmap_frame

        rgb, K, depth, meta = process_colmap_frame(frame, scene, cfg)
        return FrameResult(encode_jpeg(rgb, cfg.jpeg_quality), depth, K, meta)
    geom = fit_geometry(frame.pinhole.width, frame.pinhole.height, cfg.width, cfg.height, cfg.fit)
    K = output_intrinsics(frame.pinhole, geom)
    rgb = render_frame(frame.image_path.read_bytes(), frame.pinhole, geom, frame.image_path)
    meta = {"name": frame.name, "camera_id": frame.camera_id, "depth_source": frame.depth_source,
            "source_size": [frame.pinhole.width, frame.pinhole.height]}
    if frame.depth_source == "laser":
        depth, stats = laser_depth(frame.depth_path, frame.mask_path, frame.pinhole, frame.prism, geom,
                                   cfg.laser)
        meta["mask_file"] = frame.mask_path is not None
    else:
        depth, stats = sparse_depth(scene.points_xyz, scene.points_xyz[frame.observed],
                                    frame.rotation, frame.translation, K, geom, cfg.sparse)
    meta.update(stats)
    meta["coverage"] = round(float(np.count_nonzero(depth)) / depth.size, 6)
    return FrameResult(encode_jpeg(rgb, cfg.jpeg_quality), depth, K, meta)


def save_frame(path: Path, result: FrameResult) -> None:
    buf = io.BytesIO()
    np.savez(buf, jpeg=np.frombuffer(result.jpeg, dtype=np.uint8), depth=result.depth, K=result.K,
             meta=np.frombuffer(json.dumps(result.meta).encode(), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buf.getvalue())


def load_frame(path: Path) -> FrameResult:
    with np.load(path) as z:
        return FrameResult(z["jpeg"].tobytes(), z["depth"], z["K"], json.loads(z["meta"].tobytes()))


def _git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def resolve_scenes(cfg: BuildConfig) -> list[str]:
    available = list_scenes(cfg.root)
    if cfg.scenes is None:
        chosen = [s for s in DEFAULT_SCENES if s in available]
        if not chosen:
            raise BadInputError(f"{cfg.root}: none of the default scenes {', '.join(DEFAULT_SCENES)} "
                                f"found (present: {', '.join(available) or 'none'}); {ARCHIVES_HINT}",
                                cfg.root)
        return chosen
    missing = [s for s in cfg.scenes if s not in available]
    if missing:
        raise BadInputError(f"{cfg.root}: scene(s) {', '.join(missing)} not found (present: "
                            f"{', '.join(available) or 'none'}); {ARCHIVES_HINT}", cfg.root)
    for val in cfg.windows.val_scenes:
        if val not in cfg.scenes:
            raise ValueError(f"--val-scenes {val} is not among the built scenes {list(cfg.scenes)}")
    return list(cfg.scenes)


def render_all(cfg: BuildConfig, scenes: list[Scene]) -> tuple[dict, list[dict]]:
    """(scene, frame name) → cache path for every frame that rendered; skipped frames."""
    from tqdm import tqdm

    jobs = [(scene, frame) for scene in scenes for frame in scene.frames]
    todo = [(s, f, frame_cache_path(cfg, f)) for s, f in jobs]
    done: dict[tuple[str, str], Path] = {}
    skipped: list[dict] = []
    pending = []
    for scene, frame, path in todo:
        if path.is_file():
            done[(scene.name, frame.name)] = path
        else:
            pending.append((scene, frame, path))

    def work(item):
        scene, frame, path = item
        try:
            save_frame(path, process_frame(frame, scene, cfg))
            return item, None
        except BadInputError as exc:
            if not cfg.skip_bad:
                raise
            return item, str(exc)

    workers = cfg.workers or os.cpu_count() or 1
    with tqdm(total=len(todo), initial=len(todo) - len(pending), unit="frame", desc="frames",
              disable=not cfg.progress, dynamic_ncols=True) as bar, \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="frame") as pool:
        for (scene, frame, path), error in pool.map(work, pending):
            bar.update()
            if error is None:
                done[(scene.name, frame.name)] = path
            else:
                log.warning("skipping %s/%s: %s", scene.name, frame.name, error)
                skipped.append({"scene": scene.name, "frame": frame.name, "reason": error})
    return done, skipped


def _sample_cameras(key_index: int, scene: str, split: str, results: list[FrameResult],
                    frames: list[Frame], indices: list[int], cfg: BuildConfig, units: str = "metres") -> dict:
    sources = {r.meta["depth_source"] for r in results}
    return {
        "format": FORMAT, "scene": scene, "split": split, "window": key_index,
        "depth_source": sources.pop() if len(sources) == 1 else "mixed",
        "units": units,
        "pixel_convention": "OpenCV: pixel (0,0) is the centre of the top-left pixel",
        "extrinsics_convention": "world-to-camera [R|t], OpenCV axes (x right, y down, z forward)",
        "image_size": [cfg.height, cfg.width],
        "frames": [{
            "name": r.meta["name"], "index": int(idx), "camera_id": r.meta["camera_id"],
            "K": r.K.tolist(),
            "extrinsics": np.hstack([f.rotation, f.translation[:, None]]).tolist(),
            "source_size": r.meta["source_size"], "coverage": r.meta["coverage"],
            "depth_source": r.meta["depth_source"],
        } for r, f, idx in zip(results, frames, indices)],
    }


def build_shards(cfg: BuildConfig) -> dict:
    """Run the whole build; returns the manifest (also written to cfg.out/manifest.json)."""
    if cfg.samples_per_shard < 1:
        raise ValueError("samples_per_shard must be >= 1")
    if cfg.depth_dtype not in ("float32", "float16"):
        raise ValueError(f"depth_dtype must be float32 or float16, got {cfg.depth_dtype!r}")
    if cfg.format == "colmap":
        from dataengine.colmap_build import load_colmap_scenes

        scenes = load_colmap_scenes(cfg)
        names = [s.name for s in scenes]
        cfg.out.mkdir(parents=True, exist_ok=True)
    elif cfg.format == "eth3d":
        names = resolve_scenes(cfg)
        cfg.out.mkdir(parents=True, exist_ok=True)
        scenes = [load_scene(cfg.root / n, cfg.depth, cfg.skip_bad) for n in names]
    else:
        raise ValueError(f"format must be eth3d or colmap, got {cfg.format!r}")
    units = {s.name: getattr(s, "units", "metres") for s in scenes}
    cached, skipped_render = render_all(cfg, scenes)

    splits: dict[str, list[tuple[str, list[Path], list[Frame], list[int], int]]] = {"train": [], "val": []}
    scene_stats = {}
    for scene in scenes:
        frames = [f for f in scene.frames if (scene.name, f.name) in cached]
        if cfg.windows.mode == "covisible":
            wins = covisible_windows(scene.name, frame_covisibility([f.observed for f in frames]), cfg.windows)
        else:
            wins = scene_windows(scene.name, len(frames), cfg.windows)
        index = 0
        for split in ("train", "val"):
            for win in wins[split]:
                splits[split].append((scene.name, [cached[(scene.name, frames[i].name)] for i in win],
                                      [frames[i] for i in win], win, index))
                index += 1
        metas = [load_frame(cached[(scene.name, f.name)]).meta for f in frames]
        in_split = {s: sorted({i for w in wins[s] for i in w}) for s in wins}
        scene_stats[scene.name] = {
            "frames": len(frames),
            "train_frames": len(in_split["train"]), "val_frames": len(in_split["val"]),
            "train_windows": len(wins["train"]), "val_windows": len(wins["val"]),
            "laser_frames": sum(m["depth_source"] == "laser" for m in metas),
            "sparse_frames": sum(m["depth_source"] == "sparse" for m in metas),
            "mean_coverage": round(float(np.mean([m["coverage"] for m in metas])), 6) if metas else 0.0,
            "min_coverage": round(float(np.min([m["coverage"] for m in metas])), 6) if metas else 0.0,
        }
        if cfg.format == "colmap":
            cov = frame_covisibility([f.observed for f in frames])
            scene_stats[scene.name].update({
                "window_overlap": round(window_overlap(wins["train"] + wins["val"], cov), 6),
                "mvs_frames": sum(m["depth_source"] == "mvs" for m in metas), "units": units[scene.name],
                "model": f"{scene.model_dir.relative_to(scene.directory)} ({scene.model_format})",
                "camera_models": sorted({m["camera_model"] for m in metas})})

    manifest_splits = {}
    written = set()
    for split, samples in splits.items():
        shards = []
        for start in range(0, len(samples), cfg.samples_per_shard):
            chunk = samples[start:start + cfg.samples_per_shard]
            name = shard_name(split, len(shards))
            path = cfg.out / name
            members = []
            loaded: dict[Path, FrameResult] = {}
            for scene, paths, frames, win, key_index in chunk:
                for p in paths:
                    if p not in loaded:
                        loaded[p] = load_frame(p)
                results = [loaded[p] for p in paths]
                depth = np.stack([r.depth for r in results]).astype(cfg.depth_dtype)
                mask = (depth > 0).astype(np.uint8)
                cams = _sample_cameras(key_index, scene, split, results, frames, win, cfg, units[scene])
                members += sample_members(sample_key(scene, key_index), [r.jpeg for r in results],
                                          depth, mask, cams)
            write_tar(path, members)
            written.add(name)
            shards.append({"name": name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
                           "samples": len(chunk)})
        manifest_splits[split] = {"samples": len(samples), "frames_per_sample": cfg.windows.frames,
                                  "shards": shards}
    for stale in cfg.out.glob("*.tar"):
        if SHARD_RE.match(stale.name) and stale.name not in written:
            stale.unlink()

    manifest = {
        "format": FORMAT,
        "engine": {"name": "dataengine", "version": __version__, "git_sha": _git_sha()},
        "dataset": ("COLMAP captures" if cfg.format == "colmap"
                    else "ETH3D high-res multi-view (DSLR) training scenes"),
        "license": "set by the captures' owner" if cfg.format == "colmap" else "CC BY-NC-SA 4.0",
        "scenes": names,
        "options": cfg.manifest_options(),
        "splits": manifest_splits,
        "per_scene": scene_stats,
        "skipped": [s for sc in scenes for s in sc.skipped] + skipped_render,
        "warnings": [w for sc in scenes for w in sc.warnings],
    }
    if cfg.format == "colmap":
        from dataengine.colmap_build import colmap_dataset_card as card
    else:
        card = dataset_card
    write_bytes_atomic(cfg.out / "README.md", card(manifest).encode())
    write_bytes_atomic(cfg.out / "manifest.json", json_bytes(manifest))
    if not cfg.keep_cache:
        shutil.rmtree(cfg.out / CACHE_DIR, ignore_errors=True)
    return manifest


def dataset_card(manifest: dict) -> str:
    opts = manifest["options"]
    rows = "\n".join(f"| {name} | {s['frames']} | {s['train_windows']} | {s['val_windows']} | "
                     f"{s['laser_frames']} | {s['sparse_frames']} | {s['mean_coverage']:.3f} |"
                     for name, s in manifest["per_scene"].items())
    return f"""# ETH3D multi-view windows for VGGT-style models

WebDataset shards in format `{manifest['format']}` (see the `shards/README.md` of the engine for the
member layout), built by dataengine {manifest['engine']['version']} (git {manifest['engine']['git_sha']}).

- Frames per sample: {opts['frames']}, stride {opts['stride']}, output {opts['width']}x{opts['height']}
  (`--fit {opts['fit']}`), depth `{opts['depth']}` stored as {opts['depth_dtype']} metres (0 = no supervision).
- Splits: train {manifest['splits']['train']['samples']} samples, val {manifest['splits']['val']['samples']}
  samples; frame-disjoint unless `val_scenes` is set ({opts['val_scenes'] or 'frame-disjoint'}).
- Skipped inputs: {len(manifest['skipped'])}; warnings: {len(manifest['warnings'])} (see manifest.json).

| scene | frames | train windows | val windows | laser frames | sparse frames | mean coverage |
|---|---:|---:|---:|---:|---:|---:|
{rows}

## Licence

The ETH3D data, and therefore these derived shards, are licensed under the Creative Commons
Attribution-NonCommercial-ShareAlike 4.0 International licence (CC BY-NC-SA 4.0):
https://creativecommons.org/licenses/by-nc-sa/4.0/ . Non-commercial use only; share derivatives
under the same licence; attribute ETH3D.

## Citation

```bibtex
@inproceedings{{schoeps2017cvpr,
  author    = {{Thomas Sch\\"ops and Johannes L. Sch\\"onberger and Silvano Galliani and Torsten Sattler
               and Konrad Schindler and Marc Pollefeys and Andreas Geiger}},
  title     = {{A Multi-View Stereo Benchmark with High-Resolution Images and Multi-Camera Videos}},
  booktitle = {{Conference on Computer Vision and Pattern Recognition (CVPR)}},
  year      = {{2017}}
}}
```
"""
