"""Camera models: COLMAP-exact THIN_PRISM_FISHEYE, its inverse, pinhole helpers, quaternions."""

import numpy as np
import pycolmap
import pytest

from dataengine.camera import (
    PINHOLE,
    THIN_PRISM_FISHEYE,
    Camera,
    K_colmap_to_opencv,
    crop_intrinsics,
    pinhole_project,
    pinhole_rays,
    pinhole_unproject,
    qvec_to_rotmat,
    resize_intrinsics_opencv,
    rotmat_to_qvec,
    thin_prism_distort_normalized,
    thin_prism_project,
    thin_prism_unproject,
)
from dataengine.eth3d import REFERENCE_CALIBRATION_LINE as COURTYARD_LINE  # real ETH3D line: courtyard camera 0

COURTYARD = np.array([float(v) for v in COURTYARD_LINE.split()[4:]])
# Same camera with exaggerated tangential / thin-prism terms, so a p1<->p2 swap cannot hide.
STRONG = COURTYARD.copy()
STRONG[6:8] = [0.004, -0.003]
STRONG[10:12] = [0.002, -0.0025]


def _pycolmap_camera(params, width=6048, height=4032):
    return pycolmap.Camera(model="THIN_PRISM_FISHEYE", width=width, height=height, params=params)


@pytest.mark.parametrize("params", [COURTYARD, STRONG], ids=["courtyard", "strong"])
def test_thin_prism_project_matches_pycolmap(params):
    rng = np.random.default_rng(0)
    xyz = np.c_[rng.uniform(-1.3, 1.3, (2000, 2)), np.ones(2000)] * rng.uniform(0.5, 40, (2000, 1))
    xyz[0] = [0.0, 0.0, 3.0]  # the optical axis (r = 0 branch)
    ours = thin_prism_project(xyz, params)
    theirs = _pycolmap_camera(params).img_from_cam(xyz)
    np.testing.assert_allclose(ours, theirs, atol=1e-8, rtol=0)
    np.testing.assert_allclose(ours[0], params[2:4], atol=1e-12)


def test_p1_p2_order_is_colmaps_not_opencvs():
    swapped = STRONG.copy()
    swapped[[6, 7]] = swapped[[7, 6]]
    xyz = np.array([[0.8, -0.5, 1.0], [-0.9, 0.6, 1.0]])
    reference = _pycolmap_camera(STRONG).img_from_cam(xyz)
    assert np.abs(thin_prism_project(xyz, swapped) - reference).max() > 1.0
    np.testing.assert_allclose(thin_prism_project(xyz, STRONG), reference, atol=1e-8)


def test_distortion_magnitude_matches_the_documented_eth3d_shift():
    # Docs: up to ~116 px at the middle of the left/right edges relative to the same pinhole.
    xy = np.array([[0.5, 2014.07], [6047.5, 2014.07]])
    uv = thin_prism_unproject(xy, COURTYARD)
    pinhole = uv * COURTYARD[:2] + COURTYARD[2:4]
    shift = np.abs(pinhole[:, 0] - xy[:, 0])
    assert np.all((shift > 100) & (shift < 130)), shift


@pytest.mark.parametrize("params", [COURTYARD, STRONG], ids=["courtyard", "strong"])
def test_thin_prism_unproject_inverts_projection_and_matches_pycolmap(params):
    rng = np.random.default_rng(1)
    xy = rng.uniform([0, 0], [6048, 4032], (3000, 2))
    xy[0] = params[2:4]  # principal point -> optical axis
    uv = thin_prism_unproject(xy, params)
    np.testing.assert_allclose(thin_prism_distort_normalized(uv, params), xy, atol=1e-8, rtol=0)
    np.testing.assert_allclose(thin_prism_project(np.c_[uv, np.ones(len(uv))] * 7.0, params), xy, atol=1e-8)
    np.testing.assert_allclose(uv, _pycolmap_camera(params).cam_from_img(xy), atol=1e-8)
    np.testing.assert_allclose(uv[0], 0.0, atol=1e-15)


def test_thin_prism_unproject_refuses_pixels_outside_the_model():
    with pytest.raises(ValueError, match="did not converge|90 degrees"):
        thin_prism_unproject(np.array([[3000.0, 2000.0], [4e6, -3e6]]), COURTYARD)


def test_camera_line_round_trips_the_eth3d_text():
    cam = Camera(0, THIN_PRISM_FISHEYE, 6048, 4032, COURTYARD)
    assert cam.colmap_line() == COURTYARD_LINE
    pinhole = Camera(0, PINHOLE, 6220, 4141, [3430.27, 3429.23, 3119.2, 2057.75])
    assert pinhole.colmap_line() == "0 PINHOLE 6220 4141 3430.27 3429.23 3119.2 2057.75"
    assert np.allclose(pinhole.K_opencv() - pinhole.K_colmap(), [[0, 0, -0.5], [0, 0, -0.5], [0, 0, 0]])


def test_camera_rejects_bad_input():
    with pytest.raises(ValueError, match="12 params"):
        Camera(0, THIN_PRISM_FISHEYE, 10, 10, [1, 2, 3, 4])
    with pytest.raises(ValueError, match="unknown camera model"):
        Camera(0, "PINHOLE_X", 10, 10, [1, 2, 3, 4])
    with pytest.raises(ValueError, match="OPENCV needs 8 params"):
        Camera(0, "OPENCV", 10, 10, [1, 2, 3, 4])
    with pytest.raises(ValueError, match="unsupported camera model 'OPENCV' for projection"):
        Camera(0, "OPENCV", 10, 10, [50, 50, 5, 5, 0, 0, 0, 0]).project(np.array([[0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="positive"):
        Camera(0, PINHOLE, 0, 10, [1, 1, 1, 1])


def test_pinhole_camera_matches_pycolmap_and_centres_are_at_half_pixels():
    cam = Camera(0, PINHOLE, 64, 48, [50.0, 52.0, 31.7, 24.2])
    ref = pycolmap.Camera(model="PINHOLE", width=64, height=48, params=cam.params)
    xyz = np.array([[0.1, -0.2, 2.0], [1.0, 0.7, 3.0]])
    np.testing.assert_allclose(cam.project(xyz), ref.img_from_cam(xyz), atol=1e-12)
    rays = cam.pixel_centre_rays()
    # Pixel (i, j) centre is (i + 0.5, j + 0.5) in COLMAP coordinates.
    np.testing.assert_allclose(cam.project(rays[3, 5])[0], [5.5, 3.5], atol=1e-12)
    # OpenCV K: integer pixel = centre, so pinhole_rays of K_opencv are the same rays.
    np.testing.assert_allclose(pinhole_rays(cam.K_opencv(), 64, 48), rays, atol=1e-14)


def test_thin_prism_pixel_centre_rays_project_back_to_centres():
    cam = Camera(0, THIN_PRISM_FISHEYE, 60, 40, np.r_[COURTYARD[:4] * 0.01, COURTYARD[4:]])
    rays = cam.pixel_centre_rays()
    back = cam.project(rays.reshape(-1, 3)).reshape(40, 60, 2)
    np.testing.assert_allclose(back[7, 11], [11.5, 7.5], atol=1e-9)
    assert np.abs(back[..., 0] - (np.arange(60) + 0.5)).max() < 1e-9


def test_intrinsics_under_resize_and_crop_follow_the_pixels():
    K = np.array([[500.0, 0.0, 319.5], [0.0, 510.0, 239.5], [0.0, 0.0, 1.0]])
    xyz = np.array([[0.3, -0.2, 4.0], [-1.0, 0.5, 6.0]])
    x = pinhole_project(xyz, K)
    sx, sy = 0.25, 0.5
    # Centre convention: a source pixel centre x maps to (x + 0.5) * s - 0.5 after resizing.
    expected = np.c_[(x[:, 0] + 0.5) * sx - 0.5, (x[:, 1] + 0.5) * sy - 0.5]
    np.testing.assert_allclose(pinhole_project(xyz, resize_intrinsics_opencv(K, sx, sy)), expected, atol=1e-12)
    np.testing.assert_allclose(pinhole_project(xyz, crop_intrinsics(K, 10, 7)), x - [10, 7], atol=1e-12)
    np.testing.assert_allclose(pinhole_unproject(x, K), xyz[:, :2] / xyz[:, 2:], atol=1e-14)
    np.testing.assert_allclose(K_colmap_to_opencv(K)[:2, 2], [319.0, 239.0])


def test_quaternions_match_pycolmap_and_round_trip():
    rng = np.random.default_rng(2)
    quats = rng.normal(size=(200, 4))
    # Near-180-degree rotations exercise every branch of the matrix -> quaternion conversion.
    quats[:3] = [[1e-9, 1, 0, 0], [1e-9, 0, 1, 0], [1e-9, 0, 0.6, 0.8]]
    for q in quats:
        R = qvec_to_rotmat(q)
        q_unit = q / np.linalg.norm(q)
        ref = pycolmap.Rotation3d(np.r_[q_unit[1:], q_unit[0]]).matrix()  # pycolmap is (x, y, z, w)
        np.testing.assert_allclose(R, ref, atol=1e-12)
        back = rotmat_to_qvec(R)
        assert back[0] >= 0
        np.testing.assert_allclose(back, q_unit * np.sign(q_unit[0] or 1.0), atol=1e-9)
    with pytest.raises(ValueError, match="invalid quaternion"):
        qvec_to_rotmat([0, 0, 0, 0])
