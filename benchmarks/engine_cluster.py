"""`build --executor ray` against `--executor local` on full-size synthetic ETH3D frames (numbers → RESULTS.md).

One run: a scene of --frames full-size frames (6191x4127 JPEG + laser GT + mask each; symlinks cycling
over --unique generated frames, as benchmarks/engine.py does) built four ways, each into a fresh
output folder (no cache reuse), timing the whole `build_shards` (parse, render, shards), in --rounds
interleaved rounds (a slow spell of a shared machine then hits every way alike; ratios are taken
within each round, and their medians reported with every round's value):
  local-1   the thread pool with 1 worker            ray-1   a Ray cluster of 1 node with 1 CPU
  local-2   the thread pool with 2 workers           ray-2   2 nodes with 1 CPU each (same machine)
The Ray clusters are `ray.cluster_utils.Cluster`s on this machine; the driver joins each with ray.init.
Each timed build follows an untimed warm-up build of an 8-frame scene on the same executor, so
the per-frame figures compare warm workers; the one-off start-up (Ray's worker processes importing the
engine and loading its compiled kernels) is reported apart, as the warm-up's difference.
Reported: wall, frames/s, CPU seconds per frame of the whole machine and of the driver, Ray's
overhead per frame against the local build of equal CPUs (target <= 5 % at 1 node), the 1 -> 2 node
speed-up (target >= 1.8x where the machine has 2 idle cores), the shards' identity across all
builds, and a paper estimate for 1e5 frames on N 16-core nodes (CPU, file system and the driver's
serial share).

    NUMBA_CACHE_DIR=.numba_cache .venv/bin/python benchmarks/engine_cluster.py [--frames 48] [--unique 4]
        [--rounds 3] [--work DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import busy_cpu_s, load, machine_info, replicate_scene  # noqa: E402  (benchmarks/engine.py)

SCENE = "bench_cluster"
WARMUP = "bench_cluster_warmup"  # one 8-frame window built first on each executor, untimed
FS_GBPS = 2.0  # an assumed shared file system read rate for the paper estimate


def shard_digest(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(out.glob("*.tar")) + [out / "manifest.json"]:
        h.update(p.name.encode() + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def timed_build(root: Path, out: Path, scene: str = SCENE, **kw) -> dict:
    from dataengine.build import build_shards
    from dataengine.config import BuildConfig

    shutil.rmtree(out, ignore_errors=True)
    load_before = load()[0]
    busy, own = busy_cpu_s(), time.process_time()
    t0 = time.perf_counter()
    build_shards(BuildConfig(root=root, out=out, scenes=(scene,), progress=False, **kw))
    wall = time.perf_counter() - t0
    return {
        "wall_s": round(wall, 2),
        "load_before": load_before,
        # CPU seconds of the whole machine (every process: workers, driver, Ray's daemons) and of
        # the driver process alone: what the build cost, beside how long it took
        "machine_cpu_s": round(busy_cpu_s() - busy, 2),
        "driver_cpu_s": round(time.process_time() - own, 2),
        "digest": shard_digest(out),
    }


def median_run(runs: list[dict]) -> dict:
    """One build's figures over the rounds: the median of each number (the digest of the first)."""
    out = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0] if k != "digest"}
    out["digest"] = runs[0]["digest"]
    return out


def warm_then_timed(root: Path, out: Path, **kw) -> dict:
    """The 8-frame warm-up scene first (untimed in the per-frame figures: it pays the one-off
    start-up, Ray's worker processes importing the engine and loading its compiled kernels, or the
    local process loading them), then the timed build of the scene on the same, now warm, workers."""
    warm = timed_build(root, out.with_name(out.name + "-warmup"), scene=WARMUP, **kw)
    run = timed_build(root, out, **kw)
    run["warmup_wall_s"] = warm["wall_s"]
    return run


def ray_build(root: Path, out: Path, nodes: int) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address, logging_level="ERROR")
        return warm_then_timed(root, out, executor="ray", ray_address=cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()


def input_mb_per_frame(scene_dir: Path) -> float:
    """Mean bytes a frame reads (JPEG + raw GT depth + mask), in MB."""
    files = [p for top in ("images", "ground_truth_depth", "masks_for_images") for p in (scene_dir / top).rglob("*")]
    frames = len(list((scene_dir / "images").rglob("*.JPG")))
    return sum(p.stat().st_size for p in files if p.is_file()) / max(frames, 1) / 1e6


def paper_estimate(
    frame_cpu_s: float, overhead: float, mb_per_frame: float, driver_s: float, frames: int = 100_000
) -> list[dict]:
    """Hours for `frames` on N 16-core nodes: CPU time per frame x (1 + Ray's overhead) / cores; the
    read rate the shared file system must then sustain (otherwise it, not the CPUs, sets the pace);
    and the driver's serial share (receiving, caching and shard writing: driver_s per frame, one
    process), a floor however many nodes join."""
    rows = []
    driver_hours = frames * driver_s / 3600
    for n in (1, 4, 16, 64):
        cores = 16 * n
        hours = frames * frame_cpu_s * (1 + max(overhead, 0.0)) / cores / 3600
        read_gbps = cores * mb_per_frame / frame_cpu_s / 1e3
        io_hours = frames * mb_per_frame / (FS_GBPS * 1e3) / 3600  # the whole input read once at FS_GBPS
        rows.append(
            {"nodes": n, "cpu_hours_wall": round(hours, 2), "read_GB_per_s_needed": round(read_gbps, 1),
             "driver_hours": round(driver_hours, 2), "hours_cpu_or_driver": round(max(hours, driver_hours), 2),
             f"hours_with_a_{FS_GBPS:g}_GB_per_s_fs": round(max(hours, io_hours, driver_hours), 2)}
        )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--frames", type=int, default=48, help="frames in the built scene")
    parser.add_argument("--unique", type=int, default=4, help="distinct full-size frames generated")
    parser.add_argument("--work", type=Path, default=None, help="work dir (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the four builds (medians)")
    args = parser.parse_args()
    if args.rounds < 1 or args.frames < 8 or args.unique < 3:
        parser.error("--rounds >= 1, --frames >= 8 (one window) and --unique >= 3 (the generator's minimum) are needed")

    from dataengine.synth import generate_scene

    work = args.work or Path(tempfile.mkdtemp(prefix="engine-cluster-"))
    source, root = work / "source", work / "eth3d"
    if not (source / "src" / "dslr_calibration_undistorted").is_dir():
        generate_scene(source, scene="src", images=args.unique, scale=1.0, seed=0)
    if not (root / SCENE).is_dir():
        replicate_scene(source / "src", root / SCENE, args.frames)
    if not (root / WARMUP).is_dir():
        replicate_scene(source / "src", root / WARMUP, 8)  # one 8-frame window
    info = machine_info()
    print(json.dumps(info), flush=True)

    # The four builds in interleaved rounds: a slow spell of a shared machine then hits every
    # executor alike, and the ratios are taken within each round (their median is reported).
    builds = {
        "local-1": lambda out: warm_then_timed(root, out, workers=1),
        "ray-1": lambda out: ray_build(root, out, nodes=1),
        "local-2": lambda out: warm_then_timed(root, out, workers=2),
        "ray-2": lambda out: ray_build(root, out, nodes=2),
    }
    rounds: list[dict] = [{} for _ in range(args.rounds)]
    for k, this_round in enumerate(rounds, 1):
        for name, build in builds.items():
            run = this_round[name] = build(work / f"out-{name}")
            run["frames_per_s"] = round(args.frames / run["wall_s"], 2)
            print(f"round {k}", name, run, flush=True)
    runs = {name: median_run([r[name] for r in rounds]) for name in builds}

    def per_round(a: str, b: str) -> list[float]:
        return [round(r[a]["wall_s"] / r[b]["wall_s"], 3) for r in rounds]

    n = args.frames
    per_frame_local = runs["local-1"]["wall_s"] / n
    overhead_rounds = [round(x - 1, 3) for x in per_round("ray-1", "local-1")]
    overhead_1 = statistics.median(overhead_rounds)
    summary = {
        "frames": n,
        "rounds": args.rounds,
        "identical_shards": len({r[name]["digest"] for r in rounds for name in builds}) == 1,
        "ray_overhead_1_node": round(overhead_1, 3),
        "ray_overhead_1_node_per_round": overhead_rounds,
        "scaling_ray_1_to_2_nodes_per_round": per_round("ray-1", "ray-2"),
        "scaling_local_1_to_2_workers_per_round": per_round("local-1", "local-2"),
        "ray_overhead_ms_per_frame_1_node": round(1000 * (runs["ray-1"]["wall_s"] - runs["local-1"]["wall_s"]) / n, 1),
        "ray_overhead_2_nodes_vs_local_2_workers": round(runs["ray-2"]["wall_s"] / runs["local-2"]["wall_s"] - 1, 3),
        "scaling_ray_1_to_2_nodes": round(statistics.median(per_round("ray-1", "ray-2")), 2),
        "scaling_local_1_to_2_workers": round(statistics.median(per_round("local-1", "local-2")), 2),
        "local_1_worker_s_per_frame": round(per_frame_local, 3),
        # CPU per frame of the whole machine: Ray's cost beyond the rendering, whatever the cores
        "machine_cpu_ms_per_frame": {k: round(1000 * r["machine_cpu_s"] / n, 1) for k, r in runs.items()},
        "driver_cpu_ms_per_frame": {k: round(1000 * r["driver_cpu_s"] / n, 1) for k, r in runs.items()},
        # one-off start-up: the warm-up build's wall beyond 8 frames at the warm rate
        "startup_s": {k: round(r["warmup_wall_s"] - 8 * r["wall_s"] / n, 2) for k, r in runs.items()},
    }
    summary["input_MB_per_frame"] = round(input_mb_per_frame(source / "src"), 1)
    driver_s = runs["ray-1"]["driver_cpu_s"] / n
    summary["paper_1e5_frames"] = paper_estimate(per_frame_local, overhead_1, summary["input_MB_per_frame"], driver_s)
    print(json.dumps({"runs": runs, "summary": summary}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"machine": info, "runs": runs, "rounds": rounds, "summary": summary}, indent=1)
        )


if __name__ == "__main__":
    main()
