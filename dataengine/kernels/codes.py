"""Named codes shared by the kernels and their Python callers; plain Python (no numba), so that the
CLI can read its choices without importing the kernels."""

from __future__ import annotations

from enum import IntEnum


class Pooling(IntEnum):
    """How laser depth is pooled into an output pixel (`--pooling`, `LaserDepthConfig.pooling`).

    The values are the codes `footprint.laser_depth_pool` takes; PLANE is pooled by a kernel of
    its own (`plane.plane_pool`). Definition order is the CLI's order of choices (the default first).
    """

    PLANE = 3  # a local plane in inverse depth at the pixel centre, else the nearest GT value
    NEAREST = 0  # the valid footprint sample nearest the footprint centre
    MEDIAN = 1  # the lower median of the valid footprint samples
    MIN = 2  # the smallest valid footprint sample (the nearest surface)

    @property
    def label(self) -> str:
        """The spelling on the command line and in LaserDepthConfig."""
        return self.name.lower()

    @classmethod
    def labels(cls) -> tuple[str, ...]:
        return tuple(mode.label for mode in cls)

    @classmethod
    def from_label(cls, label: str) -> Pooling:
        return cls[label.upper()]


# Plane pooling status per output pixel (`plane.plane_pool`'s out_status).
PLANE_HOLE = 0  # no valid laser point overlaps the footprint: no supervision
PLANE_FITTED = 1  # the plane estimate
PLANE_FEW_POINTS = 2  # nearest point kept: fewer than min_points laser points
PLANE_COLLINEAR = 3  # nearest kept: points (nearly) on a line
PLANE_EXTRAPOLATED = 4  # nearest kept: the plane leaves the points' depth range at the centre
PLANE_INCONSISTENT = 5  # nearest kept: a residual above tolerance (e.g. two surfaces)
