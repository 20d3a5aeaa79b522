"""The shards of a split and their sample counts (manifest.json, else the tar headers), and the
webdataset stage that turns shard paths into sample records (`shardformat.index_tar`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from shardformat import ShardError, count_samples, index_tar, manifest_shards, read_manifest


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


def index_tar_samples(src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """wds stage: {"url": tar path} → sample records {"__key__", "__url__", member: TarRange}.

    Same grouping as `wds.tarfile_to_samples` (`shardformat.index_tar`), but only the 512-byte
    headers are read: payloads stay on disk until `decode_batch` reads them straight into the batch.
    """
    for item in src:
        yield from index_tar(item["url"])
