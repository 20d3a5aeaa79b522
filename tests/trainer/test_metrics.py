"""trainer.metrics: depth metrics and alignment against hand calculations, camera metrics on built poses."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.metrics import (
    DEPTH_METRICS,
    align_depth,
    camera_summary,
    depth_metrics,
    errors_auc,
    fov_errors_deg,
    masked_median,
    relative_pose_errors,
    rotation_angle_deg,
)


def rot_z(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]], dtype=torch.float64)


def rot_x(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]], dtype=torch.float64)


def window(frames: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    gt = 1 + 9 * torch.rand(frames, 6, 8, generator=gen, dtype=torch.float64)
    mask = torch.rand(frames, 6, 8, generator=gen) > 0.2
    pred = gt * (1 + 0.2 * (torch.rand(frames, 6, 8, generator=gen, dtype=torch.float64) - 0.5))
    return pred, gt, mask


def test_depth_metrics_by_hand():
    gt = torch.tensor([[[1.0, 2.0, 4.0, 5.0]]], dtype=torch.float64)
    pred = torch.tensor([[[1.5, 2.0, 2.0, 99.0]]], dtype=torch.float64)
    mask = torch.tensor([[[True, True, True, False]]])
    m = depth_metrics(pred, gt, mask)
    # Valid pixels: (1.5, 1), (2, 2), (2, 4).
    assert m["pixels"].item() == 3
    assert m["abs_rel"].item() == pytest.approx((0.5 / 1 + 0 + 2 / 4) / 3)
    assert m["sq_rel"].item() == pytest.approx((0.25 / 1 + 0 + 4 / 4) / 3)
    assert m["rmse"].item() == pytest.approx(math.sqrt((0.25 + 0 + 4) / 3))
    assert m["rmse_log"].item() == pytest.approx(math.sqrt((math.log(1.5) ** 2 + 0 + math.log(0.5) ** 2) / 3))
    assert m["mae"].item() == pytest.approx((0.5 + 0 + 2) / 3)
    # max ratios 1.5, 1, 2: delta1 -> only 1 ; delta2 (1.5625) -> 1, 1.5 ; delta3 (1.953) -> 1, 1.5.
    assert m["delta1"].item() == pytest.approx(1 / 3)
    assert m["delta2"].item() == pytest.approx(2 / 3)
    assert m["delta3"].item() == pytest.approx(2 / 3)


def test_perfect_prediction():
    _, gt, mask = window()
    for alignment in ("none", "median", "lsq", "sequence"):
        aligned, _, _ = align_depth(gt.clone(), gt, mask, alignment)
        m = depth_metrics(aligned, gt, mask)
        assert torch.allclose(m["abs_rel"], torch.zeros(3, dtype=torch.float64), atol=1e-12), alignment
        for k in ("delta1", "delta2", "delta3"):
            assert torch.equal(m[k], torch.ones(3, dtype=torch.float64)), (alignment, k)


def test_scaled_prediction_is_invariant_under_alignment_but_not_under_none():
    pred, gt, mask = window()
    for alignment in ("median", "lsq", "sequence"):
        base = depth_metrics(align_depth(pred, gt, mask, alignment)[0], gt, mask)
        tripled = depth_metrics(align_depth(3 * pred, gt, mask, alignment)[0], gt, mask)
        for name in DEPTH_METRICS:
            torch.testing.assert_close(tripled[name], base[name], rtol=1e-9, atol=1e-12)
    base = depth_metrics(align_depth(pred, gt, mask, "none")[0], gt, mask)
    tripled = depth_metrics(align_depth(3 * pred, gt, mask, "none")[0], gt, mask)
    assert (tripled["abs_rel"] > 1.5).all() and (base["abs_rel"] < 0.1).all()


def test_alignment_fits_by_hand():
    gt = torch.tensor([[[2.0, 4.0, 6.0]], [[1.0, 1.0, 3.0]]], dtype=torch.float64)
    pred = torch.tensor([[[1.0, 2.0, 3.0]], [[1.0, 2.0, 3.0]]], dtype=torch.float64)
    mask = torch.ones_like(gt, dtype=torch.bool)
    _, scale, _ = align_depth(pred, gt, mask, "median")
    torch.testing.assert_close(scale, torch.tensor([4.0 / 2.0, 1.0 / 2.0], dtype=torch.float64))
    # sequence: median of all GT {1,1,2,3,4,6} = 2.5, of all pred {1,1,2,2,3,3} = 2 -> 1.25 for both frames.
    _, scale, _ = align_depth(pred, gt, mask, "sequence")
    torch.testing.assert_close(scale, torch.full((2,), 1.25, dtype=torch.float64))
    # lsq: frame 0 is exactly 2x; frame 1 fits gt = a p + b with a = 1, b = -1/3 (normal equations).
    aligned, scale, shift = align_depth(pred, gt, mask, "lsq")
    torch.testing.assert_close(scale, torch.tensor([2.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(shift, torch.tensor([0.0, -1.0 / 3.0], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(aligned[0], gt[0])


def test_sequence_alignment_keeps_relative_frame_scale_errors():
    """One frame 2x too far: per-frame median hides it, the window scale does not."""
    _, gt, mask = window(frames=3, seed=5)
    pred = gt.clone()
    pred[1] *= 2
    per_frame = depth_metrics(align_depth(pred, gt, mask, "median")[0], gt, mask)
    windowed = depth_metrics(align_depth(pred, gt, mask, "sequence")[0], gt, mask)
    assert per_frame["abs_rel"].max() < 1e-9
    assert windowed["abs_rel"][1] > 0.5


def test_frames_without_gt_give_nan_and_zero_pixels():
    pred, gt, mask = window()
    mask[2] = False
    m = depth_metrics(align_depth(pred, gt, mask, "median")[0], gt, mask)
    assert m["pixels"][2] == 0 and math.isnan(m["abs_rel"][2].item()) and not math.isnan(m["abs_rel"][0].item())
    with pytest.raises(ValueError, match="alignment"):
        align_depth(pred, gt, mask, "mean")


def test_masked_median_even_count():
    values = torch.tensor([4.0, 1.0, 3.0, 2.0, 100.0])
    mask = torch.tensor([True, True, True, True, False])
    assert masked_median(values, mask).item() == 2.5


def extrinsics_from(rotations, centres):
    """Camera-from-world [R | -R C] for camera centres C."""
    return torch.stack([torch.cat([r, (-r @ c)[:, None]], -1) for r, c in zip(rotations, centres, strict=True)])


def test_known_rotation_error_of_ten_degrees():
    centres = [torch.tensor(c, dtype=torch.float64) for c in ([0, 0, 0], [1, 0, 0], [0, 1, 0.5])]
    gt = extrinsics_from([torch.eye(3, dtype=torch.float64), rot_x(20), rot_z(-30)], centres)
    # The prediction rotates camera 2 by an extra 10 degrees about its own z axis (centre unchanged).
    pred = extrinsics_from([torch.eye(3, dtype=torch.float64), rot_x(20), rot_z(10) @ rot_z(-30)], centres)
    errors = relative_pose_errors(pred, gt)
    # Pairs (0,1), (0,2), (1,2): only the pairs involving camera 2 are 10 degrees off in rotation.
    torch.testing.assert_close(
        errors["rot_err_deg"], torch.tensor([0.0, 10.0, 10.0], dtype=torch.float64), atol=1e-6, rtol=0
    )
    assert errors["trans_err_deg"][0].item() == pytest.approx(0.0, abs=1e-6)
    assert errors["trans_err_deg"][1].item() > 1.0  # rotating camera 2 turns its view of the others


def test_translation_direction_error_and_scale_invariance():
    centres_gt = [torch.tensor(c, dtype=torch.float64) for c in ([0, 0, 0], [1, 0, 0])]
    # Predicted centre 1 at 45 degrees from the true baseline and 5x farther: direction error 45, not scale.
    centres_pred = [torch.tensor(c, dtype=torch.float64) for c in ([0, 0, 0], [5, 5, 0])]
    rotations = [torch.eye(3, dtype=torch.float64)] * 2
    errors = relative_pose_errors(extrinsics_from(rotations, centres_pred), extrinsics_from(rotations, centres_gt))
    assert errors["trans_err_deg"].item() == pytest.approx(45.0)
    assert errors["rot_err_deg"].item() == pytest.approx(0.0, abs=1e-6)
    # A flipped baseline is 180 degrees, or 0 under the paper's sign-ambiguity convention.
    flipped = extrinsics_from(rotations, [centres_gt[0], -centres_gt[1]])
    assert relative_pose_errors(flipped, extrinsics_from(rotations, centres_gt))[
        "trans_err_deg"
    ].item() == pytest.approx(0.0)
    strict = relative_pose_errors(flipped, extrinsics_from(rotations, centres_gt), translation_sign_ambiguity=False)
    assert strict["trans_err_deg"].item() == pytest.approx(180.0)


def test_auc_rra_rta_by_hand():
    rot = torch.tensor([0.5, 4.0, 12.0, 40.0], dtype=torch.float64)
    trans = torch.tensor([2.5, 1.0, 20.0, 1.0], dtype=torch.float64)
    # max errors: 2.5, 4, 20, 40 -> accuracy at threshold t (err < t) for t = 1..30:
    # t=1,2: 0 ; t=3,4: 1/4 ; t=5..20: 2/4 ; t=21..30: 3/4.
    expected = (0 * 2 + 0.25 * 2 + 0.5 * 16 + 0.75 * 10) / 30
    assert errors_auc(rot, trans) == pytest.approx(expected)
    summary = camera_summary(rot, trans, torch.tensor([1.0, 3.0]))
    assert summary["rra@5"] == 0.5 and summary["rra@15"] == 0.75 and summary["rra@30"] == 0.75
    assert summary["rta@5"] == 0.75 and summary["rta@15"] == 0.75 and summary["rta@30"] == 1.0
    assert summary["fov_err_deg"] == 2.0 and summary["pairs"] == 4


def test_rotation_angle_and_fov_error():
    assert rotation_angle_deg(rot_x(37.0)).item() == pytest.approx(37.0)
    assert rotation_angle_deg(torch.eye(3)).item() == 0.0
    pred = torch.zeros(2, 9)
    gt = torch.zeros(2, 9)
    pred[:, 7] = math.radians(50.0)
    gt[:, 7] = math.radians(48.0)
    pred[:, 8] = gt[:, 8] = math.radians(60.0)
    torch.testing.assert_close(fov_errors_deg(pred, gt), torch.full((2,), 1.0, dtype=torch.float64), atol=1e-5, rtol=0)


def test_training_validation_uses_the_same_metrics():
    """The loop's validation numbers: pred = 2·GT is AbsRel 1 as predicted and 0 after the window scale."""
    from trainer.validation import validation_depth_metrics

    gt = torch.rand(2, 3, 8, 8) * 4 + 1
    mask = torch.rand(2, 3, 8, 8) > 0.3
    mask[1] = False  # a window without GT is not counted
    out = validation_depth_metrics(2 * gt, gt * mask, mask)
    assert out["n"] == 1
    assert out["abs_rel"] == pytest.approx(1.0) and out["delta1"] == 0.0
    assert out["abs_rel_med"] == pytest.approx(0.0, abs=1e-6) and out["delta1_med"] == 1.0
