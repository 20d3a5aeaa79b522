"""shardformat.views and the recipes' geometry, numpy only: reading equals the trainer's decoder, every
recipe's output is consistent across views in its own frame (and a flipped axis or swapped w2c/c2w is
not), the pixel-centre resize reproduces a native build's K, MoGe's normalised K gives the pixel-K
points, the size guards, the pair policies and the manifest's statements."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shardformat import ShardError, views
from shardformat.recipes import RecipeError, for_model, moge_intrinsics
from tests.shardformat.geometry import consistent, cross_view_errors

PAIRS = [(0, 1), (1, 2), (2, 3), (0, 3), (1, 0), (3, 1)]
OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV camera axes → OpenGL's (y up, z backwards)


@pytest.fixture(scope="module")
def samples_112(shards_112):
    return list(views.read(shards_112, split=None))


@pytest.fixture(scope="module")
def samples_224(shards_224):
    return list(views.read(shards_224, split=None))


def pooled(sample_depth, K, c2w, w2c) -> np.ndarray:
    return np.concatenate(
        [cross_view_errors(sample_depth[i], K[i], c2w[i], sample_depth[j], K[j], w2c[j]) for i, j in PAIRS]
    )


def test_read_equals_the_trainers_decoder(shards_112, samples_112):
    from shardformat import index_tar
    from trainer.data.decode import decode_sample

    by_key = {s.key: s for s in samples_112}
    tars = sorted(shards_112.glob("*.tar"))
    assert len(by_key) == len(tars) >= 3
    for tar in tars:
        record = next(index_tar(tar))
        ref = decode_sample(record, None)
        ours = by_key[record["__key__"]]
        np.testing.assert_array_equal(ours.images, ref["images"])
        np.testing.assert_array_equal(np.nan_to_num(ours.depth, nan=0.0), ref["depths"])
        np.testing.assert_array_equal(ours.valid, ref["point_masks"])
        assert np.isnan(ours.depth[~ours.valid]).all() and (ours.depth[ours.valid] > 0).all()
        np.testing.assert_allclose(ours.K, ref["intrinsics"], rtol=1e-6)  # the trainer's are float32
        np.testing.assert_allclose(ours.w2c[:, :3], ref["extrinsics"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ours.c2w @ ours.w2c, np.broadcast_to(np.eye(4), ours.w2c.shape), atol=1e-12)
        assert ours.units == "metres" and ours.is_metric and ours.names == ref["names"]
    assert [s.key for s in views.read(tars[0])] == [next(index_tar(tars[0]))["__key__"]]


def test_read_names_what_is_wrong(tmp_path, shards_112):
    with pytest.raises(ShardError, match="no such shard directory or tar"):
        next(views.read(tmp_path / "missing"))
    with pytest.raises(ShardError, match="no shard in split 'test'"):
        next(views.read(shards_112, split="test"))


def test_shard_ground_truth_is_consistent_across_views_and_the_controls_are_not(samples_112):
    for s in samples_112:
        assert consistent(pooled(s.depth, s.K, s.c2w, s.w2c)), s.key
        # extrinsics read as camera-to-world (the swapped-convention mistake)
        assert not consistent(pooled(s.depth, s.K, s.w2c, s.c2w)), s.key
        # OpenGL axes applied to one side only (a flipped axis)
        gl_c2w = s.c2w @ OPENGL
        assert not consistent(pooled(s.depth, s.K, gl_c2w, s.w2c)), s.key


def test_da3_recipe_is_consistent_in_its_normalised_frame(samples_112):
    for s in samples_112:
        b = for_model("da3", s)
        w2c = b["extrinsics"][0].astype(np.float64)
        c2w = np.linalg.inv(w2c)
        depth, K = b["depth"][0], b["intrinsics"][0].astype(np.float64)
        np.testing.assert_allclose(w2c[0], np.eye(4), atol=1e-6)  # world = first view
        np.testing.assert_allclose(depth[b["valid"][0]] * b["scale"], s.depth[s.valid], rtol=1e-6)
        assert consistent(pooled(depth, K, c2w, w2c), median=2e-4), s.key
        assert not consistent(pooled(depth, K, w2c, c2w)), s.key
        # depth left in metres while the cameras are normalised: no longer one frame
        assert not consistent(pooled(depth * b["scale"], K, c2w, w2c)), s.key


def test_dust3r_recipe_puts_view2_in_view1s_camera_consistently(samples_112):
    from shardformat.recipes.dust3r import in_camera_of

    for s in samples_112:
        pairs = for_model("dust3r", s, pairs="all", symmetric=True)
        assert len(pairs) == 12
        errors = []
        for v1, v2 in pairs:
            # view 1's own points: z equals its depth map
            own = in_camera_of(v1, v1)[v1["valid_mask"]]
            np.testing.assert_allclose(own[:, 2], v1["depthmap"][v1["valid_mask"]], rtol=1e-5)
            # view 2's points in view 1's camera, checked against view 1's depth
            pts = in_camera_of(v2, v1)[v2["valid_mask"]]
            depth2_in_1 = np.zeros_like(v2["depthmap"], dtype=np.float64)
            K1 = v1["camera_intrinsics"].astype(np.float64)
            identity = np.eye(4)
            # express as a depth map of view 2 with the relative camera to reuse the cross-view check
            rel = np.linalg.inv(v1["camera_pose"].astype(np.float64)) @ v2["camera_pose"].astype(np.float64)
            errors.append(cross_view_errors(v2["depthmap"], v2["camera_intrinsics"], rel, v1["depthmap"], K1, identity))
            assert pts.shape[0] == int(v2["valid_mask"].sum()) and depth2_in_1.shape == v2["depthmap"].shape
            assert v1["img"].min() >= -1 and v1["img"].max() <= 1 and v1["img"].shape == (3, *s.size)
            assert v1["instance"] != v2["instance"]
        assert consistent(np.concatenate(errors)), s.key


def test_moge_normalised_intrinsics_give_the_pixel_points(samples_112):
    s = samples_112[0]
    h, w = s.size
    b = for_model("moge", s)
    Kn_all = moge_intrinsics(s.K, s.size)
    np.testing.assert_allclose(b["intrinsics"], Kn_all, rtol=1e-6)  # the batch's are float32
    for i in range(len(s)):
        Kn = Kn_all[i]
        # MoGe's view plane: pixel (u, v) sits at ((u + 0.5)/W, (v + 0.5)/H) of the unit image
        un, vn = np.meshgrid((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h)
        z = s.depth[i].astype(np.float64)
        pts = np.stack([(un - Kn[0, 2]) / Kn[0, 0] * z, (vn - Kn[1, 2]) / Kn[1, 1] * z, z], -1)
        ref = s.points(i)
        known = s.valid[i]
        assert np.abs(pts[known] - ref[known]).max() <= 1e-12 * np.abs(ref[known]).max()
        # the cx/W mistake moves the points by half a pixel's footprint
        wrong = Kn.copy()
        wrong[0, 2] -= 0.5 / w
        shifted = (un - wrong[0, 2]) / wrong[0, 0] * z
        assert np.nanmax(np.abs(shifted - pts[..., 0])[known]) > 1e-3
    assert np.isnan(b["depth"][~b["depth_mask_fin"]]).all() and not b["depth_mask_inf"].any()
    assert b["image"].dtype == np.float32 and 0 <= b["image"].min() and b["image"].max() <= 1
    assert b["label_type"] == ["B"] * len(s) and b["is_metric"] == [True] * len(s)
    # normals face the camera on the facade, unit length where all four neighbours are known
    n = b["normal"][0]
    has = np.isfinite(n).all(-1)
    assert has.mean() > 0.3 and np.allclose(np.linalg.norm(n[has], axis=-1), 1, atol=1e-5)
    assert np.median(np.sum(n[has] * s.points(0)[has], axis=-1)) < 0
    assert "normal" not in for_model("moge", s, normals=False)
    np.testing.assert_allclose(moge_intrinsics(s.K, s.size)[:, 0, 2], (s.K[:, 0, 2] + 0.5) / w)


def test_resize_rule_reproduces_a_native_builds_K(samples_224, samples_112):
    for big, small in zip(samples_224, samples_112, strict=True):
        assert big.key == small.key
        resized = views.resize(big, 112)
        assert resized.images.shape == small.images.shape and resized.depth.shape == small.depth.shape
        np.testing.assert_allclose(resized.K, small.K, rtol=0, atol=1e-9)
        plain = big.K.copy()
        plain[:, :2] *= 0.5  # the K·s rule
        assert np.abs(plain[:, :2, 2] - small.K[:, :2, 2]).min() >= 0.25 - 1e-9
        # unknown depth stays unknown, known depth is a sample of the source (never interpolated)
        assert np.isin(resized.depth[resized.valid], big.depth[big.valid]).all()
        assert np.abs(resized.images.astype(int) - small.images.astype(int)).mean() < 6
    with pytest.raises(ValueError, match="resize rule"):
        views.resize(samples_112[0], 56, rule="k-times-s")


def test_size_guards(samples_112):
    s = samples_112[0]
    assert for_model("da3", s)["x"].shape == (1, len(s), 3, 112, 112)
    with pytest.raises(RecipeError, match="not a multiple of its patch size 14"):
        for_model("da3", views.resize(s, 120))
    with pytest.raises(RecipeError, match="not a multiple of its patch size 16"):
        for_model("dust3r", views.resize(s, 126))
    portrait = views.resize(s, (128, 96))
    assert len(for_model("dust3r", portrait, variant="224")) == 6
    with pytest.raises(RecipeError, match="landscape images only"):
        for_model("dust3r", portrait, variant="512")
    assert len(for_model("dust3r", views.resize(s, (96, 128)), variant="512")) == 6
    assert for_model("moge", views.resize(s, (101, 77)))["image"].shape == (len(s), 3, 101, 77)  # any size
    with pytest.raises(RecipeError, match="no recipe for model 'vggt2'"):
        for_model("vggt2", s)


def test_family_views(samples_112):
    s = samples_112[0]
    assert s.pairs("adjacent") == [(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2)]
    assert s.pairs("all", symmetric=False) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    overlaps = {(i, j): min(s.overlap(i, j), s.overlap(j, i)) for i, j in s.pairs("all", symmetric=False)}
    threshold = sorted(overlaps.values())[2]
    chosen = s.pairs("overlap", symmetric=False, min_overlap=threshold)
    assert chosen == [p for p, o in overlaps.items() if o >= threshold] and 0 < len(chosen) < 6
    assert s.overlap(0, 0) == 1.0
    far = s.relative_to(0)  # an unrelated camera: frame 0 seen from 1 km away sees nothing of frame 1
    far.w2c[1, :3, 3] += 1000.0
    assert far.overlap(0, 1) == 0.0
    singles = list(s.frames())
    assert [f.names for f in singles] == [[n] for n in s.names] and singles[2].images.shape[0] == 1
    nv = s.nview(3, first=2)
    assert nv.names == [s.names[2], s.names[0], s.names[1]]
    np.testing.assert_array_equal(nv.depth[0], s.depth[2])
    with pytest.raises(ValueError, match="pair policy"):
        s.pairs("random")


def test_manifest_states_family_and_unknown_depth(shards_112):
    manifest = json.loads((shards_112 / "manifest.json").read_text())
    assert manifest["sample_family"] == views.FAMILY_WINDOWS == views.sample_family(manifest)
    assert "unknown" in manifest["unknown_depth"] and "not sky" in manifest["unknown_depth"]
    assert manifest["is_metric"] == {"synth_facade": True}
    legacy = {k: v for k, v in manifest.items() if k != "sample_family"}
    assert views.sample_family(legacy) == views.FAMILY_WINDOWS
    assert views.sample_family({"options": {"sampling": "random"}}) == views.FAMILY_EVAL
    assert views.sample_family({"options": {"windows": "covisible"}}) == views.FAMILY_COVISIBLE
    assert not views.is_metric_units("arbitrary (COLMAP)") and views.is_metric_units("metres (COLMAP x 2.5)")
