"""trainer.evaluate: base-vs-adapter metrics, report and pictures from hand-built and tiny models."""

from __future__ import annotations

import contextlib
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.evaluate import evaluate, relative_change
from trainer.losses import prepare_batch
from trainer.vggt import VGGT, VGGTConfig
from trainer.vggt.geometry import extri_intri_to_pose_encoding

HEIGHT, WIDTH, FRAMES = 28, 42, 3


def rotation(axis: list[float], deg: float) -> torch.Tensor:
    axis_t = torch.tensor(axis, dtype=torch.float64)
    axis_t = axis_t / axis_t.norm()
    x, y, z = axis_t.tolist()
    skew = torch.tensor([[0, -z, y], [z, 0, -x], [-y, x, 0]], dtype=torch.float64)
    a = math.radians(deg)
    return torch.eye(3, dtype=torch.float64) + math.sin(a) * skew + (1 - math.cos(a)) * skew @ skew


def synthetic_batch(seed: int, scenes: list[str]) -> dict:
    """A shard batch (contract of trainer.data) with metric GT: B = len(scenes) windows of 3 frames."""
    gen = torch.Generator().manual_seed(seed)
    batch_size = len(scenes)
    extrinsics = torch.zeros(batch_size, FRAMES, 3, 4)
    for b in range(batch_size):
        for s in range(FRAMES):
            r = rotation([0.2, 1.0, 0.1 * s], 8.0 * s + 3 * b)
            centre = torch.tensor([0.4 * s, 0.1 * b, -2.0], dtype=torch.float64)
            extrinsics[b, s] = torch.cat([r, (-r @ centre)[:, None]], -1).float()
    intrinsics = torch.tensor([[40.0, 0, (WIDTH - 1) / 2], [0, 41.0, (HEIGHT - 1) / 2], [0, 0, 1]]).expand(
        batch_size, FRAMES, 3, 3).clone()
    depths = 2 + 3 * torch.rand(batch_size, FRAMES, HEIGHT, WIDTH, generator=gen)
    masks = torch.rand(batch_size, FRAMES, HEIGHT, WIDTH, generator=gen) > 0.25
    depths = torch.where(masks, depths, torch.zeros_like(depths))
    images = torch.randint(0, 256, (batch_size, FRAMES, 3, HEIGHT, WIDTH), generator=gen, dtype=torch.uint8)
    return {
        "images": images, "depths": depths, "point_masks": masks, "extrinsics": extrinsics, "intrinsics": intrinsics,
        "keys": [f"{scene}_{seed:05d}" for scene in scenes], "scenes": scenes,
        "names": [[f"IMG_{seed}_{s}.JPG" for s in range(FRAMES)] for _ in scenes],
    }


class ScriptedModel(torch.nn.Module):
    """Returns depth = per-frame factor x normalised GT and the GT pose encoding (optionally rotated)."""

    def __init__(self, batches: list[dict], frame_factors: list[float], yaw_error_deg: float = 0.0):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the model a device
        self.outputs = []
        for batch in batches:
            prepared = prepare_batch(batch)
            depth = torch.where(prepared["point_masks"], prepared["depths"], torch.ones_like(prepared["depths"]))
            depth = depth * torch.tensor(frame_factors)[None, :, None, None]
            extrinsics = prepared["extrinsics"].clone()
            extrinsics[:, -1, :, :3] = rotation([0, 0, 1], yaw_error_deg).float() @ extrinsics[:, -1, :, :3]
            pose_enc = extri_intri_to_pose_encoding(extrinsics, prepared["intrinsics"], (HEIGHT, WIDTH))
            self.outputs.append({"depth": depth[..., None], "depth_conf": 1 + depth, "pose_enc": pose_enc,
                                 "pose_enc_list": [pose_enc]})
        self.calls = 0

    def forward(self, images):
        assert images.dtype == torch.float32 and images.max() <= 1.0
        out = self.outputs[self.calls % len(self.outputs)]
        self.calls += 1
        return out


@pytest.fixture(scope="module")
def batches():
    return [synthetic_batch(0, ["courtyard", "facade"]), synthetic_batch(1, ["courtyard"])]


def test_report_metrics_and_pictures(tmp_path, batches):
    adapter = ScriptedModel(batches, [1.0, 1.0, 1.0])  # perfect in the training normalisation
    base = ScriptedModel(batches, [3.0, 6.0, 3.0], yaw_error_deg=10.0)  # frame 1 twice too far, last camera yawed
    metrics = evaluate(base, adapter, batches, tmp_path, alignment="sequence", max_pictures=1)

    assert metrics["counts"] == {"windows": 3, "frames": 9, "frames_with_depth": 9,
                                 "pixels": int(sum(b["point_masks"].sum() for b in batches)), "pairs": 9}
    overall = metrics["overall"]
    assert overall["adapter"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert overall["adapter"]["delta1"] == 1.0
    assert overall["adapter"]["auc@30"] == 1.0 and overall["adapter"]["rot_err_deg"] == pytest.approx(0, abs=1e-3)
    # Base in metres is factor_f x GT, so with the window's median scale s, AbsRel of frame f = |factor_f s - 1|.
    factors = torch.tensor([3.0, 6.0, 3.0])
    for b, batch in enumerate(batches):
        for item, key in enumerate(batch["keys"]):
            gt, mask = batch["depths"][item].double(), batch["point_masks"][item]
            pred = factors[:, None, None].double() * gt
            s = np.median(gt[mask].numpy()) / np.median(pred[mask].numpy())
            records = sorted((f for f in metrics["frames"] if f["key"] == key), key=lambda f: f["frame"])
            for f, record in zip(factors.tolist(), records):
                assert record["base"]["abs_rel"] == pytest.approx(abs(f * s - 1), rel=1e-5, abs=1e-6)
                assert record["base"]["fit_scale"] == pytest.approx(s, rel=1e-6)
    assert overall["base"]["abs_rel"] > 0.1
    assert overall["relative_change"]["abs_rel"] == pytest.approx(-1.0, abs=1e-5)
    # Camera: pairs (0,2) and (1,2) of every window are 10 degrees off in rotation.
    assert overall["base"]["rot_err_deg"] == pytest.approx(20.0 / 3.0, abs=1e-3)
    assert overall["base"]["rra@5"] == pytest.approx(1.0 / 3.0) and overall["base"]["rra@15"] == 1.0
    assert set(metrics["scenes"]) == {"courtyard", "facade"}
    assert metrics["scenes"]["courtyard"]["base"]["frames"] == 6

    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["alignment"] == "sequence" and on_disk["overall"]["adapter"]["delta1"] == 1.0
    report = (tmp_path / "report.md").read_text()
    assert "| abs_rel | 0.3333 | 0.0000 | -100.0% ✓ |" in report
    assert "alignment: **sequence**" in report and "3 windows, 9 frames" in report
    assert "| facade | 3 |" in report
    assert metrics["pictures"] == ["window_000_courtyard_00000.png", "summary_abs_rel.png"]
    for picture in metrics["pictures"]:
        with Image.open(tmp_path / picture) as png:
            assert png.format == "PNG" and png.width > 400 and png.height > 200
        assert f"]({picture})" in report


def test_alignment_none_sees_the_scale_error(tmp_path, batches):
    adapter = ScriptedModel(batches[:1], [1.0, 1.0, 1.0])
    base = ScriptedModel(batches[:1], [3.0, 3.0, 3.0])
    metrics = evaluate(base, adapter, batches[:1], tmp_path, alignment="none", max_pictures=0)
    # The training normalisation maps a perfect prediction back to metres exactly; x3 is AbsRel 2.
    assert metrics["overall"]["adapter"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["overall"]["base"]["abs_rel"] == pytest.approx(2.0, rel=1e-5)
    assert metrics["pictures"] == ["summary_abs_rel.png"]
    metrics = evaluate(base, adapter, batches[:1], tmp_path, alignment="median", max_pictures=0)
    assert metrics["overall"]["base"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)


class TogglableAdapter(torch.nn.Module):
    """PEFT-like: ``disable_adapter()`` switches to the base behaviour."""

    def __init__(self, adapted: torch.nn.Module, base: torch.nn.Module):
        super().__init__()
        self.adapted, self.base, self.enabled = adapted, base, True

    @contextlib.contextmanager
    def disable_adapter(self):
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True

    def forward(self, images):
        return (self.adapted if self.enabled else self.base)(images)


def test_base_through_disable_adapter_and_errors(tmp_path, batches):
    model = TogglableAdapter(ScriptedModel(batches[:1], [1.0] * 3), ScriptedModel(batches[:1], [3.0, 6.0, 3.0]))
    metrics = evaluate(None, model, batches[:1], tmp_path, max_pictures=0)
    assert metrics["alignment"] == "sequence"
    assert metrics["overall"]["base"]["abs_rel"] > 0.3 and metrics["overall"]["adapter"]["abs_rel"] < 1e-6
    with pytest.raises(ValueError, match="alignment"):
        evaluate(None, model, batches[:1], tmp_path, alignment="affine")
    with pytest.raises(ValueError, match="empty"):
        evaluate(None, model, [], tmp_path)
    assert relative_change(0.0, 1.0) is None and relative_change(2.0, 1.0) == -0.5


def test_tiny_vggt_end_to_end(tmp_path):
    """The real (tiny, random) model: finite metrics, different base and adapter weights, PNG written."""
    torch.manual_seed(0)
    base = VGGT(VGGTConfig.tiny())
    adapted = VGGT(VGGTConfig.tiny())
    adapted.load_state_dict(base.state_dict())
    with torch.no_grad():
        adapted.depth_head.scratch.output_conv2[-1].bias.add_(0.5)  # a visible change in depth scale/conf
    metrics = evaluate(base, adapted, [synthetic_batch(2, ["terrace"])], tmp_path, max_pictures=1)
    for label in ("base", "adapter"):
        block = metrics["overall"][label]
        assert 0 <= block["abs_rel"] < 10 and 0 <= block["delta1"] <= 1 and 0 <= block["auc@30"] <= 1
    assert (tmp_path / metrics["pictures"][0]).stat().st_size > 10_000
