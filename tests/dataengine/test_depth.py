"""Laser depth (dataengine.depth): plane pooling on known planes, masks (decoded and fused
scanlines), buffer growth, configuration and GT reader errors."""

from __future__ import annotations

import numpy as np
import pytest

from dataengine.errors import BadInputError
from dataengine.images import fit_geometry
from dataengine.kernels import codes
from tests.dataengine.laser_fixtures import (
    PLANE,
    SMALL_CAMS,
    SMALL_PIN,
    gt_of_inverse_depth,
    output_rays,
    small_plane_pool,
    truth_at_output_centres,
)


def inv_depth(u, v):
    """Inverse depth of the slanted plane PLANE at normalised image coordinates (u, v)."""
    return PLANE[2] + PLANE[0] * u + PLANE[1] * v


def test_plane_pooling_is_exact_on_a_slanted_plane_where_nearest_is_not():
    geom = fit_geometry(124, 83, 31, 20, "crop")  # ~4 source px per output px
    depth = gt_of_inverse_depth(inv_depth, 0.4, seed=3)
    truth = truth_at_output_centres(geom, inv_depth)
    out, status = small_plane_pool(depth, np.zeros((0, 0), np.uint8), geom)
    fitted = status == codes.PLANE_FITTED
    assert (out > 0).all() and fitted.mean() > 0.9
    # Inverse depth is affine in pinhole pixels on a plane: exact up to the bilinear undistortion
    # grid (~2e-3 px on this 68-px-focal camera) times the steep gradient.
    assert np.abs(out[fitted] / truth[fitted] - 1).max() < 5e-5
    # The fallback is the GT value nearest the centre: off by the gradient times the offset.
    nearest, _ = small_plane_pool(depth, np.zeros((0, 0), np.uint8), geom, plane_min_points=10**6)
    assert set(np.unique(nearest)) <= set(np.unique(depth[np.isfinite(depth)]))
    assert np.median(np.abs(nearest / truth - 1)) > 100 * np.median(np.abs(out / truth - 1))


def test_plane_pooling_never_blends_two_surfaces_or_fills_holes():
    geom = fit_geometry(124, 83, 31, 20, "crop")

    # A wall at 4 m left of u = 0.1 and a slanted plane behind it: a depth step through the image.
    def step(u, v):
        return np.where(u < 0.1, 0.25, PLANE[2] + PLANE[0] * u + PLANE[1] * v)

    depth = gt_of_inverse_depth(step, 0.5, seed=4)
    full, _ = small_plane_pool(depth, np.zeros((0, 0), np.uint8), geom)
    depth[:, 95:] = np.inf  # a hole wider than a footprint on the right
    out, status = small_plane_pool(depth, np.zeros((0, 0), np.uint8), geom)
    truth = truth_at_output_centres(geom, step)
    u, _ = output_rays(geom)
    edge = (out > 0) & (np.abs(u - 0.1) < 1.6 * geom.ax / SMALL_PIN[0])  # windows reaching the step
    assert (status[edge] == codes.PLANE_INCONSISTENT).any()
    # Every value is one of the two surfaces' depths (never a blend) ...
    wall = np.abs(out * 0.25 - 1) < 0.02
    back = np.abs(out / truth_at_output_centres(geom, lambda u, v: PLANE[2] + PLANE[0] * u + PLANE[1] * v) - 1) < 0.02
    assert (wall | back)[out > 0].all()
    # ... and away from the step it is exact.
    far = (out > 0) & ~edge
    assert np.abs(out[far] / truth[far] - 1).max() < 5e-5
    # The hole stays a hole: no output pixel whose footprint lies in it gets depth.
    x_hole = 95 + 12  # distorted column 95 lies left of undistorted ~107 on every row here
    cols_in_hole = geom.ax * np.arange(geom.width) + geom.bx > x_hole
    assert full[:, cols_in_hole].all() and not out[:, cols_in_hole].any()
    assert (status[:, cols_in_hole] == codes.PLANE_HOLE).all()


def test_plane_pooling_excludes_masked_gt():
    geom = fit_geometry(124, 83, 31, 20, "crop")
    depth = gt_of_inverse_depth(inv_depth, 0.5, seed=5)
    mask = np.zeros(depth.shape, np.uint8)
    mask[10:40, 20:60] = 1
    mask[50:70, 70:110] = 2
    depth[(mask > 0) & np.isfinite(depth)] = 1000.0  # masked GT is garbage: it must never show
    out, _ = small_plane_pool(depth, mask, geom)
    truth = truth_at_output_centres(geom, inv_depth)
    assert (out > 0).mean() > 0.8 and out.max() < 11.0
    assert np.abs(out[out > 0] / truth[out > 0] - 1).max() < 5e-5
    unmasked, _ = small_plane_pool(depth, np.zeros((0, 0), np.uint8), geom)
    assert unmasked.max() > 100  # the same GT without its mask does reach the output


def test_mask_scanlines_unfiltered_inside_the_gt_pass_match_the_decoded_mask(tmp_path):
    """The engine's plane path hands the mask's still-filtered PNG scanlines (every filter type
    here) to the GT pass: same depth, status and counts as the decoded mask; an invalid filter
    type or a value above 2 still names the file."""
    from dataengine.depth import LaserDepthConfig, plane_depth, read_mask, read_mask_scanlines
    from tests.dataengine.test_png import _mask_like, _png

    geom = fit_geometry(124, 83, 31, 20, "crop")
    depth = gt_of_inverse_depth(inv_depth, 0.5, seed=6)
    mask = _mask_like(80, 120, seed=7) % 3
    path = tmp_path / "mask.png"
    path.write_bytes(_png(mask, [0, 1, 2, 3, 4]))
    scanlines = read_mask_scanlines(path, 120, 80)
    assert scanlines.shape == (80, 121) and set(scanlines[:, 0]) == {0, 1, 2, 3, 4}
    cfg = LaserDepthConfig(grid_spacing=1.0)
    fused = plane_depth(depth, scanlines, *SMALL_CAMS, geom, cfg, mask_filtered=True, mask_path=path)
    decoded = plane_depth(depth, read_mask(path, 120, 80), *SMALL_CAMS, geom, cfg)
    np.testing.assert_array_equal(fused.depth.view(np.uint32), decoded.depth.view(np.uint32))
    np.testing.assert_array_equal(fused.status, decoded.status)
    assert fused[2:] == decoded[2:] and fused.n_masked == np.count_nonzero(mask) > 1000
    assert (fused.depth > 0).any()
    bad = scanlines.copy()
    bad[41, 0] = 7
    with pytest.raises(BadInputError, match="mask.png: PNG scanline 41 has the invalid filter type 7"):
        plane_depth(depth, bad, *SMALL_CAMS, geom, cfg, mask_filtered=True, mask_path=path)
    mask[60, 100] = 3
    path.write_bytes(_png(mask, [4, 1]))
    with pytest.raises(BadInputError, match="mask.png: mask values must be 0, 1 or 2, found 3"):
        plane_depth(
            depth, read_mask_scanlines(path, 120, 80), *SMALL_CAMS, geom, cfg, mask_filtered=True, mask_path=path
        )
    with pytest.raises(BadInputError, match=r"mask.png: mask is 120x80, expected 121x80"):
        read_mask_scanlines(path, 121, 80)
    assert read_mask_scanlines(None, 120, 80).shape == (0, 0)


def test_plane_points_buffers_grow_and_nan_outside_the_crop_is_reported(tmp_path):
    import threading

    from dataengine import depth as depth_mod

    geom = fit_geometry(124, 83, 20, 20, "crop")  # a square crop: the outer columns are skipped
    depth = gt_of_inverse_depth(inv_depth, 0.5, seed=6)
    ref, ref_status = small_plane_pool(depth, np.zeros((0, 0), np.uint8), geom)

    def in_fresh_thread(fn):  # per-thread buffers: start from none at all
        box = []
        t = threading.Thread(target=lambda: box.append(fn()))
        t.start()
        t.join()
        return box[0]

    def tiny_buffers_first():
        depth_mod._local.points_needed = 3  # far fewer than the ~2000 points: must grow and redo
        out = small_plane_pool(depth, np.zeros((0, 0), np.uint8), geom)
        return out, depth_mod._local.points_needed

    (out, status), needed = in_fresh_thread(tiny_buffers_first)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(status, ref_status)
    assert needed > 1000 and (out > 0).mean() > 0.9
    # A NaN in column 2, which the 20x20 crop of a 124x83 image never maps to: still an error.
    depth[40, 2] = np.nan
    path = tmp_path / "DSC_0001.JPG"
    depth.astype("<f4").tofile(path)
    with pytest.raises(BadInputError, match=r"DSC_0001.JPG: 1 bad GT depth values \(1 NaN\)"):
        depth_mod.laser_depth(path, None, *SMALL_CAMS, geom, depth_mod.LaserDepthConfig(grid_spacing=1.0))


def test_pooling_modes_are_one_set_of_named_codes_from_cli_to_kernel():
    """The CLI's --pooling choices, the config's spellings and the kernel codes are one enum: the
    choices keep their order (default first) and every footprint mode reaches its kernel code."""
    from dataengine.cli import build_command
    from dataengine.depth import LaserDepthConfig
    from dataengine.kernels.codes import Pooling

    (option,) = [p for p in build_command.params if p.name == "pooling"]
    assert list(option.type.choices) == ["plane", "nearest", "median", "min"] == list(Pooling.labels())
    assert option.default == LaserDepthConfig().pooling == Pooling.PLANE.label
    # laser_depth_pool's codes (the brute-force reference in test_kernels is keyed by these labels).
    assert {label: int(LaserDepthConfig(pooling=label).mode) for label in ("nearest", "median", "min")} == {
        "nearest": 0,
        "median": 1,
        "min": 2,
    }
    assert LaserDepthConfig(pooling="plane").mode is Pooling.PLANE


def test_laser_config_and_gt_reader_reject_bad_input(tmp_path):
    from dataengine.depth import LaserDepthConfig, read_gt_depth

    with pytest.raises(ValueError, match="pooling must be one of"):
        LaserDepthConfig(pooling="mean")
    with pytest.raises(ValueError, match="plane_radius"):
        LaserDepthConfig(plane_radius=2.0)
    gt = np.full((150, 7), np.inf, "<f4")
    gt[::3, ::2] = 2.5
    gt.tofile(tmp_path / "ok")
    read, n_valid = read_gt_depth(tmp_path / "ok", 7, 150)
    np.testing.assert_array_equal(read, gt)
    assert n_valid == np.count_nonzero(gt == 2.5) and not read.flags.writeable  # mapped read-only
    gt[149, 6] = np.nan  # the very last value
    gt.tofile(tmp_path / "nan")
    with pytest.raises(BadInputError, match=r"nan: 1 bad GT depth values \(1 NaN\)"):
        read_gt_depth(tmp_path / "nan", 7, 150)
    gt[149, 6], gt[1, 1], gt[2, 2], gt[3, 3] = 0.0, -np.inf, -3.0, 2e3  # "no GT" is +inf, not 0
    gt.tofile(tmp_path / "bad")
    with pytest.raises(BadInputError, match=r"bad: 4 bad GT depth values \(1 -inf, 2 <= 0, 1 > 1000 m\)"):
        read_gt_depth(tmp_path / "bad", 7, 150)
    with pytest.raises(BadInputError, match="depth file has 4200 bytes, expected 4228"):
        read_gt_depth(tmp_path / "ok", 7, 151)
