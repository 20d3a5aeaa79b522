"""Byte-reproducible WebDataset shards: plain POSIX tars with fixed metadata, atomic writes, hashes.

Every member has mtime 0, uid/gid 0, empty owner names and mode 0444; members are written in a
fixed order; the npy/json encoders are deterministic. Same inputs → identical bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from shardformat import (
    CAMERAS,
    DEPTH,
    FORMAT,
    KEY_RE,
    MASK,
    depth_range_problem,
    frame_coverages,
    frame_member,
    sample_suffixes,
    suffixes_by_key,
)

TMP_RE = re.compile(r"^\.(.+)\.tmp(\d+)$")  # `atomic_path` names: .NAME.tmpPID


def sample_key(scene: str, index: int) -> str:
    key = f"{scene}_{index:05d}"
    if not KEY_RE.match(key):
        raise ValueError(
            f"scene name {scene!r} gives an invalid sample key {key!r} (letters, digits, '_' and '-' only; no dots)"
        )
    return key


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=True, allow_nan=False) + "\n").encode()


def sample_members(
    key: str, jpegs: Sequence[bytes], depth: np.ndarray, mask: np.ndarray, cameras: dict
) -> list[tuple[str, bytes]]:
    """Members of one sample in the documented order."""
    members = [(f"{key}.{frame_member(i)}", data) for i, data in enumerate(jpegs)]
    members.append((f"{key}.{DEPTH}", npy_bytes(depth)))
    members.append((f"{key}.{MASK}", npy_bytes(mask)))
    members.append((f"{key}.{CAMERAS}", json_bytes(cameras)))
    return members


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def atomic_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _named(exc: OSError, path: Path) -> OSError:
    """The same OSError, naming the file (a failed write() — ENOSPC, EIO — names none)."""
    if exc.filename is None:
        return type(exc)(exc.errno, exc.strerror or str(exc), str(path))
    return exc


def write_tar(path: Path, members: Iterable[tuple[str, bytes]]) -> None:
    """Write a reproducible tar through a temporary file renamed into place."""
    path = Path(path)
    tmp = atomic_path(path)
    try:
        with open(tmp, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for name, data in members:
                    tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise _named(exc, path) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = atomic_path(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise _named(exc, path) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_dataset(directory: Path, notes: list[str] | None = None) -> list[str]:
    """Recompute hashes, sizes and sample counts against manifest.json; return the problems.

    Also reads every sample's cameras.json: frames without a supervised pixel go to `notes` (when
    given), and a split (or dataset) without any supervised pixel, stray temporary files of an
    interrupted build and shards the manifest does not list are problems."""
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        return [f"{manifest_path}: missing"]
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        return [f"{manifest_path}: not valid JSON ({exc})"]
    problems: list[str] = []
    if manifest.get("format") != FORMAT:
        problems.append(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    frames = int(manifest.get("options", {}).get("frames", 8))
    variable_frames = "sampling" in manifest.get("options", {})
    listed = set()
    supervised: dict[str, bool] = {}
    frames_seen = 0
    for split, info in manifest.get("splits", {}).items():
        total = 0
        supervised[split] = False
        for shard in info.get("shards", []):
            path = directory / shard["name"]
            listed.add(shard["name"])
            if not path.is_file():
                problems.append(f"{path}: listed in the manifest but missing")
                continue
            if path.stat().st_size != shard["bytes"]:
                problems.append(f"{path}: {path.stat().st_size} bytes, manifest says {shard['bytes']}")
            digest = sha256_file(path)
            if digest != shard["sha256"]:
                problems.append(f"{path}: sha256 {digest} != manifest {shard['sha256']}")
            try:
                samples = suffixes_by_key(path)  # from the tar headers only (shardformat.index_tar)
                coverage = tar_coverage(path)
            except (tarfile.TarError, ValueError) as exc:
                problems.append(f"{path}: unreadable tar ({exc})")
                continue
            for key, frame_name, cov in coverage:
                frames_seen += 1
                if cov > 0:
                    supervised[split] = True
                elif notes is not None:
                    notes.append(f"{path}: sample {key} frame {frame_name} has no supervised pixel")
            try:
                for key, problem in tar_depth_problems(path):
                    problems.append(f"{path}: sample {key} depth.npy: {problem}; rebuild the shards")
            except (tarfile.TarError, ValueError, OSError) as exc:
                problems.append(f"{path}: unreadable depth.npy ({exc})")
            if len(samples) != shard["samples"]:
                problems.append(f"{path}: {len(samples)} samples, manifest says {shard['samples']}")
            for key, suffixes in samples.items():
                # Evaluation samples (--sampling) hold min(frames, scene frames) frames.
                n = sum(s.endswith(".jpg") for s in suffixes) if variable_frames else frames
                if suffixes != sample_suffixes(n) or n > frames:
                    problems.append(f"{path}: sample {key} has members {suffixes}")
            total += len(samples)
        if total != info.get("samples"):
            problems.append(
                f"{manifest_path}: split {split} has {total} samples in its shards, manifest says {info.get('samples')}"
            )
        if total and not supervised[split]:
            problems.append(f"{manifest_path}: split {split} has no supervised pixel in any frame")
    if not frames_seen:
        problems.append(f"{manifest_path}: the dataset holds no sample")
    if not variable_frames and manifest.get("splits", {}).get("train", {}).get("samples", 0) == 0:
        problems.append(f"{manifest_path}: the train split is empty")  # (evaluation samples have only `test`)
    for path in sorted(directory.glob("*.tar")):
        if path.name not in listed:
            problems.append(f"{path}: shard not listed in the manifest")
    for path in sorted(directory.glob(".*.tmp*")):
        if TMP_RE.match(path.name):
            problems.append(
                f"{path}: stray temporary file of an interrupted build; rerun the build (it removes it) or delete it"
            )
    return problems


def tar_depth_problems(path: Path) -> list[tuple[str, str]]:
    """(sample key, problem) for every sample whose depth.npy breaks the format's depth range rule
    (shardformat.depth_range, the rule the trainer's decoder applies)."""
    out = []
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if member.name.endswith(".depth.npy"):
                depth = np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False)
                problem = depth_range_problem(depth)
                if problem:
                    out.append((member.name.partition(".")[0], problem))
    return out


def tar_coverage(path: Path) -> list[tuple[str, str, float]]:
    """(sample key, frame name, coverage) of every frame, from the samples' cameras.json."""
    out = []
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if member.name.endswith(f".{CAMERAS}"):
                cams = json.loads(tar.extractfile(member).read())
                key = member.name.partition(".")[0]
                out += [(key, name, coverage) for name, coverage in frame_coverages(cams)]
    return out
