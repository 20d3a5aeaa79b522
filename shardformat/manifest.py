"""manifest.json as `dataengine build` writes it: {"format", ..., "splits": {split: {"samples",
"frames_per_sample", "shards": [{"name", "sha256", "bytes", "samples"}, ...]}}, ...}."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardformat.names import FORMAT, ShardError


@dataclass(frozen=True)
class ManifestShard:
    name: str
    samples: int
    bytes: int
    sha256: str


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The parsed manifest; invalid JSON names the line, another format than FORMAT is refused."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ShardError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except OSError as exc:
        raise ShardError(f"{path}: cannot read the manifest: {exc.strerror}") from None
    if not isinstance(manifest, dict):
        raise ShardError(f"{path}: a manifest is a JSON object, found {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise ShardError(f"{path}: format {manifest.get('format')!r}, this reader reads {FORMAT!r}")
    return manifest


def manifest_shards(manifest: dict[str, Any], path: str | Path, split: str) -> list[ManifestShard]:
    """The shards `splits.<split>.shards` lists (none if the split is absent); `path` names the file in errors."""
    splits = manifest.get("splits", {})
    if not isinstance(splits, dict) or not isinstance(splits.get(split, {}), dict):
        raise ShardError(f"{path}: 'splits' is not an object of split objects (rebuild with `dataengine build`)")
    entries = splits.get(split, {}).get("shards", [])
    shards = []
    for i, entry in enumerate(entries):
        where = f"{path}: splits.{split}.shards[{i}]"
        try:
            shard = ManifestShard(entry["name"], entry["samples"], entry["bytes"], entry["sha256"])
        except (KeyError, TypeError) as exc:
            raise ShardError(f"{where}: missing field {exc} (rebuild the shards with `dataengine build`)") from None
        if not isinstance(shard.name, str) or not isinstance(shard.samples, int) or shard.samples < 0:
            raise ShardError(
                f"{where}: name {shard.name!r} / samples {shard.samples!r} are not a file name and a sample count"
            )
        shards.append(shard)
    return shards
