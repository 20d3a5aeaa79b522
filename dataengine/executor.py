"""Where the build's per-frame work runs: `local` (a thread pool, as always) or `ray` (Ray Core tasks).

Only the per-frame work moves: `dataengine.frames.process_frame(source, frame, scene, config)`, one
module-level function of picklable inputs. The local pool calls it in its threads; a Ray task runs
`render_frame_record`, which calls it and returns the frame's bad-input message instead of raising it.
Planning (parsing, windows, splits) and the shard writing stay on the driver, so a Ray build writes
the same bytes as a local one. With Ray the records come back through the object store and the
driver writes them into the frame cache atomically (tmp + rename, `save_frame`): only --root must be
on a file system that every node mounts, a killed task leaves nothing behind, and a killed driver's
rerun reuses every frame it had cached. Ray is imported only here, and only for `--executor ray`.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from dataengine.errors import BadInputError
from dataengine.frames import process_frame, save_frame

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


def check_inputs_on_nodes(cfg, scenes: list) -> None:
    """Run `unreadable` once on every node with CPUs; one error naming the node and the path."""
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    paths = input_paths(cfg, scenes)
    check = ray.remote(num_cpus=0, max_retries=0)(unreadable)
    refs = {}
    for node in _cpu_nodes(ray):
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        refs[node["NodeManagerAddress"]] = check.options(scheduling_strategy=strategy).remote(paths)
    for ip, ref in refs.items():
        try:
            host, missing = ray.get(ref, timeout=CHECK_TIMEOUT_S)
        except Exception as exc:
            raise ClusterError(
                f"Ray node {ip}: the input check did not run ({type(exc).__name__}); check the node with `ray status`"
            ) from None
        if missing is not None:
            raise ClusterError(
                f"Ray node {ip} ({host}): cannot read {missing} (--root {cfg.root}); the inputs must be on a "
                f"file system that every node mounts at the same path (NFS, Lustre, a mounted bucket), "
                f"see docs/cluster.md"
            )


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
    """Ray tasks, a bounded number in flight; results saved by the driver as they arrive.

    A bad frame (without --skip-bad) fails the build with the same error as locally: the first bad
    frame in input order, raised once every frame before it has finished."""
    ray = import_ray()
    info = connect(cfg.ray_address, cfg.workers or None)
    scenes = list({id(s): s for s, _, _ in pending}.values())
    check_inputs_on_nodes(cfg, scenes)
    if not pending:
        return
    task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES, retry_exceptions=False)(render_frame_record)
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
                scene, frame, _ = pending[next_index]
                in_flight[task.remote(source, frame, scene_refs[id(scene)], cfg)] = next_index
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
                cause = getattr(exc, "cause", None)
                if isinstance(exc, ray.exceptions.RayTaskError) and not isinstance(cause, ray.exceptions.RayError):
                    raise (cause or exc) from None  # the frame's own code raised (not retried): as locally
                raise ClusterError(_task_failure(ray, item, cause or exc)) from None
            if bad is None:
                save_frame(item[2], result)
                yield item, None
            elif cfg.skip_bad:
                yield item, bad[0]
            elif first_bad is None or index < first_bad[0]:
                first_bad = (index, bad)
    finally:
        for ref in in_flight:
            ray.cancel(ref, force=True)
