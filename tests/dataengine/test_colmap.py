"""COLMAP text parsing (dataengine.colmap_text): ETH3D pitfalls, pycolmap cross-check, file:line errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dataengine.colmap_text import read_model, read_model_pycolmap
from dataengine.errors import BadInputError

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


def test_colmap_parses_eth3d_pitfalls_and_matches_pycolmap(tmp_path):
    d = write_model(tmp_path)
    model = read_model(d)
    assert sorted(model.cameras) == [0, 3]
    assert set(model.images) == {14, 2, 9}
    assert len(model.images[2].xys) == 0  # the empty POINTS2D line
    assert model.images[9].point3d_ids.tolist() == [7, 9]  # not shifted by the empty line
    assert model.images[14].point3d_ids.tolist() == [7, -1]
    c = math.sqrt(0.5)
    np.testing.assert_allclose(model.images[9].rotation, [[c, 0, c], [0, 1, 0], [-c, 0, c]], atol=1e-6)  # 45° about y
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


@pytest.mark.parametrize(
    "which, text, message",
    [
        (
            "images",
            IMAGES_TXT.replace("0 dslr_images_undistorted/DSC_0647.JPG", "dslr_images_undistorted/DSC_0647.JPG"),
            "images.txt:5: expected 10 fields",
        ),
        ("images", IMAGES_TXT.replace("892.3 234.1 -1", "892.3 234.1"), "images.txt:6: POINTS2D needs"),
        ("images", IMAGES_TXT.replace("1234.5 567.8", "1234.5 abc"), "images.txt:6: POINTS2D: 'abc'"),
        (
            "images",
            IMAGES_TXT.replace(" 3 dslr_images_undistorted/DSC_0640", " 5 dslr_images_undistorted/DSC_0640"),
            "images.txt:7: CAMERA_ID 5 is not in cameras.txt",
        ),
        ("cameras", CAMERAS_TXT.replace("3119.2 2057.75", "3119.2"), "cameras.txt:4: PINHOLE expects 4"),
        ("cameras", CAMERAS_TXT.replace("6205 4135", "6205 x"), "cameras.txt:5: WIDTH/HEIGHT: 'x'"),
        ("cameras", CAMERAS_TXT.replace("PINHOLE 6205", "PINHOLEX 6205"), "cameras.txt:5: unknown camera model"),
        (
            "points",
            POINTS3D_TXT.replace("9 -0.4 0.1 4.0", "9 -0.4 nan 4.0"),
            "points3D.txt:4: XYZ: 'nan' is not finite",
        ),
        ("points", POINTS3D_TXT.replace("14 0 9 0", "14 0 9"), "points3D.txt:3: expected 'POINT3D_ID"),
    ],
)
def test_colmap_errors_name_file_and_line(tmp_path, which, text, message):
    d = write_model(tmp_path, **{which: text})
    with pytest.raises(BadInputError) as info:
        read_model(d)
    assert message in str(info.value)
    assert str(d) in str(info.value)
