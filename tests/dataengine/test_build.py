"""Build configuration through the CLI (dataengine.cli → dataengine.build)."""

from __future__ import annotations


def test_build_cli_pooling_option_reaches_the_build_config(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import dataengine.build
    from dataengine.cli import build_command

    seen = []
    monkeypatch.setattr(dataengine.build, "build_shards", lambda cfg: seen.append(cfg) or {"splits": {}, "skipped": []})
    args = ["--root", str(tmp_path), "--out", str(tmp_path / "out"), "--quiet"]
    for extra, pooling in [([], "plane"), (["--pooling", "median", "--depth-samples", "4"], "median")]:
        result = CliRunner().invoke(build_command, args + extra)
        assert result.exit_code == 0, result.output
        assert seen[-1].laser.pooling == pooling
    assert seen[-1].laser.samples == 4
    result = CliRunner().invoke(build_command, args + ["--pooling", "mean"])
    assert result.exit_code != 0 and "'mean' is not one of 'plane', 'nearest'" in result.output
    help_text = " ".join(CliRunner().invoke(build_command, ["--help"]).output.split())
    assert "plane = local inverse-depth plane fit" in help_text and "[default: plane]" in help_text
    assert "(nearest/median/min only)" in help_text


def test_python_caller_gets_the_cli_option_checks_before_anything_is_read(tmp_path):
    """The cross-option checks live in dataengine.config: build_shards refuses the same combinations as
    the CLI, with the same words, before it looks at --root or creates --out."""
    import pytest

    from dataengine.build import build_shards
    from dataengine.config import BuildConfig, OptionError

    root, out = tmp_path / "no-such-root", tmp_path / "out"
    cases = [
        (dict(depth="mvs"), "--depth", "--depth mvs needs --format colmap (ETH3D has laser depth)"),
        (dict(format="colmap", depth="laser"), "--depth", "--depth laser needs --format eth3d; COLMAP projects"),
        (dict(metric_scale=-2.0), "--metric-scale", "-2.0: must be a positive number"),
        (dict(undistort_fov="wide"), "--undistort-fov", "'wide': expected valid, full or degrees in [1, 160]"),
        (dict(ray_address="auto"), "--ray-address", "--ray-address needs --executor ray"),
    ]
    for options, option, words in cases:
        with pytest.raises(OptionError) as info:
            build_shards(BuildConfig(root, out, **options))
        assert info.value.option == option and info.value.detail.startswith(words)
        assert str(info.value).startswith(option) and words in str(info.value)
    with pytest.raises(ValueError, match="--format must be eth3d or colmap, got 'ply'"):
        build_shards(BuildConfig(root, out, format="ply"))
    assert not out.exists()


def test_a_new_format_is_one_source_class(synth_root, tmp_path, monkeypatch):
    """The build asks only the Source: a format registered in dataengine.sources.SOURCES (here ETH3D under
    another name and dataset card) builds through the shared cache, windows and shard writer. Its frames
    have the same identity as ETH3D's, so the second build renders nothing and writes the same shard bytes."""
    import sys
    import types

    from dataengine import sources
    from dataengine.build import build_shards
    from dataengine.config import BuildConfig
    from dataengine.sources.eth3d import Eth3dSource
    from dataengine.windows import WindowConfig

    class ToySource(Eth3dSource):
        name = "toy"
        dataset = "toy captures"
        license = "toy licence"

        def dataset_card(self, manifest: dict) -> str:
            return f"# toy: {manifest['splits']['train']['samples']} train samples\n"

    module = types.ModuleType("toy_source")
    module.ToySource = ToySource
    monkeypatch.setitem(sys.modules, "toy_source", module)
    monkeypatch.setitem(sources.SOURCES, "toy", "toy_source:ToySource")
    monkeypatch.setattr(sources, "FORMATS", tuple(sources.SOURCES))

    def build(fmt: str, out):
        cfg = BuildConfig(
            synth_root, out, scenes=("synth_facade",), width=28, height=28, format=fmt, keep_cache=True,
            windows=WindowConfig(frames=3, stride=3), progress=False,
        )  # fmt: skip
        return build_shards(cfg)

    eth3d = build("eth3d", tmp_path / "eth3d")
    cache = tmp_path / "eth3d" / ".frame-cache"
    rendered = {p: p.stat().st_mtime_ns for p in cache.rglob("*.npz")}
    shards = {p.name: p.read_bytes() for p in (tmp_path / "eth3d").glob("*.tar")}
    toy = build("toy", tmp_path / "eth3d")
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.npz")} == rendered  # every frame from the cache
    assert {p.name: p.read_bytes() for p in (tmp_path / "eth3d").glob("*.tar")} == shards
    assert (toy["dataset"], toy["license"]) == ("toy captures", "toy licence")
    assert eth3d["dataset"].startswith("ETH3D") and toy["splits"] == eth3d["splits"]
    card = (tmp_path / "eth3d" / "README.md").read_text()
    assert card == f"# toy: {toy['splits']['train']['samples']} train samples\n"
