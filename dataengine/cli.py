"""`python -m dataengine`: thin click front end; every command calls a library function."""

from __future__ import annotations

import tarfile
from pathlib import Path

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vggt-eth3d-lora")
def main() -> None:
    """ETH3D → 8-frame WebDataset shards (depth, masks, cameras, manifest)."""


# ---- data engine commands: build / inspect / verify / download (owner: data engine) ----------------


def _csv(value: str | None) -> tuple[str, ...] | None:
    return tuple(s.strip() for s in value.split(",") if s.strip()) if value else None


def _size(value: str) -> tuple[int, int]:
    """'518' → (518, 518); '518x336' → (width 518, height 336)."""
    try:
        parts = [int(v) for v in value.lower().split("x")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected N or WxH") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 8:
        raise click.BadParameter(f"{value!r}: expected N or WxH with sides >= 8")
    return parts[0], parts[1]


@main.command("build")
@click.option("--root", type=click.Path(path_type=Path), default="data/eth3d",
              show_default=True, help="ETH3D root holding one folder per scene.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Output directory for shards, manifest.json and README.md.")
@click.option("--scenes", default=None, help="Comma-separated scene names [default: the five "
              "default scenes present under --root].")
@click.option("--size", default="518", show_default=True, help="Output size N (square) or WxH.")
@click.option("--fit", type=click.Choice(["crop", "pad", "stretch"]), default="crop", show_default=True)
@click.option("--frames", type=int, default=8, show_default=True, help="Frames per sample.")
@click.option("--stride", type=int, default=4, show_default=True, help="Window stride in frames.")
@click.option("--depth", type=click.Choice(["auto", "laser", "sparse"]), default="auto",
              show_default=True)
@click.option("--val-fraction", type=float, default=0.15, show_default=True,
              help="Last fraction of each scene's frames held out (frame-disjoint split).")
@click.option("--val-scenes", default=None, help="Comma-separated scenes held out entirely "
              "(scene-disjoint split; overrides --val-fraction).")
@click.option("--workers", type=int, default=0, help="Frame worker threads [default: all cores].")
@click.option("--samples-per-shard", type=int, default=8, show_default=True)
@click.option("--depth-samples", type=int, default=8, show_default=True,
              help="k: k×k laser samples per output pixel (nearest/median/min only).")
@click.option("--pooling", type=click.Choice(["plane", "nearest", "median", "min"]), default="plane",
              show_default=True, help="Laser depth per output pixel: plane = local inverse-depth "
              "plane fit at the pixel centre where valid, else the nearest GT value; "
              "nearest/median/min of the k×k footprint samples.")
@click.option("--min-count", type=int, default=1, show_default=True,
              help="Valid laser samples needed to supervise a pixel.")
@click.option("--depth-dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True)
@click.option("--skip-bad", is_flag=True, help="Skip bad frames (recorded in the manifest) "
              "instead of stopping.")
@click.option("--keep-cache", is_flag=True, help="Keep the per-frame cache after a successful build.")
@click.option("--sampling", type=click.Choice(["windows", "uniform", "random"]), default="windows",
              show_default=True, help="windows = training windows (train/val); uniform / random = one "
              "evaluation sample per scene of --frames frames spread over / drawn from the whole scene, "
              "in a 'test' split that training never reads. --scenes accepts the set name 'heldout'.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sampling random.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build_command(root, out, scenes, size, fit, frames, stride, depth, val_fraction, val_scenes,
                  workers, samples_per_shard, depth_samples, pooling, min_count, depth_dtype, skip_bad,
                  keep_cache, sampling, seed, quiet):
    """Build 8-frame WebDataset shards from ETH3D scenes."""
    import logging

    from dataengine.build import BuildConfig, build_shards
    from dataengine.colmap import BadInputError
    from dataengine.depth import LaserDepthConfig
    from dataengine.sampling import expand_scene_sets
    from dataengine.windows import WindowConfig

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    width, height = _size(size)
    cfg = BuildConfig(
        root=root, out=out, scenes=expand_scene_sets(_csv(scenes)), width=width, height=height, fit=fit,
        depth=depth, windows=WindowConfig(frames, stride, val_fraction, _csv(val_scenes) or (),
                                          sampling=sampling, seed=seed),
        laser=LaserDepthConfig(samples=depth_samples, pooling=pooling, min_count=min_count),
        workers=workers, samples_per_shard=samples_per_shard, depth_dtype=depth_dtype,
        skip_bad=skip_bad, keep_cache=keep_cache, progress=not quiet)
    try:
        manifest = build_shards(cfg)
    except BadInputError as exc:
        raise click.ClickException(str(exc)) from None
    for split, info in manifest["splits"].items():
        click.echo(f"{split}: {info['samples']} samples in {len(info['shards'])} shards")
    if manifest["skipped"]:
        click.echo(f"skipped {len(manifest['skipped'])} inputs (see {out}/manifest.json)")


@main.command("inspect")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--png", type=click.Path(path_type=Path), default=None,
              help="Write a contact sheet (RGB | depth | mask per frame) of one sample.")
@click.option("--key", default=None, help="Sample key for the contact sheet [default: the first].")
def inspect_command(path, png, key):
    """Keys, shapes, dtypes and coverage of a shard directory or a single shard."""
    from dataengine.inspect_shards import contact_sheet, describe

    try:
        click.echo(describe(path))
        if png is not None:
            click.echo(f"wrote {contact_sheet(path, png, key)}")
    except (FileNotFoundError, tarfile.ReadError) as exc:
        raise click.ClickException(f"{path}: not a readable shard or shard directory ({exc})") from None


@main.command("verify")
@click.argument("directory", type=click.Path(exists=True, file_okay=False,
                                             path_type=Path))
def verify_command(directory):
    """Recompute shard hashes and sample counts against manifest.json (non-zero exit on mismatch)."""
    from dataengine.shards import verify_dataset

    problems = verify_dataset(directory)
    for line in problems:
        click.echo(line, err=True)
    if problems:
        raise SystemExit(1)
    click.echo(f"{directory}: OK")


@main.command("download")
@click.option("--root", type=click.Path(path_type=Path), default="data/eth3d",
              show_default=True)
@click.option("--scenes", default="facade,electro,office,terrace,delivery_area", show_default=True,
              help="Comma-separated ETH3D scenes; 'heldout' = the 8 scenes not trained on, 'eth3d' = all 13.")
@click.option("--base-url", default="https://www.eth3d.net/data/", show_default=True)
@click.option("--keep-archives", is_flag=True)
@click.option("--quiet", is_flag=True)
def download_command(root, scenes, base_url, keep_archives, quiet):
    """Fetch and extract the per-scene ETH3D archives (resumable, idempotent)."""
    from dataengine.download import DownloadConfig, download_scenes
    from dataengine.sampling import expand_scene_sets

    report = download_scenes(DownloadConfig(root=root, scenes=expand_scene_sets(_csv(scenes)), base_url=base_url,
                                            keep_archives=keep_archives, progress=not quiet))
    for item in report:
        click.echo(f"{item['archive']}: {item['status']}")


# ---- synthetic ETH3D scenes (owner: synth) -------------------------------------------------------
@main.command("synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--scene", default="synth_facade", show_default=True, help="Scene folder name.")
@click.option("--images", type=click.IntRange(min=3), default=8, show_default=True)
@click.option("--scale", type=click.FloatRange(0.02, 1.0), default=0.25, show_default=True,
              help="Image scale; 1 = ETH3D size (6048x4032 distorted, ~6200x4130 undistorted).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--distorted-images", is_flag=True,
              help="Also render images/dslr_images (the optional distorted JPGs).")
def synth_command(out, scene, images, scale, seed, distorted_images):
    """Generate a synthetic scene in the exact ETH3D on-disk layout under OUT/SCENE."""
    from dataengine.synth import describe_scene, generate_scene

    try:
        path = generate_scene(out, scene=scene, images=images, scale=scale, seed=seed,
                              distorted_images=distorted_images, log=click.echo)
    except (ValueError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from None
    for line in describe_scene(path):
        click.echo(line)
