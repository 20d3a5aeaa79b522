"""Shards → batches: a deterministic, resumable WebDataset stream split per rank and worker.

Per epoch the full shard list is shuffled with a seed shared by all ranks (so ranks see different
shards every epoch), then split by `wds.split_by_node` (rank r gets shards r::world) and by worker
role (role j gets j::workers of those, as `wds.split_by_worker` would for worker j). Each worker reads
its shards, shuffles samples in a buffer seeded by (seed, epoch, rank, worker), and yields whole batches.

Every worker of every rank yields exactly the same number of batches in an epoch (the minimum over
all of them, computed from the per-shard sample counts), so DDP ranks take equal step counts and the
DataLoader's round-robin over workers is a fixed interleaving. That makes the data position a single
number: (epoch, batches consumed). Resuming skips the consumed samples before reading their payloads.

Reading is built for throughput (benchmarks/loader.py): a worker indexes its tars from the 512-byte
headers only (`shardformat.index_tar`, webdataset's grouping), shuffles these small records, and reads
each payload once, with pread, straight into the batch: JPEGs decode (simplejpeg) into a preallocated
uint8 array, float32 depth lands in place, masks are combined per frame. The frames of a batch are
decoded by a small thread pool (simplejpeg and pread release the GIL). Inside a DataLoader worker the
batch lives in one shared-memory storage, reused once the main process has dropped the batch, so
handing it over copies nothing.

Images stay uint8 (HWC in memory; the [B,S,3,H,W] tensor is a view) until `to_device`, which moves
the batch and converts there.

Modules, by concern: `shards` (which shards, how many samples, their sample records), `schedule`
(shards and batches per rank/worker, resume position), `decode` (records → batch tensors),
`sharedmem` (worker buffers), `loader` (the stream, its DataLoader, `make_loader`).
"""

from shardformat import FORMAT as SHARD_FORMAT
from shardformat import ShardError, TarRange
from trainer.data.decode import decode_batch, decode_sample
from trainer.data.loader import Loader, ShardStream, make_loader, to_device
from trainer.data.schedule import batches_per_worker, epoch_shard_order, split_for, worker_role
from trainer.data.shards import ShardInfo, check_dataset, data_identity, index_tar_samples, list_shards
from trainer.data.sharedmem import BUFFER_KEY, ReleaseTracker, SharedBuffers, new_shared_storage

__all__ = [
    "BUFFER_KEY",
    "SHARD_FORMAT",
    "Loader",
    "ReleaseTracker",
    "ShardError",
    "ShardInfo",
    "ShardStream",
    "SharedBuffers",
    "TarRange",
    "batches_per_worker",
    "check_dataset",
    "data_identity",
    "decode_batch",
    "decode_sample",
    "epoch_shard_order",
    "index_tar_samples",
    "list_shards",
    "make_loader",
    "new_shared_storage",
    "split_for",
    "to_device",
    "worker_role",
]
