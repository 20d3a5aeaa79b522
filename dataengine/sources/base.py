"""The `Source` protocol: what the build asks of a capture format (dataengine.build is format-agnostic)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from dataengine.config import BuildConfig
    from dataengine.frames import FrameResult


class Source(Protocol):
    """One capture format. Stateless and picklable: a Ray task receives it with its frame.

    A scene has `name`, `directory`, `frames`, `points_xyz`, `skipped`, `warnings` (and optionally
    `units`, `rig`); a frame has `scene`, `name`, `camera_id`, `rotation`, `translation`, `observed`
    and `depth_source` (dataengine.eth3d.Scene / Frame are the reference)."""

    name: str  # the --format value
    depth_modes: tuple[str, ...]  # the --depth values it can build
    dataset: str  # manifest "dataset"
    license: str  # manifest "license"

    def check_options(self, cfg: BuildConfig) -> None:
        """Reject options this format cannot build (an OptionError naming the option)."""

    def frame_options(self, cfg: BuildConfig) -> dict:
        """The format's own options that change a rendered frame (cache key and manifest options)."""

    def resolve(self, cfg: BuildConfig) -> list[str]:
        """The scene names to build (cheap: no parsing); an error naming --root when none or one is missing."""

    def load(self, cfg: BuildConfig, names: list[str]) -> list:
        """Parse and cross-check the scenes (bad frames raise, or are recorded as skipped with --skip-bad)."""

    def scene_dir(self, root: Path, name: str) -> Path:
        """The scene's folder, for messages."""

    def cache_ident(self, frame, points: list | None) -> list:
        """Everything of the frame's inputs that changes its render (JSON values; `points` is the build's
        digest of the sparse points the frame's depth reads, None for other depth)."""

    def render_frame(self, frame, scene, cfg: BuildConfig) -> FrameResult:
        """Image, intrinsics, depth and metadata (`name`, `camera_id`, `depth_source`, `source_size`,
        `coverage`, ...) of one frame at output resolution."""

    def depth_file(self, frame, scene) -> Path:
        """The input file the frame's depth came from (for a corrupt-depth error)."""

    def scene_stats(self, scene, frames: list, metas: list[dict], windows: list[list[int]], cfg: BuildConfig) -> dict:
        """Format-specific per-scene manifest entries (may append to scene.warnings)."""

    def dataset_card(self, manifest: dict) -> str:
        """README.md of the built dataset."""


def points_file(model_dir: Path) -> Path:
    """A sparse model's points3D file (binary preferred, as the readers do)."""
    return model_dir / ("points3D.bin" if (model_dir / "points3D.bin").is_file() else "points3D.txt")
