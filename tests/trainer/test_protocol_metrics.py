"""Published-protocol metrics of trainer.metrics against hand calculations and analytic scenes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.metrics import (
    apply_similarity,
    depth_abs_rel,
    depth_inlier_ratio,
    median_scales,
    mvd_depth_metrics,
    nearest_distances,
    pointmap_accuracy_completeness,
    pose_auc,
    ransac_umeyama,
    relative_pose_angle_errors,
    umeyama,
)

EPS = np.finfo(np.float64).eps


def rotation(axis, deg: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    x, y, z = axis / np.linalg.norm(axis)
    skew = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    a = math.radians(deg)
    return np.eye(3) + math.sin(a) * skew + (1 - math.cos(a)) * skew @ skew


def w2c(rot: np.ndarray, centre) -> np.ndarray:
    return np.concatenate([rot, (-rot @ np.asarray(centre, dtype=np.float64))[:, None]], 1)


# ----------------------------------------------------------------------------------------- umeyama


def test_umeyama_removes_a_known_similarity_exactly():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(500, 3)) * [3.0, 1.0, 0.5]
    true_s, true_r, true_t = 2.7, rotation([0.3, -1.0, 0.4], 131.0), np.array([5.0, -2.0, 0.25])
    dst = apply_similarity(src, true_s, true_r, true_t)
    for inputs in ((src, dst), (torch.from_numpy(src).float(), torch.from_numpy(dst).float())):
        s, r, t = umeyama(*inputs)
        # float32 inputs carry ~6e-8 relative rounding; float64 ones ~1e-16 times a few hundred operations.
        tol = 1e-5 if torch.is_tensor(inputs[0]) else 1e3 * EPS
        assert s == pytest.approx(true_s, rel=tol)
        assert np.abs(r - true_r).max() < tol and np.abs(t - true_t).max() < tol * 10
        assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-12)
    residual = apply_similarity(src, s, r, t) - dst
    assert np.abs(residual).max() < 1e-4 * np.abs(dst).max()


def test_umeyama_rigid_and_reflection_guard():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(50, 3))
    s, r, t = umeyama(src, src @ rotation([1, 1, 0], 40).T * 3.0, with_scale=False)
    assert s == 1.0 and np.abs(r - rotation([1, 1, 0], 40)).max() < 1e-12
    # A mirror image has no proper rotation: the best fit is still a rotation (det +1), never a reflection.
    mirrored = src * [1.0, 1.0, -1.0]
    _, r, _ = umeyama(src, mirrored)
    assert np.linalg.det(r) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 3"):
        umeyama(src[:2], src[:2])
    line = np.outer(np.arange(10.0), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="degenerate"):
        umeyama(line, line)


def test_ransac_umeyama_ignores_outliers():
    rng = np.random.default_rng(2)
    src = rng.uniform(-5, 5, size=(2000, 3))
    true_s, true_r, true_t = 0.35, rotation([0.2, 0.9, -0.1], -70.0), np.array([1.0, 2.0, 3.0])
    dst = apply_similarity(src, true_s, true_r, true_t)
    outliers = rng.random(2000) < 0.4  # 40 % gross outliers (e.g. sky pixels, wrong depth)
    dst[outliers] += rng.normal(scale=3.0, size=(int(outliers.sum()), 3)) + 2.0
    s, r, t, inliers = ransac_umeyama(src, dst, inlier_threshold=0.05, seed=0)
    assert s == pytest.approx(true_s, rel=1e-9) and np.abs(r - true_r).max() < 1e-9
    assert np.abs(t - true_t).max() < 1e-9
    # Every clean point is an inlier; an outlier only if its random offset happens to be tiny.
    assert inliers[~outliers].all() and inliers[outliers].mean() < 0.01
    # Plain least squares is pulled away by the outliers: the robust variant is needed.
    s_ls, _, _ = umeyama(src, dst)
    assert abs(s_ls - true_s) > 0.01
    # Deterministic per seed.
    assert np.array_equal(ransac_umeyama(src, dst, 0.05, seed=0)[3], inliers)


# --------------------------------------------------------------------------- accuracy / completeness


def test_accuracy_completeness_on_known_nearest_neighbours():
    gt = np.array([[0.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    # Each predicted point sits 0.1 above GT point 0..2 (nearest GT is that point), GT point 3 is missed.
    pred = gt[:3] + [0.0, 0.0, 0.1]
    acc, comp, overall = pointmap_accuracy_completeness(pred, gt)
    assert acc == pytest.approx(0.1)
    # GT 0..2: 0.1 each; GT (0,0,1): nearest prediction is (0,0,0.1) at 0.9.
    assert comp == pytest.approx((0.1 * 3 + 0.9) / 4)
    assert overall == pytest.approx((acc + comp) / 2)
    assert pointmap_accuracy_completeness(gt, gt) == (0.0, 0.0, 0.0)


def test_nearest_distances_match_brute_force():
    rng = np.random.default_rng(3)
    query, reference = rng.normal(size=(700, 3)), rng.normal(size=(900, 3))
    brute = np.sqrt(((query[:, None] - reference[None]) ** 2).sum(-1)).min(1)
    assert np.allclose(nearest_distances(torch.from_numpy(query), reference), brute, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="empty"):
        pointmap_accuracy_completeness(query[:0], reference)


# ---------------------------------------------------------------------------------------------- pose


def test_pose_auc_perfect_and_by_hand():
    centres = [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0.5]]
    rots = [rotation([0, 1, 0], 10.0 * i) for i in range(4)]
    gt = np.stack([w2c(r, c) for r, c in zip(rots, centres, strict=True)])
    assert pose_auc(gt, gt) == {"auc@3": 1.0, "auc@5": 1.0, "auc@15": 1.0, "auc@30": 1.0, "pairs": 6}
    # A world similarity (scale 3, rotation, shift) of the whole rig changes no relative angle.
    sim_r, sim_t = rotation([1, 2, 3], 77.0), np.array([4.0, 5.0, 6.0])
    moved = np.stack(
        [w2c(r @ sim_r.T, 3.0 * sim_r @ np.asarray(c) + sim_t) for r, c in zip(rots, centres, strict=True)]
    )
    assert pose_auc(moved, gt)["auc@3"] == pytest.approx(1.0)

    # Camera 3 rotated by 4.5 degrees about its optical axis (centre kept): pairs (0,3), (1,3), (2,3)
    # have rotation error 4.5 and a translation direction (seen from camera 3) turned by at most 4.5;
    # the other 3 pairs are exact.
    pred = gt.copy()
    pred[3] = w2c(rotation([0, 0, 1], 4.5) @ rots[3], centres[3])
    rot_err, trans_err = relative_pose_angle_errors(pred, gt)
    assert np.allclose(np.sort(rot_err), [0, 0, 0, 4.5, 4.5, 4.5], atol=1e-9)
    assert trans_err.max() <= 4.5 + 1e-9 and np.allclose(np.sort(trans_err)[:3], 0, atol=1e-5)
    auc = pose_auc(torch.from_numpy(pred).float(), gt, convention="i_to_j")
    # Accuracy at threshold k: 1/2 for k <= 4 (4.5 >= k fails), 1 for k >= 5.
    assert auc["auc@3"] == pytest.approx(0.5)
    assert auc["auc@5"] == pytest.approx((4 * 0.5 + 1) / 5)
    assert auc["auc@15"] == pytest.approx((4 * 0.5 + 11) / 15)
    assert auc["auc@30"] == pytest.approx((4 * 0.5 + 26) / 30)


def test_pose_auc_translation_error_and_bad_input():
    gt = np.stack([w2c(np.eye(3), [0, 0, 0]), w2c(np.eye(3), [1, 0, 0])])
    # The second camera moved to (cos a, sin a, 0), a = 20.5: translation direction 20.5 degrees off.
    a = math.radians(20.5)
    pred = np.stack([gt[0], w2c(np.eye(3), [math.cos(a), math.sin(a), 0])])
    rot_err, trans_err = relative_pose_angle_errors(pred, gt)
    assert rot_err[0] == pytest.approx(0, abs=1e-9) and trans_err[0] == pytest.approx(20.5, abs=1e-6)
    auc = pose_auc(pred, gt, thresholds=(15, 30), convention="i_to_j")
    assert auc == {"auc@15": 0.0, "auc@30": pytest.approx(10 / 30), "pairs": 1}  # thresholds 21..30 pass
    with pytest.raises(ValueError, match="S >= 2"):
        pose_auc(gt[:1], gt[:1])


# --------------------------------------------------------------------------------------------- depth


def test_median_scaling_abs_rel_and_inlier_ratio_by_hand():
    rng = np.random.default_rng(4)
    gt = rng.uniform(1.0, 10.0, size=(3, 20, 30))
    valid = rng.random((3, 20, 30)) > 0.3
    gt[~valid] = 0.0  # rmvd: gt <= 0 is no ground truth, whatever the mask says
    valid[0, 0, :5] = True
    factors = np.array([2.0, 0.5, 7.0])  # unknown per-frame scales of a scale-free prediction
    pred = gt * factors[:, None, None] + (gt == 0)
    per_frame = mvd_depth_metrics(pred, gt, valid, per="frame")
    assert np.allclose(per_frame["scale"], 1 / factors, rtol=1e-12)
    assert np.allclose(per_frame["abs_rel"], 0, atol=1e-12) and np.all(per_frame["inlier"] == 1.0)
    assert np.array_equal(per_frame["pixels"], (gt > 0).sum((1, 2)))

    # One scale for the sequence: the median over all frames' pixels; each frame then keeps a known
    # relative error f_i * s - 1, and is an inlier (all its pixels) iff max(r, 1/r) < 1.03.
    sequence = mvd_depth_metrics(pred, gt, valid, per="sequence")
    usable = gt > 0
    s = np.median(gt[usable]) / np.median(pred[usable])
    assert np.allclose(sequence["scale"], s)
    assert np.allclose(sequence["abs_rel"], np.abs(factors * s - 1), rtol=1e-10)
    expected_inlier = [float(max(f * s, 1 / (f * s)) < 1.03) for f in factors]
    assert np.array_equal(sequence["inlier"], expected_inlier)


def test_inlier_ratio_and_abs_rel_hand_values():
    gt = np.array([[1.0, 2.0, 4.0, 5.0, 0.0]])
    pred = np.array([[1.02, 2.2, 3.96, 0.0, 9.0]])
    # ratios: 1.02 (in), 1.1 (out), 1.0101 (in), pred 0 -> outlier; gt 0 ignored.
    assert depth_inlier_ratio(pred, gt) == pytest.approx(2 / 4)
    assert depth_inlier_ratio(pred, gt, threshold=1.25) == pytest.approx(3 / 4)
    assert depth_abs_rel(pred, gt) == pytest.approx((0.02 + 0.1 + 0.01 + 1.0) / 4)
    mask = np.array([[True, True, False, False, True]])
    assert depth_abs_rel(torch.tensor(pred), torch.tensor(gt), torch.tensor(mask)) == pytest.approx(0.06)
    assert math.isnan(depth_inlier_ratio(pred, gt, np.zeros_like(mask)))
    # The median fit skips pixels without a positive prediction too: gt [1, 2, 4] vs pred [1.02, 2.2, 3.96].
    assert median_scales(pred[None], gt[None], per="frame") == pytest.approx([2.0 / 2.2])
    with pytest.raises(ValueError, match="per must be"):
        median_scales(pred, gt, per="window")
