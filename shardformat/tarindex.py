"""Samples of a shard from its tar headers: webdataset's grouping, payloads left on disk.

Only the 512-byte headers are read; a sample record maps each member suffix to where its payload
lies, so a reader fetches exactly the bytes it needs (`members.SampleReader`).
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardformat.names import ShardError, split_member_name

# webdataset skips these (`tar_file_iterator`): top-level `__name__` files and `__name__/` trees
_META_MEMBER = re.compile(r"__[^/]*__($|/)")


@dataclass(frozen=True)
class TarRange:
    """Where a member's payload lies in its shard (bytes)."""

    offset: int
    size: int


def _is_meta(name: str) -> bool:
    return ("/" not in name and name.startswith("__") and name.endswith("__")) or bool(_META_MEMBER.match(name))


def index_tar(path: str | Path, strict: bool = True) -> Iterator[dict[str, Any]]:
    """Sample records {"__key__", "__url__", suffix: TarRange} of one tar, in file order.

    Grouping is webdataset's (`WebDataset(url)`): regular files only, `__*__` meta files skipped, key =
    the name up to the first dot of its basename, suffix = the rest, lower-cased; a new sample starts
    where the key changes; a suffix twice in one sample is an error. `strict` (our shards) also refuses
    what webdataset passes over silently: a member without a key, and a key that comes back later.
    A member cut off by the end of the file, or a damaged header, is an error either way.
    """
    path = str(path)
    current: dict[str, Any] | None = None
    seen: set[str] = set()
    try:
        with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            file_size = os.fstat(f.fileno()).st_size
            for member in tar:
                name = member.name
                if not member.isreg() or _is_meta(name):
                    continue
                key_suffix = split_member_name(name)
                if key_suffix is None:
                    if strict:
                        raise ShardError(f"{path}: member {name!r} has no sample key (members are <key>.<suffix>)")
                    continue
                if member.offset_data + member.size > file_size:
                    raise ShardError(f"{path}: member {name} is truncated (the tar ends at byte {file_size})")
                key, suffix = key_suffix[0], key_suffix[1].lower()
                if current is None or key != current["__key__"]:
                    if current is not None:
                        yield current
                    if strict and key in seen:
                        raise ShardError(f"{path}: sample {key} appears twice (a sample's members are adjacent)")
                    seen.add(key)
                    current = {"__key__": key, "__url__": path}
                if suffix in current:
                    raise ShardError(f"{path}: sample {key}: member {name} appears twice")
                current[suffix] = TarRange(member.offset_data, member.size)
                tar.members.clear()  # tarfile keeps every header otherwise; iteration does not need them
            # tarfile stops quietly at a damaged header; a sound tar has only zero blocks after the last member
            f.seek(tar.offset)
            if f.read(tarfile.BLOCKSIZE).strip(b"\0"):
                raise ShardError(f"{path}: unreadable tar header at byte {tar.offset}")
    except tarfile.TarError as exc:
        raise ShardError(f"{path}: not a readable tar: {exc}") from None
    if current is not None:
        yield current


def record_suffixes(record: dict[str, Any]) -> list[str]:
    """The member suffixes of a sample record, in file order."""
    return [name for name in record if not name.startswith("__")]


def suffixes_by_key(path: str | Path) -> dict[str, list[str]]:
    """Sample key → member suffixes in file order (strict index)."""
    return {record["__key__"]: record_suffixes(record) for record in index_tar(path)}


def count_samples(path: str | Path) -> int:
    """Samples in a tar (headers only; no payload is read)."""
    return sum(1 for _ in index_tar(path))
