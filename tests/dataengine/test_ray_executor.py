"""`build --executor ray`: the per-frame work on a local Ray cluster gives the same bytes as a local build.

One `ray.cluster_utils.Cluster` per module (a head and a worker node, one CPU each, in this process);
every build is the real CLI in a fresh interpreter that joins it with `--ray-address`. Faults: a node
removed mid-build, the driver killed mid-build (`kill -9`), a bad frame, an --out the nodes do not see, no
Ray installed, an unreachable cluster.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import ray  # the `ray` extra is part of the test install: without it this module fails, never skips
from ray.cluster_utils import Cluster

FAULT_CLI = Path(__file__).parents[1] / "fault_cli.py"
SCENE = "raytest"
BUILD = ["--size", "28", "--frames", "2", "--stride", "2", "--samples-per-shard", "2", "--quiet"]
# Runs the CLI with `import ray` failing, as on a machine without the extra.
NO_RAY = "import sys; sys.modules['ray'] = None; from dataengine.cli import main; main(sys.argv[1:])"


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def eth3d_root(tmp_path_factory) -> Path:
    """An ETH3D root with one 16-image scene at scale 0.05 (laser GT, masks, sparse points)."""
    from dataengine.synth import generate_scene

    root = tmp_path_factory.mktemp("ray_eth3d")
    generate_scene(root, scene=SCENE, images=16, scale=0.05, seed=1)
    return root


def run_cli(args, fault: dict | None = None, no_ray: bool = False, timeout: float = 180):
    env = {**os.environ, **(fault or {})}
    env.pop("DATAENGINE_DEBUG", None)
    if no_ray:
        cmd = [sys.executable, "-c", NO_RAY]
    else:
        cmd = [sys.executable, str(FAULT_CLI)] if fault else [sys.executable, "-m", "dataengine"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=env, timeout=timeout)


def build_args(root: Path, out: Path, *extra) -> list:
    return ["build", "--root", root, "--out", out, "--scenes", SCENE, *BUILD, *extra]


def on_cluster(cluster) -> list[str]:
    return ["--executor", "ray", "--ray-address", cluster.address]


def outputs(folder: Path) -> dict[str, str]:
    """sha256 of every shard, the manifest and the dataset card."""
    names = [*sorted(p.name for p in folder.glob("*.tar")), "manifest.json", "README.md"]
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}


def error_lines(res) -> list[str]:
    assert "Traceback" not in res.stderr, res.stderr
    return [line for line in res.stderr.splitlines() if line.startswith("Error:")]


@pytest.fixture(scope="module")
def local_build(eth3d_root, tmp_path_factory) -> Path:
    """The reference, built with `import ray` failing: a local build never imports Ray."""
    out = tmp_path_factory.mktemp("local") / "shards"
    res = run_cli(build_args(eth3d_root, out, "--workers", "2"), no_ray=True)
    assert res.returncode == 0, res.stderr
    return out


def test_eth3d_ray_build_is_byte_identical_and_reports_the_cluster(cluster, eth3d_root, local_build, tmp_path):
    out = tmp_path / "ray"
    res = run_cli(build_args(eth3d_root, out, *on_cluster(cluster)))
    assert res.returncode == 0, res.stderr
    assert "ray: 2 nodes, 2 CPUs" in res.stderr
    assert outputs(out) == outputs(local_build)
    assert not (out / ".frame-cache").exists() and not list(out.rglob(".*.tmp*"))


def test_colmap_ray_build_is_byte_identical(cluster, tmp_path):
    from dataengine.synth.colmap_project import generate_colmap_project

    root = tmp_path / "colmap"
    generate_colmap_project(root, scene="capture", images=6, scale=0.1, seed=3)
    from dataengine.build import build_shards
    from dataengine.config import BuildConfig
    from dataengine.windows import WindowConfig

    local, on_ray = tmp_path / "local", tmp_path / "ray"
    windows = WindowConfig(2, 2)
    build_shards(BuildConfig(root, local, width=42, height=42, windows=windows, format="colmap", progress=False))
    args = ["build", "--format", "colmap", "--root", root, "--size", "42", "--frames", "2", "--stride", "2", "--quiet"]
    res = run_cli([*args, "--out", on_ray, *on_cluster(cluster)])
    assert res.returncode == 0, res.stderr
    assert outputs(on_ray) == outputs(local)


def test_worker_node_removed_mid_build_completes_identically(cluster, eth3d_root, local_build, tmp_path):
    """A third node joins; once the first frame is cached it is removed with its running task, which
    Ray reruns elsewhere."""
    node = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    out = tmp_path / "ray"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dataengine", *map(str, build_args(eth3d_root, out, *on_cluster(cluster)))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    cache = out / ".frame-cache"
    deadline = time.monotonic() + 120
    while not (cache.is_dir() and any(cache.rglob("*.npz"))):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.01)
    cached_when_removed = len(list(cache.rglob("*.npz")))
    cluster.remove_node(node)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    assert "ray: 3 nodes, 3 CPUs" in stderr
    assert cached_when_removed < 16  # the node went while frames were still rendering
    assert outputs(out) == outputs(local_build)


def test_driver_killed_mid_build_rerun_reuses_frames_and_is_identical(cluster, eth3d_root, local_build, tmp_path):
    """`kill -9` of the driver once the tasks (which cache their frames themselves: every node sees
    --out) have cached a first frame; the rerun reuses every cached frame and writes the same bytes."""
    out = tmp_path / "ray"
    args = [str(a) for a in build_args(eth3d_root, out, *on_cluster(cluster), "--keep-cache")]
    proc = subprocess.Popen([sys.executable, "-m", "dataengine", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cache = out / ".frame-cache"
    deadline = time.monotonic() + 120
    while not (cache.is_dir() and any(cache.rglob("*.npz"))):
        assert proc.poll() is None and time.monotonic() < deadline, "the build ended or hung before caching a frame"
        time.sleep(0.01)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -9
    finished: dict = {}
    while True:  # the dead driver's tasks are stopped by Ray; wait until no cache file appears any more
        time.sleep(0.5)
        now = {p: p.stat().st_mtime_ns for p in cache.rglob("*.npz")}
        if now == finished:
            break
        finished = now
    assert not (out / "manifest.json").exists() and not list(out.glob("*.tar"))
    # Killed once the first frame was cached; how many more the dead driver's tasks finish before Ray
    # stops them depends on the machine's speed, so only the reuse below is asserted.
    assert len(finished) >= 1
    again = run_cli(args)
    assert again.returncode == 0, again.stderr
    assert outputs(out) == outputs(local_build)
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # reused, not rendered again
    assert len(list(cache.rglob("*.npz"))) == 16 and not list(out.rglob(".*.tmp*"))


def test_driver_writes_the_cache_where_nodes_do_not_see_out(cluster, eth3d_root, local_build, tmp_path):
    """Where --out is not on a file system every node sees (the probe fails), the records come back
    through the object store and the driver writes the frame cache: same bytes."""
    from dataengine import executor
    from dataengine.build import build_shards

    driver_wrote = []
    real_save, real_check = executor.save_frame, executor.node_check
    ray.init(address=cluster.address, logging_level="ERROR")
    try:
        out = tmp_path / "shared"
        nodes = SimpleNamespace(root=eth3d_root, out=out)
        assert executor.check_nodes(nodes, [])  # one machine: every node sees it
        assert not list((out / ".frame-cache").iterdir())  # the probe is gone
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(executor, "node_check", lambda paths, probe, tok: (*real_check(paths, probe, tok)[:2], False))
            assert not executor.check_nodes(nodes, [])
            mp.setattr(executor, "save_frame", lambda path, rec: (driver_wrote.append(path), real_save(path, rec)))
            out = tmp_path / "driver"
            build_shards(local_config(eth3d_root, out, executor="ray", ray_address=cluster.address))
    finally:
        ray.shutdown()
    assert len(driver_wrote) == 16  # the driver cached every frame itself
    assert outputs(out) == outputs(local_build)


def local_config(root: Path, out: Path, **kw):
    """BUILD's options as a BuildConfig: the local reference runs in this process (no interpreter start)."""
    from dataengine.config import BuildConfig
    from dataengine.windows import WindowConfig

    return BuildConfig(
        root=root, out=out, scenes=(SCENE,), width=28, height=28, windows=WindowConfig(2, 2),
        samples_per_shard=2, progress=False, **kw,
    )  # fmt: skip


def test_bad_frame_fails_or_is_skipped_exactly_as_locally(cluster, eth3d_root, tmp_path):
    from dataengine.build import build_shards
    from dataengine.cli import one_line_error
    from dataengine.errors import BadInputError

    root = tmp_path / "eth3d"
    shutil.copytree(eth3d_root / SCENE, root / SCENE)
    image = sorted((root / SCENE / "images" / "dslr_images_undistorted").iterdir())[5]
    image.write_bytes(image.read_bytes()[:3000])
    with pytest.raises(BadInputError) as local_error:
        build_shards(local_config(root, tmp_path / "fail_local"))
    build_shards(local_config(root, tmp_path / "skip_local", skip_bad=True))

    failed = run_cli(build_args(root, tmp_path / "fail_ray", *on_cluster(cluster)))
    assert failed.returncode == 1
    assert error_lines(failed) == [one_line_error(local_error.value)]
    assert str(image) in failed.stderr and "JPEG" in failed.stderr
    assert not (tmp_path / "fail_ray" / "manifest.json").exists()
    skipped = run_cli(build_args(root, tmp_path / "skip_ray", *on_cluster(cluster), "--skip-bad"))
    assert skipped.returncode == 0, skipped.stderr
    assert outputs(tmp_path / "skip_ray") == outputs(tmp_path / "skip_local")
    assert f'"frame": "{image.name}"' in (tmp_path / "skip_ray" / "manifest.json").read_text()


class WorkerKiller:
    """A "frame" whose unpickling ends the worker process (os._exit), every time Ray retries it."""

    name = "DSC_crash.JPG"

    def __reduce__(self):
        return os._exit, (3,)


def test_a_node_without_the_frame_cache_sends_its_work_back(eth3d_root, tmp_path):
    """A node that does not see --out (one that joined after the check, without the mount) neither
    caches a frame nor writes a shard on its own disk: the frame record goes back to the driver, and
    the shard task returns None for the driver to write it (executor._ray_outcomes / shard_records)."""
    from dataengine import executor
    from dataengine.eth3d import load_scene
    from dataengine.frames import CACHE_DIR, load_frame

    out = tmp_path / "out"
    cfg = local_config(eth3d_root, out)
    scene = load_scene(eth3d_root / SCENE, "auto")
    frame = scene.frames[0]
    path = out / CACHE_DIR / SCENE / "frame.npz"
    result, bad = executor.render_to_cache(cfg.source, frame, scene, cfg, path)
    assert bad is None and result is not None and not out.exists()
    chunk = [(SCENE, [path], [frame], [0], 0)]  # a sample whose cached frame this node does not see
    assert executor.shard_on_node(cfg, "train", "train-00000.tar", chunk, {}) is None and not out.exists()
    path.parent.mkdir(parents=True)  # the node sees the driver's cache: it caches the frame itself
    assert executor.render_to_cache(cfg.source, frame, scene, cfg, path) == (None, None)
    cached = load_frame(path)
    assert cached.jpeg == result.jpeg and np.array_equal(cached.depth, result.depth)


def test_a_failing_shard_task_fails_the_build_as_locally(cluster, eth3d_root, local_build, tmp_path):
    """The shards are Ray tasks here (every node sees --out): one that cannot be written (a folder in
    its place) fails the build with the local error naming it, the shards this build wrote are removed,
    and the rerun writes the same bytes."""
    from dataengine.build import build_shards

    out = tmp_path / "ray"
    cfg = local_config(eth3d_root, out, executor="ray", ray_address=cluster.address, keep_cache=True)
    blocker = out / "train-00001.tar"
    ray.init(address=cluster.address, logging_level="ERROR")
    try:
        build_shards(cfg)
        for shard in out.glob("*.tar"):
            shard.unlink()
        blocker.mkdir()
        with pytest.raises(OSError) as failed:
            build_shards(cfg)
        assert str(blocker) in str(failed.value)  # os.replace names the tmp file and the shard
        assert not [p for p in out.glob("*.tar") if p.is_file()] and not (out / "manifest.json").exists()
        blocker.rmdir()
        build_shards(cfg)
    finally:
        ray.shutdown()
    assert outputs(out) == outputs(local_build)


def test_node_input_check_and_bounded_retries(cluster, tmp_path, monkeypatch):
    """The up-front check names the node and the path it cannot read; a frame whose worker keeps
    dying is retried TASK_RETRIES times, then fails the build with one error naming the frame."""
    from dataengine import executor

    missing = tmp_path / "not-mounted"
    scene = SimpleNamespace(name="crashy", directory=tmp_path, frames=[])
    cfg = SimpleNamespace(root=tmp_path, ray_address=cluster.address, workers=0, skip_bad=False)
    monkeypatch.setattr(executor, "TASK_RETRIES", 1)
    ray.init(address=cluster.address, logging_level="ERROR")
    try:
        ips = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
        with pytest.raises(executor.ClusterError) as unseen:
            executor.check_nodes(SimpleNamespace(root=missing), [])
        executor.check_nodes(cfg, [scene])
        with pytest.raises(executor.ClusterError) as crashed:
            ray_cfg = SimpleNamespace(**vars(cfg), executor="ray", source=None)  # the task dies before it renders
            list(executor.frame_outcomes(ray_cfg, [(scene, WorkerKiller(), None)]))
    finally:
        ray.shutdown()
    text = str(unseen.value)
    assert f"cannot read {missing} (--root {missing})" in text and "same path" in text
    assert any(text.startswith(f"Ray node {ip} ({socket.gethostname()}): ") for ip in ips), text
    text = str(crashed.value)
    assert text.startswith("frame crashy/DSC_crash.JPG: its Ray task failed 2 times (") and "rerun" in text, text


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["no_ray", "unreachable", "unreachable_client"])
def test_no_ray_or_no_cluster_is_one_error_line(case, eth3d_root, tmp_path):
    port = closed_port()
    address = {"no_ray": None, "unreachable": f"127.0.0.1:{port}", "unreachable_client": f"ray://127.0.0.1:{port}"}
    extra = ["--executor", "ray"] + (["--ray-address", address[case]] if address[case] else [])
    start = time.monotonic()
    res = run_cli(build_args(eth3d_root, tmp_path / "out", *extra), no_ray=case == "no_ray")
    assert res.returncode == 1
    errors = error_lines(res)
    assert len(errors) == 1, res.stderr
    if case == "no_ray":
        assert "Ray is not installed" in errors[0] and "pip install 'vggt-eth3d-lora[ray]'" in errors[0]
    else:
        assert f"--ray-address {address[case]}: no Ray cluster answers at 127.0.0.1:{port}" in errors[0]
        assert "ray start --head" in errors[0]
    assert time.monotonic() - start < 30
    assert not (tmp_path / "out").exists()  # refused before anything was read or written
