"""``VGGT``: aggregator + camera / depth / point heads, state_dict-compatible with facebook/VGGT-1B.

The track head is not built; its checkpoint keys are reported as ignored by ``load_pretrained``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from trainer.vggt.aggregator import Aggregator
from trainer.vggt.config import VGGTConfig
from trainer.vggt.dpt import DPTHead
from trainer.vggt.heads import CameraHead


class VGGT(nn.Module):
    def __init__(self, config: VGGTConfig | None = None, heads: Iterable[str] | None = None) -> None:
        super().__init__()
        config = config or VGGTConfig()
        if heads is not None:
            config = config.with_heads(heads)
        self.config = config
        c = config
        self.aggregator = Aggregator(c)
        # Registration order (camera, point, depth) = official state_dict order.
        self.camera_head = (
            CameraHead(c.head_dim_in, c.camera_trunk_depth, c.camera_num_heads, c.mlp_ratio, init_values=c.init_values)
            if c.enable_camera
            else None
        )
        self.point_head = self._dpt(c, output_dim=4, activation="inv_log") if c.enable_point else None
        self.depth_head = self._dpt(c, output_dim=2, activation="exp") if c.enable_depth else None
        self.set_activation_checkpointing(c.activation_checkpointing)

    @staticmethod
    def _dpt(c: VGGTConfig, output_dim: int, activation: str) -> DPTHead:
        return DPTHead(
            c.head_dim_in,
            c.patch_size,
            output_dim=output_dim,
            activation=activation,
            conf_activation="expp1",
            features=c.dpt_features,
            out_channels=c.dpt_out_channels,
            intermediate_layer_idx=c.intermediate_layer_idx,
        )

    def set_activation_checkpointing(self, enabled: bool, dpt_checkpoint_frames: int = 1) -> None:
        """Recompute in backward instead of storing: every DINO / frame / global block (train mode)
        and the DPT heads, `dpt_checkpoint_frames` frames at a time (a training knob: the train
        config owns it)."""
        if dpt_checkpoint_frames < 1:
            raise ValueError(f"dpt_checkpoint_frames must be >= 1, got {dpt_checkpoint_frames}")
        self.config.activation_checkpointing = bool(enabled)
        self.aggregator.set_activation_checkpointing(enabled)
        for head in (self.depth_head, self.point_head):
            if head is not None:
                head.checkpoint_frames = dpt_checkpoint_frames if enabled else None

    def forward(self, images: torch.Tensor) -> dict:
        """``images`` ``[B,S,3,H,W]`` or ``[S,3,H,W]`` in [0,1] RGB, H and W multiples of the patch size.

        Returns ``pose_enc [B,S,9]``, ``pose_enc_list`` (one per camera iteration), ``depth
        [B,S,H,W,1]``, ``depth_conf [B,S,H,W]``, ``world_points [B,S,H,W,3]``, ``world_points_conf``
        for the enabled heads, plus ``images`` in eval mode. Under autocast the aggregator runs in
        the autocast dtype and the heads in fp32.
        """
        if images.ndim == 4:
            images = images.unsqueeze(0)
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"expected images [B,S,3,H,W] or [S,3,H,W], got shape {tuple(images.shape)}")
        c = self.config
        aggregated, patch_start_idx = self.aggregator(images, keep_layers=c.layers_needed())
        predictions: dict = {}
        with torch.autocast(device_type=images.device.type, enabled=False):
            aggregated = [t.float() if t is not None else None for t in aggregated]
            head_images = images.float()
            if self.camera_head is not None:
                pose_enc_list = self.camera_head(aggregated, num_iterations=c.camera_num_iterations)
                predictions["pose_enc"] = pose_enc_list[-1]
                predictions["pose_enc_list"] = pose_enc_list
            if self.depth_head is not None:
                depth, depth_conf = self.depth_head(
                    aggregated, head_images, patch_start_idx, frames_chunk_size=c.dpt_frames_chunk_size
                )
                predictions["depth"], predictions["depth_conf"] = depth, depth_conf
            if self.point_head is not None:
                points, points_conf = self.point_head(
                    aggregated, head_images, patch_start_idx, frames_chunk_size=c.dpt_frames_chunk_size
                )
                predictions["world_points"], predictions["world_points_conf"] = points, points_conf
        if not self.training:
            predictions["images"] = images
        return predictions
