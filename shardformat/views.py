"""Samples of a shard directory as arrays with stated conventions, and the three family views of them.

numpy only (no torch, no peer package): what every model family needs to read the shards correctly,
in one place. The conversions to each peer model's own batch layout are `shardformat.recipes`.

- `read(path)`: the `Sample`s of a shard directory (manifest.json) or of one shard tar.
- `Sample`: frames' RGB (uint8), depth with **NaN = unknown** (the shards' 0 = no ground truth; unknown
  is not sky and not far), a `valid` mask, K in pixels (OpenCV pixel centres), world-to-camera and
  camera-to-world 4×4 in OpenCV axes, `units` and `is_metric`.
- Family views: `Sample.frames()` (single-view models: MoGe, monocular depth), `Sample.pairs(policy,
  symmetric=...)` (DUSt3R / MASt3R), `Sample.nview()` (DA3, VGGT, π³-style).
- `resize(sample, size)`: only for when building the shards at the model's size is impossible
  (a native build keeps more depth; docs/reuse.md).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shardformat.cameras import camera_arrays, parse_cameras
from shardformat.manifest import manifest_shards, read_manifest
from shardformat.members import SampleReader, npy_layout, read_json
from shardformat.names import CAMERAS, DEPTH, MASK, ShardError, frame_member
from shardformat.tarindex import index_tar

# What a build's samples are (manifest `sample_family`); older manifests lack the field and get it from options.
FAMILY_WINDOWS, FAMILY_COVISIBLE, FAMILY_EVAL = "nview-windows", "nview-covisible", "nview-eval"
PAIR_POLICIES = ("adjacent", "all", "overlap")


def is_metric_units(units: str) -> bool:
    """Depth and translations in metres ("metres", "metres (COLMAP x S)"); "arbitrary (COLMAP)" is not."""
    return units.startswith("metres")


def sample_family(manifest: dict[str, Any]) -> str:
    """The manifest's `sample_family`, or what its options imply for a manifest written before the field."""
    if "sample_family" in manifest:
        return str(manifest["sample_family"])
    options = manifest.get("options", {})
    if options.get("sampling") not in (None, "windows"):
        return FAMILY_EVAL
    return FAMILY_COVISIBLE if options.get("windows") == "covisible" else FAMILY_WINDOWS


@dataclass
class Sample:
    """S frames of one scene. Arrays are indexed by frame first; every frame has the same H×W.

    depth is float32 z-depth along the camera axis in `units`, **NaN where unknown** (no ground truth:
    the shard's 0); valid = isfinite(depth). K is in pixels with pixel (0, 0) the centre of the top-left
    pixel; w2c maps world points to camera coordinates (x right, y down, z forward).
    """

    images: np.ndarray  # uint8 (S, H, W, 3)
    depth: np.ndarray  # float32 (S, H, W), NaN = unknown
    K: np.ndarray  # float64 (S, 3, 3)
    w2c: np.ndarray  # float64 (S, 4, 4)
    units: str = "metres"
    key: str = ""
    scene: str = ""
    names: list[str] = field(default_factory=list)
    depth_source: list[str] = field(default_factory=list)  # per frame: laser | sparse | mvs
    family: str = FAMILY_WINDOWS

    def __post_init__(self) -> None:
        s, h, w = self.depth.shape
        if self.images.shape != (s, h, w, 3) or self.K.shape != (s, 3, 3) or self.w2c.shape != (s, 4, 4):
            raise ValueError(
                f"Sample {self.key}: images {self.images.shape}, depth {self.depth.shape}, K {self.K.shape}, "
                f"w2c {self.w2c.shape} do not describe the same S frames of H×W"
            )

    @property
    def valid(self) -> np.ndarray:
        """bool (S, H, W): where the depth is known."""
        return np.isfinite(self.depth)

    @property
    def is_metric(self) -> bool:
        return is_metric_units(self.units)

    @property
    def c2w(self) -> np.ndarray:
        """float64 (S, 4, 4) camera-to-world (the exact rigid inverse of w2c)."""
        return rigid_inverse(self.w2c)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return self.depth.shape[1], self.depth.shape[2]

    def __len__(self) -> int:
        return self.depth.shape[0]

    def depth_filled(self, unknown: float = 0.0) -> np.ndarray:
        """depth with `unknown` where there is no ground truth (0 for DUSt3R-style loaders)."""
        if unknown == 0:  # fmax drops NaN: one vectorised pass (np.where is ~7x slower here)
            return np.fmax(self.depth, np.float32(0))
        return np.where(self.valid, self.depth, np.float32(unknown)).astype(np.float32)

    def points(self, i: int, frame: int | str | None = None) -> np.ndarray:
        """float64 (H, W, 3): frame i's depth unprojected, NaN where unknown; in camera i's coordinates
        (frame None), camera j's (frame=j) or the world's (frame="world")."""
        cam = unproject(self.depth[i], self.K[i])
        if frame is None or frame == i:
            return cam
        to = self.c2w[i] if frame == "world" else self.w2c[int(frame)] @ self.c2w[i]
        return cam @ to[:3, :3].T + to[:3, 3]

    def subset(self, indices: list[int] | tuple[int, ...] | np.ndarray) -> Sample:
        """The frames `indices`, in that order (a view; arrays are copied)."""
        idx = [int(i) for i in indices]
        if not idx or min(idx) < -len(self) or max(idx) >= len(self):
            raise IndexError(f"Sample {self.key} has {len(self)} frames; asked for {idx}")
        return dataclasses.replace(
            self,
            images=self.images[idx],
            depth=self.depth[idx],
            K=self.K[idx],
            w2c=self.w2c[idx],
            names=[self.names[i] for i in idx] if self.names else [],
            depth_source=[self.depth_source[i] for i in idx] if self.depth_source else [],
        )

    def relative_to(self, i: int) -> Sample:
        """The same frames with the world moved to camera i (its w2c becomes the identity)."""
        return dataclasses.replace(self, w2c=self.w2c @ self.c2w[i])

    def scaled(self, factor: float) -> Sample:
        """Depth and translations times `factor` (the same scene in other units)."""
        w2c = self.w2c.copy()
        w2c[:, :3, 3] *= factor
        return dataclasses.replace(self, depth=(self.depth * np.float32(factor)).astype(np.float32), w2c=w2c)

    # The three family views.
    def frames(self, indices: list[int] | None = None) -> Iterator[Sample]:
        """Single-frame samples (single-view models: MoGe, monocular depth)."""
        for i in range(len(self)) if indices is None else indices:
            yield self.subset([i])

    def pairs(
        self, policy: str = "adjacent", symmetric: bool = True, min_overlap: float = 0.3
    ) -> list[tuple[int, int]]:
        """Frame index pairs (i, j) for pair models (DUSt3R / MASt3R).

        policy: "adjacent" (i, i+1 in capture order), "all" (every i < j), "overlap" (every i < j whose
        ground truth shows at least `min_overlap` of frame i's known pixels in frame j at a consistent depth,
        and the reverse). symmetric adds (j, i) after each (i, j), the order DUSt3R's `is_symmetrized` expects.
        """
        if policy not in PAIR_POLICIES:
            raise ValueError(f"pair policy {policy!r}: use one of {', '.join(PAIR_POLICIES)}")
        n = len(self)
        if policy == "adjacent":
            base = [(i, i + 1) for i in range(n - 1)]
        else:
            base = list(itertools.combinations(range(n), 2))
        if policy == "overlap":
            base = [(i, j) for i, j in base if min(self.overlap(i, j), self.overlap(j, i)) >= min_overlap]
        return [p for i, j in base for p in (((i, j), (j, i)) if symmetric else ((i, j),))]

    def overlap(self, i: int, j: int, rel_tol: float = 0.01) -> float:
        """Share of frame i's known pixels that land inside frame j where j's ground truth agrees with the
        depth within `rel_tol` (visible, not occluded); 0 when frame i has no known pixel."""
        known = self.valid[i]
        if not known.any():
            return 0.0
        pts = self.points(i, frame=j)[known]
        h, w = self.size
        z = pts[:, 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            uv = pts[:, :2] / z[:, None] @ self.K[j][:2, :2].T + self.K[j][:2, 2]
        col, row = np.floor(uv[:, 0] + 0.5), np.floor(uv[:, 1] + 0.5)
        inside = (z > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        dj = np.full(z.shape, np.nan)
        dj[inside] = self.depth[j][row[inside].astype(int), col[inside].astype(int)]
        with np.errstate(invalid="ignore"):
            agree = np.abs(dj - z) <= rel_tol * z
        return float(agree.sum()) / float(known.sum())

    def nview(self, n: int | None = None, first: int = 0) -> Sample:
        """n frames for N-view models (DA3, VGGT, π³-style), frame `first` moved to the front (the reference
        view of models that take the first frame as their world); n=None keeps every frame."""
        order = [first] + [i for i in range(len(self)) if i != first]
        return self.subset(order[: len(self) if n is None else n])


def rigid_inverse(T: np.ndarray) -> np.ndarray:
    """Inverse of (…, 4, 4) rigid transforms: [Rᵀ | −Rᵀt]."""
    R, t = T[..., :3, :3], T[..., :3, 3]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    out[..., 3, 3] = 1.0
    return out


def unproject(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(H, W) z-depth → (H, W, 3) camera points (float64), pixel (u, v) at its centre (OpenCV)."""
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    z = depth.astype(np.float64)
    x = (u - K[0, 2]) / K[0, 0] * z
    y = (v - K[1, 2]) / K[1, 1] * z
    return np.stack([x, y, z], axis=-1)


def pixel_rays(K: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """float32 ((..., W), (..., H)): (u − cx)/fx and (v − cy)/fy per pixel column and row of the (..., 3, 3)
    pixel K, computed in float64 and rounded once (what `points_f32` and the recipes' device finishing
    multiply by the depth)."""
    h, w = size
    K = np.asarray(K, dtype=np.float64)
    xn = (np.arange(w) - K[..., 0, 2, None]) / K[..., 0, 0, None]
    yn = (np.arange(h) - K[..., 1, 2, None]) / K[..., 1, 1, None]
    return xn.astype(np.float32), yn.astype(np.float32)


def points_f32(depth: np.ndarray, K: np.ndarray, to: np.ndarray | None = None) -> np.ndarray:
    """float32 (H, W, 3): `depth` unprojected with K and moved by the 4×4 `to` (None = camera frame); the
    recipes' fast path (a few passes over the pixels; `unproject` is the float64 reference). The float32
    operations are those of `shardformat.recipes.device.points` (same values, on a torch device)."""
    h, w = depth.shape
    xn, yn = pixel_rays(K, (h, w))
    out = np.empty((h, w, 3), dtype=np.float32)
    for k, plane in enumerate(points_planes(depth, xn, yn, to)):
        out[..., k] = plane
    return out


def points_planes(depth: np.ndarray, xn: np.ndarray, yn: np.ndarray, to: np.ndarray | None = None) -> list[np.ndarray]:
    """[x, y, z] float32 (H, W) planes of `points_f32` from `pixel_rays` (contiguous planes: the normal
    map's differences run on them at full memory speed)."""
    R = np.eye(3, dtype=np.float32) if to is None else np.asarray(to, np.float64)[:3, :3].astype(np.float32)
    t = np.zeros(3, np.float32) if to is None else np.asarray(to, np.float64)[:3, 3].astype(np.float32)
    planes = []
    for k in range(3):
        ray = (R[k, 0] * xn)[None, :] + (R[k, 1] * yn + R[k, 2])[:, None]
        plane = np.multiply(ray, depth)
        if t[k]:
            plane += t[k]
        planes.append(plane)
    return planes


# Reading.
def _decode_jpeg(data: bytes | memoryview) -> np.ndarray:
    try:
        import simplejpeg  # a core dependency of the project (the trainer's decoder)

        return simplejpeg.decode_jpeg(bytes(data), colorspace="RGB")
    except ImportError:  # pragma: no cover - simplejpeg is installed with the project
        import io

        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(bytes(data))).convert("RGB"))


def _read_record(record: dict[str, Any], family: str) -> Sample:
    reader = SampleReader(record)
    try:
        parsed = parse_cameras(read_json(reader, CAMERAS), reader.where)  # the cameras.json owner checks it
        cams, frames = parsed.record, parsed.frames
        K, Rt = camera_arrays(parsed, reader.where)
        n = len(frames)
        layout = npy_layout(reader, DEPTH)
        depth = np.frombuffer(reader.read(DEPTH, layout.start), layout.dtype).reshape(layout.shape)
        mask_layout = npy_layout(reader, MASK)
        mask = np.frombuffer(reader.read(MASK, mask_layout.start), mask_layout.dtype).reshape(mask_layout.shape)
        if depth.shape[0] != n or mask.shape != depth.shape:
            raise ShardError(f"{reader.where}: depth {depth.shape} / mask {mask.shape} for {n} frames")
        images = np.stack([_decode_jpeg(reader.read(frame_member(i))) for i in range(n)])
        if images.shape[1:3] != depth.shape[1:]:
            raise ShardError(f"{reader.where}: JPEGs are {images.shape[1:3]}, depth.npy {depth.shape[1:]}")
        known = (mask > 0) & (depth > 0) & np.isfinite(depth)
        w2c = np.tile(np.eye(4), (n, 1, 1))
        w2c[:, :3, :] = Rt
        return Sample(
            images=images,
            depth=np.where(known, depth.astype(np.float32), np.float32(np.nan)),
            K=K,
            w2c=w2c,
            units=str(cams.get("units", "metres")),
            key=record["__key__"],
            scene=str(cams.get("scene", "")),
            names=[str(f.get("name", "")) for f in frames],
            depth_source=[str(f.get("depth_source", cams.get("depth_source", ""))) for f in frames],
            family=family,
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ShardError):
            raise
        raise ShardError(f"{reader.where}: unreadable sample ({exc}); check it with `dataengine verify`") from None
    finally:
        reader.close()


def read(path: str | Path, split: str | None = "train") -> Iterator[Sample]:
    """The `Sample`s of a shard directory (its manifest's shards of `split`, None = every split) or of one
    shard tar, in file order."""
    path = Path(path)
    if path.is_dir():
        manifest_path = path / "manifest.json"
        manifest = read_manifest(manifest_path)
        family = sample_family(manifest)
        splits = list(manifest.get("splits", {})) if split is None else [split]
        names = [s.name for sp in splits for s in manifest_shards(manifest, manifest_path, sp)]
        if not names:
            raise ShardError(
                f"{manifest_path}: no shard in split {split!r} (splits: {list(manifest.get('splits', {}))})"
            )
        tars = [path / name for name in names]
    elif path.is_file():
        manifest_path = path.parent / "manifest.json"
        family = sample_family(read_manifest(manifest_path)) if manifest_path.exists() else FAMILY_WINDOWS
        tars = [path]
    else:
        raise ShardError(f"{path}: no such shard directory or tar (build one with `python -m dataengine build`)")
    for tar in tars:
        for record in index_tar(tar):
            yield _read_record(record, family)


# Resizing, for when a native build is impossible.
RESIZE_RULES = ("opencv-centre",)


def resized_K(K: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """K after resizing an image of src_hw to dst_hw with the pixel-centre rule of OpenCV's resize:
    image corners map to corners, so c' = (c + 0.5)·s − 0.5 and f' = f·s (the plain K·s is half a
    pixel off in the principal point)."""
    sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    out = np.array(K, dtype=np.float64, copy=True)
    out[..., 0, 0] *= sx
    out[..., 0, 1] *= sx
    out[..., 1, 1] *= sy
    out[..., 0, 2] = (out[..., 0, 2] + 0.5) * sx - 0.5
    out[..., 1, 2] = (out[..., 1, 2] + 0.5) * sy - 0.5
    return out


def _area_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) weights of an exact box filter: output pixel k covers source [k·src/dst, (k+1)·src/dst)."""
    edges = np.arange(dst + 1, dtype=np.float64) * (src / dst)
    lo, hi = edges[:-1, None], edges[1:, None]
    cells = np.arange(src, dtype=np.float64)[None, :]
    weights = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells), 0.0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def _nearest_index(src: int, dst: int) -> np.ndarray:
    """Source pixel whose area holds output pixel k's centre (the pixel-centre rule)."""
    return np.minimum(np.floor((np.arange(dst) + 0.5) * (src / dst)).astype(np.int64), src - 1)


def resize(sample: Sample, size: int | tuple[int, int], rule: str = "opencv-centre") -> Sample:
    """The sample at `size` (N → N×N, or (H, W)): images area-averaged (box filter, like OpenCV's
    INTER_AREA when shrinking), depth by nearest sample (unknown stays unknown, never interpolated
    across holes), K by the pixel-centre rule (`resized_K`). Prefer building at the model's size:
    a native build fits depth per output pixel and keeps more of it (docs/reuse.md)."""
    if rule not in RESIZE_RULES:
        raise ValueError(f"resize rule {rule!r}: use one of {', '.join(RESIZE_RULES)}")
    dst = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    src = sample.size
    if min(dst) < 1:
        raise ValueError(f"resize to {dst}: sides must be >= 1")
    rows, cols = _area_matrix(src[0], dst[0]), _area_matrix(src[1], dst[1])
    images = np.einsum("ih,shwc,jw->sijc", rows, sample.images.astype(np.float64), cols, optimize=True)
    ri, ci = _nearest_index(src[0], dst[0]), _nearest_index(src[1], dst[1])
    return dataclasses.replace(
        sample,
        images=np.clip(np.floor(images + 0.5), 0, 255).astype(np.uint8),
        depth=np.ascontiguousarray(sample.depth[:, ri][:, :, ci]),
        K=resized_K(sample.K, src, dst),
    )
