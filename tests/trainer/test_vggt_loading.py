"""Checkpoint loading (files written here, the tiny fixture, the offline hub) and image preprocessing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from trainer.vggt import (
    VGGT,
    CheckpointMismatchError,
    LoadReport,
    PretrainedSourceError,
    VGGTConfig,
    load_and_preprocess_images,
    load_pretrained,
    preprocess_image,
)

ASSETS = Path(__file__).parents[1] / "assets"
FIXTURE = ASSETS / "vggt_tiny_reference.safetensors"
SMALL = VGGTConfig.tiny(depth=2, dino_depth=1, camera_trunk_depth=1, intermediate_layer_idx=(0, 1, 1, 1))


@pytest.fixture(scope="module")
def source_model() -> VGGT:
    torch.manual_seed(3)
    model = VGGT(SMALL).eval()
    with torch.no_grad():  # move LayerScale / special tokens off their tiny init so outputs depend on weights
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def source_state(source_model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in source_model.state_dict().items()}


def assert_same_weights(model: VGGT, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert list(loaded) == list(state)
    for key, tensor in state.items():
        assert torch.equal(loaded[key], tensor), key


@pytest.mark.parametrize("kind", ["pt", "pth-wrapped", "safetensors"])
def test_round_trip_through_files(tmp_path, source_model, source_state, kind):
    if kind == "pt":
        path = tmp_path / "model.pt"
        torch.save(source_state, path)
    elif kind == "pth-wrapped":
        path = tmp_path / "checkpoint.pth"
        torch.save({"model": source_state, "epoch": 3}, path)
    else:
        path = tmp_path / "model.safetensors"
        save_file(source_state, str(path))
    model = load_pretrained(path, config=SMALL)
    assert_same_weights(model, source_state)
    assert not model.training and model.load_report.loaded == len(source_state)
    assert not model.aggregator.patch_embed.mask_token.requires_grad
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    images = torch.rand(1, 2, 3, 28, 42, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, ref = model(images), source_model(images)
    for key in ("pose_enc", "depth", "world_points_conf"):
        assert torch.equal(ours[key], ref[key]), key


def test_tiny_fixture_file_loads_with_prefix_stripped():
    model = load_pretrained(FIXTURE, config="tiny")
    report = model.load_report
    assert report.loaded == 347
    assert len(report.ignored["non-model fixture"]) == 47  # case_a.*, case_b.*, loss.*
    tensors = load_file(str(FIXTURE))
    with torch.no_grad():
        out = model(tensors["case_a.images_u8"].float() / 255.0)
    ref = tensors["case_a.pose_enc"]
    assert ((out["pose_enc"] - ref).abs().max() / ref.abs().max()) < 1e-5


def test_wrong_config_names_shape_mismatch_and_missing_keys():
    with pytest.raises(CheckpointMismatchError) as info:
        load_pretrained(FIXTURE, config=VGGTConfig.tiny(embed_dim=128))
    message = str(info.value)
    assert str(FIXTURE) in message and "shape mismatches" in message
    assert "aggregator.camera_token: checkpoint (1, 2, 1, 64) vs model (1, 2, 1, 128)" in message
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: aggregator\.patch_embed\.blocks\.2\.norm1"):
        load_pretrained(FIXTURE)  # default VGGT-1B: 24 DINO blocks expected, the fixture has 2


def test_track_and_disabled_head_keys_are_ignored_and_reported(tmp_path, source_state):
    state = dict(source_state)
    state["track_head.tracker.updateformer.virual_tracks"] = torch.zeros(1, 64, 1, 384)
    state["track_head.feature_extractor.norm.weight"] = torch.ones(128)
    path = tmp_path / "with_track.safetensors"
    save_file(state, str(path))
    model = load_pretrained(path, config=SMALL, heads=("camera", "depth"))
    assert model.point_head is None and model.depth_head is not None
    ignored = model.load_report.ignored
    assert sorted(ignored["track_head (not built)"]) == [
        "track_head.feature_extractor.norm.weight",
        "track_head.tracker.updateformer.virual_tracks",
    ]
    assert sorted(ignored["point_head (not built)"]) == sorted(k for k in source_state if k.startswith("point_head."))
    assert_same_weights(model, {k: v for k, v in source_state.items() if not k.startswith("point_head.")})


def test_unexpected_and_missing_keys_are_errors(tmp_path, source_state):
    state = dict(source_state)
    state["aggregator.extra_adapter.weight"] = torch.zeros(2)
    del state["camera_head.embed_pose.bias"]
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as info:
        load_pretrained(path, config=SMALL)
    message = str(info.value)
    assert "1 missing keys: camera_head.embed_pose.bias" in message
    assert "1 unexpected keys: aggregator.extra_adapter.weight" in message


def test_non_weights_only_pickle_is_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "report": LoadReport(path="x")}, path)
    with pytest.raises(CheckpointMismatchError, match="not a weights-only checkpoint"):
        load_pretrained(path, config=SMALL)


def test_missing_local_file_and_dtype(tmp_path, source_state):
    with pytest.raises(PretrainedSourceError, match="does not exist"):
        load_pretrained(tmp_path / "nope" / "model.pt", config=SMALL)
    with pytest.raises(PretrainedSourceError, match="not a file"):
        load_pretrained(tmp_path, config=SMALL)
    path = tmp_path / "model.safetensors"
    save_file(source_state, str(path))
    model = load_pretrained(path, config=SMALL, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_offline_hub_tells_user_to_pass_a_local_path(tmp_path):
    code = (
        "from trainer.vggt import load_pretrained\n"
        "try:\n    load_pretrained('facebook/VGGT-1B')\n"
        "except Exception as exc:\n    print(type(exc).__name__)\n    print(exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "PretrainedSourceError"
    assert "facebook/VGGT-1B" in result.stdout and "HF_HUB_OFFLINE=1" in result.stdout
    assert "pass its local path" in result.stdout


# ---------------------------------------------------------------- preprocessing (official loader rules)


def solid(width: int, height: int, value=(0, 0, 0), mode="RGB") -> Image.Image:
    return Image.new(mode, (width, height), value)


@pytest.mark.parametrize(
    "size, expected_hw",
    [
        ((1000, 750), (392, 518)),  # round(750 * 0.518 / 14) = round(27.75) = 28 -> 392
        ((74, 5), (28, 518)),  # 5 * 7 / 14 = 2.5 -> banker's rounding to 2 -> 28 (not 42)
        ((74, 7), (56, 518)),  # 3.5 -> 4 -> 56
        ((100, 200), (518, 518)),  # 1036 high, centre-cropped to 518
    ],
)
def test_crop_mode_sizes(size, expected_hw):
    assert preprocess_image(solid(*size), mode="crop").shape == (3, *expected_hw)


def test_crop_mode_takes_the_centre():
    image = np.zeros((200, 100, 3), dtype=np.uint8)
    image[100:] = 255  # bottom half white; after resize the edge is at row 518 of 1036
    out = preprocess_image(Image.fromarray(image), mode="crop")  # crop rows 259..776 -> edge at 259
    assert out[:, :250].max() < 0.01 and out[:, 270:].min() > 0.99
    assert out[:, 255].mean() < 0.5 < out[:, 263].mean()


def test_pad_mode_white_border_split():
    # 100x50 -> 518 x round(18.5)=18 -> 252 high; pad 266 = 133 top + 133 bottom, value 1.0
    out = preprocess_image(solid(100, 50), mode="pad")
    assert out.shape == (3, 518, 518)
    assert torch.all(out[:, :133] == 1.0) and torch.all(out[:, 385:] == 1.0)
    assert torch.all(out[:, 133:385] == 0.0)
    # portrait 50x100 gray -> 252 wide, columns 133..384 hold the image
    out = preprocess_image(solid(50, 100, (128, 128, 128)), mode="pad")
    assert torch.all(out[:, :, :133] == 1.0) and torch.all(out[:, :, 385:] == 1.0)
    assert torch.allclose(out[:, :, 133:385], torch.full((3, 518, 252), 128 / 255))


def test_rgba_is_composited_on_white_and_paths_work(tmp_path):
    image = np.zeros((518, 518, 4), dtype=np.uint8)
    image[:, :259] = (255, 0, 0, 255)  # opaque red left half, transparent black right half
    path = tmp_path / "rgba.png"
    Image.fromarray(image, "RGBA").save(path)
    out = load_and_preprocess_images([path, Image.open(path)])
    assert out.shape == (2, 3, 518, 518) and torch.equal(out[0], out[1])
    assert torch.all(out[0, :, :, 300:] == 1.0)
    assert torch.equal(out[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


def test_mixed_shapes_are_padded_with_a_warning():
    with pytest.warns(UserWarning, match="different shapes"):
        out = load_and_preprocess_images([solid(1000, 750), solid(100, 200)], mode="crop")
    assert out.shape == (2, 3, 518, 518)
    # the 392-high landscape image sits between 63 white rows above and below
    assert torch.all(out[0, :, :63] == 1.0) and torch.all(out[0, :, 455:] == 1.0)
    assert torch.all(out[0, :, 63:455] == 0.0)


def test_preprocess_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'crop' or 'pad'"):
        preprocess_image(solid(10, 10), mode="stretch")
    with pytest.raises(ValueError, match="missing.jpg"):
        preprocess_image(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match="at least one image"):
        load_and_preprocess_images([])
