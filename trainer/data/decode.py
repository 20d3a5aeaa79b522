"""Sample records → batch tensors: JPEGs decoded (simplejpeg) into a preallocated uint8 array, float32
depth read in place, masks combined per frame; the frames of a batch are decoded by a small thread
pool (simplejpeg and pread release the GIL)."""

from __future__ import annotations

import concurrent.futures
import functools
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from shardformat import (
    CAMERAS,
    DEPTH,
    MASK,
    NpyLayout,
    SampleReader,
    ShardError,
    depth_range_problem,
    frame_member,
    npy_layout,
    read_json,
)
from shardformat.cameras import frame_arrays, parse_cameras


@dataclass
class _SamplePlan:
    """One sample, validated before anything large is read."""

    reader: SampleReader
    frames: int
    height: int
    width: int
    cams: dict[str, Any]
    depth: NpyLayout
    mask: NpyLayout


def _plan_sample(reader: SampleReader, frames: int | None) -> _SamplePlan:
    where = reader.where
    cams = parse_cameras(read_json(reader, CAMERAS), where)
    n = len(cams.frames) if frames is None else frames
    if n > len(cams.frames):
        raise ShardError(f"{where}: data.frames={n} but the sample has only {len(cams.frames)} frames")
    height, width = cams.height, cams.width
    for i in range(n):
        reader.require(frame_member(i))
        frame_arrays(where, i, cams.frames[i])  # a corrupt camera would silently poison the camera loss
    depth, mask = npy_layout(reader, DEPTH), npy_layout(reader, MASK)
    for layout in (depth, mask):
        if len(layout.shape) != 3 or layout.shape[0] < n or layout.shape[1:] != (height, width):
            raise ShardError(f"{where}: depth {depth.shape} / mask {mask.shape}, expected {(n, height, width)}")
    if not (depth.dtype.kind == "f" and depth.dtype.itemsize in (2, 4)) or mask.dtype.kind not in "biu":
        raise ShardError(
            f"{where}: depth dtype {depth.dtype} / mask dtype {mask.dtype}; the format has float32 "
            "or float16 depth (any byte order) and integer or bool masks; rebuild the shards with "
            "`python -m dataengine build`"
        )
    return _SamplePlan(reader, n, height, width, cams.record, depth, mask)


_FLOAT32 = np.dtype("=f4")


def _decode_frame(plan: _SamplePlan, images: np.ndarray, depths: np.ndarray, masks: np.ndarray, i: int) -> None:
    """Frame i of one sample into its slots: JPEG → uint8 HWC, depth → float32, mask & (depth > 0)."""
    import simplejpeg

    reader, h, w = plan.reader, plan.height, plan.width
    member = frame_member(i)
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
    """Frame i's GT: the format's depth range rule (shardformat.depth_range: finite, 0 = no supervision,
    else in (0, MAX_DEPTH] in the shard's units), and the mask exactly where depth > 0 (the documented
    format). Never silently zeroed: the shard is wrong."""
    problem = depth_range_problem(depth)
    if problem:
        raise ShardError(
            f"{where}: depth.npy frame {i}: {problem}; the shard is corrupt: rebuild it, or check it "
            "with `python -m dataengine verify`"
        )
    supervised = depth > 0
    if not np.array_equal(mask, supervised):
        count = int((mask != supervised).sum())
        raise ShardError(
            f"{where}: mask.npy frame {i}: {count} pixels disagree with depth > 0 (the format's mask "
            "is 1 exactly where depth > 0); the shard is corrupt: rebuild it"
        )


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
        for (name, dtype, shape), offset in zip(layout, offsets, strict=True)
    }


def decode_batch(
    samples: list[dict[str, Any]],
    frames: int | None,
    pool: ThreadPoolExecutor | None = None,
    storage: Callable[[int], torch.UntypedStorage] = torch.UntypedStorage,
) -> dict[str, Any]:
    """Sample records (tar ranges from `index_tar_samples`, or wds raw bytes) → a batch (module docstring).

    Every frame is one task (JPEG decode + depth/mask read) run on `pool` when given. `storage(nbytes)`
    provides the batch's memory (shared memory inside DataLoader workers, `sharedmem`).
    """
    readers = [SampleReader(s) for s in samples]
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
