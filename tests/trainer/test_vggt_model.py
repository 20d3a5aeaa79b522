"""VGGT model: numerical equality with the official code (tiny fixture), key/shape equality with the
full VGGT-1B checkpoint layout (meta device), head switches, memory features and bf16 autocast."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tests.tolerance import assert_within_rounding
from trainer.vggt import VGGT, VGGTConfig
from trainer.vggt.dpt import uv_sincos_embedding
from trainer.vggt.layers import RotaryEmbedding2D, apply_rope_2d

ASSETS = Path(__file__).parents[1] / "assets"
FIXTURE = ASSETS / "vggt_tiny_reference.safetensors"
FLOAT_RULE = 1e-5  # max|mine - ref| / max|ref|, from the fixture's how_to_compare


@pytest.fixture(scope="module")
def fixture_tensors() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE))


@pytest.fixture(scope="module")
def tiny_model(fixture_tensors) -> VGGT:
    model = VGGT(VGGTConfig.tiny())
    weights = {k[len("model.") :]: v for k, v in fixture_tensors.items() if k.startswith("model.")}
    model.load_state_dict(weights, strict=True)
    return model.eval()


def relative_error(mine: torch.Tensor, ref: torch.Tensor) -> float:
    return ((mine.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-12)).item()


def run_case(model: VGGT, tensors: dict, case: str) -> dict[str, torch.Tensor]:
    """Every output the fixture stores for ``case``, computed by our model in one forward."""
    images = tensors[f"{case}.images_u8"].float() / 255.0
    captured = {}
    hooks = [
        model.aggregator.patch_embed.register_forward_hook(lambda m, i, o: captured.__setitem__("patch", o)),
        model.aggregator.register_forward_hook(lambda m, i, o: captured.__setitem__("agg", o[0])),
    ]
    try:
        with torch.no_grad():
            out = model(images)
    finally:
        for hook in hooks:
            hook.remove()
    mine = {"patch_tokens": captured["patch"]}
    mine.update({f"aggregated.{i}": t for i, t in enumerate(captured["agg"])})
    mine.update({f"pose_enc_list.{i}": t for i, t in enumerate(out["pose_enc_list"])})
    mine.update({k: out[k] for k in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")})
    return mine


@pytest.mark.parametrize("case", ["case_a", "case_b"])
def test_matches_official_outputs(tiny_model, fixture_tensors, case):
    """Case A: B=2, S=3, 56x84 (pos-embed interpolation, non-square DPT). Case B: 518x518."""
    mine = run_case(tiny_model, fixture_tensors, case)
    stored = sorted(k[len(case) + 1 :] for k in fixture_tensors if k.startswith(case + ".") and "images_u8" not in k)
    assert len(stored) == (14 if case == "case_a" else 9)
    errors = {}
    for name in stored:
        ref = fixture_tensors[f"{case}.{name}"]
        assert mine[name].shape == ref.shape, name
        assert mine[name].dtype == torch.float32, name
        errors[name] = relative_error(mine[name], ref)
    bad = {k: e for k, e in errors.items() if not e < FLOAT_RULE}
    assert not bad, f"outputs off the official ones beyond {FLOAT_RULE}: {bad}"


def test_eval_output_dict_and_batch_dim(tiny_model, fixture_tensors):
    images = fixture_tensors["case_a.images_u8"][0].float() / 255.0  # [S,3,H,W]
    with torch.no_grad():
        out = tiny_model(images)
    assert set(out) == {
        "pose_enc",
        "pose_enc_list",
        "depth",
        "depth_conf",
        "world_points",
        "world_points_conf",
        "images",
    }
    assert out["images"].shape == (1, 3, 3, 56, 84)
    assert out["depth"].shape == (1, 3, 56, 84, 1) and out["world_points"].shape == (1, 3, 56, 84, 3)
    assert len(out["pose_enc_list"]) == 4 and torch.equal(out["pose_enc_list"][-1], out["pose_enc"])
    assert (out["depth"] > 0).all() and (out["depth_conf"] > 1).all()
    # Frame 0 of a sequence: same result whether or not the batch dimension was given.
    batched = run_case(tiny_model, {"case_a.images_u8": fixture_tensors["case_a.images_u8"][:1]}, "case_a")
    # Another batch shape may block the matmuls differently: reductions of <= 4·64 terms through ~32 layers.
    assert_within_rounding(batched["depth"], out["depth"][:1], ops=256 * 32, what="depth")


def test_rejects_bad_input(tiny_model):
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        tiny_model(torch.rand(1, 2, 3, 28, 30))
    with pytest.raises(ValueError, match=r"\[B,S,3,H,W\]"):
        tiny_model(torch.rand(2, 3, 28))


def test_state_dict_order_and_param_count_match_fixture():
    meta = json.loads((ASSETS / "vggt_tiny_reference.json").read_text())
    official = [e["key"][len("model.") :] for e in meta["keys"] if e["key"].startswith("model.")]
    model = VGGT(VGGTConfig.tiny())
    assert list(model.state_dict()) == official
    assert sum(p.numel() for p in model.parameters()) == meta["model"]["parameter_count"] == 1_609_144
    assert not model.aggregator.patch_embed.mask_token.requires_grad


def read_official_keys() -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in (ASSETS / "vggt-1b-keys.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype, numel = line.split("\t")
        keys[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        assert dtype == "float32" and math.prod(keys[key]) == int(numel)
    return keys


def test_full_size_meta_model_matches_checkpoint_layout():
    official = read_official_keys()
    assert len(official) == 1797 and sum(math.prod(s) for s in official.values()) == 1_256_537_516
    without_track = {k: s for k, s in official.items() if not k.startswith("track_head.")}
    with torch.device("meta"):
        model = VGGT(VGGTConfig())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(without_track)  # same keys, same order
    assert ours == without_track
    assert sum(p.numel() for p in model.parameters()) == 1_190_596_120
    assert all(p.is_meta for p in model.parameters())


def test_lora_targets_are_plain_linear_and_conv():
    """PEFT matches by module name and type: the official names must be exact nn.Linear / nn.Conv2d."""
    with torch.device("meta"):
        model = VGGT(VGGTConfig())
    modules = dict(model.named_modules())
    for name in (
        "aggregator.frame_blocks.12.attn.qkv",
        "aggregator.global_blocks.23.mlp.fc2",
        "aggregator.patch_embed.blocks.0.attn.proj",
        "camera_head.trunk.3.attn.qkv",
        "camera_head.poseLN_modulation.1",
        "camera_head.pose_branch.fc1",
        "camera_head.embed_pose",
    ):
        assert type(modules[name]) is nn.Linear, name
    assert type(modules["depth_head.scratch.refinenet1.resConfUnit1.conv1"]) is nn.Conv2d
    # Counts from the spec's LoRA table: 48 aggregator blocks x 4 Linears + 20 camera Linears;
    # 30 plain Conv2d in the DPT depth head.
    linear_c = [
        n
        for n, m in modules.items()
        if type(m) is nn.Linear
        and (
            n.startswith("aggregator.frame_blocks")
            or n.startswith("aggregator.global_blocks")
            or n.startswith("camera_head")
        )
    ]
    assert len(linear_c) == 212
    assert sum(type(m) is nn.Conv2d for n, m in modules.items() if n.startswith("depth_head")) == 30


def test_heads_can_be_disabled_and_unused_layers_are_not_kept(fixture_tensors):
    full = VGGT(VGGTConfig.tiny(depth=6, intermediate_layer_idx=(0, 2, 3, -1)))
    camera_only = VGGT(VGGTConfig.tiny(depth=6), heads=("camera",))
    assert camera_only.depth_head is None and camera_only.point_head is None
    assert not any(k.startswith(("depth_head", "point_head")) for k in camera_only.state_dict())
    assert camera_only.config.layers_needed() == (5,)
    assert full.config.layers_needed() == (0, 2, 3, 5)
    images = fixture_tensors["case_a.images_u8"][:1, :2].float() / 255.0
    kept = {}
    full.aggregator.register_forward_hook(lambda m, i, o: kept.__setitem__("layers", o[0]))
    with torch.no_grad():
        full.eval()(images)
    assert [t is not None for t in kept["layers"]] == [True, False, True, True, False, True]
    camera_only.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith(("depth", "point"))})
    with torch.no_grad():
        out_cam = camera_only.eval()(images)
        out_full = full(images)
    assert set(out_cam) == {"pose_enc", "pose_enc_list", "images"}
    assert torch.equal(out_cam["pose_enc"], out_full["pose_enc"])


def test_dpt_frame_chunking_gives_the_same_result(tiny_model, fixture_tensors):
    images = fixture_tensors["case_a.images_u8"][:1].float() / 255.0  # S = 3
    with torch.no_grad():
        aggregated, start = tiny_model.aggregator(images)
        whole = tiny_model.depth_head(aggregated, images, start, frames_chunk_size=None)
        chunked = tiny_model.depth_head(aggregated, images, start, frames_chunk_size=2)
    # Same convolutions on fewer frames at a time: reductions of <= 64·9 terms through ~20 layers.
    for got, want in zip(chunked[:2], whole[:2], strict=True):
        assert_within_rounding(got, want, ops=64 * 9 * 20, what="chunked depth head")


def test_activation_checkpointing_same_gradients(monkeypatch, fixture_tensors):
    torch.manual_seed(0)
    config = VGGTConfig.tiny(depth=2, intermediate_layer_idx=(0, 1, 1, 1))
    model = VGGT(config, heads=("camera", "depth")).train()
    images = fixture_tensors["case_a.images_u8"][:1, :2].float() / 255.0

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        out = model(images)
        assert "images" not in out  # only returned in eval mode
        (out["pose_enc"].square().sum() + out["depth"].mean()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    calls = []
    original = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(
        torch.utils.checkpoint, "checkpoint", lambda fn, *a, **k: calls.append((fn, k)) or original(fn, *a, **k)
    )
    model.set_activation_checkpointing(True)
    checkpointed = grads()
    # 2 DINO blocks + 2 frame + 2 global blocks, then the depth head one frame at a time; all non-reentrant.
    blocks = [fn for fn, _ in calls if isinstance(fn, torch.nn.Module)]
    head_chunks = [fn for fn, _ in calls if getattr(fn, "__self__", None) is model.depth_head]
    assert len(blocks) == 6 and len(head_chunks) == images.shape[1] == 2 and len(calls) == 8
    assert all(k == {"use_reentrant": False} for _, k in calls)
    assert plain.keys() == checkpointed.keys() and len(plain) > 50
    # Checkpointing recomputes the same forward, but the depth head runs frame by frame, so every weight
    # gradient is a sum over the B·S·H·W output pixels in another order, fed through ~32 layers (2+2+2
    # blocks, the DPT head's convolutions): bound = λ·√(pixels·32)·u·max|grad| (tests/tolerance.py).
    ops = images.shape[0] * images.shape[1] * images.shape[-2] * images.shape[-1] * 32
    for name in plain:
        assert_within_rounding(checkpointed[name], plain[name], ops, what=name)
    # ...which still sees a lost term: as if the head's second frame chunk had not been back-propagated.
    model.zero_grad()
    out = model(images)
    (out["pose_enc"].square().sum() + out["depth"][:, :1].mean() / 2).backward()
    name = "depth_head.scratch.output_conv2.0.weight"
    with pytest.raises(AssertionError):
        assert_within_rounding(dict(model.named_parameters())[name].grad, plain[name], ops)
    model.eval()
    calls.clear()
    with torch.no_grad():
        model(images)
    assert not calls  # eval / no-grad never checkpoints
    model.set_activation_checkpointing(False)
    assert model.depth_head.checkpoint_frames is None


def test_bf16_autocast_close_to_fp32_with_fp32_heads(tiny_model, fixture_tensors):
    images = fixture_tensors["case_a.images_u8"][:1, :2, :, :28, :42].float() / 255.0
    head_dtypes = []
    hook = tiny_model.depth_head.scratch.output_conv2.register_forward_hook(lambda m, i, o: head_dtypes.append(o.dtype))
    qkv_dtypes = []
    hook2 = tiny_model.aggregator.frame_blocks[0].attn.qkv.register_forward_hook(
        lambda m, i, o: qkv_dtypes.append(o.dtype)
    )
    try:
        with torch.no_grad():
            ref = tiny_model(images)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = tiny_model(images)
    finally:
        hook.remove()
        hook2.remove()
    assert qkv_dtypes == [torch.float32, torch.bfloat16]  # the aggregator did run in bf16
    assert head_dtypes == [torch.float32, torch.float32]  # the heads did not
    for key in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf"):
        assert low[key].dtype == torch.float32
        err = relative_error(low[key], ref[key])
        assert 0 < err < 2e-2, (key, err)


def test_rope_is_relative_and_norm_preserving():
    """<R(p) q, R(p') k> depends only on p - p' (per axis); rotations keep each pair's norm."""
    rope = RotaryEmbedding2D(100.0)
    positions = torch.tensor([[0, 0], [3, 5], [7, 2], [4, 6], [8, 3]])
    cos, sin = rope.tables(positions, head_dim=16)
    assert torch.equal(cos[0], torch.ones(16)) and torch.equal(sin[0], torch.zeros(16))
    q, k = torch.randn(2, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rq = apply_rope_2d(q.expand(5, 16), cos.double(), sin.double())
    rk = apply_rope_2d(k.expand(5, 16), cos.double(), sin.double())
    # (3,5)-(7,2) == (4,6)-(8,3): same offset (-4, 3)
    # The tables are float32: each cos/sin is off by <= (1 + angle)·u32 (angle = position x frequency <= 8
    # rad, itself rounded), and a product <R q, R' k> sums 16 terms mixing 2 entries of each table,
    # so |error| <= 4·9·u32·|q||k| (worst case); the float64 arithmetic around it adds nothing visible.
    scale = float(q.norm() * k.norm())
    assert_within_rounding(rq[1] @ rk[2], rq[3] @ rk[4], ops=36, worst_case=True, scale=scale, what="offset")
    with pytest.raises(AssertionError):  # another offset is far outside that bound
        assert_within_rounding(rq[1] @ rk[2], rq[1] @ rk[3], ops=36, worst_case=True, scale=scale)

    def pair_norm(t):
        return t.view(*t.shape[:-1], 2, 2, 4).square().sum(-2)

    # cos² + sin² = 1 within 2·(1 + 8)·u32 per table entry, times the pair's squared norm
    assert_within_rounding(pair_norm(rq), pair_norm(q.expand(5, 16)), ops=18, worst_case=True, what="pair norms")
    # Hand value: y=3 rotates channel pair (0, 4) of the first half by 3 * 100^0 = 3 rad.
    assert math.isclose(cos[1, 0].item(), math.cos(3.0), abs_tol=1e-6)
    assert math.isclose(sin[1, 8].item(), math.sin(5.0), abs_tol=1e-6)  # x=5 on the second half


def test_uv_embedding_hand_values():
    emb = uv_sincos_embedding(1, 1, 8, aspect_ratio=1.0, device=torch.device("cpu"))
    assert torch.equal(emb[:, 0, 0], torch.tensor([0, 0, 1, 1, 0, 0, 1, 1], dtype=torch.float32))
    emb = uv_sincos_embedding(2, 3, 4, aspect_ratio=1.5, device=torch.device("cpu"))
    span_x = 1.5 / math.sqrt(1.5**2 + 1)
    u_left = -span_x * 2 / 3
    assert math.isclose(emb[0, 0, 0].item(), math.sin(u_left), rel_tol=1e-6)  # sin(u * 100^0)
    assert math.isclose(emb[1, 0, 1].item(), math.cos(0.0), rel_tol=1e-6)  # cos(u), centre column u = 0
    v_bottom = (1 / math.sqrt(1.5**2 + 1)) * 1 / 2
    assert math.isclose(emb[2, 1, 0].item(), math.sin(v_bottom), rel_tol=1e-6)


def test_conv_patch_embed_option():
    model = VGGT(VGGTConfig.tiny(patch_embed="conv"), heads=("depth",)).eval()
    keys = model.state_dict()
    assert keys["aggregator.patch_embed.weight"].shape == (64, 3, 14, 14)
    assert not any(k.startswith("aggregator.patch_embed.blocks") for k in keys)
    assert type(model.aggregator.patch_embed) is nn.Conv2d
    with torch.no_grad():
        out = model(torch.rand(2, 3, 28, 42))
    assert out["depth"].shape == (1, 2, 28, 42, 1)
    with pytest.raises(ValueError, match="patch_embed must be"):
        VGGTConfig(patch_embed="dinov3")
