"""`BuildConfig`: every option of a build, and the checks that need no input file (the CLI and a Python
caller get the same ones). The format-specific parts belong to the format's Source (dataengine.sources):
which --depth values it builds, and which options change its frames."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from dataengine import __version__
from dataengine.depth import LaserDepthConfig, SparseDepthConfig
from dataengine.errors import BadInputError
from dataengine.mvs import MvsConfig
from dataengine.windows import WindowConfig


class OptionError(BadInputError):
    """An option value (or combination) the build cannot use; `option` names it (the CLI shows it as a
    usage error of that option)."""

    def __init__(self, option: str, message: str):
        super().__init__(message if message.startswith(option) else f"{option} {message}")
        self.option = option
        self.detail = message


@dataclass(frozen=True)
class BuildConfig:
    root: Path
    out: Path
    scenes: tuple[str, ...] | None = None  # None = the format's defaults (ETH3D: the five that exist under root)
    width: int = 518
    height: int = 518
    fit: str = "crop"
    depth: str = "auto"
    windows: WindowConfig = field(default_factory=WindowConfig)
    laser: LaserDepthConfig = field(default_factory=LaserDepthConfig)
    sparse: SparseDepthConfig = field(default_factory=SparseDepthConfig)
    workers: int = 0  # 0 = os.cpu_count()
    executor: str = "local"  # local | ray (dataengine.executor); not in the manifest: same bytes either way
    ray_address: str | None = None  # None = start a local Ray instance
    samples_per_shard: int = 8
    depth_dtype: str = "float32"
    jpeg_quality: int = 95
    skip_bad: bool = False
    require_masks: bool = False  # laser frames without an ETH3D mask are an error, not a warning
    keep_cache: bool = False
    progress: bool = True
    format: str = "eth3d"  # a dataengine.sources name; eth3d keeps its bytes and cache key unchanged
    # --format colmap (dataengine.sources.colmap):
    metric_scale: float | None = None  # COLMAP units → metres; None = "arbitrary (COLMAP)"
    undistort_fov: str = "valid"  # valid | full | horizontal degrees (dataengine.undistort)
    mvs: MvsConfig = field(default_factory=MvsConfig)

    @property
    def source(self):
        """The capture format's Source (dataengine.sources)."""
        from dataengine.sources import get_source

        return get_source(self.format)

    def frame_options(self) -> dict:
        """Everything that changes a rendered frame (the cache key)."""
        return {
            "engine": __version__,
            "width": self.width,
            "height": self.height,
            "fit": self.fit,
            "depth": self.depth,
            "laser": dataclasses.asdict(self.laser),
            "sparse": dataclasses.asdict(self.sparse),
            "jpeg_quality": self.jpeg_quality,
            **self.source.frame_options(self),
        }

    def manifest_options(self) -> dict:
        options = {
            **self.frame_options(),
            "frames": self.windows.frames,
            "stride": self.windows.stride,
            "val_fraction": self.windows.val_fraction,
            "val_scenes": list(self.windows.val_scenes),
            "samples_per_shard": self.samples_per_shard,
            "depth_dtype": self.depth_dtype,
            "skip_bad": self.skip_bad,
            "require_masks": self.require_masks,
        }
        if self.windows.sampling != "windows":  # evaluation samples (dataengine.sampling)
            options.update(sampling=self.windows.sampling, seed=self.windows.seed)
        if self.windows.mode != "sequential":
            options["windows"] = self.windows.mode
        return options


def check_options(cfg: BuildConfig) -> None:
    """Options that fit neither the format nor each other (an OptionError naming the option): --depth the
    format cannot build, a non-positive --metric-scale, an unknown --undistort-fov, --ray-address without
    Ray. Checked for every format, as the CLI always has."""
    cfg.source.check_options(cfg)
    if cfg.metric_scale is not None and not (cfg.metric_scale > 0 and cfg.metric_scale < float("inf")):
        raise OptionError("--metric-scale", f"{cfg.metric_scale}: must be a positive number")
    if cfg.undistort_fov not in ("valid", "full"):
        try:
            if not 1.0 <= float(cfg.undistort_fov) <= 160.0:
                raise ValueError
        except ValueError:
            raise OptionError(
                "--undistort-fov", f"{cfg.undistort_fov!r}: expected valid, full or degrees in [1, 160]"
            ) from None
    if cfg.ray_address and cfg.executor != "ray":
        raise OptionError("--ray-address", "--ray-address needs --executor ray")


def check_config(cfg: BuildConfig) -> None:
    """Argument checks that need no input file (run before anything is read or written)."""
    from dataengine.sources import FORMATS

    w = cfg.windows
    checks = [
        (w.frames >= 1, f"--frames must be >= 1, got {w.frames}"),
        (w.stride >= 1, f"--stride must be >= 1, got {w.stride}"),
        (cfg.samples_per_shard >= 1, f"--samples-per-shard must be >= 1, got {cfg.samples_per_shard}"),
        (0.0 <= w.val_fraction < 1.0, f"--val-fraction must be in [0, 1), got {w.val_fraction}"),
        (cfg.workers >= 0, f"--workers must be >= 0 (0 = all cores), got {cfg.workers}"),
        (cfg.width >= 8 and cfg.height >= 8, f"--size {cfg.width}x{cfg.height}: sides must be >= 8"),
        (cfg.depth_dtype in ("float32", "float16"), f"depth_dtype must be float32 or float16, got {cfg.depth_dtype!r}"),
        (cfg.format in FORMATS, f"--format must be {' or '.join(FORMATS)}, got {cfg.format!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise BadInputError(message)
    check_options(cfg)
