"""`build_shards`: scenes of any capture format → per-frame cache → windows → reproducible shards +
manifest + card. The format is the config's Source (dataengine.sources): it resolves and parses the
scenes, renders each frame, and adds its own per-scene stats and dataset card; this module never names
a format.

Stages: (1) parse and cross-check every scene; (2) render every frame (image, intrinsics, depth) in a
thread pool or on Ray (dataengine.executor) into an atomic per-frame cache (dataengine.frames), so a
killed build resumes where it stopped; (3) cut windows per split on the surviving frames; (4) write
the shards, the manifest and the dataset card, each through a temporary file renamed into place.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np

from dataengine import __version__
from dataengine.config import BuildConfig, check_config
from dataengine.errors import BadInputError
from dataengine.frames import CACHE_DIR, FrameResult, array_digest, frame_cache_path, load_frame, load_frame_meta
from dataengine.shards import (
    FORMAT,
    KEY_RE,
    TMP_RE,
    json_bytes,
    sample_key,
    sample_members,
    sha256_file,
    write_bytes_atomic,
    write_tar,
)
from dataengine.windows import (
    covisible_windows,
    frame_covisibility,
    rig_windows,
    scene_windows,
    split_names,
    window_starts,
)
from shardformat import SHARD_RE, shard_name
from shardformat.cameras import frame_camera, sample_cameras
from shardformat.depth_range import FLOAT16_MAX
from shardformat.provenance import git_sha
from shardformat.views import FAMILY_COVISIBLE, FAMILY_EVAL, FAMILY_WINDOWS, is_metric_units

log = logging.getLogger(__name__)


def scene_path(cfg: BuildConfig, name: str) -> Path:
    """The scene's folder, for messages."""
    return cfg.source.scene_dir(cfg.root, name)


def check_scene_names(cfg: BuildConfig, names: list[str]) -> None:
    """Scene names become sample keys; --val-scenes must name built scenes (before any rendering)."""
    for name in names:
        if not KEY_RE.match(f"{name}_00000"):
            raise BadInputError(
                f"{scene_path(cfg, name)}: scene folder name {name!r} cannot be a sample key "
                f"(ASCII letters, digits, '_' and '-' only); rename the folder",
                scene_path(cfg, name),
            )
    unknown = [v for v in cfg.windows.val_scenes if v not in names]
    if unknown:
        raise BadInputError(
            f"--val-scenes {', '.join(unknown)}: not among the built scenes "
            f"({', '.join(names)}) under {cfg.root}; name built scenes"
        )


def prepare_out(out: Path) -> None:
    """Create the output directory, prove it writable, and remove temporary files that a killed
    build left behind (atomic writes name them `.NAME.tmpPID`)."""
    if out.exists() and not out.is_dir():
        raise BadInputError(f"{out}: --out exists and is not a directory; choose a directory", out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out / ".write-test", b"")
        (out / ".write-test").unlink()
    except OSError as exc:
        raise BadInputError(
            f"{exc.filename or out}: cannot write the output directory "
            f"({exc.strerror or exc}); choose a writable --out",
            out,
        ) from None
    cache = out / CACHE_DIR
    for path in [*out.glob(".*.tmp*"), *(cache.rglob(".*.tmp*") if cache.is_dir() else [])]:
        match = TMP_RE.match(path.name)
        if match and path.is_file() and not _pid_alive(int(match.group(2))):
            log.info("removing %s left by an interrupted build", path)
            path.unlink()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours from an earlier, failed call in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_windows(cfg: BuildConfig, counts: dict[str, int], when: str) -> None:
    """Every scene must give at least one window and the train split must not be empty."""
    for name, n in counts.items():
        if n == 0:
            raise BadInputError(
                f"{scene_path(cfg, name)}: no usable frame {when} (see the warnings and "
                f"--skip-bad records above); fix the inputs or drop the scene",
                scene_path(cfg, name),
            )
        # Evaluation samples take min(--frames, scene frames) frames: a short scene is sampled whole.
        if cfg.windows.sampling == "windows" and not window_starts(n, cfg.windows.frames, cfg.windows.stride):
            raise BadInputError(
                f"{scene_path(cfg, name)}: {n} usable frames {when}, fewer than --frames "
                f"{cfg.windows.frames}; lower --frames or drop the scene",
                scene_path(cfg, name),
            )
    first = split_names(cfg.windows)[0]  # train (or test for evaluation samples)
    if not any(scene_windows(name, n, cfg.windows)[first] for name, n in counts.items()):
        raise BadInputError(
            f"{cfg.out}: the {first} split would be empty ({', '.join(f'{k}: {v} frames' for k, v in counts.items())}, "
            f"--frames {cfg.windows.frames}, val scenes {list(cfg.windows.val_scenes)}); "
            f"add scenes or lower --frames / --val-fraction",
            cfg.out,
        )


def render_all(cfg: BuildConfig, scenes: list) -> tuple[dict, list[dict]]:
    """(scene, frame name) → cache path for every frame that rendered; skipped frames."""
    from tqdm import tqdm

    jobs = [(scene, frame) for scene in scenes for frame in scene.frames]
    points = {scene.name: array_digest(np.asarray(scene.points_xyz, dtype=np.float64)) for scene in scenes}
    todo = [(s, f, frame_cache_path(cfg, f, points[s.name])) for s, f in jobs]
    done: dict[tuple[str, str], Path] = {}
    skipped: list[dict] = []
    pending = []
    for scene, frame, path in todo:
        if path.is_file():
            done[(scene.name, frame.name)] = path
        else:
            pending.append((scene, frame, path))

    from dataengine.executor import frame_outcomes  # cfg.executor: local threads or Ray tasks

    with tqdm(
        total=len(todo),
        initial=len(todo) - len(pending),
        unit="frame",
        desc="frames",
        disable=not cfg.progress,
        dynamic_ncols=True,
    ) as bar:
        for (scene, frame, path), error in frame_outcomes(cfg, pending):
            bar.update()
            if error is None:
                done[(scene.name, frame.name)] = path
            else:
                log.warning("skipping %s/%s: %s", scene.name, frame.name, error)
                skipped.append({"scene": scene.name, "frame": frame.name, "reason": error})
    order = {(s.name, f.name): i for i, (s, f, _) in enumerate(pending)}  # Ray yields in completion order
    skipped.sort(key=lambda s: order[(s["scene"], s["frame"])])
    return done, skipped


def _sample_cameras(
    key_index: int,
    scene: str,
    split: str,
    results: list[FrameResult],
    frames: list,
    indices: list[int],
    cfg: BuildConfig,
    units: str = "metres",
) -> dict:
    """The sample's cameras.json record (shardformat.cameras owns the schema)."""
    return sample_cameras(
        scene,
        split,
        key_index,
        units,
        (cfg.height, cfg.width),
        [
            frame_camera(
                r.meta["name"],
                idx,
                r.meta["camera_id"],
                r.K,
                f.rotation,
                f.translation,
                r.meta["source_size"],
                r.meta["coverage"],
                r.meta["depth_source"],
            )
            for r, f, idx in zip(results, frames, indices, strict=True)
        ],
    )


UNKNOWN_DEPTH = (
    "depth 0 / mask 0 = no ground truth: the depth is unknown there (no laser or MVS measurement, a masked "
    "or occluded pixel), not sky and not far; a model that learns sky or far masks must not learn them here"
)


def sample_family_of(cfg: BuildConfig) -> str:
    """What a sample is: N-view windows in capture order, windows of frames sharing 3-D points (also the
    pair models' source), or one evaluation sample per scene (`--sampling`)."""
    if cfg.windows.sampling != "windows":
        return FAMILY_EVAL
    return FAMILY_COVISIBLE if cfg.windows.mode == "covisible" else FAMILY_WINDOWS


def build_shards(cfg: BuildConfig) -> dict:
    """Run the whole build; returns the manifest (also written to cfg.out/manifest.json).

    Cheap checks first (arguments, scene names, the output directory, parsing, window counts), then
    the expensive rendering; a build that would give an empty train split or a scene without any
    supervised pixel fails instead of writing a manifest."""
    check_config(cfg)
    source = cfg.source
    names = source.resolve(cfg)
    check_scene_names(cfg, names)
    prepare_out(cfg.out)
    scenes = source.load(cfg, names)
    units = {s.name: getattr(s, "units", "metres") for s in scenes}
    scene_frames = {sc.name: len(sc.frames) for sc in scenes}
    if cfg.windows.sampling != "windows":  # evaluation samples: render only the sampled frames
        from dataengine.sampling import restrict_to_sample

        w = cfg.windows
        scenes = [restrict_to_sample(sc, w.frames, w.sampling, w.seed) for sc in scenes]
    check_windows(cfg, {sc.name: len(sc.frames) for sc in scenes}, "in the calibration")
    cached, skipped_render = render_all(cfg, scenes)
    check_windows(
        cfg,
        {sc.name: sum((sc.name, f.name) in cached for f in sc.frames) for sc in scenes},
        "after skipping bad frames",
    )

    splits: dict[str, list[tuple[str, list[Path], list, list[int], int]]] = {
        name: [] for name in split_names(cfg.windows)
    }
    scene_stats = {}
    metas_by_scene: dict[str, list[dict]] = {}
    for scene in scenes:
        frames = [f for f in scene.frames if (scene.name, f.name) in cached]
        rig = getattr(scene, "rig", None) if cfg.windows.sampling == "windows" else None
        if rig is not None:  # split by rig shot, windows inside one camera (dataengine.windows.rig_windows)
            by_name = dict(zip([f.name for f in scene.frames], rig["members"], strict=True))
            cov = frame_covisibility([f.observed for f in frames]) if cfg.windows.mode == "covisible" else None
            wins = rig_windows(scene.name, [by_name[f.name] for f in frames], cfg.windows, cov)
            if not wins["train"]:
                raise BadInputError(
                    f"{scene.directory}: rig capture ({rig['by']}) without a training window: no camera has "
                    f"--frames {cfg.windows.frames} images among the train rig shots; lower --frames or --val-fraction",
                    scene.directory,
                )
        elif cfg.windows.mode == "covisible":
            wins = covisible_windows(scene.name, frame_covisibility([f.observed for f in frames]), cfg.windows)
        else:
            wins = scene_windows(scene.name, len(frames), cfg.windows)
        index = 0
        for split in splits:
            for win in wins[split]:
                splits[split].append(
                    (
                        scene.name,
                        [cached[(scene.name, frames[i].name)] for i in win],
                        [frames[i] for i in win],
                        win,
                        index,
                    )
                )
                index += 1
        metas = [load_frame_meta(cached[(scene.name, f.name)]) for f in frames]
        metas_by_scene[scene.name] = metas
        in_split = {s: sorted({i for w in wins[s] for i in w}) for s in wins}
        scene_stats[scene.name] = {
            "frames": len(frames),
            **{f"{s}_frames": len(in_split[s]) for s in splits},
            **{f"{s}_windows": len(wins[s]) for s in splits},
            "laser_frames": sum(m["depth_source"] == "laser" for m in metas),
            "sparse_frames": sum(m["depth_source"] == "sparse" for m in metas),
            "mean_coverage": round(float(np.mean([m["coverage"] for m in metas])), 6) if metas else 0.0,
            "min_coverage": round(float(np.min([m["coverage"] for m in metas])), 6) if metas else 0.0,
        }
        if cfg.windows.sampling != "windows":
            scene_stats[scene.name]["scene_frames"] = scene_frames[scene.name]
        scene_stats[scene.name].update(
            source.scene_stats(scene, frames, metas, [w for s in splits for w in wins[s]], cfg)
        )

    zero_coverage = check_supervision(cfg, scenes, metas_by_scene, splits)
    # From here on shards change: no manifest may describe a mix of old and new shards.
    (cfg.out / "manifest.json").unlink(missing_ok=True)
    written: set[str] = set()
    try:
        manifest_splits = write_splits(cfg, splits, written, units)
        manifest = {
            "format": FORMAT,
            "engine": {"name": "dataengine", "version": __version__, "git_sha": git_sha()},
            "dataset": source.dataset,
            "license": source.license,
            "scenes": names,
            "options": cfg.manifest_options(),
            "splits": manifest_splits,
            "per_scene": scene_stats,
            "skipped": [s for sc in scenes for s in sc.skipped] + skipped_render,
            "warnings": [w for sc in scenes for w in sc.warnings],
            "zero_coverage_frames": zero_coverage,
            # For readers other than VGGT (docs/reuse.md): what a sample is, and what "no ground truth" means.
            "sample_family": sample_family_of(cfg),
            "unknown_depth": UNKNOWN_DEPTH,
            "is_metric": {name: is_metric_units(units[name]) for name in names},
        }
        write_bytes_atomic(cfg.out / "README.md", source.dataset_card(manifest).encode())
        write_bytes_atomic(cfg.out / "manifest.json", json_bytes(manifest))
    except BaseException:
        # A failed or interrupted build leaves no shard of its own (a disk-full build frees its
        # space); the frame cache stays, so the rerun renders nothing twice.
        for name in [*written, "README.md"]:
            (cfg.out / name).unlink(missing_ok=True)
        raise
    if not cfg.keep_cache:
        shutil.rmtree(cfg.out / CACHE_DIR, ignore_errors=True)
    return manifest


def write_shard(cfg: BuildConfig, split: str, name: str, chunk: list, units: dict[str, str]) -> dict:
    """Write one shard from the cached frames of its samples; its manifest record. A pure function of
    its arguments (the same bytes wherever it runs: on the driver, or as a Ray task when every node
    sees --out, dataengine.executor.shard_records)."""
    path = cfg.out / name
    members = []
    loaded: dict[Path, FrameResult] = {}
    for scene, paths, frames, win, key_index in chunk:
        for p in paths:
            if p not in loaded:
                loaded[p] = load_frame(p)
        results = [loaded[p] for p in paths]
        depth = np.stack([r.depth for r in results])
        if cfg.depth_dtype == "float16" and depth.max(initial=0.0) > FLOAT16_MAX:
            raise BadInputError(
                f"{cfg.out}: depth up to {depth.max():.6g} in sample {sample_key(scene, key_index)} does not "
                f"fit float16 (max {FLOAT16_MAX:g}); build with --depth-dtype float32",
                cfg.out,
            )
        depth = depth.astype(cfg.depth_dtype)
        mask = (depth > 0).astype(np.uint8)
        cams = _sample_cameras(key_index, scene, split, results, frames, win, cfg, units[scene])
        members += sample_members(sample_key(scene, key_index), [r.jpeg for r in results], depth, mask, cams)
    write_tar(path, members)
    return {"name": name, "sha256": sha256_file(path), "bytes": path.stat().st_size, "samples": len(chunk)}


def write_splits(cfg: BuildConfig, splits: dict, written: set[str], units: dict[str, str]) -> dict:
    """Write every split's shards (names added to `written` as they land); remove stale shards of an
    earlier build; return the manifest's split records."""
    from dataengine.executor import shard_records  # cfg.executor: here, or Ray tasks

    jobs = []  # (split, shard name, samples) in manifest order
    for split, samples in splits.items():
        for n, start in enumerate(range(0, len(samples), cfg.samples_per_shard)):
            jobs.append((split, shard_name(split, n), samples[start : start + cfg.samples_per_shard]))
    records: dict[str, list[dict]] = {split: [] for split in splits}
    for (split, _, _), record in zip(jobs, shard_records(cfg, jobs, units, written), strict=True):
        records[split].append(record)
    manifest_splits = {
        split: {"samples": len(samples), "frames_per_sample": cfg.windows.frames, "shards": records[split]}
        for split, samples in splits.items()
    }
    for stale in cfg.out.glob("*.tar"):
        if SHARD_RE.match(stale.name) and stale.name not in written:
            stale.unlink()

    return manifest_splits


def check_supervision(
    cfg: BuildConfig, scenes: list, metas_by_scene: dict[str, list[dict]], splits: dict
) -> list[dict]:
    """Frames without a single supervised pixel (recorded in the manifest, with a warning); a scene
    or the train split without any supervised pixel is an error."""
    zero = []
    for scene in scenes:
        metas = metas_by_scene[scene.name]
        empty = [m for m in metas if m["coverage"] == 0]
        if metas and len(empty) == len(metas):
            raise BadInputError(
                f"{scene.directory}: none of the {len(metas)} frames has a supervised pixel "
                f"(depth {cfg.depth}: {sorted({m['depth_source'] for m in metas})}); check "
                f"the GT depth / points3D.txt of the scene or drop it",
                scene.directory,
            )
        for m in empty:
            zero.append({"scene": scene.name, "frame": m["name"], "depth_source": m["depth_source"]})
    if zero:
        log.warning(
            "%d frames have no supervised pixel (listed in manifest.json zero_coverage_frames): %s",
            len(zero),
            ", ".join(f"{z['scene']}/{z['frame']}" for z in zero[:5]),
        )
    zero_names = {(z["scene"], z["frame"]) for z in zero}
    first = split_names(cfg.windows)[0]  # train (or test for evaluation samples)
    train = {(scene, f.name) for scene, _, frames, _, _ in splits[first] for f in frames}
    if train and train <= zero_names:
        raise BadInputError(
            f"{cfg.out}: no frame of the {first} split has a supervised pixel; check the GT depth of the scenes",
            cfg.out,
        )
    return zero
