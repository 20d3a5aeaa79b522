"""Data engine units: COLMAP text parsing, numba kernels vs numpy references, image geometry,
windows/splits and the reproducible tar writer. No synthetic scene needed."""

from __future__ import annotations

import io
import math
import tarfile

import numpy as np
import pytest
import simplejpeg

from dataengine import camera, kernels
from dataengine.colmap import BadInputError, read_model, read_model_pycolmap
from dataengine.images import (choose_reduction, decode_reduced, fit_geometry, output_intrinsics,
                               render_frame)
from dataengine.colmap import Camera
from dataengine.shards import (list_tar_samples, npy_bytes, sample_key, sample_members, write_tar)
from dataengine.windows import WindowConfig, scene_windows, split_frames, window_starts

# Real ETH3D THIN_PRISM_FISHEYE line (courtyard camera 0).
PRISM = np.array([3411.42, 3410.02, 3041.29, 2014.07, 0.21047, 0.21102, -5.36231e-06, 0.00051541,
                  -0.158023, 0.406856, -8.46499e-05, 0.000861313])

CAMERAS_TXT = """# Camera list with one line of data per camera:
#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]
# Number of cameras: 2
0 PINHOLE 6220 4141 3430.27 3429.23 3119.2 2057.75
3 PINHOLE 6205 4135 3410.5 3409.1 3100.4 2060.1
"""
# Image ids out of name order, camera id 0, an EMPTY POINTS2D line, CRLF-free.
IMAGES_TXT = """# Image list with two lines of data per image:
#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME
#   POINTS2D[] as (X, Y, POINT3D_ID)
# Number of images: 3
14 0.554619 0.524856 -0.452905 0.460219 -0.173888 0.236895 1.27596 0 dslr_images_undistorted/DSC_0647.JPG
1234.5 567.8 7 892.3 234.1 -1
2 1 0 0 0 0.5 -0.25 2 3 dslr_images_undistorted/DSC_0640.JPG

9 0.9238795 0 0.3826834 0 1 2 3 0 dslr_images_undistorted/DSC_0645.JPG
10.5 20.5 7 30 40 9
"""
POINTS3D_TXT = """# 3D point list with one line of data per point:
#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)
7 0.1 0.2 3.0 255 0 0 0.5 14 0 9 0
9 -0.4 0.1 4.0 0 255 0 0.7 9 1
"""


def write_model(tmp_path, cameras=CAMERAS_TXT, images=IMAGES_TXT, points=POINTS3D_TXT):
    d = tmp_path / "model"
    d.mkdir(exist_ok=True)
    (d / "cameras.txt").write_text(cameras)
    (d / "images.txt").write_text(images)
    (d / "points3D.txt").write_text(points)
    return d


# ---------------------------------------------------------------------------------------------- COLMAP
def test_colmap_parses_eth3d_pitfalls_and_matches_pycolmap(tmp_path):
    d = write_model(tmp_path)
    model = read_model(d)
    assert sorted(model.cameras) == [0, 3]
    assert set(model.images) == {14, 2, 9}
    assert len(model.images[2].xys) == 0  # the empty POINTS2D line
    assert model.images[9].point3d_ids.tolist() == [7, 9]  # not shifted by the empty line
    assert model.images[14].point3d_ids.tolist() == [7, -1]
    c = math.sqrt(0.5)
    np.testing.assert_allclose(model.images[9].rotation,
                               [[c, 0, c], [0, 1, 0], [-c, 0, c]], atol=1e-6)  # 45° about y
    ref = read_model_pycolmap(d)
    for img in model.images.values():
        cam_id, rt = ref[img.name]
        assert cam_id == img.camera_id
        # pycolmap keeps the 6-digit quaternion as printed; we normalise it (a proper rotation).
        np.testing.assert_allclose(rt[:, :3], img.rotation, atol=2e-6)
        assert np.abs(img.rotation @ img.rotation.T - np.eye(3)).max() < 1e-12
        np.testing.assert_allclose(rt[:, 3], img.tvec, atol=1e-12)
    assert model.points3d.ids.tolist() == [7, 9]
    assert [t.tolist() for t in model.points3d.track_image_ids] == [[14, 9], [9]]


@pytest.mark.parametrize("which, text, message", [
    ("images", IMAGES_TXT.replace("0 dslr_images_undistorted/DSC_0647.JPG",
                                  "dslr_images_undistorted/DSC_0647.JPG"),
     "images.txt:5: expected 10 fields"),
    ("images", IMAGES_TXT.replace("892.3 234.1 -1", "892.3 234.1"), "images.txt:6: POINTS2D needs"),
    ("images", IMAGES_TXT.replace("1234.5 567.8", "1234.5 abc"), "images.txt:6: POINTS2D: 'abc'"),
    ("images", IMAGES_TXT.replace(" 3 dslr_images_undistorted/DSC_0640", " 5 dslr_images_undistorted/DSC_0640"),
     "images.txt:7: CAMERA_ID 5 is not in cameras.txt"),
    ("cameras", CAMERAS_TXT.replace("3119.2 2057.75", "3119.2"), "cameras.txt:4: PINHOLE expects 4"),
    ("cameras", CAMERAS_TXT.replace("6205 4135", "6205 x"), "cameras.txt:5: WIDTH/HEIGHT: 'x'"),
    ("cameras", CAMERAS_TXT.replace("PINHOLE 6205", "PINHOLEX 6205"), "cameras.txt:5: unknown camera model"),
    ("points", POINTS3D_TXT.replace("9 -0.4 0.1 4.0", "9 -0.4 nan 4.0"), "points3D.txt:4: XYZ: 'nan' is not finite"),
    ("points", POINTS3D_TXT.replace("14 0 9 0", "14 0 9"), "points3D.txt:3: expected 'POINT3D_ID"),
])
def test_colmap_errors_name_file_and_line(tmp_path, which, text, message):
    d = write_model(tmp_path, **{which: text})
    with pytest.raises(BadInputError) as info:
        read_model(d)
    assert message in str(info.value)
    assert str(d) in str(info.value)


# ---------------------------------------------------------------------------------------------- kernels
def test_numba_thin_prism_matches_numpy_reference():
    rng = np.random.default_rng(0)
    xyz = np.c_[rng.uniform(-1.2, 1.2, (2000, 2)), rng.uniform(0.5, 8, 2000)]
    xyz[0] = [0.0, 0.0, 2.0]  # r = 0 branch
    got = kernels.thin_prism_project(xyz, PRISM)
    want = camera.thin_prism_project(xyz, PRISM)
    assert np.abs(got - want).max() < 1e-9
    behind = kernels.thin_prism_project(np.array([[0.1, 0.1, -1.0]]), PRISM)
    assert np.isnan(behind).all()


def test_distortion_grid_bilinear_error_is_negligible():
    pin = np.array([3411.42, 3410.02, 3041.29 + 78, 2014.07 + 53])
    spacing = 8.0
    gw, gh = int(6200 // spacing) + 2, int(4130 // spacing) + 2
    gx, gy = np.empty((gh, gw)), np.empty((gh, gw))
    kernels.distortion_grid(pin, PRISM, spacing, gx, gy)
    rng = np.random.default_rng(1)
    pts = np.c_[rng.uniform(0, 6200, 5000), rng.uniform(0, 4130, 5000)]
    fx, fy = pts[:, 0] / spacing, pts[:, 1] / spacing
    x0, y0 = fx.astype(int), fy.astype(int)
    wx, wy = fx - x0, fy - y0
    interp = lambda g: ((g[y0, x0] * (1 - wx) + g[y0, x0 + 1] * wx) * (1 - wy)
                        + (g[y0 + 1, x0] * (1 - wx) + g[y0 + 1, x0 + 1] * wx) * wy)
    exact = camera.thin_prism_project(np.c_[(pts[:, 0] - pin[2]) / pin[0], (pts[:, 1] - pin[3]) / pin[1],
                                            np.ones(len(pts))], PRISM)
    err = np.hypot(interp(gx) - exact[:, 0], interp(gy) - exact[:, 1])
    assert err.max() < 5e-3, err.max()  # px, at a 6048-px-wide distortion of up to ~116 px


def _laser_reference(depth, mask, pin, prism, affine, src_size, k, pooling, min_count, out_hw):
    """Brute-force numpy: exact thin-prism per sample, floor lookup, nearest / lower median / min."""
    ax, bx, ay, by = affine
    H, W = out_hw
    out = np.zeros(out_hw, np.float32)
    for i in range(H):
        for j in range(W):
            ys = ay * (i + (np.arange(k) + 0.5) / k) + by
            xs = ax * (j + (np.arange(k) + 0.5) / k) + bx
            gx, gy = np.meshgrid(xs, ys)
            centre_dist = (gx - (ax * (j + 0.5) + bx)) ** 2 / ax ** 2 + (gy - (ay * (i + 0.5) + by)) ** 2 / ay ** 2
            ok = (gx >= 0) & (gx < src_size[0]) & (gy >= 0) & (gy < src_size[1])
            gx, gy, centre_dist = gx[ok], gy[ok], centre_dist[ok]
            d = camera.thin_prism_project(np.c_[(gx - pin[2]) / pin[0], (gy - pin[3]) / pin[1],
                                                np.ones(len(gx))], prism)
            ix, iy = np.floor(d[:, 0]).astype(int), np.floor(d[:, 1]).astype(int)
            inside = (ix >= 0) & (iy >= 0) & (ix < depth.shape[1]) & (iy < depth.shape[0])
            vals = depth[iy[inside], ix[inside]]
            m = mask[iy[inside], ix[inside]] if mask.size else np.zeros(len(vals), np.uint8)
            good = np.isfinite(vals) & (vals > 0) & (m == 0)
            vals, dist = vals[good], centre_dist[inside][good]
            if len(vals) >= max(min_count, 1):
                out[i, j] = {"nearest": vals[np.argsort(dist, kind="stable")[0]] if len(vals) else 0,
                             "median": np.sort(vals)[(len(vals) - 1) // 2],
                             "min": vals.min()}[pooling]
    return out


@pytest.mark.parametrize("pooling", ["nearest", "median", "min"])
def test_laser_pool_matches_bruteforce_reference(pooling):
    rng = np.random.default_rng(2)
    # A small camera with strong distortion: 120x80 distorted, 124x83 undistorted.
    prism = PRISM.copy()
    prism[:4] = [68.2, 68.2, 60.8, 40.3]
    pin = np.array([68.2, 68.2, 62.4, 41.4])
    depth = rng.uniform(1, 10, (80, 120)).astype(np.float32)
    depth[rng.random(depth.shape) < 0.6] = np.inf  # sparse like the laser GT
    depth[rng.random(depth.shape) < 0.05] = 0.0
    mask = np.zeros(depth.shape, np.uint8)
    mask[10:30, 50:90] = 1
    mask[50:60, 10:40] = 2
    geom = fit_geometry(124, 83, 20, 16, "crop")
    gx, gy = np.empty((83 // 1 + 2, 124 // 1 + 2)), np.empty((83 // 1 + 2, 124 // 1 + 2))
    kernels.distortion_grid(pin, prism, 1.0, gx, gy)
    out = np.empty((16, 20), np.float32)
    count = np.empty((16, 20), np.uint16)
    n_nan = kernels.laser_depth_pool(depth, mask, gx, gy, 1.0, geom.affine, np.array([124.0, 83.0]), 4,
                                     ["nearest", "median", "min"].index(pooling), 2, out, count)
    ref = _laser_reference(depth, mask, pin, prism, geom.affine, (124, 83), 4, pooling, 2, (16, 20))
    assert n_nan == 0
    assert (out > 0).mean() > 0.5
    # The grid is interpolated, so a sample sitting within ~1e-3 px of a pixel edge may flip.
    assert np.mean(out == ref) > 0.97
    assert set(np.unique(out[out > 0])) <= set(np.unique(depth[np.isfinite(depth)]))  # never blends
    nan_depth = depth.copy()
    nan_depth[:, :] = np.nan
    assert kernels.laser_depth_pool(nan_depth, mask[:0, :0], gx, gy, 1.0, geom.affine,
                                    np.array([124.0, 83.0]), 2, 1, 1, out, count) > 0
    assert kernels.scan_depth(nan_depth) == (nan_depth.size, 0)


# A small, strongly distorted camera pair (120x80 distorted, 124x83 undistorted) for plane pooling.
SMALL_PRISM = np.r_[68.2, 68.2, 60.8, 40.3, PRISM[4:]]
SMALL_PIN = np.array([68.2, 68.2, 62.4, 41.4])
SMALL_CAMS = (Camera(0, "PINHOLE", 124, 83, SMALL_PIN), Camera(0, "THIN_PRISM_FISHEYE", 120, 80, SMALL_PRISM))
PLANE = np.array([0.08, 0.05, 0.2])  # inverse depth 1/z = 0.2 + 0.08 u + 0.05 v: z from ~3 to ~10 m


def _gt_of_inverse_depth(inv_depth, density, seed):
    """Laser-like GT of the small camera: inverse depth f(u, v) at the distorted pixel centres
    (pycolmap-independent numpy unprojection), `density` of the pixels valid, the rest +inf."""
    ys, xs = np.mgrid[0:80, 0:120] + 0.5
    uv = camera.thin_prism_unproject(np.c_[xs.ravel(), ys.ravel()], SMALL_PRISM)
    depth = (1.0 / inv_depth(uv[:, 0], uv[:, 1])).reshape(80, 120).astype(np.float32)
    depth[np.random.default_rng(seed).random(depth.shape) >= density] = np.inf
    return depth


def _output_rays(geom):
    """Pinhole-normalised (u, v) of the output pixel centres."""
    x = geom.ax * (np.arange(geom.width) + 0.5) + geom.bx
    y = geom.ay * (np.arange(geom.height) + 0.5) + geom.by
    return np.meshgrid((x - SMALL_PIN[2]) / SMALL_PIN[0], (y - SMALL_PIN[3]) / SMALL_PIN[1])


def _truth_at_output_centres(geom, inv_depth):
    """Depth at the undistorted output pixel centres (the pinhole of the same camera)."""
    return 1.0 / inv_depth(*_output_rays(geom))


def _plane_pool(depth, mask, geom, **kw):
    from dataengine.depth import LaserDepthConfig, plane_depth

    cfg = LaserDepthConfig(grid_spacing=1.0, **kw)
    plane = plane_depth(depth, mask, *SMALL_CAMS, geom, cfg)
    # The same pass counts the whole map, also the columns the crop never reaches.
    assert plane.n_valid == np.count_nonzero(np.isfinite(depth) & (depth > 0))
    assert plane.n_nan == np.count_nonzero(np.isnan(depth))
    assert plane.n_masked == np.count_nonzero(mask)
    return plane.depth, plane.status


def test_undistortion_grid_inverts_the_thin_prism_model():
    spacing = 8.0
    gw, gh = int(6048 // spacing) + 2, int(4032 // spacing) + 2
    ux, uy = np.empty((gh, gw)), np.empty((gh, gw))
    pin = np.array([3411.42, 3410.02, 3041.29 + 78, 2014.07 + 53])
    kernels.undistortion_grid(pin, PRISM, spacing, ux, uy)
    assert np.isfinite(ux).all() and np.isfinite(uy).all()
    nodes = np.c_[np.arange(gw)[None, :].repeat(gh, 0).ravel(), np.arange(gh)[:, None].repeat(gw, 1).ravel()]
    ref = camera.thin_prism_unproject(nodes * spacing, PRISM)  # independent numpy Newton
    np.testing.assert_allclose(ux.ravel(), ref[:, 0] * pin[0] + pin[2], atol=1e-6)
    np.testing.assert_allclose(uy.ravel(), ref[:, 1] * pin[1] + pin[3], atol=1e-6)


def test_plane_pooling_is_exact_on_a_slanted_plane_where_nearest_is_not():
    geom = fit_geometry(124, 83, 31, 20, "crop")  # ~4 source px per output px
    inv_depth = lambda u, v: PLANE[2] + PLANE[0] * u + PLANE[1] * v
    depth = _gt_of_inverse_depth(inv_depth, 0.4, seed=3)
    truth = _truth_at_output_centres(geom, inv_depth)
    out, status = _plane_pool(depth, np.zeros((0, 0), np.uint8), geom)
    fitted = status == kernels.PLANE_FITTED
    assert (out > 0).all() and fitted.mean() > 0.9
    # Inverse depth is affine in pinhole pixels on a plane: exact up to the bilinear undistortion
    # grid (~2e-3 px on this 68-px-focal camera) times the steep gradient.
    assert np.abs(out[fitted] / truth[fitted] - 1).max() < 5e-5
    # The fallback is the GT value nearest the centre: off by the gradient times the offset.
    nearest, _ = _plane_pool(depth, np.zeros((0, 0), np.uint8), geom, plane_min_points=10**6)
    assert set(np.unique(nearest)) <= set(np.unique(depth[np.isfinite(depth)]))
    assert np.median(np.abs(nearest / truth - 1)) > 100 * np.median(np.abs(out / truth - 1))


def test_plane_pooling_never_blends_two_surfaces_or_fills_holes():
    geom = fit_geometry(124, 83, 31, 20, "crop")
    # A wall at 4 m left of u = 0.1 and a slanted plane behind it: a depth step through the image.
    step = lambda u, v: np.where(u < 0.1, 0.25, PLANE[2] + PLANE[0] * u + PLANE[1] * v)
    depth = _gt_of_inverse_depth(step, 0.5, seed=4)
    full, _ = _plane_pool(depth, np.zeros((0, 0), np.uint8), geom)
    depth[:, 95:] = np.inf  # a hole wider than a footprint on the right
    out, status = _plane_pool(depth, np.zeros((0, 0), np.uint8), geom)
    truth = _truth_at_output_centres(geom, step)
    u, _ = _output_rays(geom)
    edge = (out > 0) & (np.abs(u - 0.1) < 1.6 * geom.ax / SMALL_PIN[0])  # windows reaching the step
    assert (status[edge] == kernels.PLANE_INCONSISTENT).any()
    # Every value is one of the two surfaces' depths (never a blend) ...
    wall = np.abs(out * 0.25 - 1) < 0.02
    back = np.abs(out / _truth_at_output_centres(geom, lambda u, v: PLANE[2] + PLANE[0] * u + PLANE[1] * v) - 1) < 0.02
    assert (wall | back)[out > 0].all()
    # ... and away from the step it is exact.
    far = (out > 0) & ~edge
    assert np.abs(out[far] / truth[far] - 1).max() < 5e-5
    # The hole stays a hole: no output pixel whose footprint lies in it gets depth.
    x_hole = 95 + 12  # distorted column 95 lies left of undistorted ~107 on every row here
    cols_in_hole = geom.ax * np.arange(geom.width) + geom.bx > x_hole
    assert full[:, cols_in_hole].all() and not out[:, cols_in_hole].any()
    assert (status[:, cols_in_hole] == kernels.PLANE_HOLE).all()


def test_plane_pooling_excludes_masked_gt():
    geom = fit_geometry(124, 83, 31, 20, "crop")
    inv_depth = lambda u, v: PLANE[2] + PLANE[0] * u + PLANE[1] * v
    depth = _gt_of_inverse_depth(inv_depth, 0.5, seed=5)
    mask = np.zeros(depth.shape, np.uint8)
    mask[10:40, 20:60] = 1
    mask[50:70, 70:110] = 2
    depth[(mask > 0) & np.isfinite(depth)] = 1000.0  # masked GT is garbage: it must never show
    out, _ = _plane_pool(depth, mask, geom)
    truth = _truth_at_output_centres(geom, inv_depth)
    assert (out > 0).mean() > 0.8 and out.max() < 11.0
    assert np.abs(out[out > 0] / truth[out > 0] - 1).max() < 5e-5
    unmasked, _ = _plane_pool(depth, np.zeros((0, 0), np.uint8), geom)
    assert unmasked.max() > 100  # the same GT without its mask does reach the output


def test_mask_scanlines_unfiltered_inside_the_gt_pass_match_the_decoded_mask(tmp_path):
    """The engine's plane path hands the mask's still-filtered PNG scanlines (every filter type
    here) to the GT pass: same depth, status and counts as the decoded mask; an invalid filter
    type or a value above 2 still names the file."""
    from dataengine.depth import LaserDepthConfig, plane_depth, read_mask, read_mask_scanlines
    from tests.test_png import _mask_like, _png

    geom = fit_geometry(124, 83, 31, 20, "crop")
    inv_depth = lambda u, v: PLANE[2] + PLANE[0] * u + PLANE[1] * v
    depth = _gt_of_inverse_depth(inv_depth, 0.5, seed=6)
    mask = _mask_like(80, 120, seed=7) % 3
    path = tmp_path / "mask.png"
    path.write_bytes(_png(mask, [0, 1, 2, 3, 4]))
    scanlines = read_mask_scanlines(path, 120, 80)
    assert scanlines.shape == (80, 121) and set(scanlines[:, 0]) == {0, 1, 2, 3, 4}
    cfg = LaserDepthConfig(grid_spacing=1.0)
    fused = plane_depth(depth, scanlines, *SMALL_CAMS, geom, cfg, mask_filtered=True,
                        mask_path=path)
    decoded = plane_depth(depth, read_mask(path, 120, 80), *SMALL_CAMS, geom, cfg)
    np.testing.assert_array_equal(fused.depth.view(np.uint32), decoded.depth.view(np.uint32))
    np.testing.assert_array_equal(fused.status, decoded.status)
    assert fused[2:] == decoded[2:] and fused.n_masked == np.count_nonzero(mask) > 1000
    assert (fused.depth > 0).any()
    bad = scanlines.copy()
    bad[41, 0] = 7
    with pytest.raises(BadInputError, match="mask.png: PNG scanline 41 has the invalid filter "
                                            "type 7"):
        plane_depth(depth, bad, *SMALL_CAMS, geom, cfg, mask_filtered=True, mask_path=path)
    mask[60, 100] = 3
    path.write_bytes(_png(mask, [4, 1]))
    with pytest.raises(BadInputError, match="mask.png: mask values must be 0, 1 or 2, found 3"):
        plane_depth(depth, read_mask_scanlines(path, 120, 80), *SMALL_CAMS, geom, cfg,
                    mask_filtered=True, mask_path=path)
    with pytest.raises(BadInputError, match=r"mask.png: mask is 120x80, expected 121x80"):
        read_mask_scanlines(path, 121, 80)
    assert read_mask_scanlines(None, 120, 80).shape == (0, 0)


def test_plane_points_buffers_grow_and_nan_outside_the_crop_is_reported(tmp_path):
    import threading

    from dataengine import depth as depth_mod

    geom = fit_geometry(124, 83, 20, 20, "crop")  # a square crop: the outer columns are skipped
    inv_depth = lambda u, v: PLANE[2] + PLANE[0] * u + PLANE[1] * v
    depth = _gt_of_inverse_depth(inv_depth, 0.5, seed=6)
    ref, ref_status = _plane_pool(depth, np.zeros((0, 0), np.uint8), geom)

    def in_fresh_thread(fn):  # per-thread buffers: start from none at all
        box = []
        t = threading.Thread(target=lambda: box.append(fn()))
        t.start()
        t.join()
        return box[0]

    def tiny_buffers_first():
        depth_mod._local.points_needed = 3  # far fewer than the ~2000 points: must grow and redo
        out = _plane_pool(depth, np.zeros((0, 0), np.uint8), geom)
        return out, depth_mod._local.points_needed

    (out, status), needed = in_fresh_thread(tiny_buffers_first)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(status, ref_status)
    assert needed > 1000 and (out > 0).mean() > 0.9
    # A NaN in column 2, which the 20x20 crop of a 124x83 image never maps to: still an error.
    depth[40, 2] = np.nan
    path = tmp_path / "DSC_0001.JPG"
    depth.astype("<f4").tofile(path)
    with pytest.raises(BadInputError, match=r"DSC_0001.JPG: 1 NaN values in the GT depth"):
        depth_mod.laser_depth(path, None, *SMALL_CAMS, geom, depth_mod.LaserDepthConfig(grid_spacing=1.0))


def test_flag_word_packs_every_byte_pattern():
    # The GT pass walks a row's valid columns as the set bits of 64-column words packed from 0/1
    # flag bytes by a multiply: every 8-bit pattern, at every byte position of a word.
    patterns = np.arange(256)
    bits = (patterns[:, None] >> np.arange(8)) & 1  # (256, 8) flag bytes, bit k = byte k
    for position in range(8):
        flags = np.zeros((256, 64), np.uint8)
        flags[:, 8 * position:8 * position + 8] = bits
        octets = flags.reshape(-1).view(np.uint64)
        words = [int(kernels._flag_word(octets, w)) for w in range(256)]
        assert words == [int(p) << (8 * position) for p in patterns]


def _laser_points_reference(depth, mask, inv_x, inv_y, spacing, geom, src_size):
    """numpy: every valid unmasked GT pixel (row-major) through the bilinear undistortion grid,
    the same float64 operations in the same order as the kernel, kept inside the output."""
    gh, gw = inv_x.shape
    iy, ix = np.nonzero(np.isfinite(depth) & (depth > 0) & (mask == 0 if mask.size else True))
    fy = (iy + 0.5) * (1.0 / spacing)
    gy0 = np.minimum(fy.astype(np.int64), gh - 2)
    wy = fy - gy0
    fx = (ix + 0.5) * (1.0 / spacing)
    g = np.minimum(fx.astype(np.int64), gw - 2)
    wx = fx - g
    ax, bx, ay, by = geom.affine

    def lerp(grid):
        left = grid[gy0, g] * (1 - wy) + grid[gy0 + 1, g] * wy
        right = grid[gy0, g + 1] * (1 - wy) + grid[gy0 + 1, g + 1] * wy
        return left * (1 - wx) + right * wx

    ux, uy = lerp(inv_x), lerp(inv_y)
    with np.errstate(invalid="ignore"):
        ok = (ux >= 0) & (ux < src_size[0]) & (uy >= 0) & (uy < src_size[1])
        ox, oy = (ux - bx) * (1.0 / ax), (uy - by) * (1.0 / ay)
        ok &= (ox >= 0) & (ox < geom.width) & (oy >= 0) & (oy < geom.height)
    ox, oy, d = ox[ok], oy[ok], depth[iy[ok], ix[ok]]
    j, i = ox.astype(np.int64), oy.astype(np.int64)
    qx, qy = (ox - j - 0.5).astype(np.float32), (oy - i - 0.5).astype(np.float32)
    owner = 4 * (i * geom.width + j) + 2 * (qy >= 0) + (qx >= 0)
    return owner, qx, qy, d


@pytest.mark.parametrize("width, masked", [(120, True), (200, False), (64, True)])
def test_laser_points_match_a_numpy_reference_bit_for_bit(width, masked):
    # Widths that are not / are whole 64-column words; the square crop skips the outer columns
    # (row spans), the distortion pushes some corners outside the undistorted image.
    rng = np.random.default_rng(width)
    height = 80
    prism = np.r_[68.2 * width / 120, 68.2 * width / 120, width / 2 + 0.8, 40.3, PRISM[4:]]
    pin = np.array([prism[0], prism[1], width / 2 + 2.4, 41.4])
    src_size = np.array([width + 4.0, 83.0])
    depth = rng.uniform(1, 10, (height, width)).astype(np.float32)
    depth[rng.random(depth.shape) < 0.7] = np.inf
    depth[rng.random(depth.shape) < 0.02] = 0.0
    mask = ((rng.random(depth.shape) < 0.1).astype(np.uint8) * 2 if masked
            else np.zeros((0, 0), np.uint8))
    geom = fit_geometry(width + 4, 83, 20, 20, "crop")
    spacing = 4.0
    inv_x = np.empty((int(height // spacing) + 2, int(width // spacing) + 2))
    inv_y = np.empty_like(inv_x)
    kernels.undistortion_grid(pin, prism, spacing, inv_x, inv_y)
    buffers = kernels.PointBuffers(np.empty(depth.size, np.int32), np.empty(depth.size, np.float32),
                                   np.empty(depth.size, np.float32), np.empty(depth.size, np.float32))
    found = kernels.laser_points(depth, mask, inv_x, inv_y, buffers, spacing=spacing,
                                 affine=geom.affine, src_size=src_size, out_shape=(20, 20))
    ref = _laser_points_reference(depth, mask, inv_x, inv_y, spacing, geom, src_size)
    n = found.n_points
    assert 100 < n < np.count_nonzero(np.isfinite(depth) & (depth > 0))  # the crop drops some
    for got, want in zip(buffers, ref):
        np.testing.assert_array_equal(got[:n], want)
    assert found.n_valid == np.count_nonzero(np.isfinite(depth) & (depth > 0))
    assert found.n_nan == 0
    assert found.n_masked == np.count_nonzero(mask)
    assert (found.mask_peak, found.bad_filter_row) == (0, -1)  # a decoded mask: not scanned for these


@pytest.mark.parametrize("radius", [0.5, 0.7, 1.0, 1.2, 1.5])
def test_plane_window_gathers_exactly_the_points_inside_in_half_cell_order(radius):
    # Bucketed points (`bucket_points`) of a 5x6 output; the window of every pixel against a
    # brute force over all points: the same points, in half-cell rows, then columns, then
    # bucket order (the fit's sums depend on the order).
    rng = np.random.default_rng(int(radius * 10))
    height, width, n = 5, 6, 400
    i, j = rng.integers(0, height, n), rng.integers(0, width, n)
    qx = rng.uniform(-0.5, 0.5, n).astype(np.float32)
    qy = rng.uniform(-0.5, 0.5, n).astype(np.float32)
    owner = (4 * (i * width + j) + 2 * (qy >= 0) + (qx >= 0)).astype(np.int32)
    depth = rng.uniform(1.0, 10.0, n).astype(np.float32)
    inv_z = 1.0 / depth.astype(np.float64)
    start = np.empty(4 * height * width + 1, np.int32)
    px, py, pw = np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n)
    kernels.bucket_points(owner, qx, qy, depth, n, start, px, py, pw)
    order = np.argsort(owner, kind="stable")
    wx, wy, ww = np.empty(n), np.empty(n), np.empty(n)
    for ci in range(height):
        for cj in range(width):
            got = kernels._gather_window(ci, cj, start, px, py, pw, height, width, radius,
                                         wx, wy, ww)
            x = (qx[order] + (j[order] - cj)).astype(np.float64)
            y = (qy[order] + (i[order] - ci)).astype(np.float64)
            x32 = qx[order] + np.float32(1) * (j[order] - cj)  # the kernel adds in float32
            y32 = qy[order] + np.float32(1) * (i[order] - ci)
            inside = (x32 >= -radius) & (x32 < radius) & (y32 >= -radius) & (y32 < radius)
            half_cells = np.floor(2 * y[inside]) * 10 + np.floor(2 * x[inside])
            pick = np.argsort(half_cells, kind="stable")
            assert got == inside.sum()
            np.testing.assert_array_equal(wx[:got], x32[inside][pick])
            np.testing.assert_array_equal(wy[:got], y32[inside][pick])
            np.testing.assert_array_equal(ww[:got], inv_z[order][inside][pick])


def test_build_cli_pooling_option_reaches_the_build_config(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import dataengine.build
    from dataengine.cli import build_command

    seen = []
    monkeypatch.setattr(dataengine.build, "build_shards",
                        lambda cfg: seen.append(cfg) or {"splits": {}, "skipped": []})
    args = ["--root", str(tmp_path), "--out", str(tmp_path / "out"), "--quiet"]
    for extra, pooling in [([], "plane"), (["--pooling", "median", "--depth-samples", "4"], "median")]:
        result = CliRunner().invoke(build_command, args + extra)
        assert result.exit_code == 0, result.output
        assert seen[-1].laser.pooling == pooling
    assert seen[-1].laser.samples == 4
    result = CliRunner().invoke(build_command, args + ["--pooling", "mean"])
    assert result.exit_code != 0 and "'mean' is not one of 'plane', 'nearest'" in result.output
    help_text = " ".join(CliRunner().invoke(build_command, ["--help"]).output.split())
    assert "plane = local inverse-depth plane fit" in help_text and "[default: plane]" in help_text
    assert "(nearest/median/min only)" in help_text


def test_gt_scans_classify_every_special_float_like_numpy():
    # Validity and NaN are tested on the float bits: every class of float32 value must agree with
    # the float comparisons (finite and > 0; NaN of either sign and any payload).
    special = np.array([0.0, -0.0, -1.0, 1e-45, -1e-45, 1.17e-38, 3.4e38, np.inf, -np.inf, np.nan,
                        -np.nan, 1.0, 2.5], np.float32)
    payload_nan = np.array([0x7FC00001, 0xFF800001, 0x7F800001], np.uint32).view(np.float32)
    values = np.r_[special, payload_nan]
    expect_valid = int(np.count_nonzero(np.isfinite(values) & (values > 0)))
    expect_nan = int(np.count_nonzero(np.isnan(values)))
    assert (expect_valid, expect_nan) == (5, 5)
    assert kernels.scan_depth(values.reshape(1, -1)) == (expect_nan, expect_valid)
    from dataengine.depth import LaserDepthConfig, plane_depth

    depth = np.full((80, 120), np.inf, np.float32)
    depth[40, 30:30 + values.size] = values
    plane = plane_depth(depth, np.zeros((0, 0), np.uint8), *SMALL_CAMS,
                        fit_geometry(124, 83, 31, 20, "crop"), LaserDepthConfig(grid_spacing=1.0))
    assert (plane.n_valid, plane.n_nan) == (expect_valid, expect_nan)


def test_laser_config_and_gt_reader_reject_bad_input(tmp_path):
    from dataengine.depth import LaserDepthConfig, read_gt_depth

    with pytest.raises(ValueError, match="pooling must be one of"):
        LaserDepthConfig(pooling="mean")
    with pytest.raises(ValueError, match="plane_radius"):
        LaserDepthConfig(plane_radius=2.0)
    gt = np.full((150, 7), np.inf, "<f4")
    gt[::3, ::2] = 2.5
    gt[1, 1] = 0.0  # zero is no depth either
    gt.tofile(tmp_path / "ok")
    read, n_valid = read_gt_depth(tmp_path / "ok", 7, 150)
    np.testing.assert_array_equal(read, gt)
    assert n_valid == np.count_nonzero(gt == 2.5) and not read.flags.writeable  # mapped read-only
    gt[149, 6] = np.nan  # the very last value
    gt.tofile(tmp_path / "nan")
    with pytest.raises(BadInputError, match=r"nan: 1 NaN values"):
        read_gt_depth(tmp_path / "nan", 7, 150)
    with pytest.raises(BadInputError, match="depth file has 4200 bytes, expected 4228"):
        read_gt_depth(tmp_path / "ok", 7, 151)


def test_sparse_zbuffer_drops_points_behind_the_surface():
    K = np.array([[10.0, 0, 4.0], [0, 10.0, 4.0], [0, 0, 1]])  # 10x10 image, axis through pixel (4,4)
    R, t = np.eye(3), np.zeros(3)
    rect = np.array([0.0, 0.0, 10.0, 10.0])
    front = np.array([[0.0, 0.0, 2.0], [0.2, 0.0, 2.0]])  # pixels (4,4)/(5,4) at z=2
    behind = np.array([[0.0, 0.0, 5.0],  # same pixel as a front point: occluded
                       [0.6, 0.0, 3.0],  # pixel (4,6), next to a front point, z > 2*1.05: occluded
                       [0.2, 0.2, 2.05],  # pixel (5,5), beside front points but within tolerance: kept
                       [-0.8, -0.8, 4.0],  # pixel (2,2), nobody in front: kept
                       [0.0, 0.0, -1.0]])  # behind the camera: ignored
    everything = np.vstack([front, behind])
    zbuf = np.full((10, 10), np.inf)
    kernels.splat_min_depth(everything, R, t, K, rect, zbuf)
    assert zbuf[4, 4] == 2.0 and zbuf[4, 5] == 2.0 and np.isfinite(zbuf).sum() == 5
    out = np.zeros((10, 10))
    kept, occluded = kernels.sparse_visible_depth(everything, R, t, K, rect, zbuf, 1, 0.05, out)
    assert (kept, occluded) == (4, 2)
    assert out[4, 4] == 2.0 and out[5, 5] == 2.05 and out[2, 2] == 4.0 and np.count_nonzero(out) == 4
    out[:] = 0
    assert kernels.sparse_visible_depth(everything, R, t, K, rect, zbuf, 0, 0.05, out) == (5, 1)


def test_area_resample_exact_box_average_and_fractional_offsets():
    rng = np.random.default_rng(3)
    src = rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)
    out = np.empty((4, 6, 3), np.uint8)
    kernels.area_resample(src, np.array([3.0, 0.0, 3.0, 0.0]), np.array([18.0, 12.0]), out)
    want = src.reshape(4, 3, 6, 3, 3).astype(float).mean(axis=(1, 3))
    np.testing.assert_array_equal(out, np.floor(want + 0.5).astype(np.uint8))
    # Fractional scale and offset vs a 20x nearest-upsampled brute force (boundaries exact at 1/20).
    out2 = np.empty((5, 7, 3), np.uint8)
    aff = np.array([2.3, 0.45, 2.1, 0.7])
    kernels.area_resample(src, aff, np.array([18.0, 12.0]), out2)
    up = src.repeat(20, 0).repeat(20, 1).astype(float)
    for i in range(5):
        for j in range(7):
            y0, y1 = round((aff[2] * i + aff[3]) * 20), round((aff[2] * (i + 1) + aff[3]) * 20)
            x0, x1 = round((aff[0] * j + aff[1]) * 20), round((aff[0] * (j + 1) + aff[1]) * 20)
            ref = up[y0:y1, x0:x1].mean(axis=(0, 1))
            assert np.abs(out2[i, j].astype(float) - ref).max() <= 0.5 + 1e-9
    # Pad: pixels entirely outside the source are 0, the partly covered edge is the covered mean.
    out3 = np.empty((3, 4, 3), np.uint8)
    kernels.area_resample(src, np.array([6.0, -6.0, 4.0, 0.0]), np.array([18.0, 12.0]), out3)
    assert (out3[:, 0] == 0).all()
    np.testing.assert_array_equal(out3[0, 1], np.floor(src[0:4, 0:6].mean(axis=(0, 1)) + 0.5))


# ---------------------------------------------------------------------------------------------- images
@pytest.mark.parametrize("fit", ["crop", "pad", "stretch"])
def test_intrinsics_follow_the_affine_map_exactly(fit):
    cam = Camera(0, "PINHOLE", 6205, 4135, np.array([3410.5, 3409.1, 3100.4, 2060.1]))
    geom = fit_geometry(cam.width, cam.height, 518, 392, fit)
    K = output_intrinsics(cam, geom)
    rng = np.random.default_rng(4)
    xyz = np.c_[rng.uniform(-0.8, 0.8, (50, 2)), rng.uniform(1, 5, 50)]
    src = camera.pinhole_project(xyz, cam.K_colmap())
    want = np.c_[(src[:, 0] - geom.bx) / geom.ax, (src[:, 1] - geom.by) / geom.ay] - 0.5
    np.testing.assert_allclose(camera.pinhole_project(xyz, K), want, atol=1e-9)
    x0, y0, x1, y1 = geom.content_rect
    if fit == "crop":
        assert geom.ax == geom.ay and (x0, y0, x1, y1) == (0, 0, 518, 392)
        assert geom.bx > 0 and geom.by >= 0  # centred crop of the wider source
        assert math.isclose(geom.bx * 2 + geom.ax * 518, 6205)
    elif fit == "pad":
        assert geom.ax == geom.ay and x0 == 0 and y0 == int(y0) > 0 and x1 == pytest.approx(518)
    else:
        assert (geom.ax, geom.ay) == (6205 / 518, 4135 / 392) and geom.bx == geom.by == 0


def test_dct_reduction_choice_and_corrupt_jpeg(tmp_path):
    assert choose_reduction(fit_geometry(6200, 4130, 518, 518, "crop")) == 4
    assert choose_reduction(fit_geometry(6200, 4130, 518, 518, "pad")) == 4
    assert choose_reduction(fit_geometry(6200, 4130, 256, 256, "crop")) == 8
    assert choose_reduction(fit_geometry(620, 413, 518, 518, "crop")) == 1
    rng = np.random.default_rng(5)
    img = np.clip(rng.normal(128, 40, (203, 301, 3)), 0, 255).astype(np.uint8)
    data = simplejpeg.encode_jpeg(img, quality=95)
    assert decode_reduced(data, 301, 203, 4, tmp_path / "a.jpg").shape == (51, 76, 3)
    cam = Camera(0, "PINHOLE", 301, 203, np.array([200.0, 200.0, 150.0, 100.0]))
    geom = fit_geometry(301, 203, 37, 25, "stretch")
    with pytest.raises(BadInputError, match="truncated.jpg: corrupt or truncated JPEG"):
        render_frame(data[: len(data) // 2], cam, geom, tmp_path / "truncated.jpg")
    with pytest.raises(BadInputError, match=r"bad.jpg: image is 301x203 but cameras.txt camera 0 says 300x203"):
        render_frame(data, Camera(0, "PINHOLE", 300, 203, cam.params), geom, tmp_path / "bad.jpg")
    with pytest.raises(BadInputError, match="nojpeg.jpg: not a readable JPEG"):
        render_frame(b"\x00" * 100, cam, geom, tmp_path / "nojpeg.jpg")


# ---------------------------------------------------------------------------------------------- windows
def test_windows_cover_tail_and_splits_are_frame_disjoint():
    assert window_starts(20, 8, 4) == [0, 4, 8, 12]
    assert window_starts(23, 8, 4) == [0, 4, 8, 12, 15]
    assert window_starts(7, 8, 4) == []
    cfg = WindowConfig()
    for n in [8, 15, 16, 23, 26, 44, 45, 76]:
        train, val = split_frames("s", n, cfg)
        assert set(train).isdisjoint(val) and len(train) + len(val) == n
        if len(val):
            assert val == range(n - len(val), n) and len(val) >= max(math.ceil(0.15 * n), 8)
        wins = scene_windows("s", n, cfg)
        for w in wins["train"]:
            assert set(w) <= set(train) and w == list(range(w[0], w[0] + 8))
        for w in wins["val"]:
            assert set(w) <= set(val)
        used = {i for s in wins for w in wins[s] for i in w}
        assert used == set(range(n)) or n < 16  # every frame used once both splits exist
    assert split_frames("s", 76, cfg) == (range(64), range(64, 76))
    scene_cfg = WindowConfig(val_scenes=("office",))
    assert split_frames("office", 26, scene_cfg) == (range(0), range(26))
    assert split_frames("facade", 76, scene_cfg) == (range(76), range(0))


# ---------------------------------------------------------------------------------------------- shards
def test_tar_writer_is_reproducible_and_stock_webdataset_decodes(tmp_path):
    import webdataset as wds

    rng = np.random.default_rng(6)
    jpgs = [simplejpeg.encode_jpeg(rng.integers(0, 255, (14, 14, 3), dtype=np.uint8)) for _ in range(2)]
    depth = rng.uniform(0, 5, (2, 14, 14)).astype(np.float32)
    cams = {"scene": "s", "frames": [{"K": np.eye(3).tolist()}] * 2}
    members = sample_members(sample_key("my_scene", 3), jpgs, depth, (depth > 1).astype(np.uint8), cams)
    write_tar(tmp_path / "a.tar", members)
    write_tar(tmp_path / "b.tar", members)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos][0] == "my_scene_00003.f0.jpg"
    assert all(i.mtime == 0 and i.uid == 0 and i.uname == "" and i.mode == 0o444 for i in infos)
    assert list_tar_samples(tmp_path / "a.tar") == {"my_scene_00003": ["f0.jpg", "f1.jpg", "depth.npy",
                                                                       "mask.npy", "cameras.json"]}
    sample = next(iter(wds.WebDataset(str(tmp_path / "a.tar"), shardshuffle=False).decode("rgb8")))
    assert sample["__key__"] == "my_scene_00003"
    np.testing.assert_array_equal(sample["depth.npy"], depth)
    assert sample["f1.jpg"].shape == (14, 14, 3) and sample["cameras.json"] == cams
    assert npy_bytes(depth) == npy_bytes(depth.copy())
    with pytest.raises(ValueError, match="no dots"):
        sample_key("scene.v2", 0)
