"""trainer.losses: GT normalisation and losses equal to the official code (fixture), plus failure paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.tolerance import rounding_bound
from trainer.losses import (
    LossConfig,
    camera_loss,
    compute_loss,
    depth_loss,
    filter_by_quantile,
    gradient_loss,
    normalize_gt,
    point_loss,
    prepare_batch,
)

FIXTURE = Path(__file__).parents[1] / "assets" / "vggt_tiny_reference.safetensors"
NORMALIZED = ("extrinsics", "cam_points", "world_points", "depths")
OUT_KEYS = ("loss_camera", "loss_T", "loss_R", "loss_FL", "loss_conf_depth", "loss_reg_depth", "loss_grad_depth")
POINT_KEYS = ("loss_conf_point", "loss_reg_point", "loss_grad_point")


def rel_err(mine: torch.Tensor, ref: torch.Tensor) -> float:
    return float((mine - ref).abs().max() / ref.abs().max().clamp(min=1e-12))


# The official reference came from another CPU. The normalisation is a few element-wise ops after one
# mean over the valid points; a loss term is a mean over every pixel of the fixture (≤ 2·3·56·84 values)
# after a few ops each. λ·√n·u bounds both (tests/tolerance.py): n = the pixel count of the fixture.
NORMALIZE_REL = rounding_bound(1.0, ops=2 * 3 * 56 * 84)  # relative to the tensor's largest value
LOSS_REL = rounding_bound(1.0, ops=2 * 3 * 56 * 84 * 8)  # ~8 rounding ops per pixel before the mean


def assert_scalar_matches(mine: torch.Tensor, ref: torch.Tensor, name: str, rel: float = LOSS_REL) -> None:
    assert mine.dim() == 0, name
    assert abs(mine.item() - ref.item()) <= rel * max(abs(ref.item()), 1e-12), f"{name}: {mine.item()} vs {ref.item()}"


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE))


@pytest.fixture(scope="module")
def shard_batch(ref):
    """The fixture's GT as the shard loader delivers it (metric, uint8 images)."""
    return {
        "images": ref["case_a.images_u8"],
        "depths": ref["loss.batch.depths"],
        "point_masks": ref["loss.batch.point_masks"],
        "extrinsics": ref["loss.batch.extrinsics"],
        "intrinsics": ref["loss.batch.intrinsics"],
        "keys": ["synthetic_00000", "synthetic_00001"],
    }


@pytest.fixture(scope="module")
def official_batch(ref):
    """Exactly the batch the official losses saw (stored normalised GT)."""
    batch = {
        "images": ref["case_a.images_u8"].float() / 255,
        "point_masks": ref["loss.batch.point_masks"],
        "intrinsics": ref["loss.batch.intrinsics"],
    }
    batch.update({name: ref[f"loss.normalized.{name}"] for name in NORMALIZED})
    return batch


def stored_predictions(ref, requires_grad: bool = False) -> dict:
    preds = {
        "pose_enc_list": [ref[f"case_a.pose_enc_list.{i}"].clone() for i in range(4)],
        "depth": ref["case_a.depth"].clone(),
        "depth_conf": ref["case_a.depth_conf"].clone(),
        "world_points": ref["case_a.world_points"].clone(),
        "world_points_conf": ref["case_a.world_points_conf"].clone(),
    }
    if requires_grad:
        for value in [*preds["pose_enc_list"], preds["depth"], preds["depth_conf"]]:
            value.requires_grad_(True)
    return preds


def test_normalize_gt_matches_official(ref):
    mine = normalize_gt(
        ref["loss.batch.extrinsics"],
        ref["loss.batch.cam_points"],
        ref["loss.batch.world_points"],
        ref["loss.batch.depths"],
        ref["loss.batch.point_masks"],
    )
    for name, tensor in zip(NORMALIZED, mine, strict=True):
        assert rel_err(tensor, ref[f"loss.normalized.{name}"]) < NORMALIZE_REL, name


def test_prepare_batch_matches_official_and_its_invariants(ref, shard_batch):
    prepared = prepare_batch(shard_batch)
    for name in NORMALIZED:
        assert prepared[name].dtype == torch.float32
        assert rel_err(prepared[name], ref[f"loss.normalized.{name}"]) < NORMALIZE_REL, name
    assert prepared["images"].dtype == torch.float32 and prepared["images"].max() <= 1.0
    # Frame 0 becomes the world frame, and the mean valid-point distance from camera 0 becomes ~1.
    eye = torch.eye(3, 4).expand(2, 3, 4)
    torch.testing.assert_close(prepared["extrinsics"][:, 0], eye, atol=1e-6, rtol=0)
    masks = prepared["point_masks"].float()
    mean_distance = (prepared["world_points"].norm(dim=-1) * masks).sum((1, 2, 3)) / masks.sum((1, 2, 3))
    torch.testing.assert_close(mean_distance, torch.ones(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(prepared["normalization_scale"], torch.tensor([3.66, 4.30]), atol=5e-3, rtol=0)
    torch.testing.assert_close(
        prepared["metric_depths"] / prepared["normalization_scale"][:, None, None, None], prepared["depths"]
    )


def test_normalisation_removes_a_global_similarity(shard_batch):
    """Scaling the metric world by 7 and moving it changes nothing after normalisation."""
    scaled = dict(shard_batch)
    scaled["depths"] = shard_batch["depths"] * 7
    extrinsics = shard_batch["extrinsics"].clone()
    extrinsics[..., 3] = extrinsics[..., 3] * 7
    # A world translation w: X' = X + w  =>  t' = t - R w.
    shift = torch.tensor([1.0, -2.0, 0.5])
    extrinsics[..., 3] = extrinsics[..., 3] - (extrinsics[..., :3] @ shift)
    scaled["extrinsics"] = extrinsics
    base, moved = prepare_batch(shard_batch), prepare_batch(scaled)
    for name in NORMALIZED:
        assert rel_err(moved[name], base[name]) < 2e-5, name


def test_losses_match_official_on_stored_predictions(ref, official_batch):
    preds = stored_predictions(ref)
    out = {}
    out.update(camera_loss(preds["pose_enc_list"], official_batch))
    out.update(depth_loss(preds["depth"], preds["depth_conf"], official_batch))
    out.update(point_loss(preds["world_points"], preds["world_points_conf"], official_batch))
    for name in OUT_KEYS + POINT_KEYS:
        assert_scalar_matches(out[name], ref[f"loss.out.{name}"], name)


def test_official_objective_and_project_weights(ref, official_batch, shard_batch):
    preds = stored_predictions(ref)
    total, terms = compute_loss(preds, official_batch, LossConfig.official())
    assert_scalar_matches(total, ref["loss.out.objective"], "objective")
    assert_scalar_matches(terms["objective"], ref["loss.out.objective"], "objective (logged)")
    assert "loss_conf_point" not in terms  # point terms are off unless weighted

    # The project default: 2 * camera + 5 * (conf + reg + grad), from the official terms by hand.
    total, _ = compute_loss(preds, prepare_batch(shard_batch))
    out = {k: ref[f"loss.out.{k}"].item() for k in OUT_KEYS}
    by_hand = 2 * out["loss_camera"] + 5 * (out["loss_conf_depth"] + out["loss_reg_depth"] + out["loss_grad_depth"])
    assert total.item() == pytest.approx(by_hand, rel=LOSS_REL)

    # Point terms join the objective once weighted.
    cfg = LossConfig(camera=0, depth_conf=0, depth_reg=0, depth_grad=0, point_conf=1, point_reg=1, point_grad=1)
    total, terms = compute_loss(preds, official_batch, cfg)
    assert total.item() == pytest.approx(sum(ref[f"loss.out.{k}"].item() for k in POINT_KEYS), rel=LOSS_REL)


def test_losses_backpropagate(ref, official_batch):
    preds = stored_predictions(ref, requires_grad=True)
    total, _ = compute_loss(preds, official_batch)
    total.backward()
    for tensor in [preds["pose_enc_list"][-1], preds["depth"], preds["depth_conf"]]:
        assert torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0


def test_too_few_valid_pixels_gives_zero_losses_with_a_graph(ref, official_batch):
    batch = dict(official_batch)
    masks = torch.zeros_like(batch["point_masks"])
    masks[0, 1, :5, :5] = True  # 25 pixels: below both the 100-pixel depth and camera thresholds
    batch["point_masks"] = masks
    preds = stored_predictions(ref, requires_grad=True)
    total, terms = compute_loss(preds, batch)
    for name in OUT_KEYS:
        assert terms[name].item() == 0.0, name
    assert total.requires_grad
    total.backward()
    assert torch.equal(preds["depth"].grad, torch.zeros_like(preds["depth"]))
    assert torch.equal(preds["pose_enc_list"][0].grad, torch.zeros_like(preds["pose_enc_list"][0]))


def test_camera_loss_skips_items_whose_first_frame_is_unsupervised(ref, official_batch):
    batch = dict(official_batch)
    masks = batch["point_masks"].clone()
    masks[1, 0] = False  # item 1 has no frame-0 depth: the official rule drops it from the camera loss
    batch["point_masks"] = masks
    preds = stored_predictions(ref)
    skipped = camera_loss(preds["pose_enc_list"], batch)
    only_item0 = {k: v[:1] for k, v in batch.items() if isinstance(v, torch.Tensor)}
    alone = camera_loss([p[:1] for p in preds["pose_enc_list"]], only_item0)
    for name in ("loss_camera", "loss_T", "loss_R", "loss_FL"):
        assert skipped[name].item() == pytest.approx(alone[name].item(), rel=1e-6)
        assert skipped[name].item() != pytest.approx(ref[f"loss.out.{name}"].item(), rel=1e-3)


def test_non_finite_predictions_are_contained(ref, official_batch):
    preds = stored_predictions(ref)
    clean = depth_loss(preds["depth"], preds["depth_conf"], official_batch)
    # NaN/inf at unsupervised pixels change nothing (the official mask*diff would give NaN here).
    corrupt = preds["depth"].clone()
    unsupervised = ~official_batch["point_masks"]
    corrupt[unsupervised] = float("inf")
    corrupt[tuple(unsupervised.nonzero()[0].tolist())] = float("nan")
    dirty = depth_loss(corrupt, preds["depth_conf"], official_batch)
    for name, value in clean.items():
        assert dirty[name].item() == pytest.approx(value.item(), rel=1e-6), name
    # NaN at a supervised pixel, a NaN pose and a huge translation stay finite and clamped.
    corrupt = preds["depth"].clone()
    corrupt[tuple(official_batch["point_masks"].nonzero()[0].tolist())] = float("nan")
    assert all(torch.isfinite(v) for v in depth_loss(corrupt, preds["depth_conf"], official_batch).values())
    poses = [p.clone() for p in preds["pose_enc_list"]]
    poses[0][0, 0, 3] = float("nan")
    poses[1][..., :3] = 1e6
    cam = camera_loss(poses, official_batch)
    assert all(torch.isfinite(v) for v in cam.values())
    assert cam["loss_T"].item() <= 100.0


def test_gradient_loss_by_hand():
    # One 2x3 single-channel image, error map d = pred - gt, the middle-right pixel unsupervised.
    error = torch.tensor([[[1.0, 3.0, 0.0], [2.0, 2.5, 9.0]]])[..., None]
    mask = torch.tensor([[[True, True, True], [True, True, False]]])
    # x: |3-1| + |0-3| + |2.5-2| = 5.5 ; y: |2-1| + |2.5-3| = 1.5 ; 5 valid pixels -> 7 / 5.
    loss = gradient_loss(error, torch.zeros_like(error), mask)
    assert loss.item() == pytest.approx(7.0 / 5.0)


def test_filter_by_quantile_by_hand():
    values = torch.arange(2000, dtype=torch.float32) / 2000
    kept = filter_by_quantile(values, 0.98)
    # nearest rank: k = round(0.98 * 1999) + 1 = 1960 -> threshold 1959/2000; keep values strictly below.
    assert kept.numel() == 1959 and kept.max().item() == pytest.approx(1958 / 2000)
    assert torch.equal(filter_by_quantile(values[:1000], 0.98), values[:1000])  # too small: untouched
    # Everything is clamped at 100 first; if the threshold would keep <= 1000 elements, all are kept (clamped).
    big = torch.arange(2000, dtype=torch.float32)
    kept = filter_by_quantile(big, 0.98)
    assert kept.numel() == 2000 and kept.max().item() == 100.0


def test_prepare_batch_rejects_bad_batches(shard_batch):
    missing = {k: v for k, v in shard_batch.items() if k != "intrinsics"}
    with pytest.raises(KeyError, match="intrinsics"):
        prepare_batch(missing)
    bad = dict(shard_batch)
    bad["depths"] = shard_batch["depths"].clone()
    bad["depths"][0, 0, 0, 0] = 0.0  # supervised pixel without depth
    with pytest.raises(ValueError, match="synthetic_00000"):
        prepare_batch(bad)
    bad = dict(shard_batch)
    bad["intrinsics"] = shard_batch["intrinsics"][:, :2]
    with pytest.raises(ValueError, match="intrinsics"):
        prepare_batch(bad)
    with pytest.raises(ValueError, match="loss_type"):
        camera_loss([torch.zeros(2, 3, 9)], prepare_batch(shard_batch), loss_type="huber")
