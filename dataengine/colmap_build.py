"""The build's COLMAP branch (`--format colmap`): scenes, per-frame rendering and the dataset card's
words. build.py dispatches here; everything else (cache, windows, shards, manifest) is shared."""

from __future__ import annotations

from pathlib import Path

from dataengine.colmap_frames import neighbour_names, render_colmap_frame
from dataengine.colmap_project import LAYOUT_HINT, ColmapFrame, ColmapScene, list_colmap_scenes, load_colmap_scene
from dataengine.errors import BadInputError

FORMATS = ("eth3d", "colmap")


def resolve_colmap_scenes(root: Path, wanted: tuple[str, ...] | None) -> list[tuple[str, Path]]:
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


def load_colmap_scenes(cfg) -> list[ColmapScene]:
    scenes = []
    for name, directory in resolve_colmap_scenes(cfg.root, cfg.scenes):
        scene = load_colmap_scene(name, directory, cfg.depth, cfg.skip_bad, cfg.metric_scale, cfg.mvs.prefer)
        scene.mvs_neighbours = neighbour_names(scene, cfg.mvs)
        for frame in scene.frames:  # a changed neighbour map changes the filtered depth: cache key
            frame.neighbour_maps = [scene.dense_views[n] for n in scene.mvs_neighbours.get(frame.name, [])]
        scenes.append(scene)
    for val in cfg.windows.val_scenes:
        if val not in [s.name for s in scenes]:
            raise ValueError(f"--val-scenes {val} is not among the built scenes {[s.name for s in scenes]}")
    return scenes


def process_colmap_frame(frame: ColmapFrame, scene: ColmapScene, cfg):
    """(rgb, K, depth, meta) of one frame at output resolution."""
    return render_colmap_frame(
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


def colmap_dataset_card(manifest: dict) -> str:
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
