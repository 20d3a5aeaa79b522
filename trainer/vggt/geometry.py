"""Camera geometry shared by the model, the losses and the evaluation (torch, differentiable).

Conventions (the official VGGT ones, spec §6):
* extrinsics are camera-from-world (world-to-camera) ``[R | t]`` in OpenCV axes (x right, y down,
  z forward): ``X_cam = R X_world + t``;
* intrinsics are OpenCV pinhole matrices where the integer pixel ``(u, v)`` is the pixel *centre*
  (no +0.5 shift; checked against the reference fixture's cam_points);
* quaternions are scalar-last ``(x, y, z, w)``;
* pose encoding ``absT_quaR_FoV`` = ``[tx, ty, tz, qx, qy, qz, qw, fov_h, fov_w]`` with
  ``fov_h = 2 atan(H/2 / fy)`` and ``fov_w = 2 atan(W/2 / fx)`` at the network input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Depth values at or below this are "no supervision" (the official data pipeline's threshold).
DEPTH_VALID_EPS = 1e-8
# Floor on the candidate denominator in matrix->quaternion (keeps the chosen candidate well conditioned).
_QUAT_CANDIDATE_FLOOR = 0.1


def _check_last_dims(name: str, tensor: torch.Tensor, dims: tuple[int, ...]) -> None:
    if tuple(tensor.shape[-len(dims) :]) != dims:
        raise ValueError(f"{name}: expected shape [..., {', '.join(map(str, dims))}], got {tuple(tensor.shape)}")


def quat_to_mat(quaternions: torch.Tensor) -> torch.Tensor:
    """Quaternions ``[..., 4]`` (x, y, z, w) to rotation matrices ``[..., 3, 3]``.

    Not required to be unit length: the ``2/|q|^2`` factor normalises implicitly, so raw network
    outputs can be decoded directly.
    """
    _check_last_dims("quaternions", quaternions, (4,))
    x, y, z, w = torch.unbind(quaternions, -1)
    two_s = 2.0 / (quaternions * quaternions).sum(-1)
    entries = (
        1 - two_s * (y * y + z * z),
        two_s * (x * y - z * w),
        two_s * (x * z + y * w),
        two_s * (x * y + z * w),
        1 - two_s * (x * x + z * z),
        two_s * (y * z - x * w),
        two_s * (x * z - y * w),
        two_s * (y * z + x * w),
        1 - two_s * (x * x + y * y),
    )
    return torch.stack(entries, -1).reshape(quaternions.shape[:-1] + (3, 3))


def _sqrt_positive_part(x: torch.Tensor) -> torch.Tensor:
    """sqrt(max(x, 0)) with a zero (not infinite) gradient where x <= 0."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def mat_to_quat(rotations: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[..., 3, 3]`` to quaternions ``[..., 4]`` (x, y, z, w) with ``w >= 0``.

    Builds the four algebraically equivalent candidates (one per largest diagonal combination) and
    keeps the best-conditioned one, which stays accurate near 180 degree rotations.
    """
    _check_last_dims("rotations", rotations, (3, 3))
    batch_shape = rotations.shape[:-2]
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = torch.unbind(rotations.reshape(batch_shape + (9,)), -1)
    # |w|, |x|, |y|, |z| times 2, from the diagonal.
    q_abs = _sqrt_positive_part(
        torch.stack(
            [
                1.0 + m00 + m11 + m22,
                1.0 + m00 - m11 - m22,
                1.0 - m00 + m11 - m22,
                1.0 - m00 - m11 + m22,
            ],
            dim=-1,
        )
    )
    # Candidate rows in (w, x, y, z) order; row i is 2*q_abs[i] * q.
    candidates = torch.stack(
        [
            torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1),
        ],
        dim=-2,
    )
    floor = q_abs.new_tensor(_QUAT_CANDIDATE_FLOOR)
    candidates = candidates / (2.0 * q_abs[..., None].max(floor))
    best = q_abs.argmax(dim=-1)
    index = best[..., None, None].expand(batch_shape + (1, 4))
    wxyz = torch.gather(candidates, -2, index).squeeze(-2)
    xyzw = wxyz[..., [1, 2, 3, 0]]
    return torch.where(xyzw[..., 3:4] < 0, -xyzw, xyzw)


def closed_form_inverse_se3(se3: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms ``[..., 3, 4]`` or ``[..., 4, 4]`` as ``[..., 4, 4]``: ``[R^T | -R^T t]``."""
    if se3.shape[-1] != 4 or se3.shape[-2] not in (3, 4):
        raise ValueError(f"se3: expected shape [..., 3, 4] or [..., 4, 4], got {tuple(se3.shape)}")
    rotation = se3[..., :3, :3]
    translation = se3[..., :3, 3:]
    rotation_t = rotation.transpose(-1, -2)
    inverse = torch.zeros(se3.shape[:-2] + (4, 4), dtype=se3.dtype, device=se3.device)
    inverse[..., :3, :3] = rotation_t
    inverse[..., :3, 3:] = -torch.matmul(rotation_t, translation)
    inverse[..., 3, 3] = 1.0
    return inverse


def extri_intri_to_pose_encoding(
    extrinsics: torch.Tensor, intrinsics: torch.Tensor, image_size_hw: Sequence[int]
) -> torch.Tensor:
    """Cameras ``[B,S,3,4]`` + ``[B,S,3,3]`` to the ``absT_quaR_FoV`` encoding ``[B,S,9]``."""
    _check_last_dims("extrinsics", extrinsics, (3, 4))
    _check_last_dims("intrinsics", intrinsics, (3, 3))
    height, width = (float(v) for v in image_size_hw)
    translation = extrinsics[..., :3, 3]
    quaternion = mat_to_quat(extrinsics[..., :3, :3])
    fov_h = 2 * torch.atan((height / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((width / 2) / intrinsics[..., 0, 0])
    return torch.cat([translation, quaternion, fov_h[..., None], fov_w[..., None]], dim=-1).float()


def pose_encoding_to_extri_intri(
    pose_encoding: torch.Tensor, image_size_hw: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`extri_intri_to_pose_encoding`; the principal point is the image centre."""
    _check_last_dims("pose_encoding", pose_encoding, (9,))
    height, width = (float(v) for v in image_size_hw)
    translation = pose_encoding[..., :3]
    rotation = quat_to_mat(pose_encoding[..., 3:7])
    fov_h = pose_encoding[..., 7]
    fov_w = pose_encoding[..., 8]
    extrinsics = torch.cat([rotation, translation[..., None]], dim=-1)
    intrinsics = torch.zeros(pose_encoding.shape[:-1] + (3, 3), dtype=pose_encoding.dtype, device=pose_encoding.device)
    intrinsics[..., 0, 0] = (width / 2) / torch.tan(fov_w / 2)
    intrinsics[..., 1, 1] = (height / 2) / torch.tan(fov_h / 2)
    intrinsics[..., 0, 2] = width / 2
    intrinsics[..., 1, 2] = height / 2
    intrinsics[..., 2, 2] = 1.0
    return extrinsics, intrinsics


def _drop_channel_dim(depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    # The model returns depth as [..., H, W, 1]; accept it next to the plain [..., H, W] layout.
    if depth.dim() == intrinsics.dim() + 1 and depth.shape[-1] == 1:
        return depth[..., 0]
    return depth


def depth_to_cam_points(depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Z-depth ``[..., H, W]`` and K ``[..., 3, 3]`` to camera-frame points ``[..., H, W, 3]``.

    Pixel (u, v) with integer u, v is the pixel centre; skew is ignored (K[0,1] must be 0, as in
    every intrinsics this project writes).
    """
    _check_last_dims("intrinsics", intrinsics, (3, 3))
    if depth.shape[:-2] != intrinsics.shape[:-2]:
        raise ValueError(
            f"depth {tuple(depth.shape)} and intrinsics {tuple(intrinsics.shape)} disagree on leading dims"
        )
    height, width = depth.shape[-2:]
    v, u = torch.meshgrid(
        torch.arange(height, dtype=depth.dtype, device=depth.device),
        torch.arange(width, dtype=depth.dtype, device=depth.device),
        indexing="ij",
    )
    fx = intrinsics[..., 0, 0, None, None]
    fy = intrinsics[..., 1, 1, None, None]
    cx = intrinsics[..., 0, 2, None, None]
    cy = intrinsics[..., 1, 2, None, None]
    x = (u - cx) * depth / fx
    y = (v - cy) * depth / fy
    return torch.stack([x, y, depth], dim=-1)


def cam_to_world_points(cam_points: torch.Tensor, extrinsics: torch.Tensor) -> torch.Tensor:
    """Camera-frame points ``[..., H, W, 3]`` to world points with camera-from-world ``[..., 3, 4]``."""
    _check_last_dims("extrinsics", extrinsics, (3, 4))
    cam_to_world = closed_form_inverse_se3(extrinsics)
    rotation = cam_to_world[..., None, None, :3, :3]
    translation = cam_to_world[..., None, None, :3, 3]
    return (rotation @ cam_points[..., None])[..., 0] + translation


def depth_to_world_points(
    depth: torch.Tensor, intrinsics: torch.Tensor, extrinsics: torch.Tensor, eps: float = DEPTH_VALID_EPS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Depth ``[..., H, W]`` to ``(world_points, cam_points, valid_mask)``.

    Pixels with depth <= eps (or non-finite) are invalid: their camera point is 0, hence their world
    point is the camera centre, exactly as the official data pipeline produces them.
    """
    depth = _drop_channel_dim(depth, intrinsics)
    valid = torch.isfinite(depth) & (depth > eps)
    clean_depth = torch.where(valid, depth, torch.zeros_like(depth))
    cam_points = depth_to_cam_points(clean_depth, intrinsics)
    world_points = cam_to_world_points(cam_points, extrinsics)
    return world_points, cam_points, valid


def unproject_depth_map_to_point_map(
    depth: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor
) -> torch.Tensor:
    """World point map ``[..., H, W, 3]`` from depth ``[..., H, W(, 1)]`` and cameras (argument order as upstream)."""
    world_points, _, _ = depth_to_world_points(depth, intrinsics, extrinsics)
    return world_points
