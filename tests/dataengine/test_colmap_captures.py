"""`--format colmap`: any COLMAP project → shards, checked against the analytic truth of a synthetic
COLMAP project (dataengine.synth.colmap_project) and against pycolmap's camera models."""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import simplejpeg

from dataengine.errors import BadInputError
from dataengine.mvs import MvsConfig, consistency_filter, read_depth_map, write_depth_map
from dataengine.undistort import (
    SourceCamera,
    distort,
    pycolmap_cam_from_img,
    pycolmap_img_from_cam,
    undistort_map,
    undistorted_field,
)

SCENE = "capture"
BUILD_ARGS = [
    "--size",
    "98x70",
    "--frames",
    "3",
    "--stride",
    "2",
    "--workers",
    "2",
    "--quiet",
    "--samples-per-shard",
    "2",
]

# One calibration per model pycolmap knows (fallback models only where this pycolmap has them).
CAMERAS = {
    "SIMPLE_PINHOLE": [300, 160, 120],
    "PINHOLE": [300, 305, 161, 119],
    "SIMPLE_RADIAL": [300, 160, 120, -0.1],
    "RADIAL": [300, 160, 120, -0.1, 0.02],
    "OPENCV": [300, 302, 161, 119, -0.15, 0.04, 4e-4, -3e-4],
    "FULL_OPENCV": [300, 302, 161, 119, -0.12, 0.03, 4e-4, -3e-4, 0.002, 0.01, 0.003, 0.001],
    "OPENCV_FISHEYE": [150, 150, 160, 120, 0.03, -0.01, 0.002, -5e-4],
    "SIMPLE_RADIAL_FISHEYE": [150, 160, 120, 0.03],
    "RADIAL_FISHEYE": [150, 160, 120, 0.03, -0.01],
    "THIN_PRISM_FISHEYE": [200, 201, 160, 120, 0.05, 0.02, 1e-4, 2e-4, -0.01, 0.005, 1e-4, 2e-4],
    "FOV": [300, 300, 160, 120, 0.5],
    "SIMPLE_DIVISION": [300, 160, 120, -0.1],
    "DIVISION": [300, 302, 160, 120, -0.1],
    "SIMPLE_FISHEYE": [150, 160, 120],
    "FISHEYE": [150, 151, 160, 120],
    "EUCM": [200, 200, 160, 120, 0.5, 1.0],
    "RAD_TAN_THIN_PRISM_FISHEYE": [
        200,
        201,
        160,
        120,
        0.03,
        0.01,
        0.0,
        0.0,
        0.0,
        0.0,
        1e-4,
        2e-4,
        1e-4,
        0.0,
        2e-4,
        0.0,
    ],
}
KNOWN = {m for m in CAMERAS if hasattr(pycolmap.CameraModelId, m)}


def run_cli(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "dataengine", *map(str, args)], capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("colmap")
    run_cli("synth", "--format", "colmap", root, "--scene", SCENE, "--images", "8", "--scale", "0.15", "--seed", "3")
    return root


@pytest.fixture(scope="module")
def truth(project):
    from dataengine.synth import SceneGeometry

    data = json.loads((project / SCENE / "synth_colmap_truth.json").read_text())
    return SceneGeometry.from_dict(data["geometry"]), data


@pytest.fixture(scope="module")
def built(project, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("colmap_shards")
    run_cli("build", "--format", "colmap", "--root", project, "--out", out, *BUILD_ARGS)
    return out


def read_samples(shard_dir: Path):
    """(cameras, [rgb], depth) per sample of every shard."""
    out = []
    for tar in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(tar) as tf:
            mem = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
        for key in sorted({n.split(".")[0] for n in mem}):
            cams = json.loads(mem[f"{key}.cameras.json"])
            depth = np.load(io.BytesIO(mem[f"{key}.depth.npy"]))
            rgbs = [
                simplejpeg.decode_jpeg(mem[n])
                for n in sorted(n for n in mem if n.startswith(key + ".") and n.endswith(".jpg"))
            ]
            out.append((cams, rgbs, depth))
    return out


def tree_hashes(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


# ---- camera models -----------------------------------------------------------------------------
@pytest.mark.parametrize("model", sorted(KNOWN))
def test_projection_and_map_match_pycolmap(model):
    cam = SourceCamera(1, model, 320, 240, tuple(float(p) for p in CAMERAS[model]))
    rng = np.random.default_rng(0)
    xy = rng.uniform(-0.5, 0.5, (500, 2))
    ours, ref = distort(cam, xy), pycolmap_img_from_cam(cam, xy)
    # Same formula in double precision: agreement to ~1e-12 of the pixel magnitude.
    assert np.abs(ours - ref).max() <= 1e-9 * np.abs(ref).max(), model
    umap = undistort_map(cam, 64, 48)
    # Every map sample back through pycolmap's cam_from_img: the ray of its output position.
    k = umap.taps
    off = (np.arange(k) + 0.5) / k
    oy, ox = np.meshgrid(off, off, indexing="ij")
    jj, ii = np.meshgrid(np.arange(64, dtype=np.float64), np.arange(48, dtype=np.float64))
    xs = (jj[:, :, None] + ox.ravel()).ravel()
    ys = (ii[:, :, None] + oy.ravel()).ravel()
    K = umap.K
    want = np.c_[(xs - 0.5 - K[0, 2]) / K[0, 0], (ys - 0.5 - K[1, 2]) / K[1, 1]]
    src = (umap.coords.reshape(-1, 2).astype(np.float64) + 0.5) * umap.reduction
    got = pycolmap_cam_from_img(cam, src)
    # float32 coordinates (~1e-7 relative of a few hundred px) over a focal of >= 150 px.
    tol = 4 * np.finfo(np.float32).eps * max(cam.width, cam.height) / min(K[0, 0], 150.0) * 10
    assert np.abs(got - want).max() < max(tol, 1e-5), model
    # valid field: no sample leaves the photo; the field is the largest (1 % wider leaves it).
    assert (src >= 0.99).all() and (src[:, 0] <= cam.width - 0.99).all() and (src[:, 1] <= cam.height - 0.99).all()
    x0, x1, y0, y1 = umap.field
    grow = 0.01
    wider = [
        (x0 - grow * (x1 - x0), x1, y0, y1),
        (x0, x1 + grow * (x1 - x0), y0, y1),
        (x0, x1, y0 - grow * (y1 - y0), y1),
        (x0, x1, y0, y1 + grow * (y1 - y0)),
    ]
    outside = 0
    for wx0, wx1, wy0, wy1 in wider:
        border = np.concatenate(
            [np.c_[np.linspace(wx0, wx1, 200), np.full(200, v)] for v in (wy0, wy1)]
            + [np.c_[np.full(200, u), np.linspace(wy0, wy1, 200)] for u in (wx0, wx1)]
        )
        px = distort(cam, border)
        outside += int(
            (
                ~np.isfinite(px).all(axis=1)
                | (px[:, 0] < 1)
                | (px[:, 1] < 1)
                | (px[:, 0] > cam.width - 1)
                | (px[:, 1] > cam.height - 1)
            ).any()
        )
    assert outside >= 1, f"{model}: the blank-free field could grow on every side"


def test_output_K_fov_choices():
    cam = SourceCamera(1, "OPENCV", 320, 240, tuple(float(p) for p in CAMERAS["OPENCV"]))
    for fit in ("crop", "pad", "stretch"):
        umap = undistort_map(cam, 80, 40, fit=fit)
        x0, x1, y0, y1 = umap.field
        K = umap.K
        # The field's centre is the output's centre (OpenCV: (W - 1) / 2).
        assert K[0, 0] * (x0 + x1) / 2 + K[0, 2] == pytest.approx(39.5, abs=1e-9)
        span_x, span_y = 80 / K[0, 0], 40 / K[1, 1]
        if fit == "crop":
            assert span_x <= x1 - x0 + 1e-12 and span_y <= y1 - y0 + 1e-12 and K[0, 0] == K[1, 1]
        elif fit == "pad":
            assert span_x >= x1 - x0 - 1e-12 and span_y >= y1 - y0 - 1e-12 and K[0, 0] == K[1, 1]
        else:
            assert span_x == pytest.approx(x1 - x0) and span_y == pytest.approx(y1 - y0)
    fov = undistort_map(cam, 80, 60, fov="70")
    assert 2 * math.degrees(math.atan(40 / fov.K[0, 0])) == pytest.approx(70.0)
    full = undistorted_field(cam, "full")
    valid = undistorted_field(cam, "valid")
    assert full[0] < valid[0] and full[1] > valid[1] and full[2] < valid[2] and full[3] > valid[3]


# ---- depth maps and the consistency filter ------------------------------------------------------
def test_depth_map_format(tmp_path):
    rng = np.random.default_rng(1)
    depth = rng.uniform(1, 5, (7, 5)).astype(np.float32)
    write_depth_map(tmp_path / "a.bin", depth)
    raw = (tmp_path / "a.bin").read_bytes()
    assert raw.startswith(b"5&7&1&") and len(raw) == 6 + 4 * 35
    assert np.array_equal(read_depth_map(tmp_path / "a.bin"), depth)
    # COLMAP's layout for 2 channels: (width, height, channels) in column-major order.
    two = np.stack([depth, depth + 10], axis=2)  # (h, w, c)
    body = np.transpose(two, (1, 0, 2)).reshape(-1, order="F").astype("<f4").tobytes()
    (tmp_path / "b.bin").write_bytes(b"5&7&2&" + body)
    assert np.array_equal(read_depth_map(tmp_path / "b.bin"), depth)
    (tmp_path / "c.bin").write_bytes(b"5&7&1&" + body[:20])
    with pytest.raises(BadInputError, match="c.bin: header says 5x7x1"):
        read_depth_map(tmp_path / "c.bin")


def test_consistency_filter_vs_truth(project, truth):
    """The synthetic maps hold 2 % outliers (depth x 0.5-0.8): the filter removes them, keeps
    the good pixels and leaves a tail within the noise."""
    from dataengine.colmap_frames import _depth_view, neighbour_names
    from dataengine.colmap_project import load_colmap_scene

    geometry, data = truth
    unit = data["units_per_metre"]
    scene = load_colmap_scene(SCENE, project / SCENE)
    cfg = MvsConfig()
    neighbours = neighbour_names(scene, cfg)
    frame = scene.frames[0]
    ref = _depth_view(scene, frame.name)
    filtered, stats = consistency_filter(ref, [_depth_view(scene, n) for n in neighbours[frame.name]], cfg)
    K = ref.K.copy()
    K[:2, 2] -= 0.5
    z = geometry.zdepth(K, ref.R, ref.t / unit, ref.depth.shape[1], ref.depth.shape[0]) * unit
    raw_ok = (ref.depth > 0) & np.isfinite(z)
    raw_err = np.abs(ref.depth[raw_ok] - z[raw_ok]) / z[raw_ok]
    assert (raw_err > 0.1).mean() > 0.01  # the outliers are there before
    kept = (filtered > 0) & np.isfinite(z)
    err = np.abs(filtered[kept] - z[kept]) / z[kept]
    assert np.median(err) < 0.003 and np.percentile(err, 99) < 0.02
    assert (err > 0.1).sum() <= 0.05 * (raw_err > 0.1).sum()  # >= 95 % of outliers removed
    assert kept.sum() >= 0.6 * raw_ok.sum()
    assert 0.6 <= stats["mvs_kept_fraction"] <= 1.0


# ---- the build ----------------------------------------------------------------------------------
def _subpixel_shift(img: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Least-squares translation d with img(x) ~ ref(x - d) (linearised; grey, interior)."""
    a, b = img.mean(axis=2)[2:-2, 2:-2], ref.mean(axis=2)
    gy, gx = np.gradient(b)
    gx, gy, b = gx[2:-2, 2:-2], gy[2:-2, 2:-2], b[2:-2, 2:-2]
    G = np.c_[gx.ravel(), gy.ravel()]
    return -np.linalg.lstsq(G, (a - b).ravel(), rcond=None)[0]


def test_build_rgb_and_depth_vs_analytic_truth(built, truth, project):
    geometry, data = truth
    unit = data["units_per_metre"]
    manifest = json.loads((built / "manifest.json").read_text())
    stats = manifest["per_scene"][SCENE]
    assert stats["units"] == "arbitrary (COLMAP)" and stats["mvs_frames"] == 8
    assert set(stats["camera_models"]) == {"OPENCV", "SIMPLE_RADIAL", "OPENCV_FISHEYE"}
    samples = read_samples(built)
    assert samples
    seen, shares = set(), []
    for cams, rgbs, depth in samples:
        assert cams["units"] == "arbitrary (COLMAP)"
        H, W = cams["image_size"]
        for i, fr in enumerate(cams["frames"]):
            if fr["name"] in seen:
                continue
            seen.add(fr["name"])
            K, E = np.array(fr["K"]), np.array(fr["extrinsics"])
            R, t = E[:, :3], E[:, 3] / unit
            ref = geometry.render(K, R, t, W, H, supersample=4).astype(np.float64)
            img = rgbs[i].astype(np.float64)
            psnr = 10 * np.log10(255.0**2 / np.mean((img - ref) ** 2))
            assert psnr > 28.0, (fr["name"], psnr)
            shift = _subpixel_shift(img, ref)
            assert np.abs(shift).max() < 0.15, (fr["name"], shift)
            z = geometry.zdepth(K, R, t, W, H) * unit
            d = depth[i]
            ok = (d > 0) & np.isfinite(z)
            # Never the sky; the share of the surface depends on how many views confirm it (the wide
            # fisheye sees ground no other view does): checked over all frames below.
            assert ok.sum() > 0.15 * np.isfinite(z).sum() and not ((d > 0) & ~np.isfinite(z)).any()
            shares.append(ok.sum() / np.isfinite(z).sum())
            err = np.abs(d[ok] - z[ok]) / z[ok]
            assert np.median(err) < 0.003, fr["name"]
            assert (err > 0.05).mean() < 0.03, fr["name"]  # depth edges only
            assert fr["depth_source"] == "mvs"
    assert len(seen) >= 6 and np.median(shares) > 0.6


def test_masks_remove_supervision(built, truth, project):
    """COLMAP masks (0 = ignore) on the lowest fifth of two photos: no depth there."""
    from dataengine.colmap_project import load_colmap_scene
    from dataengine.undistort import pixel_sources

    _, data = truth
    scene = load_colmap_scene(SCENE, project / SCENE)
    frames = {f.name: f for f in scene.frames}
    checked = 0
    for cams, _, depth in read_samples(built):
        H, W = cams["image_size"]
        for i, fr in enumerate(cams["frames"]):
            if fr["name"] not in data["masked"]:
                continue
            cam = frames[fr["name"]].camera
            jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
            src = pixel_sources(cam, np.array(fr["K"]), jj.ravel(), ii.ravel()).reshape(H, W, 2)
            masked = src[:, :, 1] >= int(0.8 * cam.height) + 0.5
            assert masked.any() and not (depth[i][masked] > 0).any()
            assert (depth[i][~masked] > 0).mean() > 0.15  # the rest keeps its supervision
            checked += 1
    assert checked >= 1


def test_binary_and_text_models_give_identical_shards(project, built, tmp_path):
    from dataengine.synth.colmap_project import convert_model

    text = tmp_path / "text"
    shutil.copytree(project / SCENE, text / SCENE)
    convert_model(text / SCENE / "sparse" / "0", "text")
    convert_model(text / SCENE / "dense" / "sparse", "text")
    assert (text / SCENE / "sparse" / "0" / "images.txt").is_file()
    assert not (text / SCENE / "sparse" / "0" / "images.bin").exists()
    out = tmp_path / "shards"
    run_cli("build", "--format", "colmap", "--root", text, "--out", out, *BUILD_ARGS)
    assert tree_hashes(out) == tree_hashes(built)


def test_sparse_depth_with_metric_scale(project, truth, tmp_path):
    """--depth sparse --metric-scale 1/unit: depth and translations in metres, the units say so."""
    geometry, data = truth
    scale = 1.0 / data["units_per_metre"]
    out = tmp_path / "sparse"
    run_cli(
        "build",
        "--format",
        "colmap",
        "--root",
        project,
        "--out",
        out,
        "--depth",
        "sparse",
        "--metric-scale",
        repr(scale),
        *BUILD_ARGS,
    )
    n_points = 0
    for cams, _, depth in read_samples(out):
        assert cams["units"].startswith("metres")
        H, W = cams["image_size"]
        for i, fr in enumerate(cams["frames"]):
            assert fr["depth_source"] == "sparse"
            E = np.array(fr["extrinsics"])
            z = geometry.zdepth(np.array(fr["K"]), E[:, :3], E[:, 3], W, H)
            ok = depth[i] > 0
            n_points += int(ok.sum())
            # Sparse points carry 2 mm noise on ~10 m: 1 % covers noise and the pixel-centre offset.
            rel = np.abs(depth[i][ok] - z[ok]) / z[ok]
            assert np.median(rel) < 0.01
    assert n_points > 50


def test_covisible_windows(project, tmp_path):
    from dataengine.colmap_project import load_colmap_scene
    from dataengine.windows import WindowConfig, covisible_windows, frame_covisibility, scene_windows, window_overlap

    scene = load_colmap_scene(SCENE, project / SCENE)
    cov = frame_covisibility([f.observed for f in scene.frames])
    assert np.array_equal(cov, scene.covisibility())  # chunked = dense incidence product
    cfg = WindowConfig(frames=3, stride=1, val_fraction=0.25, mode="covisible")
    a, b = covisible_windows(SCENE, cov, cfg), covisible_windows(SCENE, cov.copy(), cfg)
    assert a == b  # deterministic
    train = {i for w in a["train"] for i in w}
    val = {i for w in a["val"] for i in w}
    assert a["train"] and a["val"] and not train & val  # leak-free
    assert all(len(set(w)) == 3 for w in a["train"] + a["val"])
    seq = scene_windows(SCENE, len(cov), cfg)
    assert len(seq["train"]) == len(a["train"]) and len(seq["val"]) == len(a["val"])
    assert window_overlap(a["train"], cov) >= window_overlap(seq["train"], cov)
    # Through the CLI: recorded in the manifest, frame-disjoint splits in the shards.
    run_cli(
        "build",
        "--format",
        "colmap",
        "--root",
        project,
        "--out",
        tmp_path / "cov0",
        "--windows",
        "covisible",
        "--depth",
        "sparse",
        *BUILD_ARGS,
    )
    manifest = json.loads((tmp_path / "cov0" / "manifest.json").read_text())
    assert manifest["options"]["windows"] == "covisible"
    names = {
        split: {
            f["name"]
            for cams, _, _ in read_samples(tmp_path / "cov0")
            if cams["split"] == split
            for f in cams["frames"]
        }
        for split in ("train", "val")
    }
    assert names["train"] and not names["train"] & names["val"]


# ---- bad input ----------------------------------------------------------------------------------
def test_bad_inputs_one_line_errors(project, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(project / SCENE, bad / SCENE)
    from dataengine.synth.colmap_project import convert_model

    convert_model(bad / SCENE / "sparse" / "0", "text")
    images_txt = bad / SCENE / "sparse" / "0" / "images.txt"
    lines = images_txt.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    good = lines[first]
    lines[first] = good.replace(good.split()[1], "not-a-number", 1)
    images_txt.write_text("\n".join(lines) + "\n")
    proc = run_cli("build", "--format", "colmap", "--root", bad, "--out", tmp_path / "o1", "--quiet", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"images.txt:{first + 1}" in proc.stderr and proc.stderr.strip().startswith("Error:")

    lines[first] = good
    images_txt.write_text("\n".join(lines) + "\n")
    photo = bad / SCENE / "images" / good.split()[-1]
    photo.unlink()
    proc = run_cli("build", "--format", "colmap", "--root", bad, "--out", tmp_path / "o2", "--quiet", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert str(photo) in proc.stderr and "missing" in proc.stderr

    shutil.rmtree(bad / SCENE / "dense")
    proc = run_cli(
        "build", "--format", "colmap", "--root", bad, "--out", tmp_path / "o3", "--depth", "mvs", "--quiet", check=False
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "--depth mvs" in proc.stderr


def test_synth_text_model_and_bad_model(tmp_path):
    from dataengine.colmap_project import load_colmap_scene

    run_cli(
        "synth",
        "--format",
        "colmap",
        tmp_path,
        "--scene",
        "t",
        "--images",
        "3",
        "--scale",
        "0.05",
        "--model-format",
        "text",
        "--no-dense",
        "--camera-models",
        "FULL_OPENCV,FOV,THIN_PRISM_FISHEYE",
    )
    scene = load_colmap_scene("t", tmp_path / "t", depth="sparse")
    assert scene.model_format == "text" and len(scene.frames) == 3
    assert {f.camera.model for f in scene.frames} == {"FULL_OPENCV", "FOV", "THIN_PRISM_FISHEYE"}
    assert all(f.observed.size > 0 for f in scene.frames)
    proc = run_cli("synth", "--format", "colmap", tmp_path / "x", "--camera-models", "NO_SUCH_MODEL", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "NO_SUCH_MODEL" in proc.stderr
