"""Image geometry (dataengine.images): exact intrinsics of the affine map, DCT reduction, corrupt JPEGs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import simplejpeg

from dataengine import camera
from dataengine.camera import Camera
from dataengine.errors import BadInputError
from dataengine.images import choose_reduction, decode_reduced, fit_geometry, output_intrinsics, render_frame


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
