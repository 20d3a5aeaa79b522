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
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dataengine import __version__
from dataengine.depth import LaserDepthConfig, SparseDepthConfig, laser_depth, sparse_depth
from dataengine.errors import BadInputError
from dataengine.eth3d import ARCHIVES_HINT, Frame, Scene, list_scenes, load_scene
from dataengine.images import encode_jpeg, fit_geometry, output_intrinsics, render_frame
from dataengine.mvs import MvsConfig
from dataengine.scenes import DEFAULT_SCENES
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
    WindowConfig,
    covisible_windows,
    frame_covisibility,
    rig_windows,
    scene_windows,
    split_names,
    window_overlap,
    window_starts,
)
from shardformat import SHARD_RE, depth_range_problem, shard_name
from shardformat.depth_range import FLOAT16_MAX
from shardformat.provenance import git_sha
from shardformat.views import FAMILY_COVISIBLE, FAMILY_EVAL, FAMILY_WINDOWS, is_metric_units

log = logging.getLogger(__name__)

CACHE_DIR = ".frame-cache"
BLANK_WARNING = 0.5  # mean blank fraction of a scene's COLMAP frames beyond which the build warns


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
    executor: str = "local"  # local | ray (dataengine.executor); not in the manifest: same bytes either way
    ray_address: str | None = None  # None = start a local Ray instance
    samples_per_shard: int = 8
    depth_dtype: str = "float32"
    jpeg_quality: int = 95
    skip_bad: bool = False
    require_masks: bool = False  # laser frames without an ETH3D mask are an error, not a warning
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
        return {
            "format": self.format,
            "metric_scale": self.metric_scale,
            "undistort_fov": self.undistort_fov,
            "mvs": dataclasses.asdict(self.mvs),
        }

    def frame_options(self) -> dict:
        """Everything that changes a rendered frame (the cache key)."""
        return {
            "engine": __version__,
            "width": self.width,
            "height": self.height,
            "fit": self.fit,
            "depth": self.depth,
            "laser": dataclasses.asdict(self.laser),
            "sparse": dataclasses.asdict(self.sparse),
            "jpeg_quality": self.jpeg_quality,
            **self._colmap_options(),
        }

    def manifest_options(self) -> dict:
        options = {
            **self.frame_options(),
            "frames": self.windows.frames,
            "stride": self.windows.stride,
            "val_fraction": self.windows.val_fraction,
            "val_scenes": list(self.windows.val_scenes),
            "samples_per_shard": self.samples_per_shard,
            "depth_dtype": self.depth_dtype,
            "skip_bad": self.skip_bad,
            "require_masks": self.require_masks,
        }
        if self.windows.sampling != "windows":  # evaluation samples (dataengine.sampling)
            options.update(sampling=self.windows.sampling, seed=self.windows.seed)
        if self.windows.mode != "sequential":
            options["windows"] = self.windows.mode
        return options


@dataclass
class FrameResult:
    jpeg: bytes
    depth: np.ndarray  # (H, W) float32 metres, 0 = none
    K: np.ndarray
    meta: dict


def stat_key(path: Path | None, full: bool = False) -> list:
    """A file's identity for the frame cache: name, size, mtime and ctime (ctime moves on every
    rewrite, even one that restores the mtime, e.g. `cp -p` or `touch -d`)."""
    if path is None:
        return [None]
    st = path.stat()
    return [str(path) if full else str(path.name), st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def array_digest(values: np.ndarray) -> str:
    """Content hash of a numeric array (point coordinates, observed indices)."""
    arr = np.ascontiguousarray(values)
    return hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode() + arr.tobytes()).hexdigest()[:16]


def _code_digest() -> str:
    """The engine's rendering code and the libraries that produce frame bytes: a changed engine
    (same version string, e.g. a local edit or a git pull) never reuses frames cached by another."""
    import importlib.metadata

    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    for dist in ("numpy", "numba", "pillow", "simplejpeg", "pycolmap"):
        try:
            h.update(f"{dist}={importlib.metadata.version(dist)}".encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(f"{dist}=none".encode())
    return h.hexdigest()[:16]


_CODE_DIGEST: list[str] = []


def code_digest() -> str:
    if not _CODE_DIGEST:
        _CODE_DIGEST.append(_code_digest())
    return _CODE_DIGEST[0]


def frame_cache_path(cfg: BuildConfig, frame: Frame, points_digest: str | None = None) -> Path:
    """The frame's cache file: its name holds a digest of every input that changes the frame's bytes
    (options, code, photo / mask / depth files, calibration, pose, and for sparse depth the scene's
    point coordinates — the z-buffer reads all of them — plus the indices of the points it sees)."""
    sparse = frame.depth_source == "sparse"
    points = [points_digest, array_digest(np.asarray(frame.observed, dtype=np.int64))] if sparse else None
    if cfg.format == "colmap":
        ident = [cfg.frame_options(), code_digest(), frame.cache_ident(), points]
    else:
        ident = [
            cfg.frame_options(),
            code_digest(),
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
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return cfg.out / CACHE_DIR / frame.scene / f"{Path(frame.name).stem}.{digest}.npz"


def process_frame(frame: Frame, scene: Scene, cfg: BuildConfig) -> FrameResult:
    """Image, intrinsics and depth of one frame at output resolution, its depth range checked."""
    result = _render(frame, scene, cfg)
    check_depth_range(frame, scene, result)
    return result


def _render(frame: Frame, scene: Scene, cfg: BuildConfig) -> FrameResult:
    if cfg.format == "colmap":
        from dataengine.colmap_build import process_colmap_frame

        rgb, K, depth, meta = process_colmap_frame(frame, scene, cfg)
        return FrameResult(encode_jpeg(rgb, cfg.jpeg_quality), depth, K, meta)
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
            scene.points_xyz, scene.points_xyz[frame.observed], frame.rotation, frame.translation, K, geom, cfg.sparse
        )
    meta.update(stats)
    meta["coverage"] = round(float(np.count_nonzero(depth)) / depth.size, 6)
    return FrameResult(encode_jpeg(rgb, cfg.jpeg_quality), depth, K, meta)


def check_depth_range(frame: Frame, scene: Scene, result: FrameResult) -> None:
    """The format's depth range rule (shardformat.depth_range) on the rendered frame, before it is
    cached: a corrupt depth map (e.g. a consistent 1e30 patch that survives the MVS filter) is an
    error naming the file it came from, never a shard that `verify` passes and training refuses."""
    problem = depth_range_problem(result.depth)
    if problem is None:
        return
    source = getattr(frame, "mvs_path", None) if frame.depth_source == "mvs" else getattr(frame, "depth_path", None)
    if frame.depth_source == "sparse" or source is None:
        model = getattr(scene, "model_dir", None) or scene.directory / "dslr_calibration_undistorted"
        source = model / ("points3D.bin" if (model / "points3D.bin").is_file() else "points3D.txt")
    raise BadInputError(
        f"{source}: {frame.depth_source} depth of {frame.name} has {problem}; the depth is corrupt — fix or "
        f"remove it (--skip-bad skips the frame), or build in smaller units (--metric-scale)",
        source,
    )


def save_frame(path: Path, result: FrameResult) -> None:
    buf = io.BytesIO()
    np.savez(
        buf,
        jpeg=np.frombuffer(result.jpeg, dtype=np.uint8),
        depth=result.depth,
        K=result.K,
        meta=np.frombuffer(json.dumps(result.meta).encode(), dtype=np.uint8),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buf.getvalue())


def load_frame(path: Path) -> FrameResult:
    try:
        with np.load(path) as z:
            return FrameResult(z["jpeg"].tobytes(), z["depth"], z["K"], json.loads(z["meta"].tobytes()))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        path.unlink(missing_ok=True)  # written atomically, so only a disk fault corrupts it
        raise BadInputError(
            f"{path}: unreadable frame cache file ({type(exc).__name__}); deleted it, rerun "
            f"the build to render the frame again",
            path,
        ) from None


def _colmap_hint(root: Path) -> str:
    """ "did you mean --format colmap?" when --root holds a COLMAP project, not ETH3D scenes."""
    from dataengine.colmap_project import model_dir_of

    if root.is_dir() and (
        model_dir_of(root) is not None or any(p.is_dir() and model_dir_of(p) is not None for p in root.iterdir())
    ):
        return "it holds a COLMAP project (sparse/ model): did you mean `--format colmap`?"
    return ""


def resolve_scenes(cfg: BuildConfig) -> list[str]:
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


def check_config(cfg: BuildConfig) -> None:
    """Argument checks that need no input file (run before anything is read or written)."""
    w = cfg.windows
    checks = [
        (w.frames >= 1, f"--frames must be >= 1, got {w.frames}"),
        (w.stride >= 1, f"--stride must be >= 1, got {w.stride}"),
        (cfg.samples_per_shard >= 1, f"--samples-per-shard must be >= 1, got {cfg.samples_per_shard}"),
        (0.0 <= w.val_fraction < 1.0, f"--val-fraction must be in [0, 1), got {w.val_fraction}"),
        (cfg.workers >= 0, f"--workers must be >= 0 (0 = all cores), got {cfg.workers}"),
        (cfg.width >= 8 and cfg.height >= 8, f"--size {cfg.width}x{cfg.height}: sides must be >= 8"),
        (cfg.depth_dtype in ("float32", "float16"), f"depth_dtype must be float32 or float16, got {cfg.depth_dtype!r}"),
        (cfg.format in ("eth3d", "colmap"), f"--format must be eth3d or colmap, got {cfg.format!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise BadInputError(message)


def scene_path(cfg: BuildConfig, name: str) -> Path:
    """The scene's folder for messages: --root itself when it is a COLMAP project (its name is then
    the folder's own, and root/name would double it)."""
    if cfg.format == "colmap":
        from dataengine.colmap_project import model_dir_of

        if model_dir_of(cfg.root) is not None:
            return cfg.root
    return cfg.root / name


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


def render_all(cfg: BuildConfig, scenes: list[Scene]) -> tuple[dict, list[dict]]:
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
    frames: list[Frame],
    indices: list[int],
    cfg: BuildConfig,
    units: str = "metres",
) -> dict:
    sources = {r.meta["depth_source"] for r in results}
    return {
        "format": FORMAT,
        "scene": scene,
        "split": split,
        "window": key_index,
        "depth_source": sources.pop() if len(sources) == 1 else "mixed",
        "units": units,
        "pixel_convention": "OpenCV: pixel (0,0) is the centre of the top-left pixel",
        "extrinsics_convention": "world-to-camera [R|t], OpenCV axes (x right, y down, z forward)",
        "image_size": [cfg.height, cfg.width],
        "frames": [
            {
                "name": r.meta["name"],
                "index": int(idx),
                "camera_id": r.meta["camera_id"],
                "K": r.K.tolist(),
                "extrinsics": np.hstack([f.rotation, f.translation[:, None]]).tolist(),
                "source_size": r.meta["source_size"],
                "coverage": r.meta["coverage"],
                "depth_source": r.meta["depth_source"],
            }
            for r, f, idx in zip(results, frames, indices, strict=True)
        ],
    }


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
    if cfg.format == "colmap":
        from dataengine.colmap_build import load_colmap_scenes

        scenes = load_colmap_scenes(cfg)
        names = [s.name for s in scenes]
        check_scene_names(cfg, names)
        prepare_out(cfg.out)
    else:
        names = resolve_scenes(cfg)
        check_scene_names(cfg, names)
        prepare_out(cfg.out)
        scenes = [load_scene(cfg.root / n, cfg.depth, cfg.skip_bad, cfg.require_masks) for n in names]
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

    splits: dict[str, list[tuple[str, list[Path], list[Frame], list[int], int]]] = {
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
        metas = [load_frame(cached[(scene.name, f.name)]).meta for f in frames]
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
        if cfg.format == "colmap":
            cov = frame_covisibility([f.observed for f in frames])
            scene_stats[scene.name].update(
                {
                    "window_overlap": round(window_overlap([w for s in splits for w in wins[s]], cov), 6),
                    "mvs_frames": sum(m["depth_source"] == "mvs" for m in metas),
                    "units": units[scene.name],
                    "model": f"{scene.model_dir.relative_to(scene.directory)} ({scene.model_format})",
                    "camera_models": sorted({m["camera_model"] for m in metas}),
                }
            )
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
            if rig is not None:
                shots = {by_name[f.name][1] for f in frames}
                scene_stats[scene.name]["rig"] = {
                    "detected_by": rig["by"],
                    "cameras": len({by_name[f.name][0] for f in frames}),
                    "rig_frames": len(shots),
                    "split": "by rig frame (val holds the last rig frames with all their cameras)",
                }

    zero_coverage = check_supervision(cfg, scenes, metas_by_scene, splits)
    # From here on shards change: no manifest may describe a mix of old and new shards.
    (cfg.out / "manifest.json").unlink(missing_ok=True)
    written: set[str] = set()
    try:
        manifest_splits = write_splits(cfg, splits, written, units)
        manifest = {
            "format": FORMAT,
            "engine": {"name": "dataengine", "version": __version__, "git_sha": git_sha()},
            "dataset": (
                "COLMAP captures" if cfg.format == "colmap" else "ETH3D high-res multi-view (DSLR) training scenes"
            ),
            "license": "set by the captures' owner" if cfg.format == "colmap" else "CC BY-NC-SA 4.0",
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
        if cfg.format == "colmap":
            from dataengine.colmap_build import colmap_dataset_card as card
        else:
            card = dataset_card
        write_bytes_atomic(cfg.out / "README.md", card(manifest).encode())
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


def write_splits(cfg: BuildConfig, splits: dict, written: set[str], units: dict[str, str]) -> dict:
    """Write every split's shards (names added to `written` as they land); remove stale shards of an
    earlier build; return the manifest's split records."""
    manifest_splits = {}
    for split, samples in splits.items():
        shards = []
        for start in range(0, len(samples), cfg.samples_per_shard):
            chunk = samples[start : start + cfg.samples_per_shard]
            name = shard_name(split, len(shards))
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
            written.add(name)
            shards.append(
                {"name": name, "sha256": sha256_file(path), "bytes": path.stat().st_size, "samples": len(chunk)}
            )
        manifest_splits[split] = {"samples": len(samples), "frames_per_sample": cfg.windows.frames, "shards": shards}
    for stale in cfg.out.glob("*.tar"):
        if SHARD_RE.match(stale.name) and stale.name not in written:
            stale.unlink()

    return manifest_splits


def check_supervision(
    cfg: BuildConfig, scenes: list[Scene], metas_by_scene: dict[str, list[dict]], splits: dict
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


def dataset_card(manifest: dict) -> str:
    opts = manifest["options"]
    if "sampling" in opts:
        return _evaluation_card(manifest)
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
