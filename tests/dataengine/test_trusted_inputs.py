"""Issue 22, engine side: held-out builds as documented, a frame cache that cannot go stale, photo
modes, COLMAP poses / calibrations / truncated models, the shared depth range rule and rigs —
through the real CLI (fresh interpreters), on tiny synthetic scenes."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TINY = ["--size", "28", "--samples-per-shard", "1", "--workers", "1", "--quiet"]


def run_cli(*args, check=True, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "dataengine", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def one_error(proc: subprocess.CompletedProcess, *parts: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = [t for t in proc.stderr.splitlines() if t.strip() and not t.startswith("WARNING ")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    for part in parts:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    return lines[0]


# ------------------------------------------------------------------------------ fixtures (tiny, shared)
@pytest.fixture(scope="module")
def eth3d_short(tmp_path_factory) -> Path:
    """An ETH3D root with two short scenes (10 and 13 frames), far fewer than the held-out --frames 100."""
    from dataengine.synth import generate_scene

    root = tmp_path_factory.mktemp("eth3d_short")
    generate_scene(root, scene="short_a", images=10, scale=0.03, seed=1)
    generate_scene(root, scene="short_b", images=13, scale=0.03, seed=2)
    return root


@pytest.fixture(scope="module")
def colmap_project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("colmap22")
    run_cli("synth", "--format", "colmap", root, "--scene", "cap", "--images", "6", "--scale", "0.1", "--seed", "5")
    return root


def read_manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


# ------------------------------------------------------------------------------ 1. held-out builds
def test_heldout_uniform_100_on_short_eth3d_scenes_takes_every_frame(eth3d_short, tmp_path):
    """`make heldout-shards`' all-frames build: --sampling uniform --frames 100 on scenes of 10 and 13 frames."""
    out = tmp_path / "all_frames"
    run_cli("build", "--root", eth3d_short, "--out", out, "--scenes", "short_a,short_b", "--sampling", "uniform",
            "--frames", "100", *TINY)  # fmt: skip
    manifest = read_manifest(out)
    assert list(manifest["splits"]) == ["test"] and manifest["splits"]["test"]["samples"] == 2
    per = manifest["per_scene"]
    assert (per["short_a"]["test_frames"], per["short_b"]["test_frames"]) == (10, 13)
    assert (per["short_a"]["scene_frames"], per["short_b"]["scene_frames"]) == (10, 13)
    import tarfile

    counts = {}
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".cameras.json"):
                    cams = json.loads(tf.extractfile(m).read())
                    counts[cams["scene"]] = [f["index"] for f in cams["frames"]]
    assert counts == {"short_a": list(range(10)), "short_b": list(range(13))}
    assert "OK" in run_cli("verify", out).stdout
    # the random 10-frame protocol too (10 of 10 and 10 of 13 frames)
    out10 = tmp_path / "random10"
    run_cli("build", "--root", eth3d_short, "--out", out10, "--scenes", "short_a,short_b", "--sampling", "random",
            "--frames", "10", "--seed", "0", *TINY)  # fmt: skip
    assert [s["test_frames"] for s in read_manifest(out10)["per_scene"].values()] == [10, 10]


def test_colmap_evaluation_build(colmap_project, tmp_path):
    """`--format colmap --sampling uniform|random` used to render every frame and end in `Error: train`."""
    for mode, frames, expect in (("uniform", 100, 6), ("random", 4, 4)):
        out = tmp_path / mode
        run_cli("build", "--format", "colmap", "--root", colmap_project, "--out", out, "--sampling", mode,
                "--frames", frames, *TINY)  # fmt: skip
        manifest = read_manifest(out)
        assert list(manifest["splits"]) == ["test"]
        assert manifest["per_scene"]["cap"]["test_frames"] == expect
        assert "`test` only" in (out / "README.md").read_text()
        assert "OK" in run_cli("verify", out).stdout


# ------------------------------------------------------------------------------ 2. the frame cache
def cached_frames(out: Path) -> dict[str, set[str]]:
    """Frame stem → cache file names (one per distinct key ever rendered)."""
    names: dict[str, set[str]] = {}
    for p in (out / ".frame-cache").rglob("*.npz"):
        names.setdefault(p.name.split(".")[0], set()).add(p.name)
    return names


def _rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    """Replace a file's bytes but restore its size-independent mtime (as `cp -p` / `touch -d` would)."""
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _edit_line(path: Path, first_field: str, edit) -> None:
    lines = path.read_text().splitlines(keepends=True)
    i = next(i for i, t in enumerate(lines) if not t.startswith("#") and t.split()[:1] == [first_field])
    tok = lines[i].split()
    lines[i] = " ".join(edit(tok)) + "\n"
    path.write_text("".join(lines))


def test_frame_cache_key_covers_every_input(tmp_path):
    """Change each input of one frame in turn, rebuild with --keep-cache: exactly the frames whose
    bytes depend on it render again; in the end the cached build equals a fresh one byte for byte."""
    from dataengine.synth import generate_scene

    root = tmp_path / "eth3d"
    generate_scene(root, scene="c", images=4, scale=0.03, seed=0)
    scene = root / "c"
    calib = scene / "dslr_calibration_undistorted"
    photos = sorted((scene / "images" / "dslr_images_undistorted").iterdir())
    stems = [p.stem for p in photos]
    out = tmp_path / "out"
    args = ["build", "--root", root, "--out", out, "--scenes", "c", "--frames", "2", "--stride", "2", "--keep-cache",
            *TINY]  # fmt: skip

    def rebuild(*extra) -> set[str]:
        before = cached_frames(out)
        run_cli(*args, *extra)
        after = cached_frames(out)
        return {s for s in after if after[s] - before.get(s, set())}

    assert rebuild() == set(stems)
    assert rebuild() == set()  # unchanged inputs reuse the cache
    target = photos[1]
    # the photo: other bytes, same size, mtime restored
    from PIL import Image

    img = np.asarray(Image.open(target))
    buf = io.BytesIO()
    Image.fromarray(255 - img).save(buf, format="JPEG", quality=90)
    _rewrite_keeping_mtime(target, buf.getvalue())
    assert rebuild() == {target.stem}
    # the laser depth map
    gt = scene / "ground_truth_depth" / "dslr_images" / target.name
    depth = np.fromfile(gt, "<f4")
    depth[depth > 0] *= 1.01
    _rewrite_keeping_mtime(gt, depth.tobytes())
    assert rebuild() == {target.stem}
    # the mask
    mask = scene / "masks_for_images" / "dslr_images" / f"{target.stem}.png"
    if mask.exists():
        m = np.asarray(Image.open(mask)).copy()
        m[: m.shape[0] // 2] = 1
        Image.fromarray(m).save(mask)
        assert rebuild() == {target.stem}
    # the calibration (focal length of the target's camera: every frame of that camera) and one pose
    image_lines = [t.split() for t in (calib / "images.txt").read_text().splitlines() if t.upper().endswith(".JPG")]
    image_id, camera_id = next((t[0], t[8]) for t in image_lines if t[-1].endswith(target.name))
    same_camera = {Path(t[-1]).stem for t in image_lines if t[8] == camera_id}
    _edit_line(calib / "cameras.txt", camera_id, lambda t: t[:4] + [repr(float(t[4]) * 1.01)] + t[5:])
    assert rebuild() == same_camera
    _edit_line(calib / "images.txt", image_id, lambda t: t[:5] + [repr(float(t[5]) + 0.01)] + t[6:])
    for other in ("dslr_calibration_jpg",):  # the distorted calibration must agree on poses
        _edit_line(scene / other / "images.txt", image_id, lambda t: t[:5] + [repr(float(t[5]) + 0.01)] + t[6:])
    assert rebuild() == {target.stem}
    # sparse depth: move one point (same count): every sparse frame's z-buffer reads it
    assert rebuild("--depth", "sparse") == set(stems)
    first_point = next(t.split()[0] for t in (calib / "points3D.txt").read_text().splitlines() if t[:1] != "#")
    _edit_line(calib / "points3D.txt", first_point, lambda t: [t[0], repr(float(t[1]) + 0.5)] + t[2:])
    assert rebuild("--depth", "sparse") == set(stems)
    # an option
    assert rebuild("--depth", "sparse", "--size", "42") == set(stems)
    # the cached build is the fresh build
    fresh = tmp_path / "fresh"
    run_cli("build", "--root", root, "--out", fresh, "--scenes", "c", "--frames", "2", "--stride", "2",
            "--depth", "sparse", *TINY, "--size", "42")  # fmt: skip
    tars = sorted(p.name for p in fresh.glob("*.tar"))
    assert tars and all((out / n).read_bytes() == (fresh / n).read_bytes() for n in tars)
