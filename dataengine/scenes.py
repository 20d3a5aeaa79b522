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
# Depth Anything 3's ETH3D benchmark set (depth_anything_3 0.1.1, utils/constants.py ETH3D_SCENES, in its
# order): the 13 training scenes without terrace and meadow ("known issues"). 7 of our 8 held-out scenes are
# in it (not meadow); so are 4 of our 5 training scenes (not terrace).
DA3_ETH3D_SCENES = (
    "courtyard",
    "electro",
    "kicker",
    "pipes",
    "relief",
    "delivery_area",
    "facade",
    "office",
    "playground",
    "relief_2",
    "terrains",
)
# DA3 drops these images (ETH3D_FILTER_KEYS: rotated views), matched as a suffix of the image name.
DA3_ETH3D_FILTERED_IMAGES = {
    "delivery_area": tuple(f"{n}.JPG" for n in range(711, 715)),
    "electro": tuple(f"{n}.JPG" for n in (9289, 9290, 9291, 9292, 9293, 9298)),
    "playground": tuple(f"{n}.JPG" for n in range(587, 593)),
    "relief": tuple(f"{n}.JPG" for n in range(427, 439)),
    "relief_2": tuple(f"{n}.JPG" for n in range(458, 469)),
}
# Names usable wherever a comma-separated scene list is expected (`--scenes heldout`).
SCENE_SETS = {
    "heldout": HELDOUT_SCENES,
    "training": DEFAULT_SCENES,
    "eth3d": ETH3D_TRAINING_SCENES,
    "da3": DA3_ETH3D_SCENES,
}


def da3_filtered(scene: str, image_name: str) -> bool:
    """True for an image Depth Anything 3's ETH3D benchmark leaves out (its suffix rule)."""
    return any(image_name.endswith(key) for key in DA3_ETH3D_FILTERED_IMAGES.get(scene, ()))


def expand_scene_sets(names: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """Replace set names (``heldout``, ``training``, ``eth3d``, ``da3``) by their scenes, keeping order, no repeats."""
    if names is None:
        return None
    out: list[str] = []
    for name in names:
        for scene in SCENE_SETS.get(name, (name,)):
            if scene not in out:
                out.append(scene)
    return tuple(out)
