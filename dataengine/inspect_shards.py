"""`inspect`: what is in a shard directory or one shard, and a contact sheet of a sample."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from shardformat import SampleReader, index_tar, record_suffixes


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

    frames = sorted((k for k in members if k.startswith("f") and k.endswith(".jpg")),
                    key=lambda k: int(k[1:-4]))
    return {
        "rgb": np.stack([simplejpeg.decode_jpeg(members[k], colorspace="RGB") for k in frames]),
        "depth": np.load(io.BytesIO(members["depth.npy"])),
        "mask": np.load(io.BytesIO(members["mask.npy"])),
        "cameras": json.loads(members["cameras.json"]),
    }


def describe(path: Path) -> str:
    """Text report: per shard sample counts; keys, shapes, dtypes, coverage of the first sample."""
    path = Path(path)
    shards = sorted(path.glob("*.tar")) if path.is_dir() else [path]
    if not shards:
        raise FileNotFoundError(f"{path}: no .tar shards")
    lines = []
    manifest = path / "manifest.json" if path.is_dir() else None
    if manifest is not None and manifest.is_file():
        m = json.loads(manifest.read_text())
        lines.append(f"{path}: format {m['format']}, engine {m['engine']['version']} "
                     f"({m['engine']['git_sha'][:12]}), scenes {', '.join(m['scenes'])}")
        for split, info in m["splits"].items():
            lines.append(f"  {split}: {info['samples']} samples in {len(info['shards'])} shards")
        if m["skipped"]:
            lines.append(f"  skipped inputs: {len(m['skipped'])}")
    for shard in shards:
        keys = [record["__key__"] for record in index_tar(shard)]  # headers only
        lines.append(f"{shard.name}: {len(keys)} samples ({keys[0] if keys else '-'} … "
                     f"{keys[-1] if keys else '-'})")
    key, members = next(read_samples(shards[0], limit=1))
    sample = decode_sample(members)
    cams = sample["cameras"]
    lines.append(f"sample {key}: scene {cams['scene']}, split {cams['split']}, depth "
                 f"{cams['depth_source']}, {len(cams['frames'])} frames")
    for name, arr in (("rgb", sample["rgb"]), ("depth", sample["depth"]), ("mask", sample["mask"])):
        lines.append(f"  {name}: shape {tuple(arr.shape)} dtype {arr.dtype}")
    for f, d in zip(cams["frames"], sample["depth"]):
        valid = d[d > 0]
        rng = f"{valid.min():.3f}–{valid.max():.3f} m" if valid.size else "none"
        lines.append(f"  {f['name']}: coverage {f['coverage']:.3f}, depth {rng}, "
                     f"fx {f['K'][0][0]:.2f} cx {f['K'][0][2]:.2f}")
    return "\n".join(lines)


def contact_sheet(path: Path, png: Path, key: str | None = None) -> Path:
    """RGB | depth (turbo colour map, black = none) | mask, one row per frame of one sample."""
    from matplotlib import colormaps
    from PIL import Image

    path = Path(path)
    shards = sorted(path.glob("*.tar")) if path.is_dir() else [path]
    found = None
    for shard in shards:
        for k, members in read_samples(shard):
            if key is None or k == key:
                found = (k, members)
                break
        if found:
            break
    if found is None:
        raise KeyError(f"{path}: sample {key!r} not found")
    sample = decode_sample(found[1])
    rgb, depth, mask = sample["rgb"], sample["depth"].astype(np.float32), sample["mask"]
    valid = depth[depth > 0]
    lo, hi = (np.percentile(valid, 2), np.percentile(valid, 98)) if valid.size else (0.0, 1.0)
    lut = (colormaps["turbo"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    rows = []
    for i in range(len(rgb)):
        norm = np.clip((depth[i] - lo) / max(hi - lo, 1e-6), 0, 1)
        dcol = lut[(norm * 255).astype(np.uint8)]
        dcol[depth[i] <= 0] = 0
        mcol = np.repeat((mask[i] * 255)[..., None], 3, axis=2).astype(np.uint8)
        rows.append(np.concatenate([rgb[i], dcol, mcol], axis=1))
    sheet = np.concatenate(rows, axis=0)
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(png)
    return png
