"""Numba kernels (dataengine.kernels.*) against numpy references: thin-prism mapping, grids, laser
pooling, laser points, plane windows, GT scans, z-buffers, area resampling."""

from __future__ import annotations

import numpy as np
import pytest

from dataengine import camera
from dataengine.images import fit_geometry
from dataengine.kernels.codes import Pooling
from dataengine.kernels.footprint import laser_depth_pool
from dataengine.kernels.laser import _MAX_GT_BITS, MAX_GT_DEPTH, PointBuffers, _flag_word, laser_points, scan_depth
from dataengine.kernels.plane import _gather_window, bucket_points
from dataengine.kernels.prism import distortion_grid, thin_prism_project, undistortion_grid
from dataengine.kernels.resample import area_resample
from dataengine.kernels.splat import sparse_visible_depth, splat_min_depth
from tests.dataengine.laser_fixtures import PRISM, SMALL_CAMS


def test_numba_thin_prism_matches_numpy_reference():
    rng = np.random.default_rng(0)
    xyz = np.c_[rng.uniform(-1.2, 1.2, (2000, 2)), rng.uniform(0.5, 8, 2000)]
    xyz[0] = [0.0, 0.0, 2.0]  # r = 0 branch
    got = thin_prism_project(xyz, PRISM)
    want = camera.thin_prism_project(xyz, PRISM)
    assert np.abs(got - want).max() < 1e-9
    behind = thin_prism_project(np.array([[0.1, 0.1, -1.0]]), PRISM)
    assert np.isnan(behind).all()


def test_distortion_grid_bilinear_error_is_negligible():
    pin = np.array([3411.42, 3410.02, 3041.29 + 78, 2014.07 + 53])
    spacing = 8.0
    gw, gh = int(6200 // spacing) + 2, int(4130 // spacing) + 2
    gx, gy = np.empty((gh, gw)), np.empty((gh, gw))
    distortion_grid(pin, PRISM, spacing, gx, gy)
    rng = np.random.default_rng(1)
    pts = np.c_[rng.uniform(0, 6200, 5000), rng.uniform(0, 4130, 5000)]
    fx, fy = pts[:, 0] / spacing, pts[:, 1] / spacing
    x0, y0 = fx.astype(int), fy.astype(int)
    wx, wy = fx - x0, fy - y0

    def interp(g):
        top = g[y0, x0] * (1 - wx) + g[y0, x0 + 1] * wx
        bottom = g[y0 + 1, x0] * (1 - wx) + g[y0 + 1, x0 + 1] * wx
        return top * (1 - wy) + bottom * wy

    exact = camera.thin_prism_project(
        np.c_[(pts[:, 0] - pin[2]) / pin[0], (pts[:, 1] - pin[3]) / pin[1], np.ones(len(pts))], PRISM
    )
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
            centre_dist = (gx - (ax * (j + 0.5) + bx)) ** 2 / ax**2 + (gy - (ay * (i + 0.5) + by)) ** 2 / ay**2
            ok = (gx >= 0) & (gx < src_size[0]) & (gy >= 0) & (gy < src_size[1])
            gx, gy, centre_dist = gx[ok], gy[ok], centre_dist[ok]
            d = camera.thin_prism_project(
                np.c_[(gx - pin[2]) / pin[0], (gy - pin[3]) / pin[1], np.ones(len(gx))], prism
            )
            ix, iy = np.floor(d[:, 0]).astype(int), np.floor(d[:, 1]).astype(int)
            inside = (ix >= 0) & (iy >= 0) & (ix < depth.shape[1]) & (iy < depth.shape[0])
            vals = depth[iy[inside], ix[inside]]
            m = mask[iy[inside], ix[inside]] if mask.size else np.zeros(len(vals), np.uint8)
            good = np.isfinite(vals) & (vals > 0) & (m == 0)
            vals, dist = vals[good], centre_dist[inside][good]
            if len(vals) >= max(min_count, 1):
                out[i, j] = {
                    "nearest": vals[np.argsort(dist, kind="stable")[0]] if len(vals) else 0,
                    "median": np.sort(vals)[(len(vals) - 1) // 2],
                    "min": vals.min(),
                }[pooling]
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
    distortion_grid(pin, prism, 1.0, gx, gy)
    out = np.empty((16, 20), np.float32)
    count = np.empty((16, 20), np.uint16)
    n_nan = laser_depth_pool(
        depth,
        mask,
        gx,
        gy,
        1.0,
        geom.affine,
        np.array([124.0, 83.0]),
        4,
        int(Pooling.from_label(pooling)),
        2,
        out,
        count,
    )
    ref = _laser_reference(depth, mask, pin, prism, geom.affine, (124, 83), 4, pooling, 2, (16, 20))
    assert n_nan == 0
    assert (out > 0).mean() > 0.5
    # The grid is interpolated, so a sample sitting within ~1e-3 px of a pixel edge may flip.
    assert np.mean(out == ref) > 0.97
    assert set(np.unique(out[out > 0])) <= set(np.unique(depth[np.isfinite(depth)]))  # never blends
    nan_depth = depth.copy()
    nan_depth[:, :] = np.nan
    assert (
        laser_depth_pool(
            nan_depth,
            mask[:0, :0],
            gx,
            gy,
            1.0,
            geom.affine,
            np.array([124.0, 83.0]),
            2,
            int(Pooling.MEDIAN),
            1,
            out,
            count,
        )
        > 0
    )
    assert scan_depth(nan_depth) == (nan_depth.size, 0)


def test_undistortion_grid_inverts_the_thin_prism_model():
    spacing = 8.0
    gw, gh = int(6048 // spacing) + 2, int(4032 // spacing) + 2
    ux, uy = np.empty((gh, gw)), np.empty((gh, gw))
    pin = np.array([3411.42, 3410.02, 3041.29 + 78, 2014.07 + 53])
    undistortion_grid(pin, PRISM, spacing, ux, uy)
    assert np.isfinite(ux).all() and np.isfinite(uy).all()
    nodes = np.c_[np.arange(gw)[None, :].repeat(gh, 0).ravel(), np.arange(gh)[:, None].repeat(gw, 1).ravel()]
    ref = camera.thin_prism_unproject(nodes * spacing, PRISM)  # independent numpy Newton
    np.testing.assert_allclose(ux.ravel(), ref[:, 0] * pin[0] + pin[2], atol=1e-6)
    np.testing.assert_allclose(uy.ravel(), ref[:, 1] * pin[1] + pin[3], atol=1e-6)


def test_flag_word_packs_every_byte_pattern():
    # The GT pass walks a row's valid columns as the set bits of 64-column words packed from 0/1
    # flag bytes by a multiply: every 8-bit pattern, at every byte position of a word.
    patterns = np.arange(256)
    bits = (patterns[:, None] >> np.arange(8)) & 1  # (256, 8) flag bytes, bit k = byte k
    for position in range(8):
        flags = np.zeros((256, 64), np.uint8)
        flags[:, 8 * position : 8 * position + 8] = bits
        octets = flags.reshape(-1).view(np.uint64)
        words = [int(_flag_word(octets, w)) for w in range(256)]
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
    mask = (rng.random(depth.shape) < 0.1).astype(np.uint8) * 2 if masked else np.zeros((0, 0), np.uint8)
    geom = fit_geometry(width + 4, 83, 20, 20, "crop")
    spacing = 4.0
    inv_x = np.empty((int(height // spacing) + 2, int(width // spacing) + 2))
    inv_y = np.empty_like(inv_x)
    undistortion_grid(pin, prism, spacing, inv_x, inv_y)
    buffers = PointBuffers(
        np.empty(depth.size, np.int32),
        np.empty(depth.size, np.float32),
        np.empty(depth.size, np.float32),
        np.empty(depth.size, np.float32),
    )
    found = laser_points(
        depth, mask, inv_x, inv_y, buffers, spacing=spacing, affine=geom.affine, src_size=src_size, out_shape=(20, 20)
    )
    ref = _laser_points_reference(depth, mask, inv_x, inv_y, spacing, geom, src_size)
    n = found.n_points
    assert 100 < n < np.count_nonzero(np.isfinite(depth) & (depth > 0))  # the crop drops some
    for got, want in zip(buffers, ref, strict=True):
        np.testing.assert_array_equal(got[:n], want)
    assert found.n_valid == np.count_nonzero(np.isfinite(depth) & (depth > 0))
    # zeros are bad GT values ("no GT" is +inf): counted where the crop's row spans read them
    assert 0 < found.n_nan <= np.count_nonzero(depth == 0)
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
    bucket_points(owner, qx, qy, depth, n, start, px, py, pw)
    order = np.argsort(owner, kind="stable")
    wx, wy, ww = np.empty(n), np.empty(n), np.empty(n)
    for ci in range(height):
        for cj in range(width):
            got = _gather_window(ci, cj, start, px, py, pw, height, width, radius, wx, wy, ww)
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


def test_gt_scans_classify_every_special_float_like_numpy():
    # Validity and bad values are tested on the float bits: every class of float32 value must agree
    # with the float comparisons. Valid: finite and > 0. Bad: neither a plausible depth
    # (0 < z <= MAX_GT_DEPTH) nor the +inf "no GT" marker (NaN of either sign and any payload,
    # -inf, zeros, negatives, implausibly far).
    top = np.float32(MAX_GT_DEPTH)
    special = np.array(
        [
            0.0,
            -0.0,
            -1.0,
            1e-45,
            -1e-45,
            1.17e-38,
            3.4e38,
            np.inf,
            -np.inf,
            np.nan,
            -np.nan,
            1.0,
            2.5,
            top,
            np.nextafter(top, np.float32(np.inf)),
        ],
        np.float32,
    )
    payload_nan = np.array([0x7FC00001, 0xFF800001, 0x7F800001], np.uint32).view(np.float32)
    values = np.r_[special, payload_nan]
    assert np.float32(MAX_GT_DEPTH).view(np.int32) == _MAX_GT_BITS
    expect_valid = int(np.count_nonzero(np.isfinite(values) & (values > 0)))
    with np.errstate(invalid="ignore"):
        plausible = np.isfinite(values) & (values > 0) & (values <= top)
    expect_bad = int(np.count_nonzero(~plausible & (values != np.inf)))
    assert (expect_valid, expect_bad) == (7, 12)
    assert scan_depth(values.reshape(1, -1)) == (expect_bad, expect_valid)
    from dataengine.depth import LaserDepthConfig, plane_depth

    depth = np.full((80, 120), np.inf, np.float32)
    depth[40, 30 : 30 + values.size] = values
    plane = plane_depth(
        depth,
        np.zeros((0, 0), np.uint8),
        *SMALL_CAMS,
        fit_geometry(124, 83, 31, 20, "crop"),
        LaserDepthConfig(grid_spacing=1.0),
    )
    assert (plane.n_valid, plane.n_nan) == (expect_valid, expect_bad)


def test_sparse_zbuffer_drops_points_behind_the_surface():
    K = np.array([[10.0, 0, 4.0], [0, 10.0, 4.0], [0, 0, 1]])  # 10x10 image, axis through pixel (4,4)
    R, t = np.eye(3), np.zeros(3)
    rect = np.array([0.0, 0.0, 10.0, 10.0])
    front = np.array([[0.0, 0.0, 2.0], [0.2, 0.0, 2.0]])  # pixels (4,4)/(5,4) at z=2
    behind = np.array(
        [
            [0.0, 0.0, 5.0],  # same pixel as a front point: occluded
            [0.6, 0.0, 3.0],  # pixel (4,6), next to a front point, z > 2*1.05: occluded
            [0.2, 0.2, 2.05],  # pixel (5,5), beside front points but within tolerance: kept
            [-0.8, -0.8, 4.0],  # pixel (2,2), nobody in front: kept
            [0.0, 0.0, -1.0],
        ]
    )  # behind the camera: ignored
    everything = np.vstack([front, behind])
    zbuf = np.full((10, 10), np.inf)
    splat_min_depth(everything, R, t, K, rect, zbuf)
    assert zbuf[4, 4] == 2.0 and zbuf[4, 5] == 2.0 and np.isfinite(zbuf).sum() == 5
    out = np.zeros((10, 10))
    kept, occluded = sparse_visible_depth(everything, R, t, K, rect, zbuf, 1, 0.05, out)
    assert (kept, occluded) == (4, 2)
    assert out[4, 4] == 2.0 and out[5, 5] == 2.05 and out[2, 2] == 4.0 and np.count_nonzero(out) == 4
    out[:] = 0
    assert sparse_visible_depth(everything, R, t, K, rect, zbuf, 0, 0.05, out) == (5, 1)


def test_area_resample_exact_box_average_and_fractional_offsets():
    rng = np.random.default_rng(3)
    src = rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)
    out = np.empty((4, 6, 3), np.uint8)
    area_resample(src, np.array([3.0, 0.0, 3.0, 0.0]), np.array([18.0, 12.0]), out)
    want = src.reshape(4, 3, 6, 3, 3).astype(float).mean(axis=(1, 3))
    np.testing.assert_array_equal(out, np.floor(want + 0.5).astype(np.uint8))
    # Fractional scale and offset vs a 20x nearest-upsampled brute force (boundaries exact at 1/20).
    out2 = np.empty((5, 7, 3), np.uint8)
    aff = np.array([2.3, 0.45, 2.1, 0.7])
    area_resample(src, aff, np.array([18.0, 12.0]), out2)
    up = src.repeat(20, 0).repeat(20, 1).astype(float)
    for i in range(5):
        for j in range(7):
            y0, y1 = round((aff[2] * i + aff[3]) * 20), round((aff[2] * (i + 1) + aff[3]) * 20)
            x0, x1 = round((aff[0] * j + aff[1]) * 20), round((aff[0] * (j + 1) + aff[1]) * 20)
            ref = up[y0:y1, x0:x1].mean(axis=(0, 1))
            assert np.abs(out2[i, j].astype(float) - ref).max() <= 0.5 + 1e-9
    # Pad: pixels entirely outside the source are 0, the partly covered edge is the covered mean.
    out3 = np.empty((3, 4, 3), np.uint8)
    area_resample(src, np.array([6.0, -6.0, 4.0, 0.0]), np.array([18.0, 12.0]), out3)
    assert (out3[:, 0] == 0).all()
    np.testing.assert_array_equal(out3[0, 1], np.floor(src[0:4, 0:6].mean(axis=(0, 1)) + 0.5))


def test_every_engine_kernel_is_in_the_kernels_package_with_the_one_numba_setting():
    """The pixel modules hold no numba code; every kernel is compiled with `_jit.JIT_OPTIONS`
    (cached on disk, GIL released, IEEE arithmetic: the shards stay bit-identical)."""
    import ast
    import importlib
    import pkgutil
    from pathlib import Path

    from numba.core.caching import FunctionCache
    from numba.core.dispatcher import Dispatcher

    import dataengine
    from dataengine import kernels
    from dataengine.kernels._jit import JIT_OPTIONS

    for path in sorted(Path(dataengine.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "numba" for n in names), f"{path.name} imports numba"
    found = []
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"dataengine.kernels.{info.name}")
        for name, obj in vars(module).items():
            if isinstance(obj, Dispatcher) and obj.py_func.__module__ == module.__name__:
                found.append(name)
                assert {k: obj.targetoptions[k] for k in ("nogil", "fastmath")} == {
                    "nogil": JIT_OPTIONS["nogil"],
                    "fastmath": JIT_OPTIONS["fastmath"],
                }, name
                assert isinstance(obj._cache, FunctionCache), f"{name} is not cached"
    # mvs.py's consistency test and undistort.py's footprint sampler moved in with the rest.
    assert {"count_consistent", "sample_footprints", "laser_depth_pool", "plane_pool", "unfilter_row"} <= set(found)
