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
@click.option("--depth", type=click.Choice(["auto", "laser", "sparse", "mvs"]), default="auto",
              show_default=True, help="auto: best per frame (eth3d: laser, else sparse; colmap: MVS, "
              "else sparse).")
@click.option("--format", "fmt", type=click.Choice(["eth3d", "colmap"]), default="eth3d", show_default=True,
              help="eth3d: ETH3D scene folders; colmap: any COLMAP project (root or one per subfolder), "
              "see docs/own-captures.md.")
@click.option("--windows", "window_mode", type=click.Choice(["sequential", "covisible"]),
              default="sequential", show_default=True,
              help="sequential: name order; covisible: frames sharing 3-D points (unordered photos).")
@click.option("--metric-scale", type=float, default=None,
              help="colmap: metres per COLMAP unit [default: none, units 'arbitrary (COLMAP)'].")
@click.option("--undistort-fov", default="valid", show_default=True,
              help="colmap: output field: valid (largest without blank pixels), full (whole photo, "
              "blank corners) or a horizontal field of view in degrees.")
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
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build_command(root, out, scenes, size, fit, frames, stride, depth, val_fraction, val_scenes,
                  workers, samples_per_shard, depth_samples, pooling, min_count, depth_dtype, skip_bad,
                  keep_cache, quiet, fmt, window_mode, metric_scale, undistort_fov):
    """Build 8-frame WebDataset shards from ETH3D scenes."""
    import logging

    from dataengine.build import BuildConfig, build_shards
    from dataengine.colmap import BadInputError
    from dataengine.depth import LaserDepthConfig
    from dataengine.windows import WindowConfig

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    width, height = _size(size)
    if fmt == "eth3d" and depth == "mvs":
        raise click.BadParameter("--depth mvs needs --format colmap (ETH3D has laser depth)",
                                 param_hint="--depth")
    if fmt == "colmap" and depth == "laser":
        raise click.BadParameter("--depth laser needs --format eth3d; COLMAP projects have mvs or sparse",
                                 param_hint="--depth")
    if metric_scale is not None and not (metric_scale > 0 and metric_scale < float("inf")):
        raise click.BadParameter(f"{metric_scale}: must be a positive number", param_hint="--metric-scale")
    if undistort_fov not in ("valid", "full"):
        try:
            if not 1.0 <= float(undistort_fov) <= 160.0:
                raise ValueError
        except ValueError:
            raise click.BadParameter(f"{undistort_fov!r}: expected valid, full or degrees in [1, 160]",
                                     param_hint="--undistort-fov") from None
    cfg = BuildConfig(
        root=root, out=out, scenes=_csv(scenes), width=width, height=height, fit=fit, depth=depth,
        windows=WindowConfig(frames, stride, val_fraction, _csv(val_scenes) or (), window_mode),
        laser=LaserDepthConfig(samples=depth_samples, pooling=pooling, min_count=min_count),
        workers=workers, samples_per_shard=samples_per_shard, depth_dtype=depth_dtype,
        skip_bad=skip_bad, keep_cache=keep_cache, progress=not quiet, format=fmt, metric_scale=metric_scale,
        undistort_fov=undistort_fov)
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
@click.option("--scenes", default="facade,electro,office,terrace,delivery_area", show_default=True)
@click.option("--base-url", default="https://www.eth3d.net/data/", show_default=True)
@click.option("--keep-archives", is_flag=True)
@click.option("--quiet", is_flag=True)
def download_command(root, scenes, base_url, keep_archives, quiet):
    """Fetch and extract the per-scene ETH3D archives (resumable, idempotent)."""
    from dataengine.download import DownloadConfig, download_scenes

    report = download_scenes(DownloadConfig(root=root, scenes=_csv(scenes), base_url=base_url,
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
@click.option("--format", "fmt", type=click.Choice(["eth3d", "colmap"]), default="eth3d", show_default=True,
              help="colmap: a COLMAP project (distorted photos, sparse model, MVS depth maps); --scale 1 "
              "= 1600x1200 photos.")
@click.option("--camera-models", default="OPENCV,SIMPLE_RADIAL,OPENCV_FISHEYE", show_default=True,
              help="colmap: COLMAP camera models of the photos.")
@click.option("--model-format", type=click.Choice(["binary", "text"]), default="binary", show_default=True,
              help="colmap: sparse model files.")
@click.option("--no-dense", is_flag=True, help="colmap: no dense workspace (sparse depth only).")
def synth_command(out, scene, images, scale, seed, distorted_images, fmt, camera_models, model_format,
                  no_dense):
    """Generate a synthetic scene in the exact ETH3D on-disk layout under OUT/SCENE (or a COLMAP
    project with --format colmap)."""
    if fmt == "colmap":
        from dataengine.synth_colmap import generate_colmap_project

        try:
            path = generate_colmap_project(out, scene=scene, images=images, scale=scale, seed=seed,
                                           models=_csv(camera_models) or (), model_format=model_format,
                                           dense=not no_dense, log=click.echo)
        except (ValueError, FileExistsError) as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"wrote {path}")
        return
    from dataengine.synth import describe_scene, generate_scene

    try:
        path = generate_scene(out, scene=scene, images=images, scale=scale, seed=seed,
                              distorted_images=distorted_images, log=click.echo)
    except (ValueError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from None
    for line in describe_scene(path):
        click.echo(line)
