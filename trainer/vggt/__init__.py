"""Clean-room VGGT (facebook/VGGT-1B compatible): model, config, checkpoint loading, preprocessing.

State-dict keys and module names are the official ones, so the released checkpoint loads strictly
and PEFT target regexes such as ``aggregator.frame_blocks.12.attn.qkv`` match.
"""

from trainer.vggt.config import VGGTConfig
from trainer.vggt.geometry import (
    extri_intri_to_pose_encoding,
    pose_encoding_to_extri_intri,
    unproject_depth_map_to_point_map,
)
from trainer.vggt.loading import (
    CheckpointMismatchError,
    LoadReport,
    PretrainedSourceError,
    load_pretrained,
    load_state_dict_checked,
)
from trainer.vggt.model import VGGT
from trainer.vggt.preprocess import load_and_preprocess_images, preprocess_image

__all__ = [
    "VGGT",
    "VGGTConfig",
    "load_pretrained",
    "load_state_dict_checked",
    "LoadReport",
    "PretrainedSourceError",
    "CheckpointMismatchError",
    "load_and_preprocess_images",
    "preprocess_image",
    "extri_intri_to_pose_encoding",
    "pose_encoding_to_extri_intri",
    "unproject_depth_map_to_point_map",
]
