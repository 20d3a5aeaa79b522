"""Names the format fixes: format tag, members of a sample, sample keys, shard files."""

from __future__ import annotations

import re

FORMAT = "eth3d-vggt-shards/1"

DEPTH, MASK, CAMERAS = "depth.npy", "mask.npy", "cameras.json"

# Keys the writer makes: <scene>_<5-digit index>; no dots, so the key/suffix split is unambiguous.
KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+_\d{5}$")
SHARD_RE = re.compile(r"^(train|val|test)-(\d{5})\.tar$")  # test: evaluation samples (build --sampling)

# webdataset's rule (`base_plus_ext`): the key runs up to the first dot of the basename, the suffix is
# the rest; a name this does not match (no dot, or a basename that is all dots before one) has no key.
_KEY_SUFFIX = re.compile(r"((?:.*/)?[^.]+)\.([^/]*)")


class ShardError(ValueError):
    """A shard or sample does not follow the documented format; the message names the file."""


def frame_member(index: int) -> str:
    return f"f{index}.jpg"


def sample_suffixes(frames: int) -> list[str]:
    """The members of a sample of `frames` frames, in the documented (and written) order."""
    return [frame_member(i) for i in range(frames)] + [DEPTH, MASK, CAMERAS]


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.tar"


def split_member_name(name: str) -> tuple[str, str] | None:
    """(sample key, suffix) of a tar member name, or None where webdataset finds no key."""
    match = _KEY_SUFFIX.fullmatch(name)
    return (match.group(1), match.group(2)) if match else None
