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
