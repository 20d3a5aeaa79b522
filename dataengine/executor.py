"""Where the build's per-frame work runs: `local` (a thread pool, as always) or `ray` (Ray Core tasks).

Only the per-frame work moves: `dataengine.frames.process_frame(source, frame, scene, config)`, one
module-level function of picklable inputs. The local pool calls it in its threads; a Ray task runs
`render_frame_record`, which calls it and returns the frame's bad-input message instead of raising it.
Planning (parsing, windows, splits) stays on the driver, and every shard is `build.write_shard` of its
cached frames, so a Ray build writes the same bytes as a local one. --root must be on a file system
that every node mounts. Where --out is too (checked up front: a probe file the driver writes, every
node reads), the tasks write the frame cache (`render_to_cache`) and then the shards (`shard_records`)
themselves and the driver only plans and records: one driver writing everything handles ~40-70
frames/s, about one 16-core node (benchmarks/RESULTS.md). Elsewhere, and from any node that does not see
the frame cache, the records come back through the object store and the driver writes the cache and the
shards. Every file is written atomically (tmp +
rename): a killed task leaves nothing half-written, and a killed driver's rerun reuses every cached
frame. Ray is imported only here, and only for `--executor ray`.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from dataengine.errors import BadInputError
from dataengine.frames import CACHE_DIR, process_frame, save_frame

EXECUTORS = ("local", "ray")
INSTALL_HINT = (
    "install the extra with `pip install 'vggt-eth3d-lora[ray]'` (in a checkout: "
    "`pip install -c constraints.txt -e '.[ray]'`), or build with --executor local; see docs/cluster.md"
)
TASK_RETRIES = 3  # Ray re-runs a task whose worker or node died this often, then the build fails
CHECK_TIMEOUT_S = 120  # the per-node input check; a node that cannot answer in this time is an error
PROBE_TIMEOUT_S = 5.0
_HOST_PORT = re.compile(r"^(?:ray://)?\[?([^\]/]+?)\]?:(\d+)$")

log = logging.getLogger(__name__)

# (scene, frame, cache path) → None, or the BadInputError message of a skipped frame
Outcome = tuple[tuple, str | None]


class ClusterError(OSError):
    """The cluster, not the input, failed (no Ray, unreachable, a node that cannot see the data, a
    task that kept dying). An OSError so that the CLI prints it as one `Error:` line."""


def render_frame_record(source, frame, scene, cfg) -> tuple[object | None, tuple[str, str | None] | None]:
    """A Ray task's per-frame work: (FrameResult, None), or (None, (message, path)) for bad input.

    Bad input is returned, not raised, so that no executor retries it or wraps its text."""
    try:
        return process_frame(source, frame, scene, cfg), None
    except BadInputError as exc:
        return None, (str(exc), exc.path)


def render_to_cache(source, frame, scene, cfg, path) -> tuple[object | None, tuple[str, str | None] | None]:
    """A Ray task's per-frame work where every node sees --out: render and cache the frame here
    (atomically, `save_frame`); only the bad-input message, if any, goes back to the driver. On a
    node that does not see the frame cache (one that joined after the check, without the mount) the
    record goes back instead, for the driver to cache: never a cache file on a node's own disk."""
    result, bad = render_frame_record(source, frame, scene, cfg)
    if result is None or not sees_cache(cfg):
        return result, bad
    save_frame(path, result)
    return None, bad


def sees_cache(cfg) -> bool:
    """This node sees the driver's frame cache folder (created by the driver before any task)."""
    return (cfg.out / CACHE_DIR).is_dir()


def shard_on_node(cfg, split: str, name: str, chunk: list, units: dict) -> dict | None:
    """A Ray task's shard: `build.write_shard` here, or None on a node that does not see every cached
    frame of it (--out on the driver's disk only, or a node without the mount): the driver then
    writes that shard itself."""
    from dataengine.build import write_shard

    if not all(os.path.isfile(path) for _, paths, *_ in chunk for path in paths):
        return None
    return write_shard(cfg, split, name, chunk, units)


def frame_outcomes(cfg, pending: list[tuple]) -> Iterator[Outcome]:
    """Render and cache every (scene, frame, path) of `pending`; yield each with its skip reason.

    A bad frame raises its BadInputError unless cfg.skip_bad (then it is yielded with the message)."""
    if getattr(cfg, "executor", "local") == "ray":
        yield from _ray_outcomes(cfg, pending)
        return
    yield from _local_outcomes(cfg, pending)


# ---------------------------------------------------------------------------------------------- local
def _local_outcomes(cfg, pending: list[tuple]) -> Iterator[Outcome]:
    """The thread pool (simplejpeg and the numba kernels release the GIL), each thread caching its frame."""
    source = cfg.source

    def work(item):
        scene, frame, path = item
        try:
            save_frame(path, process_frame(source, frame, scene, cfg))
            return item, None
        except BadInputError as exc:
            if not cfg.skip_bad:
                raise
            return item, str(exc)

    workers = cfg.workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="frame") as pool:
        yield from pool.map(work, pending)


# ------------------------------------------------------------------------------------------------ ray
def import_ray():
    """The `ray` module, or one ClusterError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ClusterError(f"--executor ray: Ray is not installed; {INSTALL_HINT}") from None
    return ray


def _resolve(ray, address: str) -> str:
    """`auto` → the address of the cluster `ray start` last started here (Ray's own lookup: RAY_ADDRESS,
    then /tmp/ray/ray_current_cluster), so that a stale entry is probed too."""
    if address != "auto":
        return address
    try:
        from ray._private.services import get_ray_address_from_environment  # not public; probe only

        return get_ray_address_from_environment("auto", None) or address
    except ConnectionError:
        raise ClusterError(
            "--ray-address auto: no running Ray cluster found on this machine; start one (`ray start --head`, "
            "docs/cluster.md), name the head's address, or leave --ray-address out to start a local Ray instance"
        ) from None
    except Exception:  # another Ray version: let ray.init resolve it
        return address


def _probe(address: str, shown: str) -> None:
    """Fail fast on an address nobody listens on (ray.init would wait for a minute or more)."""
    match = _HOST_PORT.match(address.strip())
    if not match:
        return  # "local", ... : Ray answers those quickly itself
    host, port = match.group(1), int(match.group(2))
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterError(
            f"--ray-address {shown}: no Ray cluster answers at {host}:{port} "
            f"({exc.strerror or type(exc).__name__}); start one (`ray start --head`, docs/cluster.md), "
            f"check the host and port (the head's GCS port 6379, or ray://HOST:10001 for Ray Client), "
            f"or leave --ray-address out to start a local Ray instance"
        ) from None


def connect(address: str | None = None, num_cpus: int | None = None) -> dict:
    """Join the cluster at `address` (None: start a local Ray instance, as `ray.init()` does);
    returns {"nodes": n, "cpus": c} of the alive nodes (printed to stderr when it joins)."""
    ray = import_ray()
    joined_now = not ray.is_initialized()
    if joined_now:
        if address:
            _probe(_resolve(ray, address), address)
        kwargs = {"address": address} if address else {"num_cpus": num_cpus or None}
        try:
            ray.init(**kwargs, logging_level=logging.WARNING, configure_logging=True)
        except Exception as exc:  # ConnectionError, RuntimeError, ValueError, ... : all one message
            first = " ".join(str(exc).split())[:300]
            where = f"--ray-address {address}" if address else "a local Ray instance"
            raise ClusterError(
                f"--executor ray: cannot connect to {where} ({type(exc).__name__}: {first}); "
                f"start the cluster first (`ray start --head`, docs/cluster.md) or check the address"
            ) from None
    nodes = _cpu_nodes(ray)
    info = {"nodes": len(nodes), "cpus": int(sum(n["Resources"].get("CPU", 0) for n in nodes))}
    if joined_now:
        print(f"ray: {info['nodes']} nodes, {info['cpus']} CPUs", file=sys.stderr, flush=True)
    return info


def _cpu_nodes(ray) -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]


def input_paths(cfg, scenes: list) -> list[str]:
    """What every node must read: --root, each scene folder, and each scene's first frame's files."""
    paths = [str(cfg.root)]
    for scene in scenes:
        paths.append(str(scene.directory))
        if scene.frames:
            frame = scene.frames[0]
            for attr in ("image_path", "depth_path", "mask_path", "mvs_path"):
                value = getattr(frame, attr, None)
                if value is not None:
                    paths.append(str(value))
    return paths


def unreadable(paths: list[str]) -> tuple[str, str | None]:
    """(this host's name, the first of `paths` it cannot read, or None). Runs on each node."""
    for path in paths:
        try:
            if os.path.isdir(path):
                os.listdir(path)
            else:
                with open(path, "rb") as fh:
                    fh.read(1)
        except OSError:
            return socket.gethostname(), path
    return socket.gethostname(), None


def node_check(paths: list[str], probe: str | None, token: str) -> tuple[str, str | None, bool]:
    """(this host's name, the first of `paths` it cannot read or None, whether it reads `token` from
    the driver's probe file in --out and may write beside it). Runs on each node."""
    host, missing = unreadable(paths)
    try:
        with open(probe, encoding="ascii") as fh:
            sees_out = fh.read() == token and os.access(os.path.dirname(probe), os.W_OK)
    except (OSError, TypeError):  # TypeError: no probe (no --out)
        sees_out = False
    return host, missing, sees_out


def check_nodes(cfg, scenes: list) -> bool:
    """Run `node_check` once on every node with CPUs: one error naming the node and the input path it
    cannot read; True when every node also sees the driver's --out (a probe file written into the
    frame cache here and read there), so that the tasks may write the frame cache themselves."""
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    paths = input_paths(cfg, scenes)
    out = getattr(cfg, "out", None)
    token = uuid.uuid4().hex
    probe = None if out is None else out / CACHE_DIR / f".node-probe-{token}"
    if probe is not None:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text(token, encoding="ascii")
    try:
        check = ray.remote(num_cpus=0, max_retries=0)(node_check)
        refs = {}
        for node in _cpu_nodes(ray):
            strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            refs[node["NodeManagerAddress"]] = check.options(scheduling_strategy=strategy).remote(
                paths, None if probe is None else str(probe), token
            )
        seen = []
        for ip, ref in refs.items():
            try:
                host, missing, sees_out = ray.get(ref, timeout=CHECK_TIMEOUT_S)
            except Exception as exc:
                raise ClusterError(
                    f"Ray node {ip}: the input check did not run ({type(exc).__name__}); check the node with "
                    f"`ray status`"
                ) from None
            if missing is not None:
                raise ClusterError(
                    f"Ray node {ip} ({host}): cannot read {missing} (--root {cfg.root}); the inputs must be on a "
                    f"file system that every node mounts at the same path (NFS, Lustre, a mounted bucket), "
                    f"see docs/cluster.md"
                )
            seen.append(sees_out)
    finally:
        if probe is not None:
            probe.unlink(missing_ok=True)
    if probe is not None and not all(seen):
        log.info("--out %s is not on a file system every Ray node sees: the driver writes the frame cache", out)
    return bool(seen) and all(seen)


def shard_records(cfg, jobs: list[tuple], units: dict, written: set[str]) -> Iterator[dict]:
    """`build.write_shard` of every (split, name, samples) job, records yielded in job order, each name
    added to `written` once its shard is on disk. Here, one after the other; with --executor ray as
    Ray tasks, each on a node that sees its cached frames, else here (`shard_on_node`); the first
    failing shard in job order raises, as it would here, once the shards already running have landed,
    so the caller removes them too."""
    from dataengine.build import write_shard

    if getattr(cfg, "executor", "local") != "ray" or not jobs:
        for split, name, chunk in jobs:
            record = write_shard(cfg, split, name, chunk, units)
            written.add(name)
            yield record
        return
    ray = import_ray()
    task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES, retry_exceptions=False)(shard_on_node)
    cfg_ref, units_ref = ray.put(cfg), ray.put(units)
    refs = [task.remote(cfg_ref, split, name, chunk, units_ref) for split, name, chunk in jobs]
    try:
        for (split, name, chunk), ref in zip(jobs, refs, strict=True):
            try:
                record = ray.get(ref)
                if record is None:  # its node does not see --out
                    record = write_shard(cfg, split, name, chunk, units)
            except ray.exceptions.RayError as exc:
                own, cause = _task_cause(ray, exc)
                if own:
                    raise cause from None  # the shard's own code raised: as here
                raise ClusterError(
                    f"shard {name}: its Ray task failed ({type(cause).__name__}); check the nodes "
                    f"(`ray status`, the dashboard) and rerun the same command: finished frames are cached"
                ) from None
            written.add(name)
            yield record
    finally:
        unfinished = [(name, ref) for (_, name, _), ref in zip(jobs, refs, strict=True) if name not in written]
        for _, ref in unfinished:
            ray.cancel(ref)  # a queued shard never starts; a running one is interrupted (its tmp removed)
        for name, ref in unfinished:
            try:
                if ray.get(ref) is not None:  # one that landed anyway is named, so that the caller removes it
                    written.add(name)
            except Exception:
                pass


def _task_cause(ray, exc: BaseException) -> tuple[bool, BaseException]:
    """(whether the task's own code raised, the exception to report) for a failed Ray task: its own
    exception (never retried, retry_exceptions=False) is raised as a local run raises it; anything else
    is Ray's (a worker or node died, after the retries)."""
    cause = getattr(exc, "cause", None)
    own = isinstance(exc, ray.exceptions.RayTaskError) and not isinstance(cause, ray.exceptions.RayError)
    return own, cause or exc


def _task_failure(ray, item: tuple, exc: BaseException) -> str:
    """One line naming the frame whose task Ray gave up on (after its retries, where a worker died)."""
    reason = " ".join(str(exc).split())[:300]
    errors = ray.exceptions
    died = isinstance(exc, (errors.WorkerCrashedError, errors.NodeDiedError, errors.OutOfMemoryError))
    what = f"its Ray task failed {TASK_RETRIES + 1} times" if died else "its Ray task failed"
    return (
        f"frame {item[0].name}/{item[1].name}: {what} ({type(exc).__name__}: {reason}); check the nodes "
        f"(`ray status`, the dashboard) and rerun the same command: finished frames are cached and reused"
    )


def _ray_outcomes(cfg, pending: list[tuple]) -> Iterator[Outcome]:
    """Ray tasks, a bounded number in flight; each frame cached by its task where every node sees
    --out (`check_nodes`), else by the driver as the records arrive.

    A bad frame (without --skip-bad) fails the build with the same error as locally: the first bad
    frame in input order, raised once every frame before it has finished."""
    ray = import_ray()
    info = connect(cfg.ray_address, cfg.workers or None)
    scenes = list({id(s): s for s, _, _ in pending}.values())
    shared = check_nodes(cfg, scenes)  # every node sees --out: the tasks cache their frames themselves
    if not pending:
        return
    work = render_to_cache if shared else render_frame_record
    task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES, retry_exceptions=False)(work)
    scene_refs = {id(s): ray.put(s) for s in scenes}  # each scene crosses the network once
    source = cfg.source
    window = max(4 * info["cpus"], 16)
    in_flight: dict = {}  # ObjectRef → index into pending
    next_index = 0
    first_bad: tuple[int, tuple] | None = None
    try:
        while True:
            limit = len(pending) if first_bad is None else first_bad[0]
            while next_index < limit and len(in_flight) < window:
                scene, frame, path = pending[next_index]
                args = (source, frame, scene_refs[id(scene)], cfg) + ((path,) if shared else ())
                in_flight[task.remote(*args)] = next_index
                next_index += 1
            if first_bad is not None and not any(i < first_bad[0] for i in in_flight.values()):
                raise BadInputError(*first_bad[1])  # every frame before it is done
            if not in_flight:
                return
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            index = in_flight.pop(ready[0])
            item = pending[index]
            try:
                result, bad = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                own, cause = _task_cause(ray, exc)
                if own:
                    raise cause from None  # the frame's own code raised: as locally
                raise ClusterError(_task_failure(ray, item, cause)) from None
            if bad is None:
                if result is not None:  # the driver caches it: --out not shared, or not seen by that node
                    save_frame(item[2], result)
                yield item, None
            elif cfg.skip_bad:
                yield item, bad[0]
            elif first_bad is None or index < first_bad[0]:
                first_bad = (index, bad)
    finally:
        for ref in in_flight:
            ray.cancel(ref, force=True)
