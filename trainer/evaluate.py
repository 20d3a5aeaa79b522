"""Base-vs-adapter evaluation on shard batches: metrics.json, report.md and PNG pictures.

Both models see exactly the same prepared batches. Depth is compared in metres: the prediction
(in the training normalisation) is multiplied by the window's GT normalisation scale and then
aligned as requested (trainer.metrics). Camera errors are computed on relative poses, so they do
not depend on the world frame or scale (the GT is the training-normalised one, frame 0 = [I|0]).
Aggregation: per frame -> per scene (mean over its frames) -> overall (mean over all frames);
camera pairs are pooled per scene and overall.

The two models must not share parameters (a PEFT wrapper modifies the module it wraps): build the
base model twice, or pass ``adapted_model`` and use ``base_model=None`` to run the base through
``adapted_model.disable_adapter()``.

This module holds the window report's metrics, aggregation and report text; the model a run was trained
on, the forwards, metrics.json and the pictures come from trainer/evaluation/.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer.data.shards import dataset_units, is_metric, unit_symbol
from trainer.evaluation.pictures import render_summary, render_window
from trainer.evaluation.predict import LABELS, WINDOW_OUTPUTS, model_device, predict_models, to_device
from trainer.evaluation.report import (
    format_change,
    format_value,
    json_float,
    meta,
    relative_change,
    safe_name,
    write_results,
)
from trainer.evaluation.runs import build_adapted, trained_on
from trainer.losses import prepare_batch
from trainer.metrics import (
    ALIGNMENTS,
    AUC_MAX_DEG,
    DEPTH_METRICS,
    align_depth,
    camera_summary,
    depth_error_maps,
    depth_metrics,
    fov_errors_deg,
    relative_pose_errors,
)
from trainer.vggt.geometry import extri_intri_to_pose_encoding, pose_encoding_to_extri_intri

log = logging.getLogger(__name__)

EVAL_FORMAT = "vggt-eth3d-eval/1"
# Metrics where larger is better (everything else is an error).
HIGHER_IS_BETTER = {
    "delta1",
    "delta2",
    "delta3",
    "rra@5",
    "rra@15",
    "rra@30",
    "rta@5",
    "rta@15",
    "rta@30",
    f"auc@{AUC_MAX_DEG}",
}
CAMERA_METRICS = (
    "rra@5",
    "rra@15",
    "rra@30",
    "rta@5",
    "rta@15",
    "rta@30",
    f"auc@{AUC_MAX_DEG}",
    "rot_err_deg",
    "trans_err_deg",
    "fov_err_deg",
)


@dataclass
class EvalConfig:
    alignment: str = "sequence"
    max_pictures: int = 4  # windows drawn as PNG grids (the first ones seen)
    max_batches: int | None = None
    translation_sign_ambiguity: bool = True  # VGGT-paper convention for the translation error
    autocast_bf16: bool = True  # bf16 autocast for the aggregator on CUDA (the heads run in fp32)
    units: str = "metres"  # the shards' depth units (trainer.data.shards.dataset_units): every label says them
    model_info: dict[str, Any] = field(default_factory=dict)  # recorded in metrics.json and the report


# ------------------------------------------------------------------------------------------ per window


def evaluate_window(
    pred: Mapping[str, torch.Tensor],
    prepared: Mapping[str, Any],
    item: int,
    alignment: str,
    translation_sign_ambiguity: bool = True,
) -> dict[str, Any]:
    """Metrics of one window (batch item) for one model; keeps the maps needed for pictures."""
    gt = prepared["metric_depths"][item]
    mask = prepared["point_masks"][item]
    scale = prepared["normalization_scale"][item]
    depth_m = pred["depth"][item, ..., 0] * scale
    aligned, fit_scale, fit_shift = align_depth(depth_m, gt, mask, alignment)
    result: dict[str, Any] = {
        "depth": depth_metrics(aligned, gt, mask),
        "fit_scale": fit_scale.cpu(),
        "fit_shift": fit_shift.cpu(),
        "aligned_depth": aligned,
        "abs_rel_map": depth_error_maps(aligned, gt, mask),
        "conf": pred.get("depth_conf", torch.full_like(gt, float("nan")))[item],
    }
    if "pose_enc" in pred:
        image_hw = tuple(prepared["depths"].shape[-2:])
        pred_extrinsics, _ = pose_encoding_to_extri_intri(pred["pose_enc"][item], image_hw)
        gt_extrinsics = prepared["extrinsics"][item]
        gt_enc = extri_intri_to_pose_encoding(gt_extrinsics, prepared["intrinsics"][item], image_hw)
        errors = relative_pose_errors(pred_extrinsics, gt_extrinsics, translation_sign_ambiguity)
        result.update(errors)
        result["fov_err_deg"] = fov_errors_deg(pred["pose_enc"][item], gt_enc)
    return result


# ------------------------------------------------------------------------------------------ aggregation


def _finite_mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _depth_summary(frames: list[dict[str, Any]], label: str) -> dict[str, float | None]:
    valid = [f for f in frames if f["pixels"] > 0]
    summary = {name: _finite_mean([f[label][name] for f in valid]) for name in DEPTH_METRICS}
    summary["frames"] = len(valid)
    summary["pixels"] = int(sum(f["pixels"] for f in valid))
    return summary


def _camera_summary(pairs: list[dict[str, torch.Tensor]]) -> dict[str, float | None]:
    if not pairs:
        return {}
    rot = torch.cat([p["rot_err_deg"] for p in pairs])
    trans = torch.cat([p["trans_err_deg"] for p in pairs])
    fov = torch.cat([p["fov_err_deg"] for p in pairs])
    return {
        k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in camera_summary(rot, trans, fov).items()
    }


def aggregate(frames: list[dict[str, Any]], pairs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Overall and per-scene summaries for both models from per-frame records and per-window pairs."""

    def summarise(frame_subset, pair_subset):
        block: dict[str, Any] = {}
        for label in LABELS:
            block[label] = {
                **_depth_summary(frame_subset, label),
                **_camera_summary([p[label] for p in pair_subset if label in p]),
            }
        metrics = [m for m in (*DEPTH_METRICS, *CAMERA_METRICS) if m in block["base"]]
        block["relative_change"] = {m: relative_change(block["base"].get(m), block["adapter"].get(m)) for m in metrics}
        return block

    scenes = sorted({f["scene"] for f in frames})
    return {
        "overall": summarise(frames, pairs["windows"]),
        "scenes": {
            s: summarise([f for f in frames if f["scene"] == s], [p for p in pairs["windows"] if p["scene"] == s])
            for s in scenes
        },
    }


# --------------------------------------------------------------------------------------------- driver


def evaluate(
    base_model: torch.nn.Module | None,
    adapted_model: torch.nn.Module,
    batches: Iterable[Mapping[str, Any]],
    out_dir: str | Path,
    alignment: str | None = None,
    max_pictures: int | None = None,
    config: EvalConfig | None = None,
) -> dict[str, Any]:
    """Run both models on every batch, write metrics.json, report.md and PNGs to ``out_dir``.

    ``batches`` follow the shard batch contract (trainer.data). ``base_model=None`` evaluates the base
    through ``adapted_model.disable_adapter()`` (PEFT). ``alignment`` / ``max_pictures`` override the
    config's (default: EvalConfig(), i.e. "sequence" and 4 pictures). Returns the metrics.json content.
    """
    cfg = dataclasses.replace(config or EvalConfig())
    cfg.alignment = alignment or cfg.alignment
    cfg.max_pictures = cfg.max_pictures if max_pictures is None else max_pictures
    if cfg.alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {cfg.alignment!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = model_device(adapted_model)

    frames: list[dict[str, Any]] = []
    window_pairs: list[dict[str, Any]] = []
    pictures: list[str] = []
    windows = 0
    for batch_index, batch in enumerate(batches):
        if cfg.max_batches is not None and batch_index >= cfg.max_batches:
            break
        prepared = prepare_batch(to_device(batch, device))
        predictions = predict_models(base_model, adapted_model, prepared["images"], cfg.autocast_bf16, WINDOW_OUTPUTS)
        if any("depth" not in p for p in predictions.values()):
            raise ValueError("the model returned no 'depth': evaluation needs the depth head")
        batch_size, num_frames = prepared["depths"].shape[:2]
        for item in range(batch_size):
            key = meta(batch, "keys", item, f"batch{batch_index:05d}_{item}")
            scene = meta(batch, "scenes", item, "unknown")
            names = meta(batch, "names", item, [f"frame{i}" for i in range(num_frames)])
            results = {
                label: evaluate_window(
                    predictions[label], prepared, item, cfg.alignment, cfg.translation_sign_ambiguity
                )
                for label in LABELS
            }
            windows += 1
            pixels = results["base"]["depth"]["pixels"]
            for i in range(num_frames):
                record = {"key": key, "scene": scene, "frame": i, "name": names[i], "pixels": int(pixels[i])}
                for label in LABELS:
                    r = results[label]
                    record[label] = {m: json_float(r["depth"][m][i].item()) for m in DEPTH_METRICS}
                    record[label]["fit_scale"] = json_float(r["fit_scale"][i].item())
                    record[label]["fit_shift"] = json_float(r["fit_shift"][i].item())
                    if "fov_err_deg" in r:
                        record[label]["fov_err_deg"] = json_float(r["fov_err_deg"][i].item())
                frames.append(record)
            if "rot_err_deg" in results["base"]:
                window_pairs.append(
                    {
                        "key": key,
                        "scene": scene,
                        **{
                            label: {k: results[label][k] for k in ("rot_err_deg", "trans_err_deg", "fov_err_deg")}
                            for label in LABELS
                        },
                    }
                )
            if len(pictures) < cfg.max_pictures:
                name = f"window_{len(pictures):03d}_{safe_name(key)}.png"
                render_window(
                    out_dir / name,
                    key,
                    scene,
                    names,
                    prepared["images"][item],
                    prepared["metric_depths"][item],
                    prepared["point_masks"][item],
                    {label: results[label] for label in LABELS},
                    unit=unit_symbol(cfg.units),
                )
                pictures.append(name)
        log.info("evaluated batch %d (%d windows so far)", batch_index, windows)
    if windows == 0:
        raise ValueError("no batches to evaluate: the split is empty")

    summary = aggregate(frames, {"windows": window_pairs})
    render_summary(out_dir / "summary_abs_rel.png", frames, cfg.alignment)
    metrics = {
        "format": EVAL_FORMAT,
        "alignment": cfg.alignment,
        "depth_units": f"{cfg.units} (prediction x GT normalisation scale, then aligned)",
        "translation_sign_ambiguity": cfg.translation_sign_ambiguity,
        "models": cfg.model_info,
        "counts": {
            "windows": windows,
            "frames": len(frames),
            "frames_with_depth": sum(1 for f in frames if f["pixels"] > 0),
            "pixels": int(sum(f["pixels"] for f in frames)),
            "pairs": int(sum(p["base"]["rot_err_deg"].numel() for p in window_pairs)),
        },
        **summary,
        "frames": frames,
        "pictures": pictures + ["summary_abs_rel.png"],
    }
    write_results(out_dir, metrics, report_lines(metrics))
    return metrics


# ---------------------------------------------------------------------------------------------- report


def _format_value(metric: str, value: float | None) -> str:
    if metric in HIGHER_IS_BETTER or metric.startswith("delta"):
        return format_value(value, 100, 1, "%")
    if metric.endswith("_deg"):
        return format_value(value, digits=2, suffix="°")
    return format_value(value)


def _format_change(metric: str, change: float | None) -> str:
    return format_change(change, metric in HIGHER_IS_BETTER)


def _table(block: Mapping[str, Any], metrics: list[str]) -> list[str]:
    lines = ["| metric | base | adapter | relative change |", "|---|---:|---:|---:|"]
    for metric in metrics:
        if metric not in block["base"]:
            continue
        lines.append(
            f"| {metric} | {_format_value(metric, block['base'][metric])} | "
            f"{_format_value(metric, block['adapter'][metric])} | "
            f"{_format_change(metric, block['relative_change'].get(metric))} |"
        )
    return lines


def report_lines(metrics: Mapping[str, Any]) -> list[str]:
    """report.md: setup, counts, overall base-vs-adapter table, per-scene table, pictures."""
    counts, overall = metrics["counts"], metrics["overall"]
    units = str(metrics.get("depth_units", "metres")).split(" (prediction")[0]
    lines = ["# VGGT evaluation: base vs adapter", ""]
    for name, value in metrics.get("models", {}).items():
        if value is not None:
            lines.append(f"- {name}: `{value}`")
    lines += [
        f"- depth alignment: **{metrics['alignment']}** (depth in {units}: prediction × GT normalisation "
        "scale, then aligned; `none` = training normalisation only)",
        "- scale: abs_rel, rmse_log, δ thresholds and all camera metrics are scale-invariant; sq_rel, rmse "
        f"and mae are in the shards' depth units, here {units}"
        + ("" if is_metric(units) else " (not metres: compare those only on the same shards)"),
        f"- camera: relative poses of all frame pairs per window; translation sign ambiguity "
        f"{'on (VGGT paper convention)' if metrics['translation_sign_ambiguity'] else 'off'}; "
        f"AUC@{AUC_MAX_DEG} = mean accuracy of max(rot, trans) over thresholds 1..{AUC_MAX_DEG}°",
        f"- evaluated: {counts['windows']} windows, {counts['frames']} frames "
        f"({counts['frames_with_depth']} with GT depth), {counts['pixels']:,} GT pixels, "
        f"{counts['pairs']} camera pairs",
        "",
        "## Overall (depth: mean over frames; camera: pooled pairs)",
        "",
        *_table(overall, [*DEPTH_METRICS, *CAMERA_METRICS]),
        "",
        "Relative change = (adapter − base) / |base|; ✓ better, ✗ worse, ±0.0% unchanged at this precision.",
        "",
        "## Per scene",
        "",
        f"| scene | frames | GT pixels | AbsRel base | AbsRel adapter | δ<1.25 base | δ<1.25 adapter | "
        f"AUC@{AUC_MAX_DEG} base | AUC@{AUC_MAX_DEG} adapter |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    auc = f"auc@{AUC_MAX_DEG}"
    for scene, block in metrics["scenes"].items():
        b, a = block["base"], block["adapter"]
        lines.append(
            f"| {scene} | {b['frames']} | {b['pixels']:,} | {_format_value('abs_rel', b['abs_rel'])} | "
            f"{_format_value('abs_rel', a['abs_rel'])} | {_format_value('delta1', b['delta1'])} | "
            f"{_format_value('delta1', a['delta1'])} | {_format_value(auc, b.get(auc))} | "
            f"{_format_value(auc, a.get(auc))} |"
        )
    lines += ["", "## Pictures", ""]
    for picture in metrics["pictures"]:
        lines.append(f"![{picture}]({picture})")
    return lines


# ------------------------------------------------------------------------------ shards + run -> report


def evaluate_run(
    shards: str | Path,
    out_dir: str | Path,
    split: str = "val",
    run: str | Path | None = None,
    adapter: str | Path | None = None,
    weights: str | None = None,
    model_name: str | None = None,
    batch_size: int = 1,
    device: str | None = None,
    config: EvalConfig | None = None,
) -> dict[str, Any]:
    """``python -m trainer eval``: base model vs base + adapter on a shard split.

    The base weights, model preset and (for random-init runs) the seed default to what the run /
    adapter recorded, so the base is exactly the model the adapter was trained on. One model is
    built; the base runs with the adapter disabled (PEFT ``disable_adapter``).
    """
    from trainer.data import ShardError, make_loader

    spec = trained_on(run, adapter, weights, model_name)
    units = dataset_units(shards)
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    # Cheap checks first: the split and its batch count come from the shard headers, before any model.
    loader = make_loader(shards, split, batch_size, shuffle=False, num_workers=0, pin_memory=False)
    if loader.batches_per_epoch() == 0:
        raise ShardError(
            f"{shards}: the '{split}' split holds fewer than --batch-size {batch_size} samples; lower --batch-size"
        )
    adapted = build_adapted(spec).to(torch_device).eval()
    cfg = dataclasses.replace(config or EvalConfig(), units=units)
    cfg.model_info = {
        "model": spec.model,
        "base weights": spec.base_weights_label(),
        "adapter": str(spec.adapter_dir),
        "strategy": spec.info.get("strategy"),
        "adapter step": spec.info.get("step"),
        "shards": f"{shards} ({split})",
        "device": str(torch_device),
        **cfg.model_info,
    }
    return evaluate(None, adapted, loader, out_dir, config=cfg)
