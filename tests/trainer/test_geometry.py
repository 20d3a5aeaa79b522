"""trainer.vggt.geometry: rotations, pose encoding, unprojection (analytic truth + the official fixture)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer.vggt.geometry import (
    closed_form_inverse_se3,
    depth_to_cam_points,
    depth_to_world_points,
    extri_intri_to_pose_encoding,
    mat_to_quat,
    pose_encoding_to_extri_intri,
    quat_to_mat,
    unproject_depth_map_to_point_map,
)

FIXTURE = Path(__file__).parents[1] / "assets" / "vggt_tiny_reference.safetensors"


def rel_err(mine: torch.Tensor, ref: torch.Tensor) -> float:
    """The fixture's float rule: max|mine - ref| / max|ref|."""
    return float((mine - ref).abs().max() / ref.abs().max().clamp(min=1e-12))


def axis_angle_to_mat(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues, written independently of the code under test."""
    axis = axis / axis.norm(dim=-1, keepdim=True)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(axis.shape[:-1] + (3, 3))
    eye = torch.eye(3, dtype=axis.dtype).expand_as(skew)
    s, c = torch.sin(angle)[..., None, None], torch.cos(angle)[..., None, None]
    return eye + s * skew + (1 - c) * skew @ skew


def random_rotations(n: int, generator: torch.Generator, max_angle: float = math.pi) -> torch.Tensor:
    axis = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    angle = torch.rand(n, generator=generator, dtype=torch.float64) * max_angle
    return axis_angle_to_mat(axis, angle)


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE))


def test_quaternion_of_known_rotation_is_scalar_last():
    rotation = axis_angle_to_mat(torch.tensor([0.0, 0.0, 1.0]), torch.tensor(math.pi / 2))
    quat = mat_to_quat(rotation)
    half = math.sqrt(0.5)
    torch.testing.assert_close(quat, torch.tensor([0.0, 0.0, half, half]), atol=1e-7, rtol=0)
    torch.testing.assert_close(quat_to_mat(quat), rotation, atol=1e-6, rtol=0)


def test_rotation_quaternion_round_trip_including_near_180_degrees():
    gen = torch.Generator().manual_seed(0)
    rotations = random_rotations(500, gen)
    # Near-180 degree rotations are where a naive (w-based) conversion loses precision.
    rotations[:50] = axis_angle_to_mat(
        torch.randn(50, 3, generator=gen, dtype=torch.float64), torch.full((50,), math.pi - 1e-6, dtype=torch.float64)
    )
    quats = mat_to_quat(rotations)
    assert (quats[..., 3] >= 0).all()
    torch.testing.assert_close(quats.norm(dim=-1), torch.ones(500, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(quat_to_mat(quats), rotations, atol=1e-9, rtol=0)


def test_quat_to_mat_normalises_implicitly():
    gen = torch.Generator().manual_seed(1)
    quats = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    unit = quats / quats.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(quat_to_mat(3.7 * quats), quat_to_mat(unit))
    rot = quat_to_mat(unit)
    torch.testing.assert_close(rot @ rot.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(20, 3, 3))


def test_mat_to_quat_gradient_is_finite_at_identity():
    rotation = torch.eye(3, requires_grad=True)
    mat_to_quat(rotation).sum().backward()
    assert torch.isfinite(rotation.grad).all()


def test_closed_form_inverse_se3():
    gen = torch.Generator().manual_seed(2)
    rotation = random_rotations(7, gen)
    extrinsics = torch.cat([rotation, torch.randn(7, 3, 1, generator=gen, dtype=torch.float64)], -1)
    inverse = closed_form_inverse_se3(extrinsics)
    homogeneous = torch.cat([extrinsics, torch.tensor([0, 0, 0, 1.0], dtype=torch.float64).expand(7, 1, 4)], -2)
    torch.testing.assert_close(inverse @ homogeneous, torch.eye(4, dtype=torch.float64).expand(7, 4, 4))
    with pytest.raises(ValueError, match="se3"):
        closed_form_inverse_se3(torch.zeros(3, 3))


def test_pose_encoding_round_trip_on_random_cameras():
    gen = torch.Generator().manual_seed(3)
    batch, frames, height, width = 2, 5, 56, 84
    rotation = random_rotations(batch * frames, gen).float().reshape(batch, frames, 3, 3)
    translation = torch.randn(batch, frames, 3, 1, generator=gen)
    extrinsics = torch.cat([rotation, translation], -1)
    focal = 40 + 40 * torch.rand(batch, frames, 2, generator=gen)
    intrinsics = torch.zeros(batch, frames, 3, 3)
    intrinsics[..., 0, 0], intrinsics[..., 1, 1] = focal[..., 0], focal[..., 1]
    intrinsics[..., 0, 2], intrinsics[..., 1, 2], intrinsics[..., 2, 2] = width / 2, height / 2, 1.0

    encoding = extri_intri_to_pose_encoding(extrinsics, intrinsics, (height, width))
    assert encoding.shape == (batch, frames, 9)
    torch.testing.assert_close(encoding[..., :3], translation[..., 0])
    # fov by hand: fov_h from fy and the height, fov_w from fx and the width.
    torch.testing.assert_close(encoding[..., 7], 2 * torch.atan(height / 2 / focal[..., 1]))
    torch.testing.assert_close(encoding[..., 8], 2 * torch.atan(width / 2 / focal[..., 0]))

    extrinsics_back, intrinsics_back = pose_encoding_to_extri_intri(encoding, (height, width))
    torch.testing.assert_close(extrinsics_back, extrinsics, atol=2e-6, rtol=0)
    torch.testing.assert_close(intrinsics_back, intrinsics, atol=1e-4, rtol=1e-5)


def test_pose_encoding_matches_official_on_fixture(reference):
    encoding = extri_intri_to_pose_encoding(
        reference["loss.normalized.extrinsics"], reference["loss.batch.intrinsics"], (56, 84)
    )
    assert rel_err(encoding, reference["loss.gt_pose_enc"]) < 1e-6


def test_unprojection_matches_official_pixel_convention(reference):
    depth = reference["loss.batch.depths"]
    world, cam, valid = depth_to_world_points(
        depth, reference["loss.batch.intrinsics"], reference["loss.batch.extrinsics"]
    )
    assert torch.equal(valid, reference["loss.batch.point_masks"])
    assert rel_err(cam, reference["loss.batch.cam_points"]) < 1e-6
    assert rel_err(world, reference["loss.batch.world_points"]) < 1e-6
    # A half-pixel shift (pixel corners instead of centres) is far outside the rule: the check has teeth.
    shifted = reference["loss.batch.intrinsics"].clone()
    shifted[..., :2, 2] -= 0.5
    assert rel_err(depth_to_cam_points(depth, shifted), reference["loss.batch.cam_points"]) > 1e-3


def test_depth_to_world_points_reprojects_by_hand():
    gen = torch.Generator().manual_seed(4)
    height, width = 6, 9
    rotation = random_rotations(1, gen)[0]
    translation = torch.tensor([0.3, -0.2, 1.5], dtype=torch.float64)
    extrinsics = torch.cat([rotation, translation[:, None]], -1)
    intrinsics = torch.tensor([[50.0, 0, 4.2], [0, 48.0, 2.7], [0, 0, 1]], dtype=torch.float64)
    depth = 1 + 3 * torch.rand(height, width, generator=gen, dtype=torch.float64)
    depth[2, 3] = 0.0  # unsupervised pixel
    depth[4, 1] = float("nan")  # corrupt pixel is invalid too, never NaN points

    world, cam, valid = depth_to_world_points(depth, intrinsics, extrinsics)
    assert world.shape == (height, width, 3) and valid.sum() == height * width - 2
    for v, u in [(0, 0), (5, 8), (3, 2)]:
        # Project by hand: X_cam = R X + t, then (u, v) = (fx x/z + cx, fy y/z + cy) at integer pixel centres.
        x_cam = rotation @ world[v, u] + translation
        assert x_cam[2].item() == pytest.approx(depth[v, u].item(), rel=1e-12)
        assert (50.0 * x_cam[0] / x_cam[2] + 4.2).item() == pytest.approx(u, abs=1e-9)
        assert (48.0 * x_cam[1] / x_cam[2] + 2.7).item() == pytest.approx(v, abs=1e-9)
    camera_centre = -rotation.T @ translation
    for v, u in [(2, 3), (4, 1)]:
        assert not valid[v, u]
        assert torch.equal(cam[v, u], torch.zeros(3, dtype=torch.float64))
        torch.testing.assert_close(world[v, u], camera_centre)
    # The [..., H, W, 1] model layout gives the same map.
    torch.testing.assert_close(
        unproject_depth_map_to_point_map(depth[None, ..., None], extrinsics[None], intrinsics[None])[0], world
    )


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="intrinsics"):
        extri_intri_to_pose_encoding(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 4, 4), (10, 10))
    with pytest.raises(ValueError, match="pose_encoding"):
        pose_encoding_to_extri_intri(torch.zeros(1, 2, 7), (10, 10))
    with pytest.raises(ValueError, match="leading dims"):
        depth_to_cam_points(torch.ones(2, 4, 5), torch.eye(3).expand(3, 3, 3))
