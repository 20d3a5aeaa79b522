"""The evaluation pictures (PNG): window grids and the AbsRel summary of the window report, point clouds
of the protocols. The only module that imports matplotlib (lazily, with the file-only Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.evaluation.predict import LABELS
from trainer.metrics import nearest_distances


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _finite_percentile(tensors: list[torch.Tensor], q: float, default: float) -> float:
    values = torch.cat([t[torch.isfinite(t)].double().flatten().cpu() for t in tensors])
    if values.numel() == 0:
        return default
    return float(torch.quantile(values[: 1 << 24], q))


def render_window(
    path: Path,
    key: str,
    scene: str,
    names: list[str],
    images: torch.Tensor,
    gt: torch.Tensor,
    mask: torch.Tensor,
    results: Mapping[str, Mapping[str, Any]],
    unit: str = "m",
) -> None:
    """One PNG per window: a row per frame, columns RGB | GT depth | base depth | adapter depth |
    base AbsRel | adapter AbsRel | base confidence | adapter confidence, with one colour bar per
    column and ranges shared by all depth columns (and by each error / confidence pair)."""
    plt = pyplot()
    frames, height, width = gt.shape
    gt_shown = torch.where(mask, gt, torch.full_like(gt, float("nan"))).cpu()
    depth_maps = {label: results[label]["aligned_depth"].cpu() for label in LABELS}
    error_maps = {label: results[label]["abs_rel_map"].cpu() for label in LABELS}
    conf_maps = {label: results[label]["conf"].cpu() for label in LABELS}
    reference = [gt_shown] if bool(mask.any()) else list(depth_maps.values())
    depth_range = (_finite_percentile(reference, 0.02, 0.0), _finite_percentile(reference, 0.98, 1.0))
    error_max = max(_finite_percentile(list(error_maps.values()), 0.95, 0.1), 1e-3)
    conf_range = (
        _finite_percentile(list(conf_maps.values()), 0.02, 1.0),
        _finite_percentile(list(conf_maps.values()), 0.98, 2.0),
    )
    columns = [
        ("RGB", None, None, None),
        (f"GT depth [{unit}]", lambda i: gt_shown[i], "turbo", depth_range),
        (f"base depth [{unit}]", lambda i: depth_maps["base"][i], "turbo", depth_range),
        (f"adapter depth [{unit}]", lambda i: depth_maps["adapter"][i], "turbo", depth_range),
        ("base AbsRel", lambda i: error_maps["base"][i], "magma", (0.0, error_max)),
        ("adapter AbsRel", lambda i: error_maps["adapter"][i], "magma", (0.0, error_max)),
        ("base confidence", lambda i: conf_maps["base"][i], "viridis", conf_range),
        ("adapter confidence", lambda i: conf_maps["adapter"][i], "viridis", conf_range),
    ]
    cell = 2.0
    fig, axes = plt.subplots(
        frames,
        len(columns),
        squeeze=False,
        layout="constrained",
        figsize=(cell * len(columns), cell * height / width * frames + 1.2),
    )
    rgb = images.detach().float().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy()
    for col, (title, getter, cmap, value_range) in enumerate(columns):
        image = None
        for i in range(frames):
            ax = axes[i, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if getter is None:
                ax.imshow(rgb[i])
                abs_rel = {label: results[label]["depth"]["abs_rel"][i].item() for label in LABELS}
                ax.set_ylabel(f"{names[i]}\nAbsRel {abs_rel['base']:.3f}→{abs_rel['adapter']:.3f}", fontsize=7)
            else:
                colour_map = plt.get_cmap(cmap).with_extremes(bad="0.85")  # no GT / no value: light grey
                image = ax.imshow(
                    getter(i).numpy(),
                    cmap=colour_map,
                    vmin=value_range[0],
                    vmax=value_range[1],
                    interpolation="nearest",
                )
            if i == 0:
                ax.set_title(title, fontsize=8)
        if image is not None:
            bar = fig.colorbar(image, ax=axes[:, col].tolist(), orientation="horizontal", fraction=0.05, pad=0.02)
            bar.ax.tick_params(labelsize=6)
    fig.suptitle(f"{scene} · {key}", fontsize=9)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def render_summary(path: Path, frames: list[dict[str, Any]], alignment: str) -> None:
    """Per-frame AbsRel, base vs adapter: scatter against y = x, and both along the evaluated frames."""
    plt = pyplot()
    valid = [
        f
        for f in frames
        if f["pixels"] > 0 and f["base"]["abs_rel"] is not None and f["adapter"]["abs_rel"] is not None
    ]
    base = [f["base"]["abs_rel"] for f in valid]
    adapter = [f["adapter"]["abs_rel"] for f in valid]
    scenes = sorted({f["scene"] for f in valid})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
    for index, scene in enumerate(scenes):
        xs = [f["base"]["abs_rel"] for f in valid if f["scene"] == scene]
        ys = [f["adapter"]["abs_rel"] for f in valid if f["scene"] == scene]
        left.scatter(xs, ys, s=12, color=plt.get_cmap("tab10")(index % 10), label=scene)
    top = max(base + adapter, default=1.0) * 1.05 or 1.0
    left.plot([0, top], [0, top], color="0.4", linewidth=1, linestyle="--", label="y = x")
    left.set_xlim(0, top)
    left.set_ylim(0, top)
    left.set_xlabel("base AbsRel")
    left.set_ylabel("adapter AbsRel")
    left.set_title(f"per-frame AbsRel (below the line: adapter better; alignment {alignment})", fontsize=9)
    if scenes:
        left.legend(fontsize=7)
    right.plot(base, label="base", linewidth=1)
    right.plot(adapter, label="adapter", linewidth=1)
    right.set_xlabel("evaluated frame")
    right.set_ylabel("AbsRel")
    right.set_title(f"{len(valid)} frames", fontsize=9)
    right.legend(fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def render_pointclouds(
    path: Path,
    title: str,
    clouds: Mapping[str, Mapping[str, np.ndarray]],
    labels: tuple[str, ...],
    max_points: int = 60_000,
    unit: str = "m",
) -> bool:
    """GT points and every aligned prediction seen from the same viewpoint (the GT's two principal
    axes, i.e. facing its dominant surface); predictions coloured by their distance to the nearest GT
    point (in `unit`, the shards' units; one shared scale). Returns False when there is nothing to draw."""
    gt = clouds[labels[0]].get("gt")
    if gt is None or len(gt) < 3:
        return False
    plt = pyplot()
    rng = np.random.default_rng(0)

    def thin(points: np.ndarray) -> np.ndarray:
        return points if len(points) <= max_points else points[rng.choice(len(points), max_points, replace=False)]

    centre = gt.mean(0)
    _, _, axes = np.linalg.svd(thin(gt) - centre, full_matrices=False)
    panels = [("GT (laser depth)", thin(gt), None)]
    for label in labels:
        for source, cloud in clouds[label].items():  # in the order the protocol produced them
            if source == "gt":
                continue
            points = thin(cloud)
            panels.append(
                (
                    f"{label} · {source.replace('_', ' + ' if source == 'depth_camera' else ' ')}",
                    points,
                    nearest_distances(points, gt),
                )
            )
    errors = np.concatenate([e for _, _, e in panels if e is not None]) if len(panels) > 1 else np.zeros(1)
    error_max = max(float(np.quantile(errors, 0.95)), 1e-6)
    gt_2d = (panels[0][1] - centre) @ axes[:2].T
    lo, hi = np.quantile(gt_2d, 0.005, axis=0), np.quantile(gt_2d, 0.995, axis=0)
    pad = 0.08 * (hi - lo).max()
    fig, axs = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.9), squeeze=False, layout="constrained")
    depth_axis = (panels[0][1] - centre) @ axes[2]
    scatter = None
    for ax, (name, points, error) in zip(axs[0], panels, strict=True):
        xy = (points - centre) @ axes[:2].T
        if error is None:
            ax.scatter(xy[:, 0], xy[:, 1], c=depth_axis, s=0.3, cmap="viridis", linewidths=0, rasterized=True)
        else:
            ax.scatter(gt_2d[:, 0], gt_2d[:, 1], c="0.85", s=0.3, linewidths=0, rasterized=True)
            scatter = ax.scatter(
                xy[:, 0],
                xy[:, 1],
                c=error,
                s=0.3,
                cmap="magma_r",
                vmin=0,
                vmax=error_max,
                linewidths=0,
                rasterized=True,
            )
            name += f"\nmean NN error {error.mean():.3f} {unit}"
        ax.set_title(name, fontsize=8)
        ax.set_xlim(lo[0] - pad, hi[0] + pad)
        ax.set_ylim(hi[1] + pad, lo[1] - pad)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    if scatter is not None:
        bar = fig.colorbar(scatter, ax=axs[0, 1:].tolist(), orientation="horizontal", fraction=0.05, pad=0.02)
        bar.set_label(f"distance to nearest GT point [{unit}] (grey: GT)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
