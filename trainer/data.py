"""Shards → batches: a deterministic, resumable WebDataset stream split per rank and worker.

Per epoch the full shard list is shuffled with a seed shared by all ranks (so ranks see different
shards every epoch), then split by `wds.split_by_node` (rank r gets shards r::world) and by worker
role (role j gets j::workers of those, as `wds.split_by_worker` would for worker j). Each worker reads its shards, shuffles
samples in a buffer seeded by (seed, epoch, rank, worker), and yields whole batches.

Every worker of every rank yields exactly the same number of batches in an epoch (the minimum over
all of them, computed from the per-shard sample counts), so DDP ranks take equal step counts and the
DataLoader's round-robin over workers is a fixed interleaving. That makes the data position a single
number: (epoch, batches consumed). Resuming skips the consumed samples *before* JPEG decoding.

Images stay uint8 until `to_device`, which moves the batch and converts there.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import webdataset as wds
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


def decode_sample(sample: dict[str, Any], frames: int | None) -> dict[str, Any]:
    """Raw tar members of one sample → numpy arrays (uint8 images S×H×W×3, as decoded)."""
    import simplejpeg

    key, url = sample.get("__key__", "?"), sample.get("__url__", "?")
    where = f"{url}: sample {key}"
    if "cameras.json" not in sample:
        raise ShardError(f"{where}: missing member {key}.cameras.json")
    try:
        cams = json.loads(sample["cameras.json"])
    except json.JSONDecodeError as exc:
        raise ShardError(f"{where}: cameras.json line {exc.lineno}: {exc.msg}") from None
    if cams.get("format") != SHARD_FORMAT:
        raise ShardError(f"{where}: cameras.json format {cams.get('format')!r}, expected {SHARD_FORMAT!r}")
    frame_meta = cams["frames"]
    n = len(frame_meta) if frames is None else frames
    if n > len(frame_meta):
        raise ShardError(f"{where}: data.frames={n} but the sample has only {len(frame_meta)} frames")
    height, width = cams["image_size"]
    images = np.empty((n, height, width, 3), np.uint8)  # HWC as decoded; made CHW by a view in collate
    for i in range(n):
        member = f"f{i}.jpg"
        if member not in sample:
            raise ShardError(f"{where}: missing member {key}.{member}")
        rgb = simplejpeg.decode_jpeg(sample[member], colorspace="RGB")
        if rgb.shape != (height, width, 3):
            raise ShardError(f"{where}: {member} is {rgb.shape[1]}x{rgb.shape[0]}, cameras.json says {width}x{height}")
        images[i] = rgb
    depth = _load_npy(sample, "depth.npy", where)[:n]
    mask = _load_npy(sample, "mask.npy", where)[:n]
    if depth.shape != (n, height, width) or mask.shape != (n, height, width):
        raise ShardError(f"{where}: depth {depth.shape} / mask {mask.shape}, expected {(n, height, width)}")
    return {
        "images": images,
        "depths": depth.astype(np.float32, copy=False),
        "point_masks": (mask > 0) & (depth > 0),
        "extrinsics": np.asarray([f["extrinsics"] for f in frame_meta[:n]], np.float32),
        "intrinsics": np.asarray([f["K"] for f in frame_meta[:n]], np.float32),
        "key": key,
        "scene": cams["scene"],
        "names": [f["name"] for f in frame_meta[:n]],
    }


def _load_npy(sample: dict[str, Any], member: str, where: str) -> np.ndarray:
    if member not in sample:
        raise ShardError(f"{where}: missing member {sample.get('__key__')}.{member}")
    try:
        return np.load(io.BytesIO(sample[member]), allow_pickle=False)
    except ValueError as exc:
        raise ShardError(f"{where}: {member}: {exc}") from None


def _stack(samples: list[dict[str, Any]], name: str) -> torch.Tensor:
    arrays = [s[name] for s in samples]
    return torch.from_numpy(arrays[0][None] if len(arrays) == 1 else np.stack(arrays))  # no copy for B=1


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch tensors; images are a [B,S,3,H,W] view of the decoded [B,S,H,W,3] (saves a full copy)."""
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
    ) -> None:
        self.shards, self.batch_size, self.shuffle, self.seed = shards, batch_size, shuffle, seed
        self.shuffle_buffer, self.frames = shuffle_buffer, frames
        self.rank, self.world, self.workers = rank, world, max(workers, 1)
        self.split_across_ranks = split_across_ranks
        if not split_across_ranks and (rank, world) != (0, 1):
            raise ValueError("a stream that is not split across ranks reads every shard: use rank=0, world_size=1")
        self.epoch, self.skip_batches = 0, 0

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
            wds.tarfile_to_samples(),
        ]
        if self.shuffle and self.shuffle_buffer > 1:
            rng = random.Random(f"samples-{self.seed}-{self.epoch}-{self.rank}-{role}")
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng))
        samples = iter(wds.DataPipeline(*stages))
        for _ in range(skip * self.batch_size):  # resume: drop raw samples, nothing decoded
            next(samples)
        for _ in range(per_worker - skip):
            raw = [next(samples) for _ in range(self.batch_size)]
            yield collate([decode_sample(s, self.frames) for s in raw])


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
        yield from loader

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
) -> Loader:
    """Loader over `<shards_dir>/<split>-*.tar`; iterate it for one epoch, or use `epoch_batches`.

    rank/world_size default to what webdataset's `split_by_node` sees (RANK/WORLD_SIZE as set by
    torchrun, else torch.distributed, else a single process); they must agree with it.
    split_across_ranks=False reads every shard in this process (e.g. validation on rank 0 only).
    """
    if rank is None or world_size is None:
        rank, world_size, _, _ = wds.utils.pytorch_worker_info()
    shards = list_shards(shards_dir, split)
    stream = ShardStream(shards, batch_size, shuffle, seed, shuffle_buffer, frames, rank, world_size, num_workers,
                         split_across_ranks)
    return Loader(stream, num_workers, pin_memory, prefetch_factor, seed)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move tensors (non-blocking from pinned memory); uint8 images become contiguous float [0,1]
    on the device (the HWC→CHW reordering happens there too)."""
    moved = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
    if moved["images"].dtype == torch.uint8:
        moved["images"] = moved["images"].float().div_(255.0).contiguous()
    return moved
