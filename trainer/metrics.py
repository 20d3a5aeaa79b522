"""Evaluation metrics (pure functions, torch): depth with explicit scale alignment, relative camera poses.

Depth: per frame at valid GT pixels -- AbsRel, SqRel, RMSE, RMSE-log, MAE, delta < 1.25^k. VGGT
depth is scale-free, so the prediction is aligned first and the alignment is part of the result:

* ``none``     -- no fit: the prediction is used as given (the caller maps it to metres with the
                  training normalisation scale, see trainer.evaluate);
* ``median``   -- one scale per frame, median(gt) / median(pred);
* ``lsq``      -- least-squares scale and shift per frame;
* ``sequence`` -- one median scale for the whole window (default): keeps multi-view consistency honest.

Camera: errors of the relative poses between every pair of frames (i < j) of a window -- rotation
angle, translation direction angle -- RRA/RTA at thresholds, AUC@30 as in the VGGT paper (histogram
of max(rot, trans) errors in 1-degree bins, mean of the cumulative accuracy over 1..30), and the
field-of-view error per frame.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from trainer.vggt.geometry import closed_form_inverse_se3

DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "mae", "delta1", "delta2", "delta3")
ALIGNMENTS = ("none", "median", "lsq", "sequence")
POSE_THRESHOLDS_DEG = (5, 15, 30)
AUC_MAX_DEG = 30
MIN_DEPTH = 1e-6  # aligned predictions are clamped here so that log/ratio metrics stay finite


# ------------------------------------------------------------------------------------------- depth


def masked_median(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """True median (mean of the two middle values for even counts) of ``values[mask]``; NaN if empty."""
    selected = values[mask].double()
    if selected.numel() == 0:
        return torch.tensor(float("nan"), dtype=torch.float64, device=values.device)
    ordered = selected.sort().values
    n = ordered.numel()
    return 0.5 * (ordered[(n - 1) // 2] + ordered[n // 2])


def align_depth(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, alignment: str = "sequence"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align a window's predicted depth ``[S,H,W]`` to GT; returns (aligned, scale [S], shift [S]).

    Fits use valid pixels only; frames without valid pixels keep scale NaN (their metrics are NaN
    and they are excluded from averages). The aligned depth is clamped to >= MIN_DEPTH.
    """
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    if pred.shape != gt.shape or gt.shape != mask.shape or pred.dim() != 3:
        raise ValueError(f"expected pred, gt, mask [S,H,W] of one shape, got {tuple(pred.shape)}, "
                         f"{tuple(gt.shape)}, {tuple(mask.shape)}")
    frames = pred.shape[0]
    pred64, gt64 = pred.double(), gt.double()
    scale = torch.ones(frames, dtype=torch.float64, device=pred.device)
    shift = torch.zeros(frames, dtype=torch.float64, device=pred.device)
    if alignment == "sequence":
        scale[:] = masked_median(gt64, mask) / masked_median(pred64, mask)
    elif alignment == "median":
        for i in range(frames):
            scale[i] = masked_median(gt64[i], mask[i]) / masked_median(pred64[i], mask[i])
    elif alignment == "lsq":
        for i in range(frames):
            p, g = pred64[i][mask[i]], gt64[i][mask[i]]
            if p.numel() < 2:
                scale[i], shift[i] = float("nan"), float("nan")
                continue
            design = torch.stack([p, torch.ones_like(p)], dim=-1)
            solution = torch.linalg.lstsq(design, g[:, None]).solution[:, 0]
            scale[i], shift[i] = solution[0], solution[1]
    aligned = (pred64 * scale[:, None, None] + shift[:, None, None]).clamp(min=MIN_DEPTH)
    return aligned.to(pred.dtype), scale, shift


def depth_error_maps(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-pixel AbsRel |pred - gt| / gt, NaN where there is no GT (for pictures)."""
    ratio = (pred - gt).abs() / gt.clamp(min=MIN_DEPTH)
    return torch.where(mask, ratio, torch.full_like(ratio, float("nan")))


def depth_metrics(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-frame metrics of already aligned depth ``[S,H,W]``: each entry is ``[S]`` (float64).

    ``pixels`` holds the number of valid pixels per frame; frames with none get NaN metrics.
    """
    frames = pred.shape[0]
    out = {name: torch.full((frames,), float("nan"), dtype=torch.float64) for name in DEPTH_METRICS}
    out["pixels"] = mask.reshape(frames, -1).sum(-1).cpu().double()
    for i in range(frames):
        valid = mask[i]
        if not bool(valid.any()):
            continue
        p = pred[i][valid].double().clamp(min=MIN_DEPTH)
        g = gt[i][valid].double()
        diff = p - g
        ratio = torch.maximum(p / g, g / p)
        values = {
            "abs_rel": (diff.abs() / g).mean(),
            "sq_rel": (diff**2 / g).mean(),
            "rmse": (diff**2).mean().sqrt(),
            "rmse_log": ((p.log() - g.log()) ** 2).mean().sqrt(),
            "mae": diff.abs().mean(),
            "delta1": (ratio < 1.25).double().mean(),
            "delta2": (ratio < 1.25**2).double().mean(),
            "delta3": (ratio < 1.25**3).double().mean(),
        }
        for name, value in values.items():
            out[name][i] = value.item()
    return out


# ------------------------------------------------------------------------------------------ camera


def rotation_angle_deg(rotations: torch.Tensor) -> torch.Tensor:
    """Angle of rotation matrices ``[..., 3, 3]`` in degrees.

    atan2(|axis part|, cos part) instead of acos(trace): acos loses all precision near 0 degrees
    (a float32 identity would read as ~0.03 degrees), exactly where good models live.
    """
    cos_part = (rotations[..., 0, 0] + rotations[..., 1, 1] + rotations[..., 2, 2] - 1) / 2
    axis = torch.stack([rotations[..., 2, 1] - rotations[..., 1, 2], rotations[..., 0, 2] - rotations[..., 2, 0],
                        rotations[..., 1, 0] - rotations[..., 0, 1]], dim=-1)
    return torch.rad2deg(torch.atan2(axis.norm(dim=-1) / 2, cos_part))


def pair_indices(frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs i < j."""
    first, second = torch.triu_indices(frames, frames, offset=1)
    return first, second


def relative_pose_errors(pred_extrinsics: torch.Tensor, gt_extrinsics: torch.Tensor,
                         translation_sign_ambiguity: bool = True) -> dict[str, torch.Tensor]:
    """Rotation and translation-direction errors (degrees) of every pair i < j of one window ``[S,3,4]``.

    The relative pose maps camera i to camera j: ``T_ij = E_j E_i^-1``. With
    ``translation_sign_ambiguity`` (the VGGT/PoseDiffusion evaluation convention) the translation
    error is ``min(theta, 180 - theta)``.
    """
    if pred_extrinsics.shape != gt_extrinsics.shape or pred_extrinsics.shape[-2:] != (3, 4):
        raise ValueError(f"expected two [S,3,4] extrinsics, got {tuple(pred_extrinsics.shape)} and "
                         f"{tuple(gt_extrinsics.shape)}")
    first, second = pair_indices(pred_extrinsics.shape[0])

    def relative(extrinsics: torch.Tensor) -> torch.Tensor:
        e = extrinsics.double()
        return (torch.cat([e[second], _bottom_row(e[second])], -2) @ closed_form_inverse_se3(e[first]))[:, :3]

    rel_pred, rel_gt = relative(pred_extrinsics), relative(gt_extrinsics)
    rot_err = rotation_angle_deg(rel_pred[:, :3, :3].transpose(-1, -2) @ rel_gt[:, :3, :3])
    t_pred, t_gt = rel_pred[:, :3, 3], rel_gt[:, :3, 3]
    cosine = (t_pred * t_gt).sum(-1) / (t_pred.norm(dim=-1) * t_gt.norm(dim=-1)).clamp(min=1e-12)
    trans_err = torch.rad2deg(torch.acos(cosine.clamp(-1.0, 1.0)))
    if translation_sign_ambiguity:
        trans_err = torch.minimum(trans_err, 180.0 - trans_err)
    return {"rot_err_deg": rot_err.cpu(), "trans_err_deg": trans_err.cpu()}


def _bottom_row(extrinsics: torch.Tensor) -> torch.Tensor:
    row = torch.zeros(extrinsics.shape[:-2] + (1, 4), dtype=extrinsics.dtype, device=extrinsics.device)
    row[..., 0, 3] = 1.0
    return row


def pose_auc(rot_err_deg: torch.Tensor, trans_err_deg: torch.Tensor, max_threshold: int = AUC_MAX_DEG) -> float:
    """VGGT-paper AUC: histogram of max(rot, trans) in 1-degree bins up to ``max_threshold``, mean of
    the normalised cumulative histogram (i.e. accuracy averaged over thresholds 1..max)."""
    errors = torch.maximum(rot_err_deg, trans_err_deg).double().numpy()
    if errors.size == 0:
        return float("nan")
    histogram, _ = np.histogram(errors, bins=np.arange(max_threshold + 1))
    return float(np.mean(np.cumsum(histogram / errors.size)))


def pose_accuracy(errors_deg: torch.Tensor, thresholds: Sequence[float] = POSE_THRESHOLDS_DEG) -> dict[float, float]:
    """Fraction of pairs with error below each threshold (RRA / RTA)."""
    if errors_deg.numel() == 0:
        return {t: float("nan") for t in thresholds}
    return {t: float((errors_deg < t).double().mean()) for t in thresholds}


def camera_summary(rot_err_deg: torch.Tensor, trans_err_deg: torch.Tensor, fov_err_deg: torch.Tensor) -> dict[str, float]:
    """Pooled camera metrics of any set of pairs (a window, a scene, everything)."""
    summary: dict[str, float] = {}
    for t, value in pose_accuracy(rot_err_deg).items():
        summary[f"rra@{t}"] = value
    for t, value in pose_accuracy(trans_err_deg).items():
        summary[f"rta@{t}"] = value
    summary[f"auc@{AUC_MAX_DEG}"] = pose_auc(rot_err_deg, trans_err_deg)
    summary["rot_err_deg"] = _mean(rot_err_deg)
    summary["trans_err_deg"] = _mean(trans_err_deg)
    summary["fov_err_deg"] = _mean(fov_err_deg)
    summary["pairs"] = float(rot_err_deg.numel())
    return summary


def fov_errors_deg(pred_pose_enc: torch.Tensor, gt_pose_enc: torch.Tensor) -> torch.Tensor:
    """|FoV error| in degrees per frame, averaged over the vertical and horizontal FoV: ``[S]``."""
    return torch.rad2deg((pred_pose_enc[..., 7:9].double() - gt_pose_enc[..., 7:9].double()).abs()).mean(-1).cpu()


def _mean(values: torch.Tensor) -> float:
    finite = values[torch.isfinite(values)]
    return float(finite.double().mean()) if finite.numel() else math.nan
