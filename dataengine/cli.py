"""`python -m dataengine`: thin click front end; every command calls a library function."""

from __future__ import annotations

import errno
import os
import sys
import tarfile
from pathlib import Path

import click

from dataengine.executor import EXECUTORS
from dataengine.kernels.codes import Pooling
from dataengine.sampling import SAMPLING_MODES
from dataengine.scenes import DEFAULT_SCENES, ETH3D_URL
from dataengine.sources import FORMATS

DEBUG_ENV = "DATAENGINE_DEBUG"
PATCH = 14  # VGGT's patch size: image sides must be multiples of it

_OS_HINTS = {
    errno.ENOSPC: "free disk space and rerun the same command (finished frames are cached and reused)",
    errno.EDQUOT: "free disk space and rerun the same command (finished frames are cached and reused)",
    errno.EACCES: "choose a writable location or fix its permissions",
    errno.EPERM: "choose a writable location or fix its permissions",
    errno.EROFS: "choose a location on a writable file system",
    errno.ENOTDIR: "a path component is a file, not a directory; choose another path",
    errno.EEXIST: "a file is in the way; choose another path",
}


def one_line_error(exc: BaseException) -> str:
    """`Error: <what, which file>; <what to do>` on one line for an anticipated failure."""
    if isinstance(exc, click.ClickException):
        text = exc.format_message()
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            text += f" (see `{exc.ctx.command_path} --help`)"
    elif isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        hint = _OS_HINTS.get(exc.errno)
        text = f"{where}{exc.strerror}" + (f"; {hint}" if hint else "")
    else:
        text = str(exc) or type(exc).__name__
    return "Error: " + " ".join(text.split())


class OneLineErrorGroup(click.Group):
    """Bad input, faults and operator errors end in ONE `Error:` line and a non-zero exit, never a
    traceback (`--debug` or DATAENGINE_DEBUG=1 re-raises to show one). Unexpected exception types
    (bugs, a bare KeyError among them) keep their traceback. dataengine.errors.UserError is a ValueError:
    the engine's argument checks still raise plain ValueErrors, so the group catches ValueError, once."""

    expected = (click.ClickException, OSError, ValueError)

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo("Error: interrupted; rerun the same command to resume", err=True)
            sys.exit(130)
        except self.expected as exc:
            if _debug():
                raise
            click.echo(one_line_error(exc), err=True)
            sys.exit(exc.exit_code if isinstance(exc, click.ClickException) else 1)
        sys.exit(0)


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--debug" in sys.argv[1:2]


@click.group(cls=OneLineErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vggt-eth3d-lora")
@click.option("--debug", is_flag=True, help=f"Show the traceback of an error (or set {DEBUG_ENV}=1).")
def main(debug: bool) -> None:
    """ETH3D scenes or COLMAP projects → 8-frame WebDataset shards (depth, masks, cameras, manifest)."""


# ---- data engine commands: build / inspect / verify / download ----------------------------------


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
@click.option(
    "--root",
    type=click.Path(path_type=Path),
    default="data/eth3d",
    show_default=True,
    help="ETH3D root holding one folder per scene (--format colmap: a COLMAP project or a folder of them).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Output directory for shards, manifest.json and README.md.",
)
@click.option(
    "--scenes",
    default=None,
    help="Comma-separated scene names [default: the five default scenes present under --root].",
)
@click.option("--size", default="518", show_default=True, help="Output size N (square) or WxH.")
@click.option("--fit", type=click.Choice(["crop", "pad", "stretch"]), default="crop", show_default=True)
@click.option("--frames", type=click.IntRange(min=1), default=8, show_default=True, help="Frames per sample.")
@click.option("--stride", type=click.IntRange(min=1), default=4, show_default=True, help="Window stride in frames.")
@click.option(
    "--depth",
    type=click.Choice(["auto", "laser", "sparse", "mvs"]),
    default="auto",
    show_default=True,
    help="auto: best per frame (eth3d: laser, else sparse; colmap: MVS, else sparse).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=FORMATS[0],
    show_default=True,
    help="eth3d: ETH3D scene folders; colmap: any COLMAP project (root or one per subfolder), "
    "see docs/own-captures.md.",
)
@click.option(
    "--windows",
    "window_mode",
    type=click.Choice(["sequential", "covisible"]),
    default="sequential",
    show_default=True,
    help="sequential: name order; covisible: frames sharing 3-D points (unordered photos).",
)
@click.option(
    "--metric-scale",
    type=float,
    default=None,
    help="colmap: metres per COLMAP unit [default: none, units 'arbitrary (COLMAP)'].",
)
@click.option(
    "--undistort-fov",
    default="valid",
    show_default=True,
    help="colmap: output field: valid (largest without blank pixels), full (whole photo, "
    "blank corners) or a horizontal field of view in degrees.",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=0.15,
    show_default=True,
    help="Last fraction of each scene's frames held out (frame-disjoint split).",
)
@click.option(
    "--val-scenes",
    default=None,
    help="Comma-separated scenes held out entirely (scene-disjoint split; overrides --val-fraction).",
)
@click.option("--workers", type=click.IntRange(min=0), default=0, help="Frame worker threads [default: all cores].")
@click.option("--samples-per-shard", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--depth-samples",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="k: k×k laser samples per output pixel (nearest/median/min only).",
)
@click.option(
    "--pooling",
    type=click.Choice(Pooling.labels()),
    default="plane",
    show_default=True,
    help="Laser depth per output pixel: plane = local inverse-depth "
    "plane fit at the pixel centre where valid, else the nearest GT value; "
    "nearest/median/min of the k×k footprint samples.",
)
@click.option(
    "--min-count",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Valid laser samples needed to supervise a pixel.",
)
@click.option("--depth-dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option("--skip-bad", is_flag=True, help="Skip bad frames (recorded in the manifest) instead of stopping.")
@click.option(
    "--require-masks",
    is_flag=True,
    help="Refuse laser frames without an ETH3D mask "
    "(masks_for_images/) instead of supervising their occluded pixels with a warning.",
)
@click.option(
    "--any-size", is_flag=True, help=f"Allow sides that are not multiples of {PATCH} (VGGT cannot train on them)."
)
@click.option("--keep-cache", is_flag=True, help="Keep the per-frame cache after a successful build.")
@click.option(
    "--sampling",
    type=click.Choice(SAMPLING_MODES),
    default=SAMPLING_MODES[0],
    show_default=True,
    help="windows = training windows (train/val); uniform / random = one "
    "evaluation sample per scene of --frames frames spread over / drawn from the whole scene, "
    "in a 'test' split that training never reads; da3 = Depth Anything 3's ETH3D draw (its filtered "
    "images dropped, <= --frames kept by random.seed(42), use --frames 100). --scenes accepts the set "
    "names 'heldout' and 'da3'.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sampling random.")
@click.option(
    "--executor",
    type=click.Choice(EXECUTORS),
    default=EXECUTORS[0],
    show_default=True,
    help="Where frames render: local threads, or Ray tasks on a cluster (needs the `ray` extra; "
    "same shards and manifest either way, docs/cluster.md).",
)
@click.option(
    "--ray-address",
    default=None,
    help="With --executor ray: the cluster to join (auto, HOST:6379 or ray://HOST:10001) "
    "[default: start a local Ray instance].",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build_command(
    root,
    out,
    scenes,
    size,
    fit,
    frames,
    stride,
    depth,
    val_fraction,
    val_scenes,
    workers,
    samples_per_shard,
    depth_samples,
    pooling,
    min_count,
    depth_dtype,
    skip_bad,
    require_masks,
    any_size,
    keep_cache,
    sampling,
    seed,
    quiet,
    fmt,
    window_mode,
    metric_scale,
    undistort_fov,
    executor,
    ray_address,
):
    """Build 8-frame WebDataset shards from ETH3D scenes (or COLMAP projects: --format colmap)."""
    import logging

    from dataengine.build import build_shards
    from dataengine.config import BuildConfig, OptionError, check_options
    from dataengine.depth import LaserDepthConfig
    from dataengine.scenes import expand_scene_sets
    from dataengine.windows import WindowConfig

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    width, height = _size(size)
    if not any_size and (width % PATCH or height % PATCH):
        raise click.BadParameter(
            f"{size!r}: VGGT needs sides that are multiples of {PATCH} (e.g. "
            f"{PATCH * round(width / PATCH)}); pass --any-size to build anyway",
            param_hint="'--size'",
        )
    cfg = BuildConfig(
        root=root,
        out=out,
        scenes=expand_scene_sets(_csv(scenes)),
        width=width,
        height=height,
        fit=fit,
        depth=depth,
        windows=WindowConfig(
            frames, stride, val_fraction, _csv(val_scenes) or (), sampling=sampling, seed=seed, mode=window_mode
        ),
        laser=LaserDepthConfig(samples=depth_samples, pooling=pooling, min_count=min_count),
        workers=workers,
        samples_per_shard=samples_per_shard,
        depth_dtype=depth_dtype,
        skip_bad=skip_bad,
        require_masks=require_masks,
        keep_cache=keep_cache,
        progress=not quiet,
        format=fmt,
        metric_scale=metric_scale,
        undistort_fov=undistort_fov,
        executor=executor,
        ray_address=ray_address,
    )
    try:
        check_options(cfg)
    except OptionError as exc:
        raise click.BadParameter(exc.detail, param_hint=exc.option) from None
    if executor == "ray":  # join the cluster before parsing: a missing Ray or a wrong address fails fast
        from dataengine.executor import connect

        connect(ray_address, workers or None)
    manifest = build_shards(cfg)
    for split, info in manifest["splits"].items():
        click.echo(f"{split}: {info['samples']} samples in {len(info['shards'])} shards")
    if manifest["skipped"]:
        click.echo(f"skipped {len(manifest['skipped'])} inputs (see {out}/manifest.json)")
    if manifest.get("zero_coverage_frames"):
        click.echo(
            f"{len(manifest['zero_coverage_frames'])} frames have no supervised pixel (see "
            f"zero_coverage_frames in {out}/manifest.json)"
        )
    if manifest.get("warnings"):
        click.echo(f"{len(manifest['warnings'])} warnings (see {out}/manifest.json)")


@main.command("inspect")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--png",
    type=click.Path(path_type=Path),
    default=None,
    help="Write a contact sheet (RGB | depth | mask per frame) of one sample.",
)
@click.option("--key", default=None, help="Sample to describe and draw [default: the first].")
def inspect_command(path, png, key):
    """Keys, shapes, dtypes and coverage of a shard directory or a single shard."""
    from dataengine.inspect_shards import contact_sheet, describe
    from shardformat import ShardError

    try:
        click.echo(describe(path, key))
    except (FileNotFoundError, tarfile.ReadError, ShardError) as exc:
        raise click.ClickException(f"{path}: not a readable shard or shard directory ({exc})") from None
    if png is not None:
        click.echo(f"wrote {contact_sheet(path, png, key)}")


@main.command("verify")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
def verify_command(directory):
    """Recompute shard hashes and sample counts against manifest.json (non-zero exit on mismatch)."""
    from dataengine.shards import verify_dataset

    notes: list[str] = []
    problems = verify_dataset(directory, notes)
    for line in notes:
        click.echo(f"note: {line}")
    for line in problems:
        click.echo(line, err=True)
    if problems:
        raise SystemExit(1)
    click.echo(f"{directory}: OK" + (f" ({len(notes)} frames without a supervised pixel)" if notes else ""))


@main.command("download")
@click.option("--root", type=click.Path(path_type=Path), default="data/eth3d", show_default=True)
@click.option(
    "--scenes",
    default=",".join(DEFAULT_SCENES),
    show_default=True,
    help="Comma-separated ETH3D scenes; set names: 'training' (the default five), "
    "'heldout' (the 8 never trained on), 'eth3d' (all 13).",
)
@click.option("--base-url", default=ETH3D_URL, show_default=True)
@click.option("--keep-archives", is_flag=True)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Retries per archive after a network error.",
)
@click.option("--quiet", is_flag=True)
def download_command(root, scenes, base_url, keep_archives, retries, quiet):
    """Fetch and extract the per-scene ETH3D archives (resumable, idempotent)."""
    from dataengine.download import DownloadConfig, check_scene_names, download_scenes
    from dataengine.scenes import expand_scene_sets

    names = expand_scene_sets(_csv(scenes)) or ()
    check_scene_names(names)  # before any network call
    report = download_scenes(
        DownloadConfig(
            root=root, scenes=names, base_url=base_url, keep_archives=keep_archives, progress=not quiet, retries=retries
        )
    )
    for item in report:
        click.echo(f"{item['archive']}: {item['status']}")


# ---- synthetic scenes (ETH3D layout or COLMAP project) ------------------------------------------
def _synth_eth3d(out, *, distorted_images, models, model_format, dense, **common) -> list[str]:
    from dataengine.synth import describe_scene, generate_scene

    path = generate_scene(out, **common, distorted_images=distorted_images, log=click.echo)
    return describe_scene(path)


def _synth_colmap(out, *, distorted_images, models, model_format, dense, **common) -> list[str]:
    from dataengine.synth.colmap_project import generate_colmap_project

    path = generate_colmap_project(out, **common, models=models, model_format=model_format, dense=dense, log=click.echo)
    return [f"wrote {path}"]


SYNTH_FORMATS = {"eth3d": _synth_eth3d, "colmap": _synth_colmap}  # `synth --format`: its generator


@main.command("synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--scene", default="synth_facade", show_default=True, help="Scene folder name.")
@click.option("--images", type=click.IntRange(min=3), default=8, show_default=True)
@click.option(
    "--scale",
    type=click.FloatRange(0.02, 1.0),
    default=0.25,
    show_default=True,
    help="Image scale; 1 = ETH3D size (6048x4032 distorted, ~6200x4130 undistorted).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--distorted-images", is_flag=True, help="Also render images/dslr_images (the optional distorted JPGs).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(SYNTH_FORMATS)),
    default="eth3d",
    show_default=True,
    help="colmap: a COLMAP project (distorted photos, sparse model, MVS depth maps); --scale 1 = 1600x1200 photos.",
)
@click.option(
    "--camera-models",
    default="OPENCV,SIMPLE_RADIAL,OPENCV_FISHEYE",
    show_default=True,
    help="colmap: COLMAP camera models of the photos.",
)
@click.option(
    "--model-format",
    type=click.Choice(["binary", "text"]),
    default="binary",
    show_default=True,
    help="colmap: sparse model files.",
)
@click.option("--no-dense", is_flag=True, help="colmap: no dense workspace (sparse depth only).")
def synth_command(out, scene, images, scale, seed, distorted_images, fmt, camera_models, model_format, no_dense):
    """Generate a synthetic scene in the exact ETH3D on-disk layout under OUT/SCENE (or a COLMAP
    project with --format colmap)."""
    options = dict(
        distorted_images=distorted_images,
        models=_csv(camera_models) or (),
        model_format=model_format,
        dense=not no_dense,
    )
    try:
        lines = SYNTH_FORMATS[fmt](out, scene=scene, images=images, scale=scale, seed=seed, **options)
    except (ValueError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from None
    for line in lines:
        click.echo(line)
