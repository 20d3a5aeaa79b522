"""One frame of a build: rendered by its source (`process_frame`, the per-frame work that local threads
and Ray tasks both run), its depth range checked, and kept in the atomic per-frame cache."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataengine.errors import BadInputError
from dataengine.shards import write_bytes_atomic
from shardformat import depth_range_problem

CACHE_DIR = ".frame-cache"


@dataclass
class FrameResult:
    jpeg: bytes
    depth: np.ndarray  # (H, W) float32 metres (or the capture's units), 0 = none
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

    package = Path(__file__).parent
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        if "synth" not in path.relative_to(package).parts:  # the generator of test scenes renders no frame
            h.update(str(path.relative_to(package)).encode() + path.read_bytes())
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


def frame_cache_path(cfg, frame, points_digest: str | None = None) -> Path:
    """The frame's cache file: its name holds a digest of every input that changes the frame's bytes
    (options, code, and the source's identity of the frame's inputs: files, calibration, pose, and for
    sparse depth the scene's point coordinates — the z-buffer reads all of them — plus the indices of
    the points it sees)."""
    sparse = frame.depth_source == "sparse"
    points = [points_digest, array_digest(np.asarray(frame.observed, dtype=np.int64))] if sparse else None
    ident = [cfg.frame_options(), code_digest(), *cfg.source.cache_ident(frame, points)]
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return cfg.out / CACHE_DIR / frame.scene / f"{Path(frame.name).stem}.{digest}.npz"


def process_frame(source, frame, scene, cfg) -> FrameResult:
    """The per-frame work: image, intrinsics and depth of one frame at output resolution, rendered by
    its source, its depth range checked. A module-level function of picklable inputs, so that the
    local thread pool and Ray tasks (dataengine.executor) run the very same code."""
    result = source.render_frame(frame, scene, cfg)
    check_depth_range(source, frame, scene, result)
    return result


def check_depth_range(source, frame, scene, result: FrameResult) -> None:
    """The format's depth range rule (shardformat.depth_range) on the rendered frame, before it is
    cached: a corrupt depth map (e.g. a consistent 1e30 patch that survives the MVS filter) is an
    error naming the file it came from, never a shard that `verify` passes and training refuses."""
    problem = depth_range_problem(result.depth)
    if problem is None:
        return
    path = source.depth_file(frame, scene)
    raise BadInputError(
        f"{path}: {frame.depth_source} depth of {frame.name} has {problem}; the depth is corrupt — fix or "
        f"remove it (--skip-bad skips the frame), or build in smaller units (--metric-scale)",
        path,
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
    with _cache_file(path) as z:
        return FrameResult(z["jpeg"].tobytes(), z["depth"], z["K"], json.loads(z["meta"].tobytes()))


def load_frame_meta(path: Path) -> dict:
    """The cached frame's meta alone (the npz's members are read on access: a few hundred bytes, not
    the frame's ~1 MB of image and depth; the driver reads every frame's meta for the manifest)."""
    with _cache_file(path) as z:
        return json.loads(z["meta"].tobytes())


@contextmanager
def _cache_file(path: Path):
    """The open frame cache file; a corrupt one is deleted and reported as one BadInputError."""
    try:
        with np.load(path) as z:
            yield z
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        path.unlink(missing_ok=True)  # written atomically, so only a disk fault corrupts it
        raise BadInputError(
            f"{path}: unreadable frame cache file ({type(exc).__name__}); deleted it, rerun "
            f"the build to render the frame again",
            path,
        ) from None
