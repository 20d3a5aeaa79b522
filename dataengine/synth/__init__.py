"""Synthetic ETH3D scenes: an analytic facade ray-cast into the exact ETH3D on-disk layout.

Real ETH3D cannot be downloaded in CI, so tests, the demo and benchmarks use scenes generated here.
``generate_scene`` writes, as if the per-scene archives dslr_undistorted, dslr_jpg (calibration only),
dslr_depth and dslr_occlusion (masks only) had been extracted::

    <root>/<scene>/images/dslr_images_undistorted/DSC_xxxx.JPG    PINHOLE renders (JPEG q95)
    <root>/<scene>/dslr_calibration_undistorted/{cameras,images,points3D}.txt
    <root>/<scene>/dslr_calibration_jpg/{cameras,images,points3D}.txt   THIN_PRISM_FISHEYE
    <root>/<scene>/ground_truth_depth/dslr_images/DSC_xxxx.JPG    raw float32 LE, distorted frame
    <root>/<scene>/masks_for_images/dslr_images/DSC_xxxx.png      uint8 0/1/2 (not every image)
    <root>/<scene>/synth_truth.json                               generator parameters (not ETH3D)

The geometry (metres) lives in a *facade frame*: x along the wall, y into the building (the wall's
front face is y = 0, cameras stand at y < 0), z up. The world ("laser scan") frame is a seeded rigid
transform of it. ``SceneGeometry`` gives the analytic truth (exact z-depth, renders, ray hits) for any
camera, so engine tests can compare against it.

Modules: ``materials`` (surface codes), ``raycast`` (numba ray casting and shading), ``scene``
(SceneGeometry, the seeded facade, cameras and poses), ``capture`` (laser scan, GT depth, masks,
sparse model), writers ``colmap_text`` and ``eth3d_layout``, and ``generate`` (``generate_scene``).
"""

from dataengine.synth.capture import MASK_EVAL_OBS, MASK_NONE, MASK_OBS
from dataengine.synth.eth3d_layout import DISTORTED_FOLDER, UNDISTORTED_FOLDER, describe_scene
from dataengine.synth.generate import generate_scene
from dataengine.synth.materials import (
    CONCRETE,
    DOOR,
    GLASS,
    GROUND,
    MATERIAL_NAMES,
    METAL,
    REVEAL,
    ROOF,
    SKY,
    STONE,
    WALL,
)
from dataengine.synth.raycast import pixel_centre_rays
from dataengine.synth.scene import (
    FULL_HEIGHT,
    FULL_WIDTH,
    REFERENCE_THIN_PRISM,
    TRUTH_FILE,
    SceneGeometry,
    distorted_cameras,
    undistorted_camera,
    undistorted_to_distorted,
)

__all__ = [
    "CONCRETE",
    "DISTORTED_FOLDER",
    "DOOR",
    "FULL_HEIGHT",
    "FULL_WIDTH",
    "GLASS",
    "GROUND",
    "MASK_EVAL_OBS",
    "MASK_NONE",
    "MASK_OBS",
    "MATERIAL_NAMES",
    "METAL",
    "REFERENCE_THIN_PRISM",
    "REVEAL",
    "ROOF",
    "SKY",
    "STONE",
    "TRUTH_FILE",
    "UNDISTORTED_FOLDER",
    "WALL",
    "SceneGeometry",
    "describe_scene",
    "distorted_cameras",
    "generate_scene",
    "pixel_centre_rays",
    "undistorted_camera",
    "undistorted_to_distorted",
]
