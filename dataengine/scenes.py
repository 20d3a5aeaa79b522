"""The ETH3D scene names and where the archives live: the one place these lists are written down."""

from __future__ import annotations

ETH3D_URL = "https://www.eth3d.net/data/"

# High-res multi-view training scenes: the 13 with public laser ground truth (eth3d.net/datasets).
ETH3D_TRAINING_SCENES = (
    "courtyard",
    "delivery_area",
    "electro",
    "facade",
    "kicker",
    "meadow",
    "office",
    "pipes",
    "playground",
    "relief",
    "relief_2",
    "terrace",
    "terrains",
)
# The scenes this project fine-tunes on by default.
DEFAULT_SCENES = ("facade", "electro", "office", "terrace", "delivery_area")
# Never trained on: the held-out evaluation set.
HELDOUT_SCENES = tuple(s for s in ETH3D_TRAINING_SCENES if s not in DEFAULT_SCENES)
# Names usable wherever a comma-separated scene list is expected (`--scenes heldout`).
SCENE_SETS = {"heldout": HELDOUT_SCENES, "training": DEFAULT_SCENES, "eth3d": ETH3D_TRAINING_SCENES}


def expand_scene_sets(names: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """Replace set names (``heldout``, ``training``, ``eth3d``) by their scenes, keeping order, no repeats."""
    if names is None:
        return None
    out: list[str] = []
    for name in names:
        for scene in SCENE_SETS.get(name, (name,)):
            if scene not in out:
                out.append(scene)
    return tuple(out)
