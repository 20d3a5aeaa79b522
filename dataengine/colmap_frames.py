"""One frame of a COLMAP project at output resolution: undistorted RGB, pinhole K, depth, metadata."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from dataengine.colmap_project import ColmapFrame, ColmapScene
from dataengine.errors import BadInputError
from dataengine.mvs import DepthView, MvsConfig, consistency_filter, pool_depth, read_depth_map
from dataengine.undistort import SourceCamera, pixel_sources, undistort_map, undistort_photo


@dataclass(frozen=True)
class OutputRect:
    """The slice of OutputGeometry that sparse_depth reads: the whole output holds content."""

    width: int
    height: int

    @property
    def content_rect(self) -> np.ndarray:
        return np.array([0.0, 0.0, float(self.width), float(self.height)])


def _corner_K(cam: SourceCamera, map_w: int, map_h: int) -> np.ndarray:
    """COLMAP (corner-origin) K of a PINHOLE camera, scaled to a depth map of map_w x map_h
    (patch_match_stereo's --max_image_size writes maps smaller than the undistorted images)."""
    p = cam.params
    fx, fy, cx, cy = (p[0], p[0], p[1], p[2]) if cam.model == "SIMPLE_PINHOLE" else p[:4]
    sx, sy = map_w / cam.width, map_h / cam.height
    return np.array([[fx * sx, 0.0, cx * sx], [0.0, fy * sy, cy * sy], [0.0, 0.0, 1.0]])


_maps: OrderedDict = OrderedDict()  # (path, size, mtime) → depth map, most recent last
_maps_lock = threading.Lock()
MAP_CACHE = 24  # maps kept: frames are rendered in name order and share most neighbours


def _read_map_cached(path) -> tuple[np.ndarray, int]:
    """(depth map, count of NaN/inf/negative values read_depth_map turned into 0)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _maps_lock:
        hit = _maps.get(key)
        if hit is not None:
            _maps.move_to_end(key)
            return hit
    invalid: list[int] = []
    depth = read_depth_map(path, invalid)
    depth.setflags(write=False)
    with _maps_lock:
        _maps[key] = (depth, invalid[0])
        while len(_maps) > MAP_CACHE:
            _maps.popitem(last=False)
    return depth, invalid[0]


def _invalid_values(scene: ColmapScene, name: str) -> int:
    return _read_map_cached(scene.dense_views[name][0])[1]


def _depth_view(scene: ColmapScene, name: str) -> DepthView:
    path, cam, R, t = scene.dense_views[name]
    depth, _ = _read_map_cached(path)
    if abs(depth.shape[1] / cam.width - depth.shape[0] / cam.height) > 0.02:
        raise BadInputError(
            f"{path}: depth map is {depth.shape[1]}x{depth.shape[0]}, not the aspect "
            f"of its camera ({cam.width}x{cam.height})",
            path,
        )
    return DepthView(depth, _corner_K(cam, depth.shape[1], depth.shape[0]), R, t)


def mvs_depth(
    frame: ColmapFrame,
    scene: ColmapScene,
    K_out: np.ndarray,
    width: int,
    height: int,
    neighbours: list[str],
    cfg: MvsConfig,
) -> tuple[np.ndarray, dict]:
    """Filtered MVS depth of the frame pooled into the output camera (metric_scale applied)."""
    ref = _depth_view(scene, frame.name)
    others = [_depth_view(scene, n) for n in neighbours]
    # Output corner coordinates → depth-map corner coordinates (both pinhole, same rotation).
    ax = ref.K[0, 0] / K_out[0, 0]
    ay = ref.K[1, 1] / K_out[1, 1]
    affine = np.array([ax, ref.K[0, 2] - ax * (K_out[0, 2] + 0.5), ay, ref.K[1, 2] - ay * (K_out[1, 2] + 0.5)])
    # Only the map pixels the output shows (plus the pooling window's 1.5 output px) are filtered.
    margin_x, margin_y = 2.0 * ax + 1.0, 2.0 * ay + 1.0
    rect = (
        int(np.floor(affine[1] - margin_x)),
        int(np.floor(affine[3] - margin_y)),
        int(np.ceil(affine[1] + ax * width + margin_x)),
        int(np.ceil(affine[3] + ay * height + margin_y)),
    )
    filtered, stats = consistency_filter(ref, others, cfg, rect)
    stats["mvs_invalid_values"] = _invalid_values(scene, frame.name)
    out = pool_depth(filtered, affine, height, width) * np.float32(scene.scale)
    return out, stats


def read_colmap_mask(path, cam: SourceCamera) -> np.ndarray:
    """(h, w) bool: True where the mask allows the pixel (COLMAP: 0 = ignore)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.size != (cam.width, cam.height):
                raise BadInputError(
                    f"{path}: mask is {im.size[0]}x{im.size[1]}, expected {cam.width}x{cam.height} (its photo's size)",
                    path,
                )
            arr = np.asarray(im.convert("L"))
    except (OSError, SyntaxError) as exc:
        raise BadInputError(f"{path}: unreadable mask PNG ({exc})", path) from None
    return arr > 0


def _mask_at_output(mask: np.ndarray, cam: SourceCamera, K: np.ndarray, width: int, height: int) -> np.ndarray:
    jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    src = pixel_sources(cam, K, jj.ravel(), ii.ravel())
    ix = np.floor(src[:, 0]).astype(np.int64)
    iy = np.floor(src[:, 1]).astype(np.int64)
    inside = (ix >= 0) & (iy >= 0) & (ix < cam.width) & (iy < cam.height)
    ok = np.zeros(len(src), dtype=bool)
    ok[inside] = mask[iy[inside], ix[inside]]
    return ok.reshape(height, width)


def render_colmap_frame(
    frame: ColmapFrame,
    scene: ColmapScene,
    width: int,
    height: int,
    fit: str,
    fov: str,
    sparse_cfg,
    mvs_cfg: MvsConfig,
    neighbours: list[str],
):
    """(rgb uint8 (H,W,3), K (3,3) OpenCV, depth float32 (H,W), meta)."""
    from dataengine.depth import sparse_depth

    umap = undistort_map(frame.camera, width, height, fit, fov)
    rgb, covered = undistort_photo(frame.image_path.read_bytes(), frame.camera, umap, frame.image_path)
    K = umap.K
    meta = {
        "name": frame.name,
        "camera_id": frame.camera_id,
        "depth_source": frame.depth_source,
        "source_size": [frame.camera.width, frame.camera.height],
        "camera_model": frame.camera.model,
        "decode_reduction": umap.reduction,
        "blank_fraction": round(float((covered == 0).mean()), 6),
    }
    if frame.depth_source == "mvs":
        depth, stats = mvs_depth(frame, scene, K, width, height, neighbours, mvs_cfg)
    else:
        depth, stats = sparse_depth(
            scene.points_xyz,
            scene.points_xyz[frame.observed],
            frame.rotation,
            frame.translation,
            K,
            OutputRect(width, height),
            sparse_cfg,
        )
    depth[covered < 1.0] = 0.0  # (partly) blank pixels carry no photo to supervise
    if frame.mask_path is not None:
        keep = _mask_at_output(read_colmap_mask(frame.mask_path, frame.camera), frame.camera, K, width, height)
        stats["masked_fraction"] = round(float((~keep).mean()), 6)
        depth[~keep] = 0.0
    meta.update(stats)
    meta["coverage"] = round(float(np.count_nonzero(depth)) / depth.size, 6)
    return rgb, K, depth.astype(np.float32), meta


def neighbour_names(scene: ColmapScene, cfg: MvsConfig) -> dict[str, list[str]]:
    """Per MVS frame, the cfg.neighbours other MVS frames sharing the most sparse points
    (ties by name: deterministic)."""
    mvs = [f for f in scene.frames if f.depth_source == "mvs"]
    if not mvs:
        return {}
    co = scene.covisibility(mvs)
    out = {}
    for i, f in enumerate(mvs):
        order = sorted((j for j in range(len(mvs)) if j != i and co[i, j] > 0), key=lambda j: (-co[i, j], mvs[j].name))
        out[f.name] = [mvs[j].name for j in order[: cfg.neighbours]]
    return out
