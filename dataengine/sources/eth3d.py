"""`--format eth3d`: ETH3D high-res multi-view scene folders (dataengine.eth3d parses them): laser depth
(dataengine.depth.laser_depth) or sparse points, the undistorted photos resampled to the output size."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dataengine.config import OptionError
from dataengine.depth import laser_depth, sparse_depth
from dataengine.errors import BadInputError
from dataengine.eth3d import ARCHIVES_HINT, DEPTH_MODES, UNDISTORTED_CALIB, Frame, Scene, list_scenes, load_scene
from dataengine.frames import FrameResult, stat_key
from dataengine.images import encode_jpeg, fit_geometry, output_intrinsics, render_frame
from dataengine.scenes import DEFAULT_SCENES
from dataengine.sources.base import points_file


class Eth3dSource:
    name = "eth3d"
    depth_modes = DEPTH_MODES
    dataset = "ETH3D high-res multi-view (DSLR) training scenes"
    license = "CC BY-NC-SA 4.0"

    def check_options(self, cfg) -> None:
        if cfg.depth == "mvs":
            raise OptionError("--depth", "--depth mvs needs --format colmap (ETH3D has laser depth)")

    def frame_options(self, cfg) -> dict:
        return {}  # the ETH3D cache key and manifest options predate --format: unchanged

    def resolve(self, cfg) -> list[str]:
        hint = _colmap_hint(cfg.root) if cfg.root.is_dir() and not list_scenes(cfg.root) else ""
        if hint:
            raise BadInputError(f"{cfg.root}: no ETH3D scene, but {hint}", cfg.root)
        available = list_scenes(cfg.root)
        if cfg.scenes is None:
            chosen = [s for s in DEFAULT_SCENES if s in available]
            if not chosen:
                raise BadInputError(
                    f"{cfg.root}: none of the default scenes {', '.join(DEFAULT_SCENES)} "
                    f"found (present: {', '.join(available) or 'none'}); {ARCHIVES_HINT}",
                    cfg.root,
                )
            return chosen
        missing = [s for s in cfg.scenes if s not in available]
        if missing:
            raise BadInputError(
                f"{cfg.root}: scene(s) {', '.join(missing)} not found (present: "
                f"{', '.join(available) or 'none'}); {ARCHIVES_HINT}",
                cfg.root,
            )
        return list(cfg.scenes)

    def load(self, cfg, names: list[str]) -> list[Scene]:
        return [load_scene(cfg.root / n, cfg.depth, cfg.skip_bad, cfg.require_masks) for n in names]

    def scene_dir(self, root: Path, name: str) -> Path:
        return root / name

    def cache_ident(self, frame: Frame, points: list | None) -> list:
        return [
            frame.scene,
            frame.name,
            stat_key(frame.image_path),
            stat_key(frame.depth_path),
            stat_key(frame.mask_path),
            frame.pinhole.params.tolist(),
            [frame.pinhole.model, frame.pinhole.width, frame.pinhole.height],
            None if frame.prism is None else frame.prism.params.tolist(),
            None if frame.prism is None else [frame.prism.model, frame.prism.width, frame.prism.height],
            frame.rotation.tolist(),
            frame.translation.tolist(),
            frame.depth_source,
            points,
        ]

    def render_frame(self, frame: Frame, scene: Scene, cfg) -> FrameResult:
        geom = fit_geometry(frame.pinhole.width, frame.pinhole.height, cfg.width, cfg.height, cfg.fit)
        K = output_intrinsics(frame.pinhole, geom)
        rgb = render_frame(frame.image_path.read_bytes(), frame.pinhole, geom, frame.image_path)
        meta = {
            "name": frame.name,
            "camera_id": frame.camera_id,
            "depth_source": frame.depth_source,
            "source_size": [frame.pinhole.width, frame.pinhole.height],
        }
        if frame.depth_source == "laser":
            depth, stats = laser_depth(frame.depth_path, frame.mask_path, frame.pinhole, frame.prism, geom, cfg.laser)
            meta["mask_file"] = frame.mask_path is not None
        else:
            depth, stats = sparse_depth(
                scene.points_xyz,
                scene.points_xyz[frame.observed],
                frame.rotation,
                frame.translation,
                K,
                geom,
                cfg.sparse,
            )
        meta.update(stats)
        meta["coverage"] = round(float(np.count_nonzero(depth)) / depth.size, 6)
        return FrameResult(encode_jpeg(rgb, cfg.jpeg_quality), depth, K, meta)

    def depth_file(self, frame: Frame, scene: Scene) -> Path:
        if frame.depth_source == "laser" and frame.depth_path is not None:
            return frame.depth_path
        return points_file(scene.directory / UNDISTORTED_CALIB)

    def scene_stats(self, scene, frames, metas, windows, cfg) -> dict:
        return {}

    def dataset_card(self, manifest: dict) -> str:
        if "sampling" in manifest["options"]:
            return _evaluation_card(manifest)
        return _training_card(manifest)


def _colmap_hint(root: Path) -> str:
    """ "did you mean --format colmap?" when --root holds a COLMAP project, not ETH3D scenes."""
    from dataengine.colmap_project import model_dir_of

    if root.is_dir() and (
        model_dir_of(root) is not None or any(p.is_dir() and model_dir_of(p) is not None for p in root.iterdir())
    ):
        return "it holds a COLMAP project (sparse/ model): did you mean `--format colmap`?"
    return ""


def _training_card(manifest: dict) -> str:
    """Card of a training build: train and val windows."""
    opts = manifest["options"]
    rows = "\n".join(
        f"| {name} | {s['frames']} | {s['train_windows']} | {s['val_windows']} | "
        f"{s['laser_frames']} | {s['sparse_frames']} | {s['mean_coverage']:.3f} |"
        for name, s in manifest["per_scene"].items()
    )
    return f"""# ETH3D multi-view windows for VGGT-style models

WebDataset shards in format `{manifest["format"]}` (see the `shards/README.md` of the engine for the
member layout), built by dataengine {manifest["engine"]["version"]} (git {manifest["engine"]["git_sha"]}).

- Frames per sample: {opts["frames"]}, stride {opts["stride"]}, output {opts["width"]}x{opts["height"]}
  (`--fit {opts["fit"]}`), depth `{opts["depth"]}` stored as {opts["depth_dtype"]} metres (0 = no supervision).
- Splits: train {manifest["splits"]["train"]["samples"]} samples, val {manifest["splits"]["val"]["samples"]}
  samples; frame-disjoint unless `val_scenes` is set ({opts["val_scenes"] or "frame-disjoint"}).
- Skipped inputs: {len(manifest["skipped"])}; warnings: {len(manifest["warnings"])}; frames without a
  supervised pixel: {len(manifest["zero_coverage_frames"])} (see manifest.json).

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


def _evaluation_card(manifest: dict) -> str:
    """Card of an evaluation build (`--sampling uniform|random`): one sample per scene, `test` split."""
    opts = manifest["options"]
    split = next(iter(manifest["splits"]))
    rows = "\n".join(
        f"| {name} | {s['scene_frames']} | {s[f'{split}_frames']} | {s['laser_frames']} | "
        f"{s['sparse_frames']} | {s['mean_coverage']:.3f} |"
        for name, s in manifest["per_scene"].items()
    )
    seed = f" (seed {opts['seed']})" if opts["sampling"] == "random" else ""
    return f"""# ETH3D evaluation samples for VGGT-style models

WebDataset shards in format `{manifest["format"]}` (see the `shards/README.md` of the engine for the
member layout), built by dataengine {manifest["engine"]["version"]} (git {manifest["engine"]["git_sha"]}).

- Split `{split}` only: {manifest["splits"][split]["samples"]} samples, one per scene, each of up to
  {opts["frames"]} frames chosen `{opts["sampling"]}`{seed} over the whole scene (evaluation only;
  a training run reads `train`, which this build does not have).
- Output {opts["width"]}x{opts["height"]} (`--fit {opts["fit"]}`), depth `{opts["depth"]}` stored as
  {opts["depth_dtype"]} metres (0 = no ground truth).
- Skipped inputs: {len(manifest["skipped"])}; warnings: {len(manifest["warnings"])} (see manifest.json).

| scene | frames | sampled frames | laser frames | sparse frames | mean coverage |
|---|---:|---:|---:|---:|---:|
{rows}

## Licence

The ETH3D data, and therefore these derived shards, are licensed under CC BY-NC-SA 4.0
(https://creativecommons.org/licenses/by-nc-sa/4.0/): non-commercial use only, share alike, attribute
ETH3D (Schöps et al., CVPR 2017).
"""
