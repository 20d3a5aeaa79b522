"""Shards → batches: a deterministic, resumable WebDataset stream split per rank and worker.

Per epoch the full shard list is shuffled with a seed shared by all ranks (so ranks see different
shards every epoch), then split by `wds.split_by_node` (rank r gets shards r::world) and by worker
role (role j gets j::workers of those, as `wds.split_by_worker` would for worker j). Each worker reads its shards, shuffles
samples in a buffer seeded by (seed, epoch, rank, worker), and yields whole batches.

Every worker of every rank yields exactly the same number of batches in an epoch (the minimum over
all of them, computed from the per-shard sample counts), so DDP ranks take equal step counts and the
DataLoader's round-robin over workers is a fixed interleaving. That makes the data position a single
number: (epoch, batches consumed). Resuming skips the consumed samples before reading their payloads.

Reading is built for throughput (benchmarks/loader.py): a worker indexes its tars from the 512-byte
headers only, shuffles these small records, and reads each payload once, with pread, straight into
the batch: JPEGs decode (simplejpeg) into a preallocated uint8 array, float32 depth lands in place,
masks are combined per frame. The frames of a batch are decoded by a small thread pool (simplejpeg
and pread release the GIL). Inside a DataLoader worker the batch lives in one shared-memory storage,
so handing it to the main process copies nothing.

Images stay uint8 (HWC in memory; the [B,S,3,H,W] tensor is a view) until `to_device`, which moves
the batch and converts there.
"""

from __future__ import annotations

import concurrent.futures
import functools
import io
import itertools
import json
import logging
import math
import os
import random
import re
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import webdataset as wds
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.data import DataLoader, IterableDataset

log = logging.getLogger(__name__)

SHARD_FORMAT = "eth3d-vggt-shards/1"


class ShardError(ValueError):
    """A shard or sample does not follow the documented format; the message names the file."""


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
    counts = _manifest_counts(root / "manifest.json")
    infos = []
    for path in paths:
        n = counts.get(path.name)
        infos.append(ShardInfo(str(path), n if n is not None else count_tar_samples(path)))
    return infos


def _manifest_counts(path: Path) -> dict[str, int]:
    """{shard file name: samples} from any list of shard records holding a name and a sample count."""
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ShardError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    fmt = manifest.get("format") or manifest.get("format_version")
    if fmt is not None and fmt != SHARD_FORMAT:
        raise ShardError(f"{path}: format {fmt!r}, this trainer reads {SHARD_FORMAT!r}")
    counts: dict[str, int] = {}

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            name = node.get("path") or node.get("name") or node.get("file") or node.get("url")
            samples = node.get("samples", node.get("num_samples", node.get("nsamples")))
            if isinstance(name, str) and name.endswith(".tar") and isinstance(samples, int):
                counts[Path(name).name] = samples
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(manifest)
    return counts


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
                    raise ShardError(f"{file}: {size} bytes, {path} records {shard['bytes']}; the shard is truncated "
                                     "or was rewritten: rebuild or copy the dataset again")
                if verify_sha256 and shard.get("sha256"):
                    h = hashlib.sha256()
                    with file.open("rb") as f:
                        for block in iter(lambda: f.read(1 << 20), b""):
                            h.update(block)
                    if h.hexdigest() != shard["sha256"]:
                        raise ShardError(f"{file}: sha256 differs from {path}; the shard was modified: rebuild or "
                                         "copy the dataset again")
            for info in infos:
                if Path(info.path).name not in listed:
                    raise ShardError(f"{info.path}: not listed in {path} (a stray or foreign shard); remove it")
        coverage = [s.get("mean_coverage") for s in (manifest.get("per_scene") or {}).values() if isinstance(s, dict)]
        if coverage and all(isinstance(c, (int, float)) and c == 0 for c in coverage):
            raise ShardError(f"{path}: every scene has coverage 0: the dataset has no supervised depth pixel "
                             "(missing GT depth or points3D.txt?); rebuild it with depth")
    if total == 0:
        raise ShardError(f"{root}: the '{split}' split holds 0 samples; rebuild the shards with more frames "
                         "(or fewer --frames per window)")
    return total


def count_tar_samples(path: Path) -> int:
    """Distinct sample keys in a tar (headers only; no payload is decoded)."""
    try:
        with tarfile.open(path, "r:") as tar:
            return len({Path(m.name).name.split(".", 1)[0] for m in tar if m.isfile()})
    except tarfile.TarError as exc:
        raise ShardError(f"{path}: not a readable tar: {exc}") from None


def epoch_shard_order(shards: list[ShardInfo], seed: int, epoch: int, shuffle: bool) -> list[ShardInfo]:
    order = list(shards)
    if shuffle:
        random.Random(f"shards-{seed}-{epoch}").shuffle(order)
    return order


def split_for(order: list[ShardInfo], rank: int, world: int, worker: int, workers: int) -> list[ShardInfo]:
    """The shards of one (rank, worker); the same slicing `wds.split_by_node`/`split_by_worker` do."""
    return order[rank::world][worker::workers]


def batches_per_worker(
    shards: list[ShardInfo], world: int, workers: int, batch_size: int, seed: int, epoch: int, shuffle: bool
) -> int:
    order = epoch_shard_order(shards, seed, epoch, shuffle)
    if len(order) < world * workers:
        raise ShardError(
            f"{len(order)} shards for {world} rank(s) x {workers} worker(s): every worker needs at least one "
            f"shard (rebuild with smaller shards or lower data.num_workers)"
        )
    per_worker = [
        sum(s.samples for s in split_for(order, r, world, w, workers)) // batch_size
        for r in range(world)
        for w in range(workers)
    ]
    return min(per_worker)


def index_tar_samples(src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """wds stage: {"url": tar path} → sample records {"__key__", "__url__", member: TarRange}.

    Same grouping as `wds.tarfile_to_samples` (key = name up to the first dot of the basename,
    lower-cased suffix, `__*__` meta files skipped), but only the 512-byte headers are read: payloads
    stay on disk until `decode_batch` reads them straight into the batch arrays.
    """
    for item in src:
        yield from _index_tar(item["url"])


def _index_tar(path: str) -> Iterator[dict[str, Any]]:
    current: dict[str, Any] | None = None
    try:
        with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            file_size = os.fstat(f.fileno()).st_size
            for member in tar:
                if not member.isreg() or _META_MEMBER.match(member.name):
                    continue
                name = member.name
                dot = name.find(".", name.rfind("/") + 1)
                if dot < 0:
                    raise ShardError(f"{path}: member {name!r} has no extension (members are <key>.<name>)")
                if member.offset_data + member.size > file_size:
                    raise ShardError(f"{path}: member {name} is truncated (the tar ends at byte {file_size})")
                key, suffix = name[:dot], name[dot + 1:].lower()
                if current is None or key != current["__key__"]:
                    if current is not None:
                        yield current
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


_META_MEMBER = re.compile(r"__[^/]*__($|/)")


@dataclass(frozen=True)
class TarRange:
    """Where a member's payload lies in its shard (bytes)."""

    offset: int
    size: int


class _SampleReader:
    """Payload access for one sample: tar ranges are read with pread (thread-safe, releases the GIL);
    bytes already in memory (samples of `wds.tarfile_to_samples`) are sliced."""

    def __init__(self, sample: dict[str, Any]) -> None:
        self.sample, self.key = sample, sample.get("__key__", "?")
        self.where = f"{sample.get('__url__', '?')}: sample {self.key}"
        self._fd: int | None = None

    def require(self, member: str) -> None:
        if member not in self.sample:
            raise ShardError(f"{self.where}: missing member {self.key}.{member}")

    def size(self, member: str) -> int:
        value = self.sample[member]
        return value.size if isinstance(value, TarRange) else len(value)

    def read(self, member: str, start: int = 0, size: int | None = None) -> bytes | memoryview:
        value = self.sample[member]
        size = self.size(member) - start if size is None else size
        if not isinstance(value, TarRange):
            return memoryview(value)[start:start + size]
        data = os.pread(self._file(), size, value.offset + start)
        if len(data) != size:
            raise ShardError(f"{self.where}: {member} is truncated")
        return data

    def read_into(self, member: str, start: int, dest: np.ndarray) -> None:
        """Fill the C-contiguous `dest` with the member's bytes from `start` on (no intermediate copy)."""
        target = memoryview(dest).cast("B")
        value = self.sample[member]
        if not isinstance(value, TarRange):
            target[:] = memoryview(value)[start:start + len(target)]
            return
        done = 0
        while done < len(target):
            n = os.preadv(self._file(), [target[done:]], value.offset + start + done)
            if n <= 0:
                raise ShardError(f"{self.where}: {member} is truncated")
            done += n

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.sample["__url__"], os.O_RDONLY)
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class _NpyLayout:
    """A C-order .npy member: where its data starts, its dtype and shape."""

    member: str
    start: int
    dtype: np.dtype
    shape: tuple[int, ...]


def _npy_layout(reader: _SampleReader, member: str) -> _NpyLayout:
    """Parse the .npy header only (magic, version, header dict); the data is read per frame later."""
    reader.require(member)
    total = reader.size(member)
    prefix = bytes(reader.read(member, 0, min(total, 12)))
    try:
        major = np.lib.format.read_magic(io.BytesIO(prefix))[0]
        if len(prefix) < 12:
            raise ValueError("the file is shorter than an .npy header")
        header_end = 10 + int.from_bytes(prefix[8:10], "little") if major == 1 else \
            12 + int.from_bytes(prefix[8:12], "little")
        stream = io.BytesIO(bytes(reader.read(member, 0, min(total, header_end))))
        np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(stream)
    except ValueError as exc:
        raise ShardError(f"{reader.where}: {member}: {exc}") from None
    if fortran or dtype.hasobject:
        raise ShardError(f"{reader.where}: {member}: {'Fortran-order' if fortran else 'object'} array; "
                         "expected a C-order numeric array")
    start = stream.tell()
    expected = start + int(np.prod(shape)) * dtype.itemsize
    if total != expected:
        raise ShardError(f"{reader.where}: {member}: {total} bytes, its header {shape} {dtype} needs {expected}")
    return _NpyLayout(member, start, dtype, tuple(shape))


@dataclass
class _SamplePlan:
    """One sample, validated before anything large is read."""

    reader: _SampleReader
    frames: int
    height: int
    width: int
    cams: dict[str, Any]
    depth: _NpyLayout
    mask: _NpyLayout


def _plan_sample(reader: _SampleReader, frames: int | None) -> _SamplePlan:
    where, key = reader.where, reader.key
    reader.require("cameras.json")
    try:
        cams = json.loads(bytes(reader.read("cameras.json")))
    except json.JSONDecodeError as exc:
        raise ShardError(f"{where}: cameras.json line {exc.lineno}: {exc.msg}") from None
    if cams.get("format") != SHARD_FORMAT:
        raise ShardError(f"{where}: cameras.json format {cams.get('format')!r}, expected {SHARD_FORMAT!r}")
    frame_meta = cams.get("frames")
    if not isinstance(frame_meta, list) or not frame_meta or not isinstance(cams.get("image_size"), list) \
            or len(cams["image_size"]) != 2:
        raise ShardError(f"{where}: cameras.json has no 'frames' list or no [H, W] 'image_size'")
    n = len(frame_meta) if frames is None else frames
    if n > len(frame_meta):
        raise ShardError(f"{where}: data.frames={n} but the sample has only {len(frame_meta)} frames")
    height, width = cams["image_size"]
    for i in range(n):
        reader.require(f"f{i}.jpg")
        _check_camera(where, i, frame_meta[i])
    depth, mask = _npy_layout(reader, "depth.npy"), _npy_layout(reader, "mask.npy")
    for layout in (depth, mask):
        if len(layout.shape) != 3 or layout.shape[0] < n or layout.shape[1:] != (height, width):
            raise ShardError(f"{where}: depth {depth.shape} / mask {mask.shape}, expected {(n, height, width)}")
    if not (depth.dtype.kind == "f" and depth.dtype.itemsize in (2, 4)) or mask.dtype.kind not in "biu":
        raise ShardError(f"{where}: depth dtype {depth.dtype} / mask dtype {mask.dtype}; the format has float32 "
                         "or float16 depth (any byte order) and integer or bool masks; rebuild the shards with "
                         "`python -m dataengine build`")
    return _SamplePlan(reader, n, height, width, cams, depth, mask)


_FLOAT32 = np.dtype("=f4")
MAX_DEPTH_M = 1e4  # GT z-depth is metres; anything beyond 10 km is a corrupt value, not a scene
ROTATION_TOL = 1e-4  # |R Rᵀ − I| of the stored extrinsics (written in full double precision)


def _check_camera(where: str, i: int, frame: Any) -> None:
    """Frame i's K (3x3, finite, positive focal lengths, last row 0 0 1) and world-to-camera [R|t]
    (3x4, finite, R a rotation); a corrupt camera would silently poison the camera loss."""
    try:
        K = np.asarray(frame["K"], dtype=np.float64)
        Rt = np.asarray(frame["extrinsics"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ShardError(f"{where}: cameras.json frame {i}: unreadable K/extrinsics ({exc})") from None
    if K.shape != (3, 3) or Rt.shape != (3, 4):
        raise ShardError(f"{where}: cameras.json frame {i}: K {K.shape} / extrinsics {Rt.shape}, "
                         "expected (3, 3) / (3, 4)")
    if not (np.isfinite(K).all() and np.isfinite(Rt).all()):
        raise ShardError(f"{where}: cameras.json frame {i}: non-finite K or extrinsics")
    if not (K[0, 0] > 0 and K[1, 1] > 0 and np.array_equal(K[2], [0.0, 0.0, 1.0])):
        raise ShardError(f"{where}: cameras.json frame {i}: K {K.tolist()} is not a pinhole intrinsic matrix")
    R = Rt[:, :3]
    off = float(np.abs(R @ R.T - np.eye(3)).max())
    if off > ROTATION_TOL or np.linalg.det(R) <= 0:
        raise ShardError(f"{where}: cameras.json frame {i}: extrinsics rotation is not orthonormal "
                         f"(|R Rᵀ − I| = {off:.2g}, det {np.linalg.det(R):.4g})")


def _decode_frame(plan: _SamplePlan, images: np.ndarray, depths: np.ndarray, masks: np.ndarray, i: int) -> None:
    """Frame i of one sample into its slots: JPEG → uint8 HWC, depth → float32, mask & (depth > 0)."""
    import simplejpeg

    reader, h, w = plan.reader, plan.height, plan.width
    member = f"f{i}.jpg"
    data = reader.read(member)
    try:
        size = simplejpeg.decode_jpeg_header(data)[:2]
        if size != (h, w):
            raise ShardError(f"{reader.where}: {member} is {size[1]}x{size[0]}, cameras.json says {w}x{h}")
        simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=images[i])
    except ValueError as exc:
        if isinstance(exc, ShardError):
            raise
        raise ShardError(f"{reader.where}: {member}: {exc}") from None
    for layout, dest in ((plan.depth, depths[i]), (plan.mask, masks[i])):
        frame_bytes = h * w * layout.dtype.itemsize
        start = layout.start + i * frame_bytes
        if layout is plan.depth and layout.dtype == _FLOAT32:
            reader.read_into(layout.member, start, dest)  # the common case: straight into the batch
        elif layout is plan.mask and layout.dtype.itemsize == 1:
            raw = dest.view(np.uint8).view(layout.dtype)  # read in place, then turned into 0/1 bools
            reader.read_into(layout.member, start, raw)
            np.greater(raw, 0, out=dest)
        else:
            values = np.frombuffer(reader.read(layout.member, start, frame_bytes), layout.dtype).reshape(h, w)
            if layout is plan.depth:
                np.copyto(dest, values, casting="unsafe")
            else:
                np.greater(values, 0, out=dest)
    _check_depth_mask(reader.where, i, depths[i], masks[i])


def _check_depth_mask(where: str, i: int, depth: np.ndarray, mask: np.ndarray) -> None:
    """Frame i's GT: finite, 0 (no supervision) or a positive depth below MAX_DEPTH_M, and the mask
    exactly where depth > 0 (the documented format). Never silently zeroed: the shard is wrong."""
    bad = ~np.isfinite(depth)
    if bad.any():
        raise ShardError(f"{where}: depth.npy frame {i}: {int(bad.sum())} non-finite values (NaN/inf); "
                         "the shard is corrupt: rebuild it, or check it with `python -m dataengine verify`")
    if depth.min() < 0 or depth.max() > MAX_DEPTH_M:
        count = int(((depth < 0) | (depth > MAX_DEPTH_M)).sum())
        raise ShardError(f"{where}: depth.npy frame {i}: {count} values outside 0..{MAX_DEPTH_M:g} m "
                         f"(min {depth.min():.3g}, max {depth.max():.3g}); the shard is corrupt: rebuild it")
    supervised = depth > 0
    if not np.array_equal(mask, supervised):
        count = int((mask != supervised).sum())
        raise ShardError(f"{where}: mask.npy frame {i}: {count} pixels disagree with depth > 0 (the format's mask "
                         "is 1 exactly where depth > 0); the shard is corrupt: rebuild it")


def _batch_tensors(
    batch: int, frames: int, height: int, width: int, storage: Callable[[int], torch.UntypedStorage]
) -> dict[str, torch.Tensor]:
    """The batch's tensors, carved from one storage of `storage(nbytes)`; in a DataLoader worker that is
    shared memory, so sending the batch to the main process passes a file descriptor instead of copying."""
    layout = [
        ("depths", torch.float32, (batch, frames, height, width)),
        ("extrinsics", torch.float32, (batch, frames, 3, 4)),
        ("intrinsics", torch.float32, (batch, frames, 3, 3)),
        ("images", torch.uint8, (batch, frames, height, width, 3)),
        ("point_masks", torch.bool, (batch, frames, height, width)),
    ]
    offsets, total = [], 0
    for _, dtype, shape in layout:
        offsets.append(total)
        total += -(-math.prod(shape) * dtype.itemsize // 64) * 64  # 64-byte aligned starts
    buffer = storage(total)
    return {
        name: torch.empty(0, dtype=dtype).set_(buffer, offset // dtype.itemsize, shape)
        for (name, dtype, shape), offset in zip(layout, offsets)
    }


def decode_batch(
    samples: list[dict[str, Any]],
    frames: int | None,
    pool: ThreadPoolExecutor | None = None,
    storage: Callable[[int], torch.UntypedStorage] = torch.UntypedStorage,
) -> dict[str, Any]:
    """Sample records (tar ranges from `index_tar_samples`, or wds raw bytes) → a batch (module docstring).

    Every frame is one task (JPEG decode + depth/mask read) run on `pool` when given. `storage(nbytes)`
    provides the batch's memory (`torch.UntypedStorage._new_shared` inside DataLoader workers).
    """
    readers = [_SampleReader(s) for s in samples]
    try:
        plans = [_plan_sample(r, frames) for r in readers]
        shapes = {(p.frames, p.height, p.width) for p in plans}
        if len(shapes) > 1:
            keys = [r.key for r in readers]
            raise ShardError(f"samples {keys} differ in frames/size {sorted(shapes)}: one dataset, one size")
        n, h, w = shapes.pop()
        out = _batch_tensors(len(plans), n, h, w, storage)
        images, depths, masks = out["images"].numpy(), out["depths"].numpy(), out["point_masks"].numpy()
        tasks = [
            functools.partial(_decode_frame, plan, images[b], depths[b], masks[b], i)
            for b, plan in enumerate(plans)
            for i in range(n)
        ]
        if pool is None:
            for task in tasks:
                task()
        else:
            futures = [pool.submit(task) for task in tasks]
            concurrent.futures.wait(futures)  # all done before the files close, even when one failed
            for future in futures:
                future.result()
        for b, plan in enumerate(plans):
            meta = plan.cams["frames"][:n]
            out["extrinsics"][b] = torch.tensor([f["extrinsics"] for f in meta], dtype=torch.float32)
            out["intrinsics"][b] = torch.tensor([f["K"] for f in meta], dtype=torch.float32)
    finally:
        for reader in readers:
            reader.close()
    return {
        "images": out["images"].permute(0, 1, 4, 2, 3),  # [B,S,3,H,W] view of the decoded HWC
        "depths": out["depths"],
        "point_masks": out["point_masks"],
        "extrinsics": out["extrinsics"],
        "intrinsics": out["intrinsics"],
        "keys": [r.key for r in readers],
        "scenes": [p.cams["scene"] for p in plans],
        "names": [[f["name"] for f in p.cams["frames"][:n]] for p in plans],
    }


def decode_sample(sample: dict[str, Any], frames: int | None) -> dict[str, Any]:
    """One sample (tar ranges or wds raw bytes) → numpy arrays (uint8 images S×H×W×3, as decoded)."""
    batch = decode_batch([sample], frames)
    arrays = {name: batch[name][0].numpy() for name in ("depths", "point_masks", "extrinsics", "intrinsics")}
    return {
        "images": batch["images"][0].permute(0, 2, 3, 1).numpy(),
        **arrays,
        "key": batch["keys"][0],
        "scene": batch["scenes"][0],
        "names": batch["names"][0],
    }


def _stack(samples: list[dict[str, Any]], name: str) -> torch.Tensor:
    arrays = [s[name] for s in samples]
    return torch.from_numpy(arrays[0][None] if len(arrays) == 1 else np.stack(arrays))  # no copy for B=1


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch tensors from `decode_sample` dicts; images are a [B,S,3,H,W] view of the decoded [B,S,H,W,3]."""
    shapes = {s["images"].shape for s in samples}
    if len(shapes) > 1:
        keys = [s["key"] for s in samples]
        raise ShardError(f"samples {keys} differ in frames/size {sorted(shapes)}: one dataset, one size")
    return {
        "images": _stack(samples, "images").permute(0, 1, 4, 2, 3),
        "depths": _stack(samples, "depths"),
        "point_masks": _stack(samples, "point_masks"),
        "extrinsics": _stack(samples, "extrinsics"),
        "intrinsics": _stack(samples, "intrinsics"),
        "keys": [s["key"] for s in samples],
        "scenes": [s["scene"] for s in samples],
        "names": [s["names"] for s in samples],
    }


class ShardStream(IterableDataset):
    """One epoch of batches for this rank; call `set_position(epoch, skip_batches)` before iterating."""

    def __init__(
        self,
        shards: list[ShardInfo],
        batch_size: int,
        shuffle: bool,
        seed: int,
        shuffle_buffer: int,
        frames: int | None,
        rank: int,
        world: int,
        workers: int,
        split_across_ranks: bool = True,
        decode_threads: int = 1,
    ) -> None:
        self.shards, self.batch_size, self.shuffle, self.seed = shards, batch_size, shuffle, seed
        self.shuffle_buffer, self.frames = shuffle_buffer, frames
        self.rank, self.world, self.workers = rank, world, max(workers, 1)
        self.split_across_ranks = split_across_ranks
        self.decode_threads = max(decode_threads, 1)
        if not split_across_ranks and (rank, world) != (0, 1):
            raise ValueError("a stream that is not split across ranks reads every shard: use rank=0, world_size=1")
        self.epoch, self.skip_batches = 0, 0
        self.buffer_flags: torch.Tensor | None = None  # set by Loader: reusable worker buffers

    def set_position(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def batches_per_epoch(self) -> int:
        """Batches this rank yields per epoch (the same on every rank)."""
        return self.workers * self._per_worker()

    def _per_worker(self) -> int:
        return batches_per_worker(
            self.shards, self.world, self.workers, self.batch_size, self.seed, self.epoch, self.shuffle
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        if (info.num_workers if info is not None else 1) != self.workers:
            raise RuntimeError("ShardStream built for a different number of DataLoader workers")
        seen = wds.utils.pytorch_worker_info()
        if self.split_across_ranks and seen[:2] != (self.rank, self.world):
            raise RuntimeError(
                f"stream built for rank {self.rank} of {self.world}, but webdataset's split_by_node sees rank "
                f"{seen[0]} of {seen[1]} (RANK/WORLD_SIZE environment?)"
            )
        per_worker = self._per_worker()
        # The loader hands out batches round-robin from worker 0. After k consumed batches the next
        # one is due from role k % W, so worker i plays role (i + k) % W; role j has already made
        # ceil((k - j) / W) of its batches.
        k = self.skip_batches
        role = (worker + k) % self.workers
        skip = max(0, -(-(k - role) // self.workers))
        order = epoch_shard_order(self.shards, self.seed, self.epoch, self.shuffle)
        stages: list[Any] = [
            wds.SimpleShardList([s.path for s in order]),
            wds.split_by_node if self.split_across_ranks else _all_shards,  # rank r: shards r::world
            _take_role(role, self.workers),  # worker role j: j::W of those (wds.split_by_worker by role)
            index_tar_samples,  # records of where each member lies; payloads are read when decoded
        ]
        if self.shuffle and self.shuffle_buffer > 1:
            rng = random.Random(f"samples-{self.seed}-{self.epoch}-{self.rank}-{role}")
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng))
        samples = iter(wds.DataPipeline(*stages))
        for _ in range(skip * self.batch_size):  # resume: drop sample records, nothing read
            next(samples)
        pool = ThreadPoolExecutor(self.decode_threads, "decode") if self.decode_threads > 1 else None
        buffers = None
        if info is not None and self.buffer_flags is not None:
            buffers = SharedBuffers(self.buffer_flags[worker], worker)
        try:
            for _ in range(per_worker - skip):
                records = [next(samples) for _ in range(self.batch_size)]
                if buffers is None:
                    storage = torch.UntypedStorage._new_shared if info is not None else torch.UntypedStorage
                    yield decode_batch(records, self.frames, pool, storage)
                else:
                    batch = decode_batch(records, self.frames, pool, buffers.take)
                    batch[BUFFER_KEY] = buffers.last  # which slot to release; Loader removes the key
                    yield batch
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


BUFFER_KEY = "_shared_buffer"


class SharedBuffers:
    """Worker side: shared-memory batch storages reused once the main process has dropped a batch.

    A fresh shared-memory segment costs the worker a page fault and a zeroed page per 4 KiB (measured:
    ~12 ms of system time per 518², 8-frame sample, a third of the worker's CPU); reusing one does not. `flags[k]` is 1 while slot k's
    batch may still be alive in the main process (`ReleaseTracker` clears it); with no slot free,
    a fresh segment is used.
    """

    def __init__(self, flags: torch.Tensor, worker: int) -> None:
        self.flags, self.worker = flags.numpy(), worker
        self.storages: list[torch.UntypedStorage | None] = [None] * len(self.flags)
        self.last: tuple[int, int] | None = None

    def take(self, nbytes: int) -> torch.UntypedStorage:
        for k, storage in enumerate(self.storages):
            if self.flags[k] == 0:
                if storage is None or storage.nbytes() != nbytes:
                    storage = self.storages[k] = torch.UntypedStorage._new_shared(nbytes)
                self.flags[k] = 1
                self.last = (self.worker, k)
                return storage
        self.last = None
        return torch.UntypedStorage._new_shared(nbytes)


class ReleaseTracker:
    """Main side: frees a worker's buffer slot once every tensor of its batch has been garbage-collected
    (checked whenever a new batch arrives)."""

    def __init__(self, flags: torch.Tensor) -> None:
        self.flags = flags.numpy()
        self.pending: list[tuple[tuple[int, int], list[StorageWeakRef]]] = []

    def received(self, batch: dict[str, Any]) -> dict[str, Any]:
        slot = batch.pop(BUFFER_KEY, None)
        if slot is not None:
            refs = [StorageWeakRef(v.untyped_storage()) for v in batch.values() if torch.is_tensor(v)]
            self.pending.append((tuple(slot), refs))
        self.poll()
        return batch

    def poll(self) -> None:
        alive = []
        for (worker, k), refs in self.pending:
            if all(ref.expired() for ref in refs):
                self.flags[worker, k] = 0
            else:
                alive.append(((worker, k), refs))
        self.pending = alive


def _all_shards(src: Iterator[Any]) -> Iterator[Any]:
    return src


def _take_role(role: int, workers: int):
    def stage(src: Iterator[Any]) -> Iterator[Any]:
        return itertools.islice(src, role, None, workers)

    return stage


@dataclass
class Loader:
    """A DataLoader over a ShardStream plus the bookkeeping for an exact data position."""

    stream: ShardStream
    num_workers: int
    pin_memory: bool
    prefetch_factor: int
    seed: int

    def epoch_batches(self, epoch: int, skip_batches: int = 0) -> Iterator[dict[str, Any]]:
        """Batches of `epoch` after the first `skip_batches` ones."""
        yield from self._open(epoch, skip_batches)

    def batches_from(self, epoch: int, consumed: int) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """Endless (epoch, batches consumed in that epoch, batch) from a data position.

        With workers, the next epoch's workers are started when the last batch of an epoch arrives,
        so they fork and prefetch while that batch is trained on: an epoch boundary costs no wait
        (otherwise ~0.1 s for 2 workers at 8 x 518², every epoch). Same batches in the same order.
        """
        n = self.batches_per_epoch(epoch)
        current = self._open(epoch, consumed)
        while True:
            upcoming = None
            for i, batch in enumerate(current, start=consumed + 1):
                if i == n and self.num_workers > 0:
                    n_next = self.batches_per_epoch(epoch + 1)  # workers hold their own copy of the stream
                    upcoming = self._open(epoch + 1, 0)
                yield epoch, i, batch
            epoch, consumed = epoch + 1, 0
            if upcoming is None:
                n_next = self.batches_per_epoch(epoch)
                upcoming = self._open(epoch, 0)
            n, current = n_next, upcoming

    def _open(self, epoch: int, skip_batches: int) -> Iterator[dict[str, Any]]:
        """Start `epoch` now (workers fork and begin prefetching) and return its batch iterator."""
        self.stream.set_position(epoch, skip_batches)
        n = self.stream.batches_per_epoch()
        if n == 0:
            raise ShardError(
                f"epoch {epoch}: a worker's shards hold fewer than batch_size={self.stream.batch_size} samples; "
                "lower batch_size or num_workers"
            )
        loader = DataLoader(
            self.stream,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None,
            # A private generator: creating the iterator must not draw from the global RNG, or a
            # resumed run's dropout masks would differ from an uninterrupted run's.
            generator=torch.Generator().manual_seed(self.seed),
        )
        flags = None
        if self.num_workers > 0:  # slots per worker: the prefetched batches, the caller's, one spare
            flags = torch.zeros((self.num_workers, self.prefetch_factor + 2), dtype=torch.int32).share_memory_()
        self.stream.buffer_flags = flags
        try:
            batches = iter(loader)  # starts the workers, which take their copy of the stream now
        finally:
            self.stream.buffer_flags = None
        if flags is None:
            return batches
        return map(ReleaseTracker(flags).received, batches)

    def batches_per_epoch(self, epoch: int = 0) -> int:
        self.stream.set_position(epoch, 0)
        return self.stream.batches_per_epoch()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.epoch_batches(0)


def make_loader(
    shards_dir: str | Path,
    split: str,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    shuffle_buffer: int = 32,
    frames: int | None = None,
    pin_memory: bool = True,
    prefetch_factor: int = 2,
    rank: int | None = None,
    world_size: int | None = None,
    split_across_ranks: bool = True,
    decode_threads: int | None = None,
) -> Loader:
    """Loader over `<shards_dir>/<split>-*.tar`; iterate it for one epoch, or use `epoch_batches`.

    rank/world_size default to what webdataset's `split_by_node` sees (RANK/WORLD_SIZE as set by
    torchrun, else torch.distributed, else a single process); they must agree with it.
    split_across_ranks=False reads every shard in this process (e.g. validation on rank 0 only).
    decode_threads: frames decoded in parallel per loading process (None: the usable CPUs divided
    by max(num_workers, 1), at most 8).
    """
    if rank is None or world_size is None:
        rank, world_size, _, _ = wds.utils.pytorch_worker_info()
    shards = list_shards(shards_dir, split)
    if decode_threads is None:
        decode_threads = min(8, max(1, len(os.sched_getaffinity(0)) // max(num_workers, 1)))
    stream = ShardStream(shards, batch_size, shuffle, seed, shuffle_buffer, frames, rank, world_size, num_workers,
                         split_across_ranks, decode_threads)
    return Loader(stream, num_workers, pin_memory, prefetch_factor, seed)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move tensors (non-blocking from pinned memory); uint8 images become contiguous float [0,1]
    on the device (the HWC→CHW reordering happens there too)."""
    moved = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
    if moved["images"].dtype == torch.uint8:
        moved["images"] = moved["images"].float().div_(255.0).contiguous()
    return moved
