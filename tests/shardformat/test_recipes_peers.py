"""The recipes against the peers' own code (peers.txt, installed with --no-deps; examples/peer_env.py
explains the torchvision import on a CPU torch): Depth Anything 3 0.1.1, MoGe-2 (dlr-moge 2.0.0) and
mini-dust3r 0.1.2, at random initialisation in their smallest configurations, on the shared 112² / 224²
builds. No network, no weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from examples.peer_env import import_torchvision
from examples.peer_models import (
    da3_depth_loss,
    da3_model,
    dust3r_model,
    dust3r_regr3d_loss,
    moge_gt_points,
    moge_loss,
    moge_model,
    to_torch,
)
from shardformat import views
from shardformat.recipes import RecipeError, collate, export_moge, for_model, read_moge_depth, write_moge_depth

torchvision = import_torchvision()
ALIGN = 8  # MoGe's alignment resolution: its config's 48 costs minutes per image on a CPU (examples/peer_models.py)


@pytest.fixture(scope="module")
def samples_112(shards_112):
    return list(views.read(shards_112, split=None))


@pytest.fixture(scope="module")
def sample_224(shards_224):
    return next(views.read(shards_224))


def test_torchvision_imports_beside_this_torch():
    import torchvision.transforms as T

    x = torch.rand(3, 4, 4)
    assert torch.equal(T.Normalize([0.5] * 3, [0.5] * 3)(x), (x - 0.5) / 0.5)
    if not torchvision.extension._has_ops():  # a CUDA torchvision wheel beside CPU torch: its C++ ops say so
        with pytest.raises(RuntimeError, match="Couldn't load custom C\\+\\+ ops|torchvision::nms"):
            torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)


# Depth Anything 3
def test_da3_tensor_equals_its_input_processor(sample_224):
    from depth_anything_3.utils.io.input_processor import InputProcessor

    s = sample_224
    batch = for_model("da3", s, normalise="none")
    x, ext, ixt = InputProcessor()(
        list(s.images), s.w2c.astype(np.float32), s.K.astype(np.float32), process_res=224, num_workers=1
    )
    assert x.shape == (len(s), 3, 224, 224)  # (N, 3, H, W): the API adds the batch axis the model takes
    assert torch.equal(torch.from_numpy(batch["x"]), x[None])  # bit-exact
    # the uint8 path, normalised on the device (here the CPU), gives the same tensor
    from shardformat.recipes import da3_normalise_on_device

    u8 = for_model("da3", s, normalise="none", images="uint8")["x"]
    assert torch.equal(da3_normalise_on_device(torch.from_numpy(u8)), x[None])
    assert torch.equal(torch.from_numpy(batch["extrinsics"][0]), ext)
    assert torch.equal(torch.from_numpy(batch["intrinsics"][0]), ixt)


def test_da3_camera_encoding_round_trip(samples_112):
    from depth_anything_3.model.utils.transform import extri_intri_to_pose_encoding, pose_encoding_to_extri_intri
    from depth_anything_3.utils.geometry import affine_inverse

    s = samples_112[0]
    b = to_torch(for_model("da3", s))
    ext, ixt = b["extrinsics"].double(), b["intrinsics"].double()
    c2w = affine_inverse(ext)  # what its CameraEnc encodes
    back_c2w, back_K = pose_encoding_to_extri_intri(extri_intri_to_pose_encoding(c2w, ixt, s.size).double(), s.size)
    assert torch.allclose(back_c2w, c2w[..., :3, :], atol=1e-6)
    assert torch.allclose(back_K[..., 0, 0], ixt[..., 0, 0].float(), rtol=1e-5)
    assert torch.allclose(back_K[..., 1, 1], ixt[..., 1, 1].float(), rtol=1e-5)
    # its camera head cannot represent a principal point off the image centre: the residual a camera loss carries
    residual = ixt[..., :2, 2] - torch.tensor([s.size[1] / 2, s.size[0] / 2], dtype=torch.float64)
    assert torch.equal(back_K[..., :2, 2].double(), torch.tensor([s.size[1] / 2, s.size[0] / 2]).expand_as(residual))
    assert residual.abs().max() < 2.0
    # the recipe's normalisation: world = first view, median camera distance 1 (torch.median: the lower middle)
    centres = affine_inverse(ext)[0, :, :3, 3].norm(dim=-1)
    assert torch.allclose(ext[0, 0], torch.eye(4, dtype=torch.float64), atol=1e-6)
    assert abs(float(torch.median(centres)) - 1.0) < 1e-6


def test_da3_small_forward_and_train_step_on_two_views(samples_112):
    torch.manual_seed(0)
    model = da3_model("da3-small")
    b = to_torch(for_model("da3", samples_112[0].nview(2)))
    out = model(b["x"], b["extrinsics"], b["intrinsics"], ref_view_strategy="first")
    assert out["depth"].shape == (1, 2, 112, 112) and torch.isfinite(out["depth"]).all()
    assert out["extrinsics"].shape == (1, 2, 3, 4) and out["intrinsics"].shape == (1, 2, 3, 3)
    loss = da3_depth_loss(out["depth"], b["depth"], b["valid"])
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# MoGe-2
def test_moge_own_loss_is_minimal_on_gt_and_recovers_the_scale(samples_112):
    s = samples_112[0]
    b = to_torch(for_model("moge", s))
    gt = moge_gt_points(b)
    known = b["depth_mask_fin"]
    ref = torch.from_numpy(np.stack([s.points(i) for i in range(len(s))])).float()
    assert torch.allclose(gt[known], ref[known], rtol=1e-5, atol=1e-5)  # utils3d with the normalised K
    assert torch.isnan(gt[~known]).all()
    filled = torch.where(known[..., None], gt, torch.ones_like(gt))  # a prediction is finite everywhere
    pred = 0.5 * filled + torch.tensor([0.0, 0.0, 3.0])  # affine-invariant: scale and z-shift
    loss, scale = moge_loss(pred, b, ALIGN)
    assert torch.allclose(scale, torch.full_like(scale, 2.0), rtol=1e-3) and loss < 1e-4
    # OpenGL axes: its alignment finds no positive scale and the loss goes silently to zero
    gl_loss, gl_scale = moge_loss(filled * torch.tensor([1.0, -1.0, -1.0]), b, ALIGN)
    assert (gl_scale == 0).all() and gl_loss == 0
    # an x flip is a real error
    flip_loss, _ = moge_loss(filled * torch.tensor([-1.0, 1.0, 1.0]), b, ALIGN)
    assert flip_loss > 100 * loss


def test_moge_forward_and_train_step(samples_112):
    torch.manual_seed(0)
    model = moge_model(small=True)
    b = to_torch(for_model("moge", samples_112[0], frames=[0, 1]))
    out = model(b["image"], num_tokens=64)
    assert out["points"].shape == (2, 112, 112, 3)
    loss, scale = moge_loss(out["points"], b, ALIGN)
    loss.backward()
    assert torch.isfinite(loss) and (scale >= 0).all()


def test_moge_depth_png_round_trips_with_its_own_reader_and_writer(samples_112, tmp_path):
    from moge.utils.io import read_depth, write_depth

    depth = samples_112[0].depth[0]
    known = np.isfinite(depth)
    # 65533 log steps between the nearest and farthest depth: half a step, plus float32 rounding
    near, far = float(depth[known].min()), float(depth[known].max())
    bound = np.expm1(np.log(far / near) / 65533 / 2) + 4 * np.finfo(np.float32).eps
    assert bound < 2e-5  # this scene's range (3-12 m); a 1e-5 bound holds up to far/near = e^1.3
    write_moge_depth(tmp_path / "ours.png", depth)
    theirs = read_depth(tmp_path / "ours.png")
    assert np.array_equal(np.isnan(theirs), ~known)
    assert np.abs(theirs[known] / depth[known] - 1).max() <= bound
    write_depth(tmp_path / "theirs.png", depth)
    ours = read_moge_depth(tmp_path / "theirs.png")
    assert np.array_equal(np.isnan(ours), ~known) and np.abs(ours[known] / depth[known] - 1).max() <= bound
    with pytest.raises(RecipeError, match="unknown depth must be NaN"):
        write_moge_depth(tmp_path / "zeros.png", np.nan_to_num(depth, nan=0.0))
    # the trap refused above: MoGe's own writer takes 0 as the nearest depth
    write_depth(tmp_path / "trap.png", np.nan_to_num(depth, nan=0.0))
    assert not np.isnan(read_depth(tmp_path / "trap.png")).any()


def test_export_moge_reads_back_with_moges_io(samples_112, tmp_path):
    import json

    from moge.utils.io import read_depth, read_image, read_json

    s = samples_112[0]
    out = export_moge(s, tmp_path / "moge_eth3d")
    names = (out / ".index.txt").read_text().split()
    assert names == [f"{s.key}_{i:02d}" for i in range(len(s))]
    for i, name in enumerate(names):
        image, depth = read_image(out / name / "image.jpg"), read_depth(out / name / "depth.png")
        assert image.shape == s.images[i].shape and np.abs(image.astype(int) - s.images[i]).mean() < 3
        assert np.array_equal(np.isnan(depth), ~s.valid[i])
        np.testing.assert_allclose(depth[s.valid[i]], s.depth[i][s.valid[i]], rtol=2e-5)  # half a log step
        K = np.array(read_json(out / name / "meta.json")["intrinsics"])
        np.testing.assert_allclose(K, for_model("moge", s)["intrinsics"][i], rtol=1e-6)
    entry = json.loads((out / "dataset.json").read_text())
    assert entry["label_type"] == "B" and entry["depth_unit"] == 1.0 and entry["finite_depth_mask"] == "only_known"


# DUSt3R family
def test_dust3r_img_equals_its_load_images(sample_224, tmp_path):
    from mini_dust3r.utils.image import load_images
    from PIL import Image

    s = sample_224
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"f{i}.png"))
        Image.fromarray(s.images[i]).save(paths[-1])
    theirs = load_images(paths, size=224, verbose=False)
    (v1, v2) = for_model("dust3r", s, pairs=[(0, 1)])[0]
    for view, ref in ((v1, theirs[0]), (v2, theirs[1])):
        assert torch.equal(torch.from_numpy(view["img"])[None], ref["img"])
        assert np.array_equal(view["true_shape"][None], ref["true_shape"])


def test_dust3r_pts3d_equal_its_own_unprojection(samples_112):
    from mini_dust3r.utils.geometry import depthmap_to_absolute_camera_coordinates

    for v1, _ in for_model("dust3r", samples_112[1], pairs="adjacent", symmetric=False):
        pts, valid = depthmap_to_absolute_camera_coordinates(v1["depthmap"], v1["camera_intrinsics"], v1["camera_pose"])
        assert np.array_equal(valid, v1["valid_mask"])
        np.testing.assert_allclose(v1["pts3d"][valid], pts[valid], rtol=1e-5, atol=1e-5)


def test_dust3r_loss_zero_on_scaled_gt_positive_when_view2_stays_in_its_frame(samples_112):
    from mini_dust3r.utils.geometry import geotrf, inv

    pairs = for_model("dust3r", samples_112[0], pairs="adjacent")
    view1 = to_torch(collate([p[0] for p in pairs]))
    view2 = to_torch(collate([p[1] for p in pairs]))
    in_cam1 = inv(view1["camera_pose"].double()).float()
    gt1, gt2 = geotrf(in_cam1, view1["pts3d"]), geotrf(in_cam1, view2["pts3d"])
    assert dust3r_regr3d_loss(view1, view2, 3 * gt1, 3 * gt2) < 1e-5
    own2 = geotrf(inv(view2["camera_pose"].double()).float(), view2["pts3d"])
    assert dust3r_regr3d_loss(view1, view2, 3 * gt1, 3 * own2) > 0.1


def test_dust3r_forward_and_train_step(samples_112):
    torch.manual_seed(0)
    model = dust3r_model(tiny=True)
    pairs = for_model("dust3r", samples_112[0], pairs=[(0, 1), (1, 0)])
    view1 = to_torch(collate([p[0] for p in pairs]))
    view2 = to_torch(collate([p[1] for p in pairs]))
    res1, res2 = model(view1, view2)
    assert res1["pts3d"].shape == (2, 112, 112, 3) and res2["pts3d_in_other_view"].shape == (2, 112, 112, 3)
    loss = dust3r_regr3d_loss(view1, view2, res1["pts3d"], res2["pts3d_in_other_view"])
    loss.backward()
    assert torch.isfinite(loss) and loss > 0


def test_train_step_example_runs_as_documented(shards_112, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    run = [sys.executable, "-m", "examples.train_step", "--model", "dust3r", "--steps", "2"]
    done = subprocess.run([*run, "--shards", str(shards_112)], cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("dust3r: step")]
    assert len(lines) == 2 and "checked against mini-dust3r 0.1.2" in lines[0]
    bad = subprocess.run([*run, "--shards", str(tmp_path / "none")], cwd=repo, capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert [line for line in bad.stderr.splitlines() if line.startswith("Error:")] == [
        f"Error: {tmp_path / 'none'}: no such shard directory or tar (build one with `python -m dataengine build`)"
    ]


# The compact path: the loader returns the shards' compact arrays, `finish` does the per-pixel work (device)
def assert_same(finished, full, where=""):
    """Bit for bit (NaN where NaN), same dtypes and keys: each finishing step mirrors the CPU path's float32
    operations one for one, and IEEE float32 rounds each of them the same way on any CPU."""
    if isinstance(full, dict):
        assert sorted(finished) == sorted(full), where
        for k in full:
            assert_same(finished[k], full[k], f"{where}.{k}")
    elif isinstance(full, torch.Tensor):
        torch.testing.assert_close(finished, full, rtol=0, atol=0, equal_nan=True, msg=where)
    else:
        assert finished == full, where


def test_compact_recipes_hold_no_per_pixel_float_and_finish_equals_the_cpu_path(samples_112):
    from shardformat.recipes import finish

    s = samples_112[0]
    assert (~s.valid).any() and s.valid.any()  # holes: NaN handling is exercised
    for model, options in (("da3", {}), ("moge", {}), ("moge", {"normals": False}), ("moge", {"frames": [2, 0]})):
        compact = for_model(model, s, compact=True, **options)
        for name, value in compact.items():  # the loader's work: no per-pixel array made, the sample's own
            if isinstance(value, np.ndarray) and value.size >= s.depth[0].size:
                assert value.dtype in (np.uint8, np.float32), (model, name)
                assert "frames" in options or np.shares_memory(value, s.images if value.dtype == np.uint8 else s.depth)
        assert_same(finish(model, compact), to_torch(for_model(model, s, **options)), model)
    full = for_model("dust3r", s, pairs="adjacent")
    compact = for_model("dust3r", s, pairs="adjacent", compact=True)
    assert compact[0][1] is compact[1][0]  # (0, 1) and (1, 0) share frame 1's view: finished once
    for (a, b), (c, d) in zip(finish("dust3r", compact), full, strict=True):
        assert_same(a, to_torch(c), "dust3r view1")
        assert_same(b, to_torch(d), "dust3r view2")
    batch = finish("dust3r", collate([p[1] for p in compact]))  # a collated batch finishes the same
    assert_same(batch, to_torch(collate([p[1] for p in full])), "dust3r batch")
    with pytest.raises(ValueError, match="no finishing for model 'vggt'"):
        finish("vggt", {})


def test_finished_compact_batches_pass_the_peers_own_checks(sample_224, samples_112):
    from depth_anything_3.utils.io.input_processor import InputProcessor
    from mini_dust3r.utils.geometry import depthmap_to_absolute_camera_coordinates

    from shardformat.recipes import finish

    s = sample_224
    x, _, _ = InputProcessor()(
        list(s.images), s.w2c.astype(np.float32), s.K.astype(np.float32), process_res=224, num_workers=1
    )
    assert torch.equal(finish("da3", for_model("da3", s, normalise="none", compact=True))["x"], x[None])
    s = samples_112[1]
    for v1, _ in finish("dust3r", for_model("dust3r", s, pairs="adjacent", symmetric=False, compact=True)):
        v1 = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in v1.items()}
        pts, valid = depthmap_to_absolute_camera_coordinates(v1["depthmap"], v1["camera_intrinsics"], v1["camera_pose"])
        assert np.array_equal(valid, v1["valid_mask"])
        np.testing.assert_allclose(v1["pts3d"][valid], pts[valid], rtol=1e-5, atol=1e-5)
    b = finish("moge", for_model("moge", s, compact=True))
    gt, known = moge_gt_points(b), b["depth_mask_fin"]
    ref = torch.from_numpy(np.stack([s.points(i) for i in range(len(s))])).float()
    assert torch.allclose(gt[known], ref[known], rtol=1e-5, atol=1e-5) and torch.isnan(gt[~known]).all()
    # the finished normals face the camera (normal · viewing ray < 0) wherever they are defined
    normal = b["normal"]
    defined = ~torch.isnan(normal[..., 2])
    assert defined.sum() > 0.3 * known.sum() and ((normal * ref).sum(-1)[defined] < 0).all()
    assert torch.allclose(normal[defined].norm(dim=-1), torch.ones(()), atol=1e-5)
