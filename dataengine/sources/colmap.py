"""`--format colmap`: any COLMAP project (dataengine.colmap_project parses it): every camera model
undistorted to a pinhole output camera, depth from the dense workspace's MVS maps after a multi-view
consistency filter, or from the sparse points (the pixel work is dataengine.colmap_frames)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from dataengine.colmap_frames import neighbour_names, render_colmap_frame
from dataengine.colmap_project import (
    LAYOUT_HINT,
    ColmapFrame,
    ColmapScene,
    list_colmap_scenes,
    load_colmap_scene,
    model_dir_of,
)
from dataengine.config import OptionError
from dataengine.errors import BadInputError
from dataengine.frames import FrameResult
from dataengine.images import encode_jpeg
from dataengine.sources.base import points_file
from dataengine.windows import frame_covisibility, window_overlap

log = logging.getLogger(__name__)

BLANK_WARNING = 0.5  # mean blank fraction of a scene's frames beyond which the build warns


class ColmapSource:
    name = "colmap"
    depth_modes = ("auto", "mvs", "sparse")
    dataset = "COLMAP captures"
    license = "set by the captures' owner"

    def check_options(self, cfg) -> None:
        if cfg.depth == "laser":
            raise OptionError("--depth", "--depth laser needs --format eth3d; COLMAP projects have mvs or sparse")

    def frame_options(self, cfg) -> dict:
        return {
            "format": self.name,
            "metric_scale": cfg.metric_scale,
            "undistort_fov": cfg.undistort_fov,
            "mvs": dataclasses.asdict(cfg.mvs),
        }

    def resolve(self, cfg) -> list[str]:
        return [name for name, _ in _resolve(cfg.root, cfg.scenes)]

    def load(self, cfg, names: list[str]) -> list[ColmapScene]:
        found = dict(list_colmap_scenes(cfg.root))
        scenes = []
        for name in names:
            scene = load_colmap_scene(name, found[name], cfg.depth, cfg.skip_bad, cfg.metric_scale, cfg.mvs.prefer)
            scene.mvs_neighbours = neighbour_names(scene, cfg.mvs)
            for frame in scene.frames:  # a changed neighbour map changes the filtered depth: cache key
                frame.neighbour_maps = [scene.dense_views[n] for n in scene.mvs_neighbours.get(frame.name, [])]
            scenes.append(scene)
        return scenes

    def scene_dir(self, root: Path, name: str) -> Path:
        # --root itself when it is a COLMAP project (its name is then the folder's own: root/name would double it)
        return root if model_dir_of(root) is not None else root / name

    def cache_ident(self, frame: ColmapFrame, points: list | None) -> list:
        return [frame.cache_ident(), points]

    def render_frame(self, frame: ColmapFrame, scene: ColmapScene, cfg) -> FrameResult:
        rgb, K, depth, meta = render_colmap_frame(
            frame,
            scene,
            cfg.width,
            cfg.height,
            cfg.fit,
            cfg.undistort_fov,
            cfg.sparse,
            cfg.mvs,
            scene.mvs_neighbours.get(frame.name, []),
        )
        return FrameResult(encode_jpeg(rgb, cfg.jpeg_quality), depth, K, meta)

    def depth_file(self, frame: ColmapFrame, scene: ColmapScene) -> Path:
        if frame.depth_source == "mvs" and frame.mvs_path is not None:
            return frame.mvs_path
        return points_file(scene.model_dir)

    def scene_stats(self, scene: ColmapScene, frames: list, metas: list[dict], windows: list, cfg) -> dict:
        cov = frame_covisibility([f.observed for f in frames])
        stats = {
            "window_overlap": round(window_overlap(windows, cov), 6),
            "mvs_frames": sum(m["depth_source"] == "mvs" for m in metas),
            "units": scene.units,
            "model": f"{scene.model_dir.relative_to(scene.directory)} ({scene.model_format})",
            "camera_models": sorted({m["camera_model"] for m in metas}),
        }
        invalid = [m for m in metas if m.get("mvs_invalid_values", 0) > 0]
        if invalid:
            msg = (
                f"{scene.name}: {len(invalid)} MVS depth map(s) hold NaN/infinite/negative values, dropped as "
                f"no depth: " + ", ".join(f"{m['name']} ({m['mvs_invalid_values']})" for m in invalid[:20])
            )
            log.warning(msg)
            scene.warnings.append(msg)
        blank = [m.get("blank_fraction", 0.0) for m in metas]
        if blank and float(np.mean(blank)) > BLANK_WARNING:
            msg = (
                f"{scene.name}: frames are {float(np.mean(blank)):.0%} blank on average (--undistort-fov "
                f"{cfg.undistort_fov} is wider than the lenses see); use --undistort-fov valid or a narrower field"
            )
            log.warning(msg)
            scene.warnings.append(msg)
        rig = scene.rig if cfg.windows.sampling == "windows" else None
        if rig is not None:
            by_name = dict(zip([f.name for f in scene.frames], rig["members"], strict=True))
            stats["rig"] = {
                "detected_by": rig["by"],
                "cameras": len({by_name[f.name][0] for f in frames}),
                "rig_frames": len({by_name[f.name][1] for f in frames}),
                "split": "by rig frame (val holds the last rig frames with all their cameras)",
            }
        return stats

    def dataset_card(self, manifest: dict) -> str:
        return _card(manifest)


def _resolve(root: Path, wanted: tuple[str, ...] | None) -> list[tuple[str, Path]]:
    found = list_colmap_scenes(root)
    if not found:
        raise BadInputError(f"{root}: no COLMAP project in it or its subfolders; {LAYOUT_HINT}", root)
    if wanted is None:
        return found
    by_name = dict(found)
    missing = [s for s in wanted if s not in by_name]
    if missing:
        raise BadInputError(
            f"{root}: scene(s) {', '.join(missing)} not found (present: {', '.join(by_name)}); {LAYOUT_HINT}", root
        )
    return [(s, by_name[s]) for s in wanted]


def _card(manifest: dict) -> str:
    opts = manifest["options"]
    splits = list(manifest["splits"])  # train, val; or test for an evaluation build (--sampling)
    rows = "\n".join(
        f"| {name} | {s['model']} | {', '.join(s['camera_models'])} | {s['frames']} | "
        + "".join(f"{s[f'{split}_windows']} | " for split in splits)
        + f"{s['mvs_frames']} | {s['sparse_frames']} | {s['mean_coverage']:.3f} | {s['units']} |"
        for name, s in manifest["per_scene"].items()
    )
    if "sampling" in opts:
        seed = f" (seed {opts['seed']})" if opts["sampling"] == "random" else ""
        split_line = (
            f"- Split `{splits[0]}` only: {manifest['splits'][splits[0]]['samples']} samples, one per scene, each of "
            f"up to {opts['frames']} frames chosen `{opts['sampling']}`{seed} over the whole scene (evaluation only)."
        )
    else:
        split_line = (
            f"- Splits: train {manifest['splits']['train']['samples']} samples, val "
            f"{manifest['splits']['val']['samples']}\n  samples; frame-disjoint unless `val_scenes` is set "
            f"({opts['val_scenes'] or 'frame-disjoint'})."
        )
    header = " | ".join(f"{split} win." for split in splits)
    return (
        f"""# COLMAP captures as multi-view windows for VGGT-style models

WebDataset shards in format `{manifest["format"]}` (see the `shards/README.md` of the engine for the
member layout), built by dataengine {manifest["engine"]["version"]} (git {manifest["engine"]["git_sha"]}).

- Frames per sample: {opts["frames"]}, windows `{opts.get("windows", "sequential")}`, output
  {opts["width"]}x{opts["height"]} (`--fit {opts["fit"]}`), every camera undistorted to a pinhole camera
  (`--undistort-fov {opts["undistort_fov"]}`); depth `{opts["depth"]}` stored as {opts["depth_dtype"]}
  (0 = no supervision).
{split_line}
- Skipped inputs: {len(manifest["skipped"])}; warnings: {len(manifest["warnings"])} (see manifest.json).

| scene | model | camera models | frames | {header} | MVS frames | sparse frames | mean coverage | units |
|---|---|---|---:|{"---:|" * len(splits)}---:|---:|---:|---|
{rows}

"""
        + _LICENCE
    )


_LICENCE = """## Licence

Built from the user's own COLMAP captures: the photos' owner decides the licence of these shards.
Depth is COLMAP's (MVS after a multi-view consistency filter, or sparse points), in the units the
manifest states (`arbitrary (COLMAP)` unless `--metric-scale` was given): scale-dependent metrics
(absolute depth error, camera-centre distances) are only meaningful with a metric scale.
"""
