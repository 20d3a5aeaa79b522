"""Data engine end to end on a synthetic ETH3D scene with analytic truth (dataengine.synth)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import simplejpeg

from dataengine import executor as executor_mod
from dataengine.build import build_shards
from dataengine.camera import Camera
from dataengine.config import BuildConfig
from dataengine.errors import BadInputError
from dataengine.eth3d import load_scene
from dataengine.frames import process_frame as _process_frame
from dataengine.images import fit_geometry, output_intrinsics
from dataengine.windows import WindowConfig

SCENE = "synth_facade"


@pytest.fixture(scope="module")
def eth3d_root(tmp_path_factory):
    from dataengine.synth import generate_scene

    root = tmp_path_factory.mktemp("eth3d")
    generate_scene(root, scene=SCENE, images=12, scale=0.12, seed=0)
    return root


@pytest.fixture(scope="module")
def geometry(eth3d_root):
    from dataengine.synth import SceneGeometry

    return SceneGeometry.from_scene_dir(eth3d_root / SCENE)


def process_frame(frame, scene, cfg):
    """The per-frame work as the executors run it (the config's source)."""
    return _process_frame(cfg.source, frame, scene, cfg)


def small_config(root, out, **kw) -> BuildConfig:
    base = dict(
        root=root,
        out=out,
        scenes=(SCENE,),
        width=64,
        height=56,
        windows=WindowConfig(frames=4, stride=2),
        samples_per_shard=2,
        progress=False,
    )
    base.update(kw)
    return BuildConfig(**base)


@pytest.fixture(scope="module")
def built(eth3d_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    return out, build_shards(small_config(eth3d_root, out, workers=2))


def read_split(out: Path, split: str) -> list[dict]:
    import webdataset as wds

    urls = sorted(str(p) for p in out.glob(f"{split}-*.tar"))
    return list(wds.WebDataset(urls, shardshuffle=False).decode()) if urls else []


def same_manifest(a: dict, b: dict) -> bool:
    """Equal apart from the git sha (other commits may land while the suite runs)."""

    def strip(m):
        return {**m, "engine": {**m["engine"], "git_sha": None}}

    return strip(a) == strip(b)


def relative_errors(depth, truth):
    valid = depth > 0
    truth = np.where(np.isfinite(truth), truth, 1e9)  # a hit where the centre ray misses = error
    return np.abs(depth[valid] - truth[valid]) / truth[valid]


# ------------------------------------------------------------------------------------------ laser depth
def test_laser_depth_matches_analytic_truth_and_catches_thin_prism_mistakes(eth3d_root, geometry):
    scene = load_scene(eth3d_root / SCENE)
    cfg = small_config(eth3d_root, eth3d_root / "unused", width=224, height=160)
    frames = [f for f in scene.frames if f.depth_source == "laser"][:6]
    assert len(frames) == 6 and any(f.mask_path for f in frames) and any(not f.mask_path for f in frames)

    def errors(transform=None):
        out = []
        for frame in frames:
            if transform is not None:
                frame = replace(frame, prism=transform(frame.prism))
            r = process_frame(frame, scene, cfg)
            out.append(relative_errors(r.depth, geometry.zdepth(r.K, frame.rotation, frame.translation, 224, 160)))
            plane_fractions.append(r.meta["plane_fraction"])
        return np.concatenate(out)

    plane_fractions = []
    err = errors()
    assert cfg.laser.pooling == "plane" and min(plane_fractions) > 0.6  # the default is the plane fit
    assert len(err) > 100_000
    assert np.median(err) <= 0.001
    assert np.percentile(err, 95) <= 0.01
    assert np.mean(err <= 0.01) >= 0.95

    def pinhole_only(cam):  # forgetting the distortion entirely
        p = cam.params.copy()
        p[4:] = 0.0
        return Camera(cam.camera_id, cam.model, cam.width, cam.height, p)

    bad = errors(pinhole_only)
    assert np.percentile(bad, 95) > 0.05 and np.mean(bad <= 0.01) < 0.8


def test_mask_values_exclude_gt(eth3d_root):
    scene = load_scene(eth3d_root / SCENE)
    frame = next(f for f in scene.frames if f.mask_path is not None)
    cfg = small_config(eth3d_root, eth3d_root / "unused", width=112, height=80)
    with_mask = process_frame(frame, scene, cfg).depth
    without = process_frame(replace(frame, mask_path=None), scene, cfg).depth
    assert np.count_nonzero(without) > np.count_nonzero(with_mask)  # masked GT was dropped
    # Elsewhere the depth stays (plane fits next to masked points see fewer points: tiny changes).
    both = (with_mask > 0) & (without > 0)
    assert np.mean(np.abs(with_mask[both] / without[both] - 1) < 0.005) > 0.95


# ------------------------------------------------------------------------------------------ sparse depth
def test_sparse_depth_equals_truth_and_drops_occluded_points(eth3d_root, geometry):
    scene = load_scene(eth3d_root / SCENE, depth="sparse")
    assert all(f.depth_source == "sparse" for f in scene.frames)
    cfg = small_config(eth3d_root, eth3d_root / "unused", width=224, height=160, depth="sparse")
    n_checked = n_occluded = 0
    for frame in scene.frames[:6]:
        geom = fit_geometry(frame.pinhole.width, frame.pinhole.height, 224, 160, "crop")
        K = output_intrinsics(frame.pinhole, geom)
        r = process_frame(frame, scene, cfg)
        truth = geometry.zdepth(K, frame.rotation, frame.translation, 224, 160)
        if len(frame.observed) == 0:  # the image with an empty POINTS2D line observes nothing
            assert not r.depth.any()
            continue
        err = relative_errors(r.depth, truth)
        assert len(err) > 20 and np.median(err) < 0.005 and np.mean(err < 0.02) > 0.95
        # No point that is truly hidden from this camera may be written (track + z-buffer test).
        pts = scene.points_xyz
        cam = pts @ frame.rotation.T + frame.translation
        uv = cam[:, :2] / np.maximum(cam[:, 2:], 1e-9) @ K[:2, :2].T + K[:2, 2]
        px = np.floor(uv + 0.5).astype(int)
        inside = (cam[:, 2] > 0) & (px[:, 0] >= 0) & (px[:, 1] >= 0) & (px[:, 0] < 224) & (px[:, 1] < 160)
        hidden = inside & ~geometry.visible(pts, -frame.rotation.T @ frame.translation, tolerance=0.02)
        written = r.depth[px[hidden, 1], px[hidden, 0]] == cam[hidden, 2].astype(np.float32)
        assert not written.any()
        n_occluded += hidden.sum()
        n_checked += inside.sum()
    assert n_occluded > 10  # the test is not vacuous: occluded points do project into the frames


# ------------------------------------------------------------------------------------------ images / K
@pytest.mark.parametrize("fit", ["crop", "pad", "stretch"])
def test_output_image_matches_analytic_render_with_stored_K(eth3d_root, geometry, fit):
    scene = load_scene(eth3d_root / SCENE)
    cfg = small_config(eth3d_root, eth3d_root / "unused", width=96, height=80, fit=fit)

    def diff(frame, img, inner, K):
        ren = geometry.render(K, frame.rotation, frame.translation, 96, 80, supersample=4)
        return np.abs(img[inner] - ren[inner]).mean()

    for frame in scene.frames[:2]:
        r = process_frame(frame, scene, cfg)
        img = simplejpeg.decode_jpeg(r.jpeg).astype(float)
        geom = fit_geometry(frame.pinhole.width, frame.pinhole.height, 96, 80, fit)
        x0, y0, x1, y1 = geom.content_rect
        inner = (slice(int(np.ceil(y0)), int(y1)), slice(int(np.ceil(x0)), int(x1)))
        good = diff(frame, img, inner, r.K)
        shifted = r.K.copy()
        shifted[0, 2] += 0.5
        assert good < 6.0
        assert diff(frame, img, inner, shifted) > 1.5 * good  # half a pixel of K error is clearly visible
        if fit == "pad":
            assert y0 > 0 and img[: int(y0)].mean() < 2.0  # padding is black (up to JPEG ringing)


# ------------------------------------------------------------------------------------------ shards
def test_shards_decode_with_stock_webdataset_and_reproject_consistently(built):
    out, manifest = built
    train, val = read_split(out, "train"), read_split(out, "val")
    assert len(train) == manifest["splits"]["train"]["samples"] > 0
    assert len(val) == manifest["splits"]["val"]["samples"] > 0
    s = train[0]
    assert s["__key__"] == f"{SCENE}_00000"
    assert isinstance(s["f0.jpg"], bytes) and s["depth.npy"].shape == (4, 56, 64)
    assert s["depth.npy"].dtype == np.float32 and s["mask.npy"].dtype == np.uint8
    np.testing.assert_array_equal(s["mask.npy"], (s["depth.npy"] > 0).astype(np.uint8))
    cams = s["cameras.json"]
    assert cams["units"] == "metres" and "centre of the top-left pixel" in cams["pixel_convention"]
    # Frame i's depth, lifted with its K/extrinsics and projected into frame j, hits j's depth.
    ok = total = 0
    depth = s["depth.npy"]
    for i, j in [(0, 1), (1, 2), (2, 3), (0, 2)]:
        fi, fj = cams["frames"][i], cams["frames"][j]
        Ki, Kj = np.array(fi["K"]), np.array(fj["K"])
        Ei, Ej = np.array(fi["extrinsics"]), np.array(fj["extrinsics"])
        v, u = np.nonzero(depth[i])
        z = depth[i][v, u]
        xc = np.linalg.solve(Ki, np.stack([u, v, np.ones_like(u)]).astype(float)) * z
        xw = Ei[:, :3].T @ (xc - Ei[:, 3:])
        xj = Ej[:, :3] @ xw + Ej[:, 3:]
        pj = Kj @ xj
        uj, vj = np.round(pj[0] / pj[2]).astype(int), np.round(pj[1] / pj[2]).astype(int)
        inside = (xj[2] > 0) & (uj >= 0) & (vj >= 0) & (uj < 64) & (vj < 56)
        dj = depth[j][vj[inside], uj[inside]]
        has = dj > 0
        rel = np.abs(dj[has] - xj[2][inside][has]) / dj[has]
        ok += int(np.sum(rel < 0.03))
        total += int(has.sum())
    assert total > 2000 and ok / total > 0.85


def test_split_is_frame_disjoint_and_manifest_complete(built):
    out, manifest = built
    names = {
        split: {f["name"] for s in read_split(out, split) for f in s["cameras.json"]["frames"]}
        for split in ("train", "val")
    }
    assert names["train"].isdisjoint(names["val"])
    assert max(names["train"]) < min(names["val"])  # val = the last frames in capture order
    stats = manifest["per_scene"][SCENE]
    assert stats["frames"] == 12 and stats["val_frames"] == 4 and stats["train_frames"] == 8
    assert manifest["format"] == "eth3d-vggt-shards/1" and manifest["license"] == "CC BY-NC-SA 4.0"
    assert manifest["options"]["laser"]["pooling"] == "plane"  # the depth estimator is recorded
    assert len(manifest["engine"]["git_sha"]) in (40, 7) or manifest["engine"]["git_sha"] == "unknown"
    assert "CC BY-NC-SA 4.0" in (out / "README.md").read_text()
    assert "Schöps" in (out / "README.md").read_text() or 'Sch\\"ops' in (out / "README.md").read_text()


def test_byte_reproducible_and_resumes_after_interruption(built, eth3d_root, tmp_path, monkeypatch):
    out, manifest = built
    again = tmp_path / "again"
    assert same_manifest(build_shards(small_config(eth3d_root, again, workers=1)), manifest)
    for shard in sorted(out.glob("*.tar")):
        assert (again / shard.name).read_bytes() == shard.read_bytes()

    resumed = tmp_path / "resumed"
    real = executor_mod.process_frame
    calls = []

    def dies_after_five(source, frame, scene, cfg):
        if len(calls) >= 5:
            raise KeyboardInterrupt("simulated kill")
        calls.append(frame.name)
        return real(source, frame, scene, cfg)

    monkeypatch.setattr(executor_mod, "process_frame", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        build_shards(small_config(eth3d_root, resumed, workers=1))
    assert not list(resumed.glob("*.tar")) and not (resumed / "manifest.json").exists()
    monkeypatch.setattr(executor_mod, "process_frame", lambda so, f, s, c: (calls.append(f.name), real(so, f, s, c))[1])
    assert same_manifest(build_shards(small_config(eth3d_root, resumed, workers=1)), manifest)
    assert len(calls) == 12  # 5 before the kill + the 7 that were missing, none twice
    for shard in sorted(out.glob("*.tar")):
        assert (resumed / shard.name).read_bytes() == shard.read_bytes()


def test_scene_disjoint_split_and_cli_inspect_verify(built, eth3d_root, tmp_path):
    out, _ = built
    env_cmd = [sys.executable, "-m", "dataengine"]
    res = subprocess.run(
        env_cmd + ["inspect", str(out), "--png", str(tmp_path / "sheet.png")], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert "depth: shape (4, 56, 64) dtype float32" in res.stdout
    from PIL import Image

    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.format == "PNG" and sheet.size[0] > 3 * 64 and sheet.size[1] > 4 * 56  # panels + labels
    assert subprocess.run(env_cmd + ["verify", str(out)], capture_output=True).returncode == 0
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    shard = sorted(broken.glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0xFF
    shard.write_bytes(bytes(data))
    res = subprocess.run(env_cmd + ["verify", str(broken)], capture_output=True, text=True)
    assert res.returncode == 1 and "sha256" in res.stderr
    with pytest.raises(BadInputError, match="the train split would be empty"):  # all scenes held out
        build_shards(
            small_config(
                eth3d_root, tmp_path / "scene_split", windows=WindowConfig(frames=4, stride=2, val_scenes=(SCENE,))
            )
        )
    assert not (tmp_path / "scene_split" / ".frame-cache").exists()  # refused before rendering
    two = tmp_path / "two_scenes"
    shutil.copytree(eth3d_root / SCENE, two / SCENE)
    shutil.copytree(eth3d_root / SCENE, two / "synth_other")
    m = build_shards(
        small_config(
            two,
            tmp_path / "scene_split",
            scenes=(SCENE, "synth_other"),
            windows=WindowConfig(frames=4, stride=2, val_scenes=("synth_other",)),
        )
    )
    assert m["splits"]["train"]["samples"] == 5 and m["splits"]["val"]["samples"] == 5


# ------------------------------------------------------------------------------------------ bad inputs
@pytest.fixture
def scene_copy(eth3d_root, tmp_path):
    root = tmp_path / "eth3d"
    shutil.copytree(eth3d_root / SCENE, root / SCENE)
    return root, root / SCENE


def first_image(scene_dir: Path, folder="images/dslr_images_undistorted") -> Path:
    return sorted((scene_dir / folder).iterdir())[3]


def _truncate_jpeg(scene):
    p = first_image(scene)
    p.write_bytes(p.read_bytes()[:5000])
    return p, "corrupt or truncated JPEG"


def _wrong_image_size(scene):
    p = first_image(scene)
    img = simplejpeg.decode_jpeg(p.read_bytes())
    p.write_bytes(simplejpeg.encode_jpeg(np.ascontiguousarray(img[:-2]), quality=90))
    return p, "but cameras.txt camera"


def _wrong_depth_size(scene):
    p = first_image(scene, "ground_truth_depth/dslr_images")
    p.write_bytes(p.read_bytes()[:-4])
    return p, "depth file has"


def _nan_depth(scene):
    p = first_image(scene, "ground_truth_depth/dslr_images")
    d = np.fromfile(p, "<f4")
    d[1234] = np.nan
    d.tofile(p)
    return p, "bad GT depth values (1 NaN)"


@pytest.mark.parametrize("corrupt", [_truncate_jpeg, _wrong_image_size, _wrong_depth_size, _nan_depth])
def test_bad_frame_names_file_or_is_skipped(scene_copy, tmp_path, corrupt):
    root, scene = scene_copy
    path, message = corrupt(scene)
    with pytest.raises(BadInputError) as info:
        build_shards(small_config(root, tmp_path / "out"))
    assert str(path) in str(info.value) and message in str(info.value)
    m = build_shards(small_config(root, tmp_path / "skip", skip_bad=True))
    assert [s["frame"] for s in m["skipped"]] == [path.name]
    assert m["per_scene"][SCENE]["frames"] == 11


def test_malformed_colmap_line_names_file_and_line(scene_copy, tmp_path):
    root, scene = scene_copy
    images = scene / "dslr_calibration_undistorted" / "images.txt"
    lines = images.read_text().splitlines(keepends=True)
    lines[6] = " ".join(lines[6].split()[:-2]) + "\n"  # third image header loses two fields
    images.write_text("".join(lines))
    with pytest.raises(BadInputError, match=r"images\.txt:7: expected 10 fields"):
        build_shards(small_config(root, tmp_path / "out"))


def test_missing_mask_missing_gt_and_empty_points2d(scene_copy, tmp_path, eth3d_root):
    root, scene = scene_copy
    truth = json.loads((scene / "synth_truth.json").read_text())
    empty = next(f["name"] for f in truth["frames"] if f["empty_points2d"])
    masks = sorted((scene / "masks_for_images" / "dslr_images").iterdir())
    masks[0].unlink()  # missing mask = all zeros: the frame still builds, with more GT
    gt = first_image(scene, "ground_truth_depth/dslr_images")
    gt.unlink()  # missing GT → sparse for this frame, with a warning in the manifest
    m = build_shards(small_config(root, tmp_path / "out", windows=WindowConfig(frames=4, stride=2, val_fraction=0.0)))
    assert m["per_scene"][SCENE]["sparse_frames"] == 1 and m["per_scene"][SCENE]["laser_frames"] == 11
    assert any(gt.name in w and "sparse" in w for w in m["warnings"])
    samples = read_split(tmp_path / "out", "train")
    frames = {f["name"]: f for s in samples for f in s["cameras.json"]["frames"]}
    assert frames[gt.name]["depth_source"] == "sparse"
    assert empty in frames  # the image with an EMPTY POINTS2D line is a normal frame
    assert any(s["cameras.json"]["depth_source"] == "mixed" for s in samples)
