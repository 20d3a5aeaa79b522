"""The shards of a split and their sample counts (manifest.json, else the tar headers), and the
webdataset stage that turns shard paths into sample records (`shardformat.index_tar`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardformat import ShardError, count_samples, index_tar, manifest_shards, read_manifest
from shardformat.views import is_metric_units  # the format's one rule for what counts as metres

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardInfo:
    path: str
    samples: int


def list_shards(shards_dir: str | Path, split: str) -> list[ShardInfo]:
    """Shards of one split with their sample counts (from manifest.json, else from the tar headers)."""
    root = Path(shards_dir)
    if not root.is_dir():
        raise ShardError(f"{root}: shard directory does not exist")
    paths = sorted(root.glob(f"{split}-*.tar"))
    if not paths:
        raise ShardError(f"{root}: no '{split}-*.tar' shards")
    counts = _manifest_counts(root / "manifest.json", split)
    infos = []
    for path in paths:
        n = counts.get(path.name)
        infos.append(ShardInfo(str(path), n if n is not None else count_samples(path)))
    return infos


def _manifest_counts(path: Path, split: str) -> dict[str, int]:
    """{shard file name: samples} of `split` in manifest.json ({} without a manifest)."""
    if not path.exists():
        return {}
    return {shard.name: shard.samples for shard in manifest_shards(read_manifest(path), path, split)}


METRIC_UNITS = "metres"


def dataset_units(shards_dir: str | Path) -> str:
    """The depth / position units of a dataset, from manifest.json's per-scene `units` (COLMAP builds
    record them, e.g. 'arbitrary (COLMAP)' or 'metres (COLMAP x 0.5)'); ETH3D builds and datasets without
    a manifest are in metres. Several different units are joined with ' + '."""
    path = Path(shards_dir) / "manifest.json"
    if not path.is_file():
        return METRIC_UNITS
    try:
        scenes = json.loads(path.read_text()).get("per_scene") or {}
    except (OSError, ValueError, AttributeError):
        return METRIC_UNITS
    units = sorted({str(s.get("units") or METRIC_UNITS) for s in scenes.values() if isinstance(s, dict)})
    return " + ".join(units) if units else METRIC_UNITS


def is_metric(units: str) -> bool:
    """True when every scene of `units` (dataset_units) is in metres."""
    return all(is_metric_units(part) for part in units.split(" + "))


def unit_symbol(units: str) -> str:
    """The short label of axes and colour bars: 'm' for metres, else 'units' (e.g. COLMAP's arbitrary scale)."""
    return "m" if is_metric(units) else "units"


def data_identity(shards_dir: str | Path) -> dict[str, Any]:
    """What a run trained on: the dataset directory and the sha256 of its manifest (None without one).
    Recorded in every checkpoint; `--resume` refuses another dataset (its data position would be wrong)."""
    import hashlib

    root = Path(shards_dir).resolve()
    manifest = root / "manifest.json"
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None
    return {"shards": str(root), "manifest_sha256": digest}


def check_dataset(shards_dir: str | Path, split: str, verify_sha256: bool = False) -> int:
    """Cheap checks of a split before any model is built; returns its sample count.

    Against the engine's manifest.json: every listed shard exists with its recorded byte size (and
    sha256 with `verify_sha256`), no unlisted shard, samples > 0, and some supervised depth pixels
    (per-scene coverage). Without a manifest only the tar headers are counted.
    """
    import hashlib

    root = Path(shards_dir)
    infos = list_shards(root, split)
    total = sum(i.samples for i in infos)
    path = root / "manifest.json"
    if not path.exists():
        log.warning("%s: no manifest.json; shard sizes and hashes are not checked", root)
    else:
        manifest = json.loads(path.read_text())
        record = (manifest.get("splits") or {}).get(split)
        if isinstance(record, dict) and isinstance(record.get("shards"), list):
            listed = {}
            for shard in record["shards"]:
                file = root / str(shard.get("name"))
                listed[file.name] = shard
                if not file.is_file():
                    raise ShardError(f"{file}: listed in {path} but missing; rebuild or copy the dataset again")
                size = file.stat().st_size
                if isinstance(shard.get("bytes"), int) and size != shard["bytes"]:
                    raise ShardError(
                        f"{file}: {size} bytes, {path} records {shard['bytes']}; the shard is truncated "
                        "or was rewritten: rebuild or copy the dataset again"
                    )
                if verify_sha256 and shard.get("sha256"):
                    h = hashlib.sha256()
                    with file.open("rb") as f:
                        for block in iter(lambda: f.read(1 << 20), b""):
                            h.update(block)
                    if h.hexdigest() != shard["sha256"]:
                        raise ShardError(
                            f"{file}: sha256 differs from {path}; the shard was modified: rebuild or "
                            "copy the dataset again"
                        )
            for info in infos:
                if Path(info.path).name not in listed:
                    raise ShardError(f"{info.path}: not listed in {path} (a stray or foreign shard); remove it")
        coverage = [s.get("mean_coverage") for s in (manifest.get("per_scene") or {}).values() if isinstance(s, dict)]
        if coverage and all(isinstance(c, (int, float)) and c == 0 for c in coverage):
            raise ShardError(
                f"{path}: every scene has coverage 0: the dataset has no supervised depth pixel "
                "(missing GT depth or points3D.txt?); rebuild it with depth"
            )
    if total == 0:
        raise ShardError(
            f"{root}: the '{split}' split holds 0 samples; rebuild the shards with more frames "
            "(or fewer --frames per window)"
        )
    return total


def index_tar_samples(src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """wds stage: {"url": tar path} → sample records {"__key__", "__url__", member: TarRange}.

    Same grouping as `wds.tarfile_to_samples` (`shardformat.index_tar`), but only the 512-byte
    headers are read: payloads stay on disk until `decode_batch` reads them straight into the batch.
    """
    for item in src:
        yield from index_tar(item["url"])
