"""`inspect`: what is in a shard directory or one shard, and a contact sheet of a sample."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from shardformat import CAMERAS, DEPTH, MASK, SampleReader, frame_member, index_tar, record_suffixes


def read_samples(shard: Path, limit: int | None = None):
    """Yield (key, {suffix: bytes}) from a shard in file order (`shardformat.index_tar`, no decoding)."""
    for count, record in enumerate(index_tar(shard)):
        if limit is not None and count >= limit:
            return
        reader = SampleReader(record)
        try:
            members = {suffix: bytes(reader.read(suffix)) for suffix in record_suffixes(record)}
        finally:
            reader.close()
        yield record["__key__"], members


def decode_sample(members: dict[str, bytes]) -> dict:
    import simplejpeg

    frames = [frame_member(i) for i in range(len(members)) if frame_member(i) in members]
    return {
        "rgb": np.stack([simplejpeg.decode_jpeg(members[k], colorspace="RGB") for k in frames]),
        "depth": np.load(io.BytesIO(members[DEPTH])),
        "mask": np.load(io.BytesIO(members[MASK])),
        "cameras": json.loads(members[CAMERAS]),
    }


def find_sample(path: Path, key: str | None):
    """(key, members) of sample `key` (the first when None) in a shard or shard directory."""
    path = Path(path)
    shards = sorted(path.glob("*.tar")) if path.is_dir() else [path]
    for shard in shards:
        for k, members in read_samples(shard):
            if key is None or k == key:
                return k, members
    from dataengine.errors import BadInputError

    raise BadInputError(
        f"{path}: sample {key!r} not found; `python -m dataengine inspect {path}` lists the keys of each shard", path
    )


def describe(path: Path, key: str | None = None) -> str:
    """Text report: per shard sample counts; keys, shapes, dtypes, coverage of one sample (the first
    unless `key`)."""
    path = Path(path)
    shards = sorted(path.glob("*.tar")) if path.is_dir() else [path]
    if not shards:
        raise FileNotFoundError(f"{path}: no .tar shards")
    lines = []
    manifest = path / "manifest.json" if path.is_dir() else None
    if manifest is not None and manifest.is_file():
        m = json.loads(manifest.read_text())
        lines.append(
            f"{path}: format {m['format']}, engine {m['engine']['version']} "
            f"({m['engine']['git_sha'][:12]}), scenes {', '.join(m['scenes'])}"
        )
        for split, info in m["splits"].items():
            lines.append(f"  {split}: {info['samples']} samples in {len(info['shards'])} shards")
        if m["skipped"]:
            lines.append(f"  skipped inputs: {len(m['skipped'])}")
    for shard in shards:
        keys = [record["__key__"] for record in index_tar(shard)]  # headers only
        lines.append(f"{shard.name}: {len(keys)} samples ({keys[0] if keys else '-'} … {keys[-1] if keys else '-'})")
    key, members = find_sample(path, key)
    sample = decode_sample(members)
    cams = sample["cameras"]
    lines.append(
        f"sample {key}: scene {cams['scene']}, split {cams['split']}, depth "
        f"{cams['depth_source']}, {len(cams['frames'])} frames"
    )
    for name, arr in (("rgb", sample["rgb"]), ("depth", sample["depth"]), ("mask", sample["mask"])):
        lines.append(f"  {name}: shape {tuple(arr.shape)} dtype {arr.dtype}")
    unit = depth_unit(cams)
    for f, d in zip(cams["frames"], sample["depth"], strict=False):
        valid = d[d > 0]
        rng = f"{valid.min():.3f}–{valid.max():.3f} {unit}" if valid.size else "none"
        lines.append(
            f"  {f['name']}: coverage {f['coverage']:.3f}, depth {rng}, fx {f['K'][0][0]:.2f} cx {f['K'][0][2]:.2f}"
        )
    return "\n".join(lines)


def depth_unit(cams: dict) -> str:
    """The depth unit to print: "m" for metric shards (ETH3D, COLMAP with --metric-scale), else the
    shard's own words (e.g. "arbitrary (COLMAP)") — never metres for a model in its own units."""
    units = str(cams.get("units", "metres"))
    return "m" if units.startswith("metres") else units


def contact_sheet(path: Path, png: Path, key: str | None = None) -> Path:
    """One PNG per sample, laid out like the trainer's evaluation panels: a row per frame (frame
    name and coverage on the left), columns RGB | GT depth [m] (turbo, light grey = no GT, one
    colour bar in metres, 2-98 % range) | supervision mask (white = supervised), sample key, scene,
    split and depth source in the title."""
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only; never needs a display
    import matplotlib.pyplot as plt

    key, members = find_sample(path, key)
    sample = decode_sample(members)
    rgb, depth, mask = sample["rgb"], sample["depth"].astype(np.float32), sample["mask"]
    cams = sample["cameras"]
    valid = depth[depth > 0]
    lo, hi = (float(np.percentile(valid, 2)), float(np.percentile(valid, 98))) if valid.size else (0.0, 1.0)
    frames, height, width = depth.shape
    cell = 2.0
    fig, axes = plt.subplots(
        frames, 3, squeeze=False, layout="constrained", figsize=(3 * cell, cell * height / width * frames + 1.2)
    )
    turbo = plt.get_cmap("turbo").with_extremes(bad="0.85")
    shown = None
    for i in range(frames):
        info = cams["frames"][i] if i < len(cams.get("frames", [])) else {}
        panels = [
            (rgb[i], {}),
            (np.where(depth[i] > 0, depth[i], np.nan), dict(cmap=turbo, vmin=lo, vmax=hi)),
            (mask[i], dict(cmap="gray", vmin=0, vmax=1)),
        ]
        for col, (image, style) in enumerate(panels):
            ax = axes[i, col]
            ax.set_xticks([])
            ax.set_yticks([])
            drawn = ax.imshow(image, interpolation="nearest", **style)
            if col == 1:
                shown = drawn
        axes[i, 0].set_ylabel(f"{info.get('name', f'f{i}')}\ncoverage {info.get('coverage', 0.0):.3f}", fontsize=7)
    unit = depth_unit(cams)
    for col, title in enumerate(("RGB", f"GT depth [{unit}]", "supervised (white)")):
        axes[0, col].set_title(title, fontsize=8)
    bar = fig.colorbar(shown, ax=axes[:, 1].tolist(), orientation="horizontal", fraction=0.05, pad=0.02)
    bar.ax.tick_params(labelsize=6)
    bar.set_label(f"depth [{unit}] (grey: no GT)", fontsize=7)
    fig.suptitle(
        f"{cams.get('scene', '?')} · {key} · {cams.get('split', '?')} · depth {cams.get('depth_source', '?')}",
        fontsize=9,
    )
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(png, dpi=80)
    finally:
        plt.close(fig)
    return png
