"""Pose AUC, point-cloud metrics and frame sampling against Depth Anything 3's own benchmark code.

`depth-anything-3==0.1.1` (peers.txt, installed with --no-deps) ships `depth_anything_3/bench/`. Its
`utils.py` imports Open3D at module level only to wrap arrays and to voxel-down-sample; Open3D (~400 MB)
is not a dependency of this project, so a stub stands in for it here (wrapping only). The one thing the stub
cannot do, Open3D's voxel down-sampling, is checked against outputs frozen from the real Open3D 0.20 by
tests/assets/make_da3_open3d_reference.py (tests/README.md, "Peer references").
"""

from __future__ import annotations

import importlib
import json
import math
import os
import random
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from dataengine.sampling import da3_sample_indices, restrict_to_sample, sample_frames
from dataengine.scenes import DA3_ETH3D_FILTERED_IMAGES, DA3_ETH3D_SCENES, HELDOUT_SCENES, expand_scene_sets
from examples.peer_env import activate
from trainer.metrics import (
    DA3_ETH3D_THRESHOLD_M,
    DA3_ETH3D_VOXEL_M,
    POSE_CONVENTIONS,
    pointcloud_metrics,
    pose_auc,
    relative_poses,
    voxel_down_sample,
)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
OPEN3D_REFERENCE = ASSETS / "da3_open3d_reference.npz"
THRESHOLDS = (3, 5, 15, 30)
DA3_KEYS = {3: "auc03", 5: "auc05", 15: "auc15", 30: "auc30"}

activate()  # peers.txt's packages (<venv>/peers): DA3's own code is the reference; missing = a failure


def _open3d_stub() -> types.ModuleType:
    """Just enough of open3d for depth_anything_3.bench.utils to import and wrap numpy arrays."""
    o3d = types.ModuleType("open3d")

    class PointCloud:
        def __init__(self):
            self.points = np.zeros((0, 3))

        def voxel_down_sample(self, voxel_size):
            raise AssertionError("the open3d stub does not down-sample; see tests/README.md")

    o3d.geometry = types.SimpleNamespace(PointCloud=PointCloud, TriangleMesh=object)
    o3d.utility = types.SimpleNamespace(Vector3dVector=lambda a: np.asarray(a, dtype=np.float64))
    integration = types.SimpleNamespace(ScalableTSDFVolume=object, TSDFVolumeColorType=None)
    o3d.pipelines = types.SimpleNamespace(integration=integration)
    o3d.camera = types.SimpleNamespace(PinholeCameraIntrinsic=object)
    return o3d


@pytest.fixture(scope="module")
def da3_bench():
    """depth_anything_3.bench.utils, imported with the open3d stub (sys.modules restored afterwards).

    torch runs single-threaded meanwhile: thousands of tiny bmm calls are ~30x slower when threads
    oversubscribe a busy machine."""
    importlib.import_module("depth_anything_3")
    saved = {k: sys.modules.get(k) for k in ("open3d", "depth_anything_3.bench.utils")}
    sys.modules["open3d"] = _open3d_stub()
    sys.modules.pop("depth_anything_3.bench.utils", None)
    import depth_anything_3.bench.utils as bench_utils

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield bench_utils
    torch.set_num_threads(threads)
    for key, module in saved.items():
        if module is None:
            sys.modules.pop(key, None)
        else:
            sys.modules[key] = module


# ------------------------------------------------------------------------------------------ pose cases


def _rotation(axis, deg: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = math.radians(deg)
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def _w2c(rot: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(S,4,4) world-to-camera from camera-to-world rotations ``rot`` (S,3,3) and centres (S,3)."""
    out = np.tile(np.eye(4), (len(rot), 1, 1))
    out[:, :3, :3] = np.swapaxes(rot, 1, 2)
    out[:, :3, 3] = -np.einsum("sji,sj->si", rot, centres)
    return out


def pose_case(rng: np.random.Generator, frames: int, noise_deg: float, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(pred, gt) world-to-camera (S,4,4). GT: cameras around a scene, looking roughly inward. Pred: each
    camera turned by ``noise_deg`` about a random axis, its centre moved by noise_deg % of the extent,
    then the whole rig put through a random world similarity. ``kind``:
    ``normal``; ``pure_rotation`` (every centre exactly at the origin: every pair has zero baseline in GT and
    prediction, no similarity); ``gt_zero_baseline`` (GT pure rotation, predicted centres noisy);
    ``some_at_origin`` (camera 0 and half the others exactly at the origin in both: zero-baseline pairs
    among ordinary ones)."""
    rot = np.stack([_rotation(rng.normal(size=3), rng.uniform(0, 180)) for _ in range(frames)])
    centres = rng.uniform(-5, 5, size=(frames, 3))
    if kind in ("pure_rotation", "gt_zero_baseline"):
        centres[:] = 0.0
    at_origin = np.zeros(frames, bool)
    if kind == "some_at_origin":
        at_origin = rng.random(frames) < 0.5
        at_origin[0] = True
        centres[at_origin] = 0.0
    gt = _w2c(rot, centres)
    turn = np.stack([_rotation(rng.normal(size=3), rng.normal(0, noise_deg)) for _ in range(frames)])
    pred_rot = turn @ rot
    pred_centres = centres + rng.normal(0, noise_deg / 100 * 5, size=(frames, 3))
    if kind == "pure_rotation":
        pred_centres[:] = 0.0
    if kind == "some_at_origin":
        pred_centres[at_origin] = 0.0
    pred = _w2c(pred_rot, pred_centres)
    if kind == "normal":  # a world similarity changes nothing under any rule
        scale, sim_r, sim_t = (
            rng.uniform(0.2, 5),
            _rotation(rng.normal(size=3), rng.uniform(0, 180)),
            rng.normal(size=3),
        )
        pred = _w2c(sim_r @ pred_rot, scale * pred_centres @ sim_r.T + sim_t)
    return pred, gt


def pose_cases(count: int = 220, seed: int = 19):
    """``count`` cases: 2..100 frames (log-uniform), noise 0.1..30 degrees (log-uniform), one in ten degenerate."""
    rng = np.random.default_rng(seed)
    kinds = ("pure_rotation", "gt_zero_baseline", "some_at_origin")
    cases = []
    for index in range(count):
        frames = int(round(math.exp(rng.uniform(math.log(2), math.log(100)))))
        noise = float(math.exp(rng.uniform(math.log(0.1), math.log(30))))
        kind = kinds[(index // 10) % 3] if index % 10 == 9 else "normal"
        cases.append((frames, noise, kind, *pose_case(rng, frames, noise, kind)))
    cases[0] = (100, 0.1, "normal", *pose_case(rng, 100, 0.1, "normal"))
    cases[1] = (2, 30.0, "normal", *pose_case(rng, 2, 30.0, "normal"))
    return cases


# ----------------------------------------------------------------- VGGT's script formula, written from scratch


def _quaternions(r: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (w, x, y, z) of rotation matrices (P,3,3): Shepperd's method, each row from the
    candidate with the largest pivot (the best-conditioned square root)."""
    m = r.reshape(-1, 9).unbind(-1)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m
    pivots = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1
    ).clamp(min=1e-30)
    s = 2 * pivots.sqrt()  # s_k = 4 * |q_k|
    candidates = torch.stack(
        [
            torch.stack([s[:, 0] / 4, (m21 - m12) / s[:, 0], (m02 - m20) / s[:, 0], (m10 - m01) / s[:, 0]], -1),
            torch.stack([(m21 - m12) / s[:, 1], s[:, 1] / 4, (m01 + m10) / s[:, 1], (m02 + m20) / s[:, 1]], -1),
            torch.stack([(m02 - m20) / s[:, 2], (m01 + m10) / s[:, 2], s[:, 2] / 4, (m12 + m21) / s[:, 2]], -1),
            torch.stack([(m10 - m01) / s[:, 3], (m02 + m20) / s[:, 3], (m12 + m21) / s[:, 3], s[:, 3] / 4], -1),
        ],
        1,
    )
    return candidates[torch.arange(r.shape[0]), pivots.argmax(-1)]


def vggt_script_auc(pred: np.ndarray, gt: np.ndarray, thresholds=THRESHOLDS) -> dict[str, float]:
    """VGGT's evaluation/test_co3d.py rule: relative pose E_i inv(E_j) for i < j (torch.combinations order),
    rotation error arccos(1 - 2 clamp(1 - <q_p, q_g>^2, 1e-15)), translation error
    acos(sqrt(1 - clamp(1 - <t_p/(|t_p|+eps), t_g/(|t_g|+eps)>^2, 1e-15))) folded to min(e, |180 - e|),
    AUC = mean cumulative 1-degree histogram of the larger of the two."""

    def relative(e: np.ndarray) -> torch.Tensor:
        e = torch.from_numpy(e)
        i, j = torch.combinations(torch.arange(len(e)), 2).unbind(-1)
        return e[i] @ torch.linalg.inv(e[j])

    rel_p, rel_g = relative(pred), relative(gt)
    dot = (_quaternions(rel_p[:, :3, :3]) * _quaternions(rel_g[:, :3, :3])).sum(-1)
    rot = torch.rad2deg(torch.arccos(1 - 2 * (1 - dot**2).clamp(min=1e-15)))
    tp, tg = rel_p[:, :3, 3], rel_g[:, :3, 3]
    tp = tp / (tp.norm(dim=-1, keepdim=True) + 1e-15)
    tg = tg / (tg.norm(dim=-1, keepdim=True) + 1e-15)
    trans = torch.rad2deg(torch.acos(torch.sqrt(1 - (1 - (tp * tg).sum(-1) ** 2).clamp(min=1e-15))))
    trans = torch.minimum(trans, (180 - trans).abs())
    worst = torch.maximum(rot, trans).numpy()
    out = {}
    for t in thresholds:
        counts, _ = np.histogram(worst, bins=np.arange(t + 1))
        out[f"auc@{t}"] = float(np.mean(np.cumsum(counts / worst.size)))
    return out


# ------------------------------------------------------------------------------------------ pose tests


def test_pose_auc_da3_equals_da3_compute_pose(da3_bench):
    """>= 200 random cases: trainer.metrics.pose_auc(convention="da3") == DA3's compute_pose to 1e-9, every
    threshold; and the DA3 and project rules really differ on these cases (the test would catch a swap)."""
    differ = 0
    for frames, noise, kind, pred, gt in pose_cases():
        theirs = da3_bench.compute_pose(torch.from_numpy(pred), torch.from_numpy(gt))
        ours = pose_auc(pred, gt, convention="da3")
        ours_3x4 = pose_auc(torch.from_numpy(pred[:, :3]).clone(), gt[:, :3], convention="da3")
        assert ours["pairs"] == frames * (frames - 1) // 2
        for t in THRESHOLDS:
            want = float(theirs[DA3_KEYS[t]])
            assert abs(ours[f"auc@{t}"] - want) <= 1e-9, (frames, noise, kind, t, ours, want)
            assert ours_3x4[f"auc@{t}"] == ours[f"auc@{t}"]
        if kind in ("pure_rotation", "gt_zero_baseline"):  # every pair has zero GT baseline: 90 degrees, fails
            assert ours["auc@30"] == 0.0
        other = pose_auc(pred, gt, convention="i_to_j")
        differ += any(abs(other[f"auc@{t}"] - ours[f"auc@{t}"]) > 1e-6 for t in THRESHOLDS)
    assert differ >= 50


def test_pose_auc_vggt_equals_its_script_formula(da3_bench):
    """The "vggt" rule against an independent implementation of VGGT's script formula (quaternions,
    torch.linalg.inv), on the same >= 200 cases."""
    for frames, noise, kind, pred, gt in pose_cases(count=200, seed=7):
        ours = pose_auc(pred, gt, convention="vggt")
        want = vggt_script_auc(pred, gt)
        for t in THRESHOLDS:
            assert abs(ours[f"auc@{t}"] - want[f"auc@{t}"]) <= 1e-9, (frames, noise, kind, t)


def test_pose_rules_compose_as_documented():
    """Each rule's relative pose is the stated product, on a 3-camera example by hand."""
    rng = np.random.default_rng(0)
    pred, _ = pose_case(rng, 3, 5.0, "normal")
    inv = np.linalg.inv
    aligned = pred @ inv(pred[0])
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = {
        "da3": [inv(aligned[i]) @ aligned[j] for i, j in pairs],
        "vggt": [pred[i] @ inv(pred[j]) for i, j in pairs],
        "i_to_j": [pred[j] @ inv(pred[i]) for i, j in pairs],
    }
    for convention in POSE_CONVENTIONS:
        assert np.allclose(relative_poses(pred, convention), np.stack(expected[convention]), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="convention"):
        pose_auc(pred, pred, convention="colmap")
    with pytest.raises(ValueError, match=r"\(S,3,4\) or \(S,4,4\)"):
        pose_auc(pred[:, :3, :3], pred[:, :3, :3])


def test_every_rule_ignores_the_world_frame_and_scale():
    """A prediction that is the GT up to a world similarity scores 1 under every rule (DA3's only thanks to its
    first-camera step: inv(E_i) E_j alone depends on the world frame)."""
    rng = np.random.default_rng(5)
    _, gt = pose_case(rng, 12, 4.0, "normal")
    rot = np.swapaxes(gt[:, :3, :3], 1, 2)
    centres = -np.einsum("sij,sj->si", rot, gt[:, :3, 3])
    sim_r = _rotation([1, 2, 3], 70.0)
    moved = _w2c(sim_r @ rot, 3.0 * centres @ sim_r.T + [4.0, -2.0, 1.0])
    for convention in POSE_CONVENTIONS:
        assert pose_auc(moved, gt, convention=convention)["auc@3"] == 1.0
    first, second = np.triu_indices(12, k=1)
    without_alignment = np.linalg.inv(moved[first]) @ moved[second]
    assert not np.allclose(without_alignment[:, :3, 3], (np.linalg.inv(gt[first]) @ gt[second])[:, :3, 3], atol=0.1)


# ------------------------------------------------------------------------------------ point-cloud tests


def _clouds(rng: np.random.Generator, n_pred: int, n_gt: int, spread: float):
    gt = rng.uniform(-spread, spread, size=(n_gt, 3))
    pred = gt[rng.choice(n_gt, n_pred)] + rng.normal(0, spread / 10, size=(n_pred, 3))
    return pred, gt


def test_pointcloud_metrics_equal_da3_without_down_sampling(da3_bench):
    rng = np.random.default_rng(11)
    for case in range(12):
        pred, gt = _clouds(rng, int(rng.integers(1, 3000)), int(rng.integers(1, 3000)), rng.uniform(0.2, 3))
        threshold = float(rng.uniform(0.01, 0.5))
        want = da3_bench.evaluate_3d_reconstruction(pred, gt, threshold=threshold, down_sample=None)
        got = pointcloud_metrics(pred, gt, threshold=threshold)
        assert set(got) == set(want) == {"acc", "comp", "overall", "precision", "recall", "fscore"}
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-15), (case, key)
    empty = pointcloud_metrics(np.zeros((0, 3)), gt)
    assert empty == da3_bench.evaluate_3d_reconstruction(np.zeros((0, 3)), gt)


def test_voxel_down_sample_and_metrics_equal_open3d_and_da3():
    """Against outputs frozen from the real Open3D 0.20 and DA3's evaluate_3d_reconstruction with
    down-sampling (tests/assets/make_da3_open3d_reference.py)."""
    reference = np.load(OPEN3D_REFERENCE)
    cases = int(reference["cases"])
    assert cases >= 4
    for case in range(cases):
        pred, gt = reference[f"pred_{case}"], reference[f"gt_{case}"]
        voxel, threshold = float(reference[f"voxel_{case}"]), float(reference[f"threshold_{case}"])
        for name, cloud in (("pred", pred), ("gt", gt)):
            mine = voxel_down_sample(cloud, voxel)
            theirs = reference[f"{name}_down_{case}"]
            assert mine.shape == theirs.shape and mine.shape[0] < cloud.shape[0]
            # Same centroids up to order: sort both lexicographically, then compare to rounding.
            mine = mine[np.lexsort(mine.T[::-1])]
            theirs = theirs[np.lexsort(theirs.T[::-1])]
            assert np.allclose(mine, theirs, rtol=0, atol=1e-12), (case, name)
        got = pointcloud_metrics(pred, gt, threshold=threshold, voxel_size=voxel)
        for key, value in zip(reference["keys"], reference[f"metrics_{case}"], strict=True):
            assert got[str(key)] == pytest.approx(float(value), rel=1e-12, abs=1e-15), (case, key)


def test_voxel_down_sample_by_hand():
    # Grid origin = min corner - voxel/2: with voxel 1 and min 0, cells are [-0.5, 0.5), [0.5, 1.5), ...
    points = np.array([[0.0, 0, 0], [0.4, 0, 0], [0.6, 0, 0], [1.4, 0, 0], [3.0, 0, 0]])
    down = voxel_down_sample(points, 1.0)
    assert np.allclose(down, [[0.2, 0, 0], [1.0, 0, 0], [3.0, 0, 0]], rtol=0, atol=1e-15)
    # A grid too large for one int64 key per voxel takes the row-wise path: same cells.
    far = np.array([[0.0, 0, 0], [0.25e-6, 0, 0], [1e7, 1e7, 1e7]])
    assert np.allclose(voxel_down_sample(far, 1e-6), [[0.125e-6, 0, 0], [1e7, 1e7, 1e7]], rtol=1e-15, atol=0)
    with pytest.raises(ValueError, match="voxel size"):
        voxel_down_sample(points, 0.0)
    assert DA3_ETH3D_VOXEL_M == 0.0390625 and DA3_ETH3D_THRESHOLD_M == 0.25


def test_pointcloud_precision_recall_by_hand():
    gt = np.array([[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [3.0, 0, 0]])
    pred = np.array([[0.1, 0, 0], [1.0, 0.3, 0]])
    got = pointcloud_metrics(pred, gt, threshold=0.25)
    # Predicted points: 0.1 and 0.3 from GT -> precision 1/2. GT points: 0.1, 0.3, 1.04, 2.02 -> recall 1/4.
    assert got["precision"] == 0.5 and got["recall"] == 0.25
    assert got["fscore"] == pytest.approx(2 * 0.5 * 0.25 / 0.75)
    assert got["acc"] == pytest.approx(0.2) and got["overall"] == pytest.approx((got["acc"] + got["comp"]) / 2)


# ------------------------------------------------------------------------------------- scenes, sampling


def test_da3_scene_set_and_filters_equal_da3_constants():
    constants = importlib.import_module("depth_anything_3.utils.constants")
    assert DA3_ETH3D_SCENES == tuple(constants.ETH3D_SCENES)
    assert {k: list(v) for k, v in DA3_ETH3D_FILTERED_IMAGES.items()} == constants.ETH3D_FILTER_KEYS
    assert expand_scene_sets(("da3",)) == DA3_ETH3D_SCENES
    assert set(HELDOUT_SCENES) - set(DA3_ETH3D_SCENES) == {"meadow"}


@pytest.mark.parametrize("n_frames", [76, 150, 101, 100, 3])
def test_da3_sampling_reproduces_da3_evaluator(n_frames):
    evaluator = importlib.import_module("depth_anything_3.bench.evaluator")
    from addict import Dict

    names = [f"DSC_{i:04d}.JPG" for i in range(n_frames)]
    scene_data = Dict(
        image_files=names, extrinsics=np.zeros((n_frames, 4, 4)), intrinsics=np.zeros((n_frames, 3, 3)), aux=Dict()
    )
    state = random.getstate()
    try:
        sampled = evaluator.Evaluator._sample_frames(types.SimpleNamespace(max_frames=100), scene_data, "scene")
    finally:
        random.setstate(state)
    want = [names.index(name) for name in sampled.image_files]
    assert da3_sample_indices(n_frames) == want == sample_frames(n_frames, 100, "da3")
    assert len(want) == min(n_frames, 100)
    if n_frames > 100:  # a real draw, not the first 100
        assert want != list(range(100))


def test_da3_sampling_drops_da3_filtered_images_and_takes_the_jpg_calibration_order():
    import dataclasses

    @dataclasses.dataclass
    class Scene:
        name: str
        frames: list

    names = [f"DSC_{i:04d}.JPG" for i in range(420, 445)]
    lines = np.random.default_rng(0).permutation(len(names)) * 2 + 5  # images.txt lines, not in name order
    frames = [
        types.SimpleNamespace(name=n, jpg_calibration_line=int(line)) for n, line in zip(names, lines, strict=True)
    ]
    kept = [f.name for f in restrict_to_sample(Scene("relief", frames), 100, "da3").frames]
    # relief: DA3 drops 427..438; the rest come in images.txt order (DA3's frame 0 is the first listed).
    want = [f.name for f in sorted(frames, key=lambda f: f.jpg_calibration_line) if not "0427" <= f.name[4:8] <= "0438"]
    assert kept == want and len(kept) == 25 - 12 and kept != sorted(kept)
    # Another scene filters nothing; a frame missing from dslr_calibration_jpg is not in DA3's set.
    frames[3].jpg_calibration_line = None
    kicker = [f.name for f in restrict_to_sample(Scene("kicker", frames), 100, "da3").frames]
    assert len(kicker) == 24 and names[3] not in kicker
    # Frames without the line at all (a COLMAP project) keep their order; other modes keep name order.
    plain = [types.SimpleNamespace(name=n) for n in names]
    assert [f.name for f in restrict_to_sample(Scene("kicker", plain), 100, "da3").frames] == names
    assert [f.name for f in restrict_to_sample(Scene("kicker", frames), 100, "uniform").frames] == names


def test_da3_sampling_build_cli(synth_root, tmp_path):
    """`dataengine build --sampling da3 --frames 100` as users run it: a 12-frame scene gives one sample of all
    12 frames (DA3 keeps every frame of scenes with <= 100), although 12 < --frames."""
    out = tmp_path / "shards"
    command = [sys.executable, "-m", "dataengine", "build", "--root", str(synth_root), "--out", str(out)]
    command += ["--scenes", "synth_facade", "--size", "56", "--frames", "100", "--sampling", "da3", "--quiet"]
    proc = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["sampling"] == "da3" and list(manifest["splits"]) == ["test"]
    assert manifest["per_scene"]["synth_facade"]["test_frames"] == 12
