"""Synthetic ETH3D scenes: on-disk format, analytic truth, GT depth semantics, determinism."""

import json
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import simplejpeg
from click.testing import CliRunner
from PIL import Image

from dataengine.camera import (
    PINHOLE,
    THIN_PRISM_FISHEYE,
    Camera,
    K_colmap_to_opencv,
    pinhole_project,
    resize_intrinsics_opencv,
    thin_prism_unproject,
)
from dataengine.cli import main
from dataengine.synth import (
    GLASS,
    GROUND,
    SKY,
    SceneGeometry,
    distorted_cameras,
    generate_scene,
    pixel_centre_rays,
    undistorted_camera,
)

SCALE = 0.1
IMAGES = 6


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return generate_scene(tmp_path_factory.mktemp("synth"), "facade_t", images=IMAGES, scale=SCALE, seed=1)


@pytest.fixture(scope="module")
def geometry(scene) -> SceneGeometry:
    return SceneGeometry.from_scene_dir(scene)


def _reconstruction(scene: Path, calibration: str) -> pycolmap.Reconstruction:
    rec = pycolmap.Reconstruction()
    rec.read_text(str(scene / calibration))
    return rec


def _pose(image) -> tuple[np.ndarray, np.ndarray]:
    cfw = image.cam_from_world
    cfw = cfw() if callable(cfw) else cfw
    return cfw.rotation.matrix(), np.asarray(cfw.translation)


def _camera(cam) -> Camera:
    return Camera(int(cam.camera_id), cam.model.name, cam.width, cam.height, np.asarray(cam.params))


def _read_depth(scene: Path, name: str, cam) -> np.ndarray:
    path = scene / "ground_truth_depth" / "dslr_images" / name
    assert path.stat().st_size == cam.width * cam.height * 4
    return np.fromfile(path, "<f4").reshape(cam.height, cam.width)


# --------------------------------------------------------------------------------------------------
# Format
# --------------------------------------------------------------------------------------------------
def test_both_calibrations_parse_and_follow_eth3d_conventions(scene):
    und = _reconstruction(scene, "dslr_calibration_undistorted")
    jpg = _reconstruction(scene, "dslr_calibration_jpg")
    assert len(und.images) == len(jpg.images) == IMAGES
    assert sorted(und.cameras) == sorted(jpg.cameras) and min(und.cameras) == 0 and len(und.cameras) >= 2
    for cam_id, cam in jpg.cameras.items():
        assert cam.model.name == THIN_PRISM_FISHEYE
        assert (cam.width, cam.height) == (round(6048 * SCALE), round(4032 * SCALE))
        pin = und.cameras[cam_id]
        assert pin.model.name == PINHOLE
        np.testing.assert_array_equal(pin.params[:2], cam.params[:2])  # same focal length
        assert pin.width > cam.width and pin.height > cam.height  # ~6200x4130 at scale 1
    sizes = {(c.width, c.height, *c.params) for c in und.cameras.values()}
    assert len(sizes) == len(und.cameras)  # cameras really differ

    ids = sorted(und.images)
    assert sorted(jpg.images) == ids
    assert np.any(np.diff(ids) > 1), "image ids should be non-contiguous"
    for image_id in ids:
        iu, ij = und.images[image_id], jpg.images[image_id]
        assert iu.name == "dslr_images_undistorted/" + Path(iu.name).name
        assert ij.name == "dslr_images/" + Path(iu.name).name
        assert iu.camera_id == ij.camera_id
        (Ru, tu), (Rj, tj) = _pose(iu), _pose(ij)
        assert np.abs(Ru - Rj).max() < 1e-12 and np.abs(tu - tj).max() < 1e-12
        assert len(iu.points2D) == len(ij.points2D)
        decoded = simplejpeg.decode_jpeg_header((scene / "images" / iu.name).read_bytes())
        assert decoded[:2] == (und.cameras[iu.camera_id].height, und.cameras[iu.camera_id].width)

    # File order is not name order, there is an EMPTY POINTS2D line and -1 point ids.
    lines = (scene / "dslr_calibration_undistorted" / "images.txt").read_text().split("\n")
    assert lines[0] == "# Image list with two lines of data per image:"
    data = lines[4:-1]
    assert len(data) == 2 * IMAGES
    names = [line.split()[-1] for line in data[::2]]
    assert names != sorted(names)
    assert sum(line == "" for line in data[1::2]) == 1
    assert any(" -1" in line for line in data[1::2])
    assert (
        (scene / "dslr_calibration_jpg" / "cameras.txt")
        .read_text()
        .startswith("# Camera list with one line of data per camera:\n#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n")
    )
    assert (
        (scene / "dslr_calibration_jpg" / "points3D.txt")
        .read_text()
        .startswith("# 3D point list with one line of data per point:\n")
    )


def test_tracks_are_consistent_with_points2d_in_both_calibrations(scene):
    for calibration in ("dslr_calibration_undistorted", "dslr_calibration_jpg"):
        rec = _reconstruction(scene, calibration)
        assert len(rec.points3D) >= 100
        for point_id, point in rec.points3D.items():
            assert point.track.length() >= 2
            for el in point.track.elements:
                image = rec.images[el.image_id]
                p2d = image.points2D[el.point2D_idx]
                assert p2d.point3D_id == point_id
                R, t = _pose(image)
                xy = rec.cameras[image.camera_id].img_from_cam((R @ point.xyz + t)[None])[0]
                assert np.hypot(*(xy - p2d.xy)) < 1.0, (calibration, point_id)
        untracked = sum(not p.has_point3D() for im in rec.images.values() for p in im.points2D)
        assert untracked > 0


def test_every_undistorted_pixel_maps_inside_the_distorted_image(scene):
    und = _reconstruction(scene, "dslr_calibration_undistorted")
    jpg = _reconstruction(scene, "dslr_calibration_jpg")
    for cam_id, pin in und.cameras.items():
        pin_cam = _camera(pin)
        rays = pin_cam.pixel_centre_rays().reshape(-1, 3)
        xy = jpg.cameras[cam_id].img_from_cam(rays)  # pycolmap as the independent reference
        dist = jpg.cameras[cam_id]
        assert xy.min() >= 0 and np.all(xy.max(0) < [dist.width, dist.height])
        # ... and the image is (nearly) the largest such: 1% wider or taller leaves the image.
        for grow in ([1.01, 1.0], [1.0, 1.01]):
            w, h = int(pin.width * grow[0]), int(pin.height * grow[1])
            big = Camera(
                pin.camera_id,
                PINHOLE,
                w,
                h,
                [*pin.params[:2], pin.params[2] + (w - pin.width) / 2, pin.params[3] + (h - pin.height) / 2],
            )
            xy = dist.img_from_cam(big.pixel_centre_rays().reshape(-1, 3))
            assert xy.min() < 0 or np.any(xy.max(0) >= [dist.width, dist.height])


def test_full_scale_cameras_are_eth3d_sized():
    rng = np.random.default_rng(0)
    for cam in distorted_cameras(rng, 2, 1.0):
        assert (cam.width, cam.height) == (6048, 4032)
        assert abs(cam.params[0] - 3411.42) < 40
        pin = undistorted_camera(cam)
        assert 6150 <= pin.width <= 6260 and 4090 <= pin.height <= 4180, (pin.width, pin.height)


# --------------------------------------------------------------------------------------------------
# Ground truth depth and masks
# --------------------------------------------------------------------------------------------------
def test_gt_depth_is_sparse_zdepth_on_the_analytic_surface(scene, geometry):
    rec = _reconstruction(scene, "dslr_calibration_jpg")
    for image in rec.images.values():
        cam = rec.cameras[image.camera_id]
        depth = _read_depth(scene, Path(image.name).name, cam)
        valid = np.isfinite(depth)
        assert 0.05 <= valid.mean() <= 0.15
        assert not np.any(np.isneginf(depth) | np.isnan(depth)) and depth[valid].min() > 1.0
        iy, ix = np.nonzero(valid)
        # Unproject the pixel centres through the inverse thin prism, cast to the analytic surface.
        rays = thin_prism_unproject(np.c_[ix + 0.5, iy + 0.5], cam.params)
        R, t = _pose(image)
        z_true, _, _ = geometry.cast_camera_rays(rays, R, t, want_colour=False)
        # A laser point lies somewhere inside its pixel, not at the centre: small, not zero. At
        # silhouettes the centre ray may even miss (sky): those count as outliers (inf).
        rel = np.full(len(z_true), np.inf)
        hit = np.isfinite(z_true)
        rel[hit] = np.abs(depth[iy, ix][hit] - z_true[hit]) / z_true[hit]
        assert np.mean(rel < 2e-3) > 0.5 and np.mean(rel < 0.02) > 0.99
        assert np.mean(rel > 0.05) < 0.005  # depth edges only
        # z-depth, not ray length: the ray length would be longer off-axis.
        ray_len = z_true * np.linalg.norm(np.c_[rays, np.ones(len(rays))], axis=1)
        assert np.median(np.abs(depth[iy, ix][hit] - ray_len[hit]) / ray_len[hit]) > 5 * np.median(rel)


def test_masks_follow_eth3d_semantics(scene):
    truth = json.loads((scene / "synth_truth.json").read_text())
    rec = _reconstruction(scene, "dslr_calibration_jpg")
    by_name = {Path(im.name).name: im for im in rec.images.values()}
    frames = truth["frames"]
    assert any(f["has_mask"] for f in frames) and not all(f["has_mask"] for f in frames)
    for frame in frames:
        path = scene / "masks_for_images" / "dslr_images" / (Path(frame["name"]).stem + ".png")
        assert path.is_file() == frame["has_mask"]
        if not frame["has_mask"]:
            continue
        image = by_name[frame["name"]]
        cam = rec.cameras[image.camera_id]
        mask_image = Image.open(path)
        assert mask_image.mode == "L" and mask_image.size == (cam.width, cam.height)
        mask = np.asarray(mask_image)
        assert set(np.unique(mask)) == {0, 1, 2}
        depth = _read_depth(scene, frame["name"], cam)
        assert not np.isfinite(depth[mask == 2]).any()  # kEvalObs: GT removed
        assert np.isfinite(depth[mask == 1]).mean() > 0.02  # kObs: GT kept


def test_gt_only_contains_visible_points(scene, geometry):
    rec = _reconstruction(scene, "dslr_calibration_jpg")
    sky_pixels = 0
    for image in rec.images.values():
        cam = rec.cameras[image.camera_id]
        depth = _read_depth(scene, Path(image.name).name, cam)
        R, t = _pose(image)
        z_centre = geometry.zdepth_camera(_camera(cam), R, t)
        valid = np.isfinite(depth)
        # Occluded laser points would sit far behind the visible surface.
        assert np.mean(depth[valid] > z_centre[valid] * 1.05) < 0.003
        # No GT in the sky, except on silhouettes (a laser point inside, the centre ray off it).
        sky = np.isinf(z_centre)
        padded = np.pad(~sky, 1)
        near_surface = np.zeros_like(sky)
        for dy in range(3):
            for dx in range(3):
                near_surface |= padded[dy : dy + sky.shape[0], dx : dx + sky.shape[1]]
        assert not (valid & sky & ~near_surface).any()
        sky_pixels += sky.sum()
    assert sky_pixels > 0


# --------------------------------------------------------------------------------------------------
# Analytic truth
# --------------------------------------------------------------------------------------------------
def _facade_camera(geometry, centre_f, width=41, height=31, f=30.0):
    """A camera at a facade-frame position looking straight at the wall (+y)."""
    cam_from_facade = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])
    R = cam_from_facade @ geometry.facade_from_world_R
    centre_w = geometry.facade_from_world_R.T @ (np.asarray(centre_f) - geometry.facade_from_world_t)
    K = np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])
    return K, R, -R @ centre_w


def test_zdepth_and_rays_match_hand_calculations(scene, geometry):
    truth = json.loads((scene / "synth_truth.json").read_text())
    lamp_x = truth["facade"]["lamp_post_x_m"]
    x_wall = -np.sign(lamp_x) * 2.0
    # Plain wall between the ground-floor windows and the first-floor sills, 7 m away.
    K, R, t = _facade_camera(geometry, [x_wall, -7.0, 3.45])
    z = geometry.zdepth(K, R, t, 41, 31)
    assert z[15, 20] == pytest.approx(7.0, abs=1e-9)
    # A pixel 10 columns right: same z-depth on the fronto-parallel wall (z-depth, not distance).
    assert z[15, 30] == pytest.approx(7.0, abs=1e-9)
    # Through the middle of a ground-floor window: glass at the recess depth behind the wall.
    window = next(
        o
        for o, m in zip(geometry.openings, geometry.opening_mat, strict=True)
        if m == GLASS and o[2] < 1.0 and abs((o[0] + o[1]) / 2 - lamp_x) > 1.0
    )
    K, R, t = _facade_camera(geometry, [(window[0] + window[1]) / 2, -7.0, 2.0])
    assert geometry.zdepth(K, R, t, 41, 31)[15, 20] == pytest.approx(7.0 + window[4], abs=1e-9)

    # Ray level, world frame: down at 45 degrees onto the ground, up into the sky.
    def to_world(p):
        return geometry.facade_from_world_R.T @ (np.asarray(p, float) - geometry.facade_from_world_t)

    origin = to_world([0.0, -20.0, 2.0])
    dirs = geometry.facade_from_world_R.T @ np.array([[0.0, 1.0, -1.0], [0.0, -1.0, 1.0], [0.0, 1.0, 0.0]]).T
    t_hit, points, colours = geometry.cast_rays(np.tile(origin, (3, 1)), dirs.T)
    assert t_hit[0] == pytest.approx(2.0, abs=1e-12) and np.isinf(t_hit[1]) and t_hit[2] > 19.0
    np.testing.assert_allclose(points[0], to_world([0.0, -18.0, 0.0]), atol=1e-9)
    assert np.isnan(points[1]).all()
    mats = geometry.materials(np.tile(origin, (3, 1)), dirs.T)
    assert mats[0] == GROUND and mats[1] == SKY and mats[2] != SKY


def test_render_is_consistent_with_ray_casts_and_zdepth(scene, geometry):
    K, R, t = _facade_camera(geometry, [1.0, -9.0, 4.0], width=64, height=48, f=40.0)
    image = geometry.render(K, R, t, 64, 48)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    rays = np.stack(np.meshgrid((np.arange(64) - K[0, 2]) / 40.0, (np.arange(48) - K[1, 2]) / 40.0), -1)
    z, _, colour = geometry.cast_camera_rays(rays, R, t)
    np.testing.assert_allclose(z, geometry.zdepth(K, R, t, 64, 48), rtol=1e-12)
    assert np.abs(colour.astype(int) - image).max() <= 1
    # supersample=4 is the 4x4 box filter of a 4x larger render (K rescaled in the centre convention).
    smooth = geometry.render(K, R, t, 64, 48, supersample=4).astype(float)
    big = geometry.render(resize_intrinsics_opencv(K, 4, 4), R, t, 256, 192).astype(float)
    block_mean = big.reshape(48, 4, 64, 4, 3).mean(axis=(1, 3))
    diff = np.abs(smooth - block_mean)
    assert np.mean(diff <= 1.0) > 0.99 and diff.mean() < 0.5
    assert np.abs(smooth - image).mean() > 2 * diff.mean()  # and it is not just the centre sample


def test_fast_distorted_pixel_rays_match_the_numpy_inverse(scene):
    rec = _reconstruction(scene, "dslr_calibration_jpg")
    cam = _camera(rec.cameras[0])
    np.testing.assert_allclose(pixel_centre_rays(cam), cam.pixel_centre_rays()[..., :2], atol=1e-12)


def test_views_are_photometrically_consistent_at_shared_surface_points(scene, geometry):
    rec = _reconstruction(scene, "dslr_calibration_undistorted")
    ordered = sorted(rec.images.values(), key=lambda im: im.name)

    def view(im):
        cam = rec.cameras[im.camera_id]
        rgb = simplejpeg.decode_jpeg((scene / "images" / im.name).read_bytes()).astype(float)
        R, t = _pose(im)
        return rgb, K_colmap_to_opencv(cam.calibration_matrix()), R, t, cam.width, cam.height

    img_a, Ka, Ra, ta, Wa, Ha = view(ordered[1])
    img_b, Kb, Rb, tb, Wb, Hb = view(ordered[2])
    za = geometry.zdepth(Ka, Ra, ta, Wa, Ha)
    rng = np.random.default_rng(0)
    v, u = rng.integers(0, Ha, 5000), rng.integers(0, Wa, 5000)
    keep = np.isfinite(za[v, u])
    v, u = v[keep], u[keep]
    X_a = np.c_[(u - Ka[0, 2]) / Ka[0, 0], (v - Ka[1, 2]) / Ka[1, 1], np.ones(len(u))] * za[v, u, None]
    X_w = (X_a - ta) @ Ra
    X_b = X_w @ Rb.T + tb
    xy = pinhole_project(X_b, Kb)
    inside = (X_b[:, 2] > 0) & np.all((xy >= 1) & (xy < [Wb - 2, Hb - 2]), axis=1)
    inside &= geometry.visible(X_w, -Rb.T @ tb)
    xy, v, u = xy[inside], v[inside], u[inside]
    assert len(xy) > 1000  # consecutive views overlap strongly

    def bilinear(img, p):
        x0, y0 = np.floor(p[:, 0]).astype(int), np.floor(p[:, 1]).astype(int)
        fx, fy = (p[:, 0] - x0)[:, None], (p[:, 1] - y0)[:, None]
        return (
            img[y0, x0] * (1 - fx) * (1 - fy)
            + img[y0, x0 + 1] * fx * (1 - fy)
            + img[y0 + 1, x0] * (1 - fx) * fy
            + img[y0 + 1, x0 + 1] * fx * fy
        )

    diff = np.abs(bilinear(img_b, xy) - img_a[v, u]).mean(axis=1)
    shifted = np.abs(bilinear(img_b, np.clip(xy + [6, 0], 0, [Wb - 2, Hb - 2])) - img_a[v, u]).mean(axis=1)
    assert np.median(diff) < 4.0 and np.median(shifted) > 2.5 * np.median(diff), (np.median(diff), np.median(shifted))


# --------------------------------------------------------------------------------------------------
# Determinism, failure paths, CLI
# --------------------------------------------------------------------------------------------------
def _tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_byte_identical_for_a_seed(tmp_path):
    a = generate_scene(tmp_path / "a", "s", images=3, scale=0.05, seed=7)
    b = generate_scene(tmp_path / "b", "s", images=3, scale=0.05, seed=7)
    tree_a = _tree(a)
    assert tree_a == _tree(b)
    assert len(tree_a) >= 3 + 3 + 3 + 3 + 1  # images, 2 x 3 calibration files, depth, truth
    c = generate_scene(tmp_path / "c", "s", images=3, scale=0.05, seed=8)
    assert _tree(c)["dslr_calibration_jpg/images.txt"] != tree_a["dslr_calibration_jpg/images.txt"]
    # Regenerating in place replaces the previous synthetic scene.
    assert _tree(generate_scene(tmp_path / "a", "s", images=3, scale=0.05, seed=7)) == tree_a


def test_bad_arguments_and_foreign_folders_are_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 3 images"):
        generate_scene(tmp_path, images=2)
    with pytest.raises(ValueError, match="scale"):
        generate_scene(tmp_path, scale=0.0)
    with pytest.raises(ValueError, match="plain folder name"):
        generate_scene(tmp_path, scene="../x")
    (tmp_path / "real_scene").mkdir()
    (tmp_path / "real_scene" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="real_scene"):
        generate_scene(tmp_path, scene="real_scene", images=3, scale=0.05)
    assert (tmp_path / "real_scene" / "notes.txt").read_text() == "keep me"
    with pytest.raises(FileNotFoundError, match="synth_truth.json"):
        SceneGeometry.from_scene_dir(tmp_path / "real_scene")
    (tmp_path / "real_scene" / "synth_truth.json").write_text('{"format": "x"')
    with pytest.raises(ValueError, match="synth_truth.json: line 1"):
        SceneGeometry.from_scene_dir(tmp_path / "real_scene")


def test_cli_synth_writes_and_reports(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "synth",
            str(tmp_path),
            "--scene",
            "demo",
            "--images",
            "3",
            "--scale",
            "0.04",
            "--seed",
            "2",
            "--distorted-images",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "ground_truth_depth/dslr_images/: 3 files" in result.output
    assert (tmp_path / "demo" / "dslr_calibration_jpg" / "images.txt").is_file()
    distorted = sorted((tmp_path / "demo" / "images" / "dslr_images").iterdir())
    assert len(distorted) == 3
    assert simplejpeg.decode_jpeg_header(distorted[0].read_bytes())[:2] == (round(4032 * 0.04), round(6048 * 0.04))
    bad = runner.invoke(main, ["synth", str(tmp_path), "--images", "2"])
    assert bad.exit_code == 2 and "--images" in bad.output
