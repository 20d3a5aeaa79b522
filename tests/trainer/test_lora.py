"""Strategies → PEFT LoRA: exact counts on the meta-device VGGT-1B, freezing, save/load, merge."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.tolerance import FORWARD_OPS, assert_within_rounding
from trainer.builders import build_model
from trainer.config import load_config
from trainer.lora import (
    apply_strategy,
    expand_targets,
    load_adapter,
    lora_size,
    merge,
    param_counts_on_meta,
    read_adapter_info,
    resolve_targets,
    save_adapter,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY_WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "vggt_tiny_reference.safetensors"


def strategy(name: str):
    return load_config(CONFIGS / f"strategy_{name}.yaml").lora


@pytest.mark.parametrize(
    "name, trainable, linear, conv",
    [("a", 1_426_464, 0, 30), ("b", 7_717_920, 96, 30), ("c", 16_336_192, 212, 30)],
)
def test_strategy_counts_on_meta_vggt_1b(name, trainable, linear, conv):
    report = param_counts_on_meta("vggt-1b", strategy(name))
    assert (report.trainable, report.linear_modules, report.conv_modules) == (trainable, linear, conv)
    # Frozen base: the camera + depth heads and the aggregator of VGGT-1B (spec §2), plus the LoRA.
    assert report.total == 909_112_320 + 216_174_610 + 32_654_562 + trainable
    assert report.adapter_bytes == 4 * trainable


def test_lora_size_formulas_by_hand():
    assert lora_size(nn.Linear(1024, 3072), 16) == 65_536  # attn.qkv of one block (spec §12)
    assert lora_size(nn.Conv2d(1024, 1024, 3, stride=2, padding=1), 16) == 16 * (1024 * 9 + 1024)
    with pytest.raises(TypeError):
        lora_size(nn.ConvTranspose2d(256, 256, 4), 16)


def test_block_placeholders_follow_the_model_depth():
    assert expand_targets([r"x\.{upper_half}"], 24) == [r"x\.(" + "|".join(map(str, range(12, 24))) + ")"]
    assert expand_targets([r"x\.{all_blocks}"], 4) == [r"x\.(0|1|2|3)"]


@pytest.fixture(scope="module")
def tiny_base():
    torch.manual_seed(0)
    return build_model("tiny", str(TINY_WEIGHTS))


def test_only_lora_trains_and_conv_transpose_stays_frozen(tiny_base):
    import copy

    cfg = strategy("b")
    names = resolve_targets(tiny_base, cfg)
    assert "aggregator.frame_blocks.2.attn.qkv" in names and "aggregator.global_blocks.3.mlp.fc2" in names
    assert "aggregator.frame_blocks.1.attn.qkv" not in names  # lower half of the 4 tiny blocks
    assert not any(
        n.startswith("depth_head.resize_layers.0") or n.startswith("depth_head.resize_layers.1") for n in names
    )  # ConvTranspose2d
    assert "depth_head.resize_layers.3" in names  # the Conv2d downsampler
    model = apply_strategy(copy.deepcopy(tiny_base), cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert sum(p.numel() for n, p in model.named_parameters() if p.requires_grad) == sum(
        lora_size(tiny_base.get_submodule(n), 16) for n in names
    )


def test_a_regex_that_matches_nothing_is_an_error(tiny_base):
    cfg = strategy("a")
    cfg.targets = cfg.targets + [r"depth_head\.resize_layers\.0"]  # a ConvTranspose2d: not adaptable
    with pytest.raises(ValueError, match=r"resize_layers\\\\.0'\] match no nn.Linear/nn.Conv2d"):
        resolve_targets(tiny_base, cfg)


def perturbed_adapter(tiny_base, name="c"):
    import copy

    model = apply_strategy(copy.deepcopy(tiny_base), strategy(name))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:  # B starts at zero: give the adapter a visible effect
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def test_adapter_round_trip_and_merge(tiny_base, tmp_path):
    import copy

    model = perturbed_adapter(tiny_base)
    images = torch.rand(1, 2, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        adapted = model(images)
        base = tiny_base.eval()(images)
    assert (adapted["depth"] - base["depth"]).abs().max() > 1e-3  # the adapter changes the output

    save_adapter(model, tmp_path / "adapter", {"model": "tiny", "weights": str(TINY_WEIGHTS), "strategy": "c"})
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
        "vggt_adapter.json",
    }
    assert read_adapter_info(tmp_path / "adapter")["weights"] == str(TINY_WEIGHTS)
    reloaded = load_adapter(copy.deepcopy(tiny_base), tmp_path / "adapter").eval()
    saved, loaded = model.state_dict(), reloaded.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)  # bit-exact weights
    with torch.no_grad():
        again = reloaded(images)
    # Identical weights; the outputs may differ in rounding (GEMM kernels depend on alignment): reductions
    # of <= 4·64 terms through ~32 layers (tests/tolerance.py).
    for key in ("depth", "depth_conf", "pose_enc"):
        assert_within_rounding(again[key], adapted[key], ops=FORWARD_OPS, what=key)

    merged = merge(reloaded)
    assert not any("lora" in k for k in merged.state_dict())
    assert set(merged.state_dict()) == set(tiny_base.state_dict())
    with torch.no_grad():
        folded = merged(images)
    # W + s·BA folded once vs W x + s·B(A x): another rounding of every adapted layer, same bound.
    for key in ("depth", "depth_conf", "pose_enc"):
        assert_within_rounding(folded[key], adapted[key], ops=FORWARD_OPS, what=key)


def test_load_adapter_reports_a_missing_file(tmp_path, tiny_base):
    with pytest.raises(FileNotFoundError, match="adapter_config.json: missing"):
        load_adapter(tiny_base, tmp_path)


def test_adapter_save_and_load_never_ask_the_hub(tiny_base, tmp_path, monkeypatch):
    """PEFT's default `save_embedding_layers="auto"` looks up `<base_model>/config.json` on the Hub for a hub
    id: offline GPU nodes would wait on it at every checkpoint and resume. Neither path may call it."""
    import copy

    import peft.utils.save_and_load as peft_save_and_load

    def no_hub(*args, **kwargs):
        raise AssertionError(f"the Hub was consulted: {args}")

    monkeypatch.setattr(peft_save_and_load, "check_file_exists_on_hf_hub", no_hub)
    model = perturbed_adapter(tiny_base)
    model.peft_config["default"].base_model_name_or_path = "facebook/VGGT-1B"
    save_adapter(model, tmp_path / "adapter", {"model": "tiny", "weights": "facebook/VGGT-1B", "strategy": "c"})
    reloaded = load_adapter(copy.deepcopy(tiny_base), tmp_path / "adapter")
    assert reloaded.peft_config["default"].base_model_name_or_path == "facebook/VGGT-1B"
    saved, loaded = model.state_dict(), reloaded.state_dict()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
