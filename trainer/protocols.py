"""Published ETH3D protocols: camera pose AUC, point-map accuracy/completeness, multi-view depth.

``python -m trainer eval --protocol eth3d-pose|eth3d-pointmap|eth3d-mvd|all`` runs the base model (and,
with ``--run``/``--adapter``, base + adapter) on every sample of a shard split and scores each
sample under the published conventions (docs/evaluation.md gives the source and our deviations):

* ``eth3d-pose`` (VGGT / Depth Anything 3): relative rotation and translation-direction errors of all
  frame pairs, AUC@3/5/15/30 of max(RRA, RTA), per scene, then the mean over scenes; under each of the
  three pose rules of trainer.metrics.POSE_CONVENTIONS (``pose/da3/...`` is the one DA3's Tab. 2 used).
* ``eth3d-pointmap`` (VGGT paper Tab. 3): predicted points, from the depth head + predicted cameras
  and from the point head, aligned to the metric GT points by one Umeyama Sim(3) per sample on
  valid GT pixels; accuracy / completeness / overall in metres (trainer.metrics), plus DA3's
  precision / recall / F-score at 0.25 m after its 0.039 m voxel down-sampling.
* ``eth3d-mvd`` (Robust MVD benchmark): per-frame AbsRel and inlier ratio tau < 1.03 after median
  scaling per frame (the benchmark's) and per sequence (a variant for multi-view models).

Aggregation: sample -> scene (mean over the scene's samples; for depth, over its frames) -> mean over
scenes. Writes metrics.json, report.md and point-cloud PNGs to the output directory. This module holds the
protocols' metrics, aggregation and report text; the model a run was trained on, the forwards, metrics.json
and the pictures come from trainer/evaluation/.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.data.shards import dataset_units, is_metric, unit_symbol
from trainer.errors import UserError
from trainer.evaluation.pictures import render_pointclouds
from trainer.evaluation.predict import ALL_OUTPUTS, model_device, predict_models, to_device
from trainer.evaluation.report import change_cell, format_value, meta, safe_name, write_results
from trainer.evaluation.runs import build_adapted, trained_on
from trainer.losses import prepare_batch
from trainer.metrics import (
    DA3_ETH3D_THRESHOLD_M,
    DA3_ETH3D_VOXEL_M,
    MVD_INLIER_THRESHOLD,
    POSE_CONVENTIONS,
    PROTOCOL_AUC_THRESHOLDS_DEG,
    apply_similarity,
    as_float64,
    mvd_depth_metrics,
    pointcloud_metrics,
    pointmap_accuracy_completeness,
    pose_auc,
    ransac_umeyama,
    umeyama,
)
from trainer.vggt.geometry import depth_to_world_points, pose_encoding_to_extri_intri

log = logging.getLogger(__name__)

PROTOCOLS_FORMAT = "vggt-eth3d-protocols/1"
PROTOCOLS = ("eth3d-pose", "eth3d-pointmap", "eth3d-mvd")
POINTMAP_SOURCES = ("depth_camera", "point_head")
POINTMAP_ALIGNMENTS = ("umeyama", "ransac")
EVAL_HEADS = ("camera", "depth", "point")
SCALE_FREE = ("eth3d-pose", "eth3d-mvd")  # published figures that do not depend on the shards' units

# Published VGGT-1B figures, each with the protocol it was measured under (docs/evaluation.md).
PUBLISHED = {
    "eth3d-pose": {
        "source": "Depth Anything 3 (Lin et al., arXiv 2511.10647) Tab. 2: VGGT on ETH3D, 11 scenes, "
        "<= 100 frames per scene, pose rule 'da3' (its bench code's compute_pose)",
        "values": {"pose/da3/auc@3": 0.263, "pose/da3/auc@30": 0.808},
    },
    "eth3d-pointmap": {
        "source": "VGGT (Wang et al., CVPR 2025) Tab. 3: ETH3D, 10 random frames per scene, Umeyama Sim(3), "
        "official masks",
        "values": {
            "pointmap/depth_camera/accuracy": 0.873,
            "pointmap/depth_camera/completeness": 0.482,
            "pointmap/depth_camera/overall": 0.677,
            "pointmap/point_head/accuracy": 0.901,
            "pointmap/point_head/completeness": 0.518,
            "pointmap/point_head/overall": 0.709,
        },
    },
    "eth3d-mvd": {
        "source": "no published VGGT figure on the Robust MVD ETH3D split; for scale: DUSt3R-512 2.91 % AbsRel / "
        "76.91 % tau<1.03 (DUSt3R paper Tab. 3, rmvd protocol, per-frame median scaling)",
        "values": {},
    },
}


# The pose rules reported side by side (trainer.metrics.POSE_CONVENTIONS) and the published figures each one
# reproduces (docs/evaluation.md, "Which pose rule").
POSE_RULES = {
    "da3": "Depth Anything 3's compute_pose (camera 0 as world, then inv(E_i) E_j): the rule of DA3 Tab. 2, "
    "so the published VGGT figures above are comparable with these rows only",
    "vggt": "VGGT's evaluation script (E_i inv(E_j), no first-camera step): the rule of VGGT's own pose "
    "figures (CO3D, RealEstate10K); it has no ETH3D pose figure",
    "i_to_j": "this project's in-domain rule (T_ij = E_j inv(E_i), trainer.evaluate): no published figure",
}
# What DA3's ETH3D benchmark feeds the model (depth_anything_3 0.1.1, bench/datasets/eth3d.py, api.py defaults).
DA3_INPUT_NOTE = (
    "DA3's benchmark feeds the distorted dslr_calibration_jpg photos with only fx, fy, cx, cy of the thin-prism "
    "cameras (distortion ignored), resized so the long side is 504 px (sides multiples of 14), reference view "
    "'first', and draws <= 100 frames per scene after dropping its filtered images; these samples are the "
    "engine's undistorted 518x518 crops (a --sampling da3 build reproduces its frame choice)"
)


class ProtocolScopeError(UserError, ValueError):
    """A protocol run whose numbers could not be put next to the published ones (in-sample split)."""


@dataclass
class ProtocolConfig:
    protocols: tuple[str, ...] = PROTOCOLS
    auc_thresholds: tuple[int, ...] = PROTOCOL_AUC_THRESHOLDS_DEG
    translation_sign_ambiguity: bool = True  # VGGT's convention (min(theta, 180 - theta))
    # DA3's point-cloud precision / recall / F-score settings (its ETH3D constants; voxel None = no down-sampling).
    fscore_threshold: float = DA3_ETH3D_THRESHOLD_M
    fscore_voxel: float | None = DA3_ETH3D_VOXEL_M
    pointmap_alignment: str = "umeyama"  # "umeyama" (published) or "ransac" (our robust variant)
    # Pixels used for the Sim(3) fit: valid GT pixels whose predicted confidence is at or above this
    # quantile of the sample's valid-pixel confidences (0 = all valid pixels, as published).
    align_conf_quantile: float = 0.0
    ransac_threshold: float = 0.05  # inlier distance, as a fraction of the GT's median distance to its centroid
    mvd_threshold: float = MVD_INLIER_THRESHOLD
    max_pictures: int = 4  # samples drawn as point-cloud PNGs (the first ones seen)
    max_samples: int | None = None
    autocast_bf16: bool = True
    units: str = "metres"  # the shards' units (trainer.data.shards.dataset_units): point-map labels say them
    # Scored on samples the adapter was trained on (`--in-sample`): the report says so at the top and shows
    # no published figures.
    in_sample: bool = False
    model_info: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown or not self.protocols:
            raise ValueError(f"unknown protocol(s) {unknown or '(none)'}; choose from {', '.join(PROTOCOLS)} or all")
        if self.pointmap_alignment not in POINTMAP_ALIGNMENTS:
            raise ValueError(
                f"pointmap alignment must be one of {POINTMAP_ALIGNMENTS}, got {self.pointmap_alignment!r}"
            )
        if not 0.0 <= self.align_conf_quantile < 1.0:
            raise ValueError(f"align_conf_quantile must be in [0, 1), got {self.align_conf_quantile}")


def parse_protocols(value: str) -> tuple[str, ...]:
    """'all' or a comma-separated list of protocol names."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    if names == ["all"]:
        return PROTOCOLS
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown or not names:
        raise ValueError(f"unknown protocol(s) {unknown or '(none)'}; choose from {', '.join(PROTOCOLS)} or all")
    return tuple(dict.fromkeys(names))


# ------------------------------------------------------------------------------------------ one sample


def _pointmap_scores(
    pred_points: np.ndarray, conf: np.ndarray, gt_points: np.ndarray, valid: np.ndarray, cfg: ProtocolConfig
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Align one sample's predicted points [S,H,W,3] to GT and score them; returns (record, aligned
    points at the valid pixels, or None if no fit was possible)."""
    usable = valid & np.isfinite(pred_points).all(-1)
    record: dict[str, Any] = {"eval_points": int(usable.sum())}
    if usable.sum() < 3:
        record["error"] = f"only {int(usable.sum())} valid pixels with a finite prediction"
        return record, None
    select = usable.copy()
    if cfg.align_conf_quantile > 0:
        finite_conf = usable & np.isfinite(conf)
        cut = np.quantile(conf[finite_conf], cfg.align_conf_quantile) if finite_conf.any() else -np.inf
        select &= conf >= cut
    src, dst = pred_points[select], gt_points[select]
    try:
        if cfg.pointmap_alignment == "ransac":
            extent = float(np.median(np.linalg.norm(dst - dst.mean(0), axis=-1)))
            s, r, t, inliers = ransac_umeyama(src, dst, cfg.ransac_threshold * max(extent, 1e-9))
            record["align_inliers"] = int(inliers.sum())
        else:
            s, r, t = umeyama(src, dst)
    except ValueError as exc:
        record["error"] = str(exc)
        return record, None
    aligned = apply_similarity(pred_points[usable], s, r, t)
    accuracy, completeness, overall = pointmap_accuracy_completeness(aligned, gt_points[usable])
    record.update(
        align_points=int(select.sum()), scale=s, accuracy=accuracy, completeness=completeness, overall=overall
    )
    record.update(_fscore_scores(aligned, gt_points[usable], cfg))
    return record, aligned


POINTMAP_FSCORE_METRICS = ("precision", "recall", "fscore")


def _fscore_scores(aligned: np.ndarray, gt_points: np.ndarray, cfg: ProtocolConfig) -> dict[str, float]:
    """DA3's precision / recall / F-score of one aligned sample (its evaluate_3d_reconstruction rule: both
    clouds voxel-down-sampled to centroids, then the fraction of points within the threshold)."""
    scores = pointcloud_metrics(aligned, gt_points, cfg.fscore_threshold, cfg.fscore_voxel)
    return {name: scores[name] for name in POINTMAP_FSCORE_METRICS}


def evaluate_sample(
    pred: Mapping[str, torch.Tensor], prepared: Mapping[str, Any], item: int, cfg: ProtocolConfig
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every requested protocol on batch item ``item`` for one model's predictions.

    Returns (flat metric record, aligned point clouds by source for pictures)."""
    gt_depth = prepared["metric_depths"][item]
    mask = prepared["point_masks"][item]
    gt_w2c = prepared["metric_extrinsics"][item]
    gt_k = prepared["intrinsics"][item]
    frames, height, width = gt_depth.shape
    record: dict[str, Any] = {"frames": frames}
    clouds: dict[str, np.ndarray] = {}
    pred_w2c = pred_k = None
    if "pose_enc" in pred:
        pred_w2c, pred_k = pose_encoding_to_extri_intri(pred["pose_enc"][item], (height, width))

    if "eth3d-pose" in cfg.protocols and pred_w2c is not None and frames >= 2:
        record.update(_pose_scores(pred_w2c, gt_w2c, cfg))

    if "eth3d-pointmap" in cfg.protocols:
        gt_points = as_float64(depth_to_world_points(gt_depth.double(), gt_k.double(), gt_w2c.double())[0])
        valid = mask.cpu().numpy().astype(bool)
        sources: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if pred_w2c is not None and "depth" in pred:
            points = depth_to_world_points(pred["depth"][item, ..., 0].double(), pred_k.double(), pred_w2c.double())[0]
            sources["depth_camera"] = (as_float64(points), as_float64(pred["depth_conf"][item]))
        if "world_points" in pred:
            sources["point_head"] = (
                as_float64(pred["world_points"][item]),
                as_float64(pred["world_points_conf"][item]),
            )
        for source, (points, conf) in sources.items():
            scores, aligned = _pointmap_scores(points, conf, gt_points, valid, cfg)
            record.update({f"pointmap/{source}/{k}": v for k, v in scores.items()})
            if aligned is not None:
                clouds[source] = aligned
        clouds["gt"] = gt_points[valid & np.isfinite(gt_points).all(-1)]

    if "eth3d-mvd" in cfg.protocols and "depth" in pred:
        for per in ("frame", "sequence"):
            depth = mvd_depth_metrics(pred["depth"][item, ..., 0], gt_depth, mask, per, cfg.mvd_threshold)
            has_gt = depth["pixels"] > 0
            record[f"mvd/{per}/abs_rel"] = _nanmean(depth["abs_rel"][has_gt])
            record[f"mvd/{per}/inlier"] = _nanmean(depth["inlier"][has_gt])
            record[f"mvd/{per}/frames"] = int(has_gt.sum())
            record[f"mvd/{per}/abs_rel_per_frame"] = depth["abs_rel"].tolist()
            record[f"mvd/{per}/inlier_per_frame"] = depth["inlier"].tolist()
            record[f"mvd/{per}/frames_mask"] = has_gt.tolist()
    return record, clouds


def _pose_scores(pred_w2c, gt_w2c, cfg: ProtocolConfig) -> dict[str, Any]:
    """Pose AUC of one sample under every rule: ``pose/<rule>/auc@T`` and ``pose/pairs``."""
    record: dict[str, Any] = {}
    for rule in POSE_CONVENTIONS:
        auc = pose_auc(pred_w2c, gt_w2c, cfg.auc_thresholds, cfg.translation_sign_ambiguity, convention=rule)
        record["pose/pairs"] = auc.pop("pairs")
        record.update({f"pose/{rule}/{k}": v for k, v in auc.items()})
    return record


def _nanmean(values: np.ndarray) -> float | None:
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return float(finite.mean()) if finite.size else None


# ----------------------------------------------------------------------------------------- aggregation


# Summary metrics (scalars per sample) and whether larger is better.
def summary_metrics(cfg: ProtocolConfig) -> list[tuple[str, bool]]:
    names: list[tuple[str, bool]] = []
    if "eth3d-pose" in cfg.protocols:
        names += [(f"pose/{rule}/auc@{t}", True) for rule in POSE_CONVENTIONS for t in cfg.auc_thresholds]
    if "eth3d-pointmap" in cfg.protocols:
        names += [
            (f"pointmap/{s}/{m}", False) for s in POINTMAP_SOURCES for m in ("accuracy", "completeness", "overall")
        ]
        names += [(f"pointmap/{s}/{m}", True) for s in POINTMAP_SOURCES for m in POINTMAP_FSCORE_METRICS]
    if "eth3d-mvd" in cfg.protocols:
        names += [(f"mvd/{per}/{m}", m == "inlier") for per in ("frame", "sequence") for m in ("abs_rel", "inlier")]
    return names


def aggregate(samples: list[dict[str, Any]], labels: tuple[str, ...], cfg: ProtocolConfig) -> dict[str, Any]:
    """Per scene (mean over its samples; MVD over its frames) and the mean over scenes."""
    names = [n for n, _ in summary_metrics(cfg)]
    scenes = sorted({s["scene"] for s in samples})
    per_scene: dict[str, Any] = {}
    for scene in scenes:
        subset = [s for s in samples if s["scene"] == scene]
        per_scene[scene] = {"samples": len(subset)}
        for label in labels:
            block: dict[str, Any] = {}
            for name in names:
                if name.startswith("mvd/"):  # frame-weighted: mean over all frames of the scene
                    per, metric = name.split("/")[1:]
                    values = [
                        v
                        for s in subset
                        for v, p in zip(
                            _per_frame(s[label], per, metric), s[label].get(f"mvd/{per}/frames_mask", []), strict=False
                        )
                        if p
                    ]
                    block[name] = _nanmean(np.array(values, dtype=np.float64)) if values else None
                else:
                    block[name] = _nanmean(np.array([_num(s[label].get(name)) for s in subset], dtype=np.float64))
            for extra in ("pointmap/depth_camera/align_points", "pointmap/point_head/align_points", "pose/pairs"):
                counts = [s[label][extra] for s in subset if s[label].get(extra) is not None]
                if counts:
                    block[extra] = int(sum(counts))
            per_scene[scene][label] = block
    mean = {
        label: {
            name: _nanmean(np.array([_num(per_scene[s][label].get(name)) for s in scenes], dtype=np.float64))
            for name in names
        }
        for label in labels
    }
    return {"scenes": per_scene, "mean": mean}


def _per_frame(record: Mapping[str, Any], per: str, metric: str) -> list[float]:
    return record.get(f"mvd/{per}/{metric}_per_frame", [])


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


# --------------------------------------------------------------------------------------------- driver


def evaluate_protocols(
    base_model: torch.nn.Module | None,
    adapted_model: torch.nn.Module | None,
    batches: Iterable[Mapping[str, Any]],
    out_dir: str | Path,
    config: ProtocolConfig | None = None,
) -> dict[str, Any]:
    """Run the protocols on every batch; write metrics.json, report.md and PNGs to ``out_dir``.

    ``adapted_model=None``: the base alone (a sanity check against the published figures).
    ``base_model=None``: the base runs through ``adapted_model.disable_adapter()`` (PEFT).
    """
    cfg = dataclasses.replace(config or ProtocolConfig())
    cfg.check()
    if base_model is None and adapted_model is None:
        raise ValueError("evaluate_protocols needs a base model, an adapted model, or both")
    labels = ("base",) if adapted_model is None else ("base", "adapter")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reference = adapted_model if adapted_model is not None else base_model
    device = model_device(reference)

    samples: list[dict[str, Any]] = []
    pictures: list[str] = []
    for batch_index, batch in enumerate(batches):
        if cfg.max_samples is not None and len(samples) >= cfg.max_samples:
            break
        prepared = prepare_batch(to_device(batch, device))
        predictions = predict_models(base_model, adapted_model, prepared["images"], cfg.autocast_bf16, ALL_OUTPUTS)
        for item in range(prepared["metric_depths"].shape[0]):
            key = meta(batch, "keys", item, f"batch{batch_index:05d}_{item}")
            scene = meta(batch, "scenes", item, "unknown")
            record: dict[str, Any] = {"key": key, "scene": scene, "names": list(meta(batch, "names", item, []))}
            clouds = {}
            for label in labels:
                record[label], clouds[label] = evaluate_sample(predictions[label], prepared, item, cfg)
            samples.append(record)
            if len(pictures) < cfg.max_pictures and "eth3d-pointmap" in cfg.protocols:
                name = f"pointcloud_{len(pictures):03d}_{safe_name(key)}.png"
                if render_pointclouds(out_dir / name, f"{scene} · {key}", clouds, labels, unit=unit_symbol(cfg.units)):
                    pictures.append(name)
        log.info("evaluated batch %d (%d samples so far)", batch_index, len(samples))
    if not samples:
        raise ValueError("no samples to evaluate: the split is empty")

    summary = aggregate(samples, labels, cfg)
    metrics = {
        "format": PROTOCOLS_FORMAT,
        "protocols": list(cfg.protocols),
        "labels": list(labels),
        "settings": {
            "auc_thresholds_deg": list(cfg.auc_thresholds),
            "translation_sign_ambiguity": cfg.translation_sign_ambiguity,
            "pose_rules": {rule: POSE_RULES[rule] for rule in POSE_CONVENTIONS},
            "fscore_threshold_m": cfg.fscore_threshold,
            "fscore_voxel_m": cfg.fscore_voxel,
            "pointmap_alignment": cfg.pointmap_alignment,
            "align_conf_quantile": cfg.align_conf_quantile,
            "ransac_threshold": cfg.ransac_threshold if cfg.pointmap_alignment == "ransac" else None,
            "mvd_threshold": cfg.mvd_threshold,
            "units": f"{cfg.units} (point maps), fractions (AUC, AbsRel, tau)",
        },
        "in_sample": cfg.in_sample,
        "models": cfg.model_info,
        "published": published_figures(cfg),
        "counts": {
            "samples": len(samples),
            "scenes": len(summary["scenes"]),
            "frames": int(sum(s["base"]["frames"] for s in samples)),
        },
        **summary,
        "samples": [_strip(s) for s in samples],
        "pictures": pictures,
    }
    write_results(out_dir, metrics, report_lines(metrics, cfg))
    return metrics


def _strip(sample: dict[str, Any]) -> dict[str, Any]:
    """The per-sample record for metrics.json (without the helper masks)."""
    out = {k: v for k, v in sample.items() if not isinstance(v, dict)}
    for label, record in sample.items():
        if isinstance(record, dict):
            out[label] = {k: v for k, v in record.items() if not k.endswith("frames_mask")}
    return out


# ---------------------------------------------------------------------------------------------- report


def _fmt(name: str, value: float | None) -> str:
    if name.startswith("pose/") or name.startswith("mvd/"):
        return format_value(value, 100, 2)
    return format_value(value)


def published_figures(cfg: ProtocolConfig) -> dict[str, Any]:
    """The published figures a run may be put next to: none for an in-sample run; without the figures in
    metres (point maps) when the shards are not in metres (COLMAP's arbitrary scale)."""
    if cfg.in_sample:
        return {}
    metric = is_metric(cfg.units)
    return {
        p: {**PUBLISHED[p], "values": {k: v for k, v in PUBLISHED[p]["values"].items() if metric or p in SCALE_FREE}}
        for p in cfg.protocols
    }


def _pose_rule_lines() -> list[str]:
    """Which pose rule each row used and which published figure it is comparable with, plus DA3's inputs."""
    lines = ["Pose rules (rows `pose/<rule>/...`):", ""]
    lines += [f"- `{rule}`: {text}" for rule, text in POSE_RULES.items()]
    return lines + ["", f"Inputs: {DA3_INPUT_NOTE}.", ""]


def _pose_scene_columns(names: list[str]) -> list[str]:
    """Per-scene pose columns: DA3's rule at its two published thresholds, the others at AUC@30."""
    wanted = ["pose/da3/auc@3", "pose/da3/auc@30"] + [f"pose/{r}/auc@30" for r in POSE_CONVENTIONS if r != "da3"]
    return [n for n in wanted if n in names] or names[:4]


def _fscore_lines(cfg: ProtocolConfig) -> list[str]:
    unit = unit_symbol(cfg.units)
    voxel = (
        f"after a {cfg.fscore_voxel} {unit} voxel down-sampling (centroids)"
        if cfg.fscore_voxel
        else "without down-sampling"
    )
    lines = [
        f"precision / recall / fscore: Depth Anything 3's rule (evaluate_3d_reconstruction) at "
        f"{cfg.fscore_threshold} {unit} "
        f"{voxel}, on the aligned per-pixel clouds; accuracy / completeness / overall are VGGT's (no down-sampling). "
        "DA3's own ETH3D F-scores come from TSDF-fused meshes against the GT mesh: no comparable published figure.",
    ]
    if not is_metric(cfg.units):
        lines.append(f"The threshold and voxel are DA3's metre values applied in {cfg.units}: not a metric F-score.")
    return [*lines, ""]


def report_lines(metrics: dict[str, Any], cfg: ProtocolConfig) -> list[str]:
    """report.md: scope warnings, setup, per protocol the published / base / adapter table and per scene."""
    labels = tuple(metrics["labels"])
    names = summary_metrics(cfg)
    shown = published_figures(cfg)
    published = {k: v for block in shown.values() for k, v in block["values"].items()}
    lines = ["# ETH3D protocol evaluation", ""]
    if cfg.in_sample:
        lines += [
            "> **IN-SAMPLE: the adapter was trained on these samples (`--in-sample`). These numbers measure fit, "
            "not generalisation; published figures are not shown and none of this may be compared with them.**",
            "",
        ]
    if not is_metric(cfg.units):
        lines += [
            f"> Units: **{cfg.units}**. Point-map accuracy / completeness are in these units, not metres; the "
            "published point-map figures are not shown.",
            "",
        ]
    for key, value in metrics["models"].items():
        lines.append(f"- {key}: {value}")
    counts = metrics["counts"]
    lines += [
        f"- {counts['samples']} samples, {counts['scenes']} scenes, {counts['frames']} frames",
        f"- point-map alignment: **{cfg.pointmap_alignment}** Sim(3) per sample on valid GT pixels"
        + (f" with confidence >= the {cfg.align_conf_quantile:.0%} quantile" if cfg.align_conf_quantile else ""),
        f"- pose AUC and MVD figures in %, point maps in {cfg.units}; ↑ = higher is better; change: ✓ better, "
        "✗ worse, ±0.0% unchanged at this precision",
        "",
        "Published figures are for VGGT-1B under the protocol named; ours differ where docs/evaluation.md "
        "says (resolution, frame choice, GT depth resampling). Compare only within one protocol.",
        "",
    ]
    for protocol in cfg.protocols:
        if protocol not in shown:
            source = "not shown (in-sample run)"
        elif PUBLISHED[protocol]["values"] and not shown[protocol]["values"]:
            source = f"not shown (in metres; these shards are in {cfg.units})"
        else:
            source = PUBLISHED[protocol]["source"]
        lines += [f"## {protocol}", "", f"Published: {source}.", ""]
        if protocol == "eth3d-pose":
            lines += _pose_rule_lines()
        if protocol == "eth3d-pointmap":
            lines += _fscore_lines(cfg)
        header = "| metric | published VGGT |" + "".join(f" {label} |" for label in labels)
        header += " change |" if len(labels) == 2 else ""
        lines += [header, "|---|---:|" + "---:|" * (len(labels) + (len(labels) == 2))]
        prefix = {"eth3d-pose": "pose/", "eth3d-pointmap": "pointmap/", "eth3d-mvd": "mvd/"}[protocol]
        for name, higher in names:
            if not name.startswith(prefix):
                continue
            values = [metrics["mean"][label].get(name) for label in labels]
            pub = published.get(name)
            row = f"| {name} {'↑' if higher else '↓'} | {_fmt(name, pub) if pub is not None else '–'} |"
            row += "".join(f" {_fmt(name, v)} |" for v in values)
            if len(labels) == 2:
                row += f" {change_cell(values[0], values[1], higher)} |"
            lines.append(row)
        lines += ["", "Per scene:", ""]
        scene_names = [n for n, _ in names if n.startswith(prefix)]
        show = scene_names[:4] if protocol != "eth3d-pointmap" else [n for n in scene_names if n.endswith("overall")]
        if protocol == "eth3d-pose":
            show = _pose_scene_columns(scene_names)
        extra = (
            [f"{s}/align_points" for s in ("pointmap/depth_camera", "pointmap/point_head")]
            if protocol == "eth3d-pointmap"
            else []
        )
        lines.append("| scene | samples |" + "".join(f" {label} {n} |" for n in show + extra for label in labels))
        lines.append("|---|---:|" + "---:|" * (len(show + extra) * len(labels)))
        for scene, block in metrics["scenes"].items():
            row = f"| {scene} | {block['samples']} |"
            for n in show + extra:
                for label in labels:
                    value = block[label].get(n)
                    row += f" {value:,} |" if n in extra and value is not None else f" {_fmt(n, value)} |"
            lines.append(row)
        lines.append("")
    failures = [
        (s["key"], label, k, v)
        for s in metrics["samples"]
        for label in labels
        for k, v in s[label].items()
        if k.endswith("/error")
    ]
    if failures:
        lines += ["## Samples without a point-map fit", ""]
        lines += [f"- {key} ({label}, {k.split('/')[1]}): {v}" for key, label, k, v in failures] + [""]
    if metrics["pictures"]:
        lines += ["## Point clouds", "", "Aligned predictions coloured by distance to the nearest GT point.", ""]
        lines += [f"![{p}]({p})" for p in metrics["pictures"]]
    return lines


# ------------------------------------------------------------------------------ shards + run -> report


def evaluate_protocols_run(
    shards: str | Path,
    out_dir: str | Path,
    split: str = "test",
    run: str | Path | None = None,
    adapter: str | Path | None = None,
    weights: str | None = None,
    model_name: str | None = None,
    device: str | None = None,
    config: ProtocolConfig | None = None,
    allow_in_sample: bool = False,
) -> dict[str, Any]:
    """``python -m trainer eval --protocol ...``: base (and base + adapter) on a shard split, batch size 1.

    Without ``run``/``adapter`` the base alone is evaluated (``weights`` required for a meaningful
    number). An adapter on its own training split is refused (ProtocolScopeError) unless
    ``allow_in_sample``; then the report is marked in-sample and shows no published figures. The
    shards' units (manifest.json) label every point-map figure. The point head is built and loaded
    when the weights hold it; a random-init base (tiny demo) keeps the trained-on heads so that it is
    exactly the model the adapter was made on.
    """
    from trainer.builders import TRAIN_HEADS
    from trainer.data import make_loader

    cfg = dataclasses.replace(config or ProtocolConfig())
    cfg.check()
    loader = make_loader(shards, split, 1, shuffle=False, num_workers=0, pin_memory=False)  # cheap checks first
    spec = trained_on(run, adapter, weights, model_name)
    adapter_dir = spec.adapter_dir
    if adapter_dir is not None:
        cfg.in_sample = split == spec.train_split
        if cfg.in_sample and not allow_in_sample:
            raise ProtocolScopeError(
                f"{shards}: --split {split} is the split the adapter was trained on, so protocol numbers would be "
                "in-sample and not comparable with the published figures; evaluate a held-out build (`dataengine "
                "build --sampling uniform|random`, split test; docs/evaluation.md), or pass --in-sample to score "
                "it anyway in a report marked IN-SAMPLE"
            )
    cfg.units = dataset_units(shards)
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    heads = EVAL_HEADS if spec.weights else TRAIN_HEADS
    model = build_adapted(spec, heads).to(torch_device).eval()
    cfg.model_info = {
        "model": spec.model,
        "base weights": spec.base_weights_label(),
        "heads": ", ".join(heads),
        **(
            {"adapter": str(adapter_dir), "strategy": spec.info.get("strategy"), "adapter step": spec.info.get("step")}
            if adapter_dir is not None
            else {"adapter": "none (base model only)"}
        ),
        "shards": f"{shards} ({split})",
        "device": str(torch_device),
        **cfg.model_info,
    }
    if adapter_dir is None:
        return evaluate_protocols(model, None, loader, out_dir, cfg)
    return evaluate_protocols(None, model, loader, out_dir, cfg)
