"""``VGGTConfig``: every size and switch of the model. ``VGGTConfig()`` is VGGT-1B."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

HEAD_NAMES = ("camera", "depth", "point")


@dataclass
class VGGTConfig:
    # Aggregator (alternating frame/global attention).
    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    qk_norm: bool = True
    rope_freq: float = 100.0
    init_values: float = 0.01
    # Patch embedder: "dinov2" (DINOv2 ViT with registers, as VGGT-1B) or "conv" (one strided conv).
    patch_embed: str = "dinov2"
    dino_depth: int = 24
    dino_num_heads: int = 16
    # Heads. The DPT heads read these aggregator layers; the camera head always reads the last one.
    intermediate_layer_idx: tuple[int, ...] = (4, 11, 17, 23)
    camera_trunk_depth: int = 4
    camera_num_heads: int = 16
    camera_num_iterations: int = 4
    dpt_features: int = 256
    dpt_out_channels: tuple[int, ...] = (256, 512, 1024, 1024)
    dpt_frames_chunk_size: int | None = 8
    enable_camera: bool = True
    enable_depth: bool = True
    enable_point: bool = True
    # Training-time memory switch: checkpoint every DINO/frame/global block in train mode, and run
    # the DPT heads under grad in checkpointed chunks (VGGT.set_activation_checkpointing; the chunk
    # size is TrainConfig.dpt_checkpoint_frames).
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        self.intermediate_layer_idx = tuple(int(i) for i in self.intermediate_layer_idx)
        self.dpt_out_channels = tuple(int(c) for c in self.dpt_out_channels)
        if self.patch_embed not in ("dinov2", "conv"):
            raise ValueError(f"patch_embed must be 'dinov2' or 'conv', got {self.patch_embed!r}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if len(self.intermediate_layer_idx) != 4 or len(self.dpt_out_channels) != 4:
            raise ValueError("the DPT head needs exactly 4 intermediate_layer_idx and 4 dpt_out_channels")
        for idx in self.intermediate_layer_idx:
            if not -self.depth <= idx < self.depth:
                raise ValueError(f"intermediate_layer_idx {idx} is outside the aggregator depth {self.depth}")

    @classmethod
    def tiny(cls, **overrides) -> VGGTConfig:
        """The CPU test / demo model of ``tests/assets/vggt_tiny_reference.safetensors`` (1.6 M params)."""
        values = dict(
            embed_dim=64,
            depth=4,
            num_heads=4,
            dino_depth=2,
            dino_num_heads=4,
            intermediate_layer_idx=(0, 1, 2, 3),
            camera_trunk_depth=2,
            camera_num_heads=4,
            dpt_features=32,
            dpt_out_channels=(16, 32, 64, 64),
        )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def preset(cls, name: str) -> VGGTConfig:
        presets = {"vggt-1b": cls, "tiny": cls.tiny}
        if name not in presets:
            raise ValueError(f"unknown VGGT preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    def with_heads(self, heads: Iterable[str]) -> VGGTConfig:
        """Copy with exactly the named heads enabled (subset of 'camera', 'depth', 'point')."""
        heads = set(heads)
        unknown = heads - set(HEAD_NAMES)
        if unknown:
            raise ValueError(f"unknown head(s) {sorted(unknown)}; choose from {list(HEAD_NAMES)}")
        return dataclasses.replace(
            self, enable_camera="camera" in heads, enable_depth="depth" in heads, enable_point="point" in heads
        )

    @property
    def enabled_heads(self) -> tuple[str, ...]:
        flags = {"camera": self.enable_camera, "depth": self.enable_depth, "point": self.enable_point}
        return tuple(name for name in HEAD_NAMES if flags[name])

    @property
    def head_dim_in(self) -> int:
        """Channels of the aggregated tokens: frame and global outputs concatenated."""
        return 2 * self.embed_dim

    def layers_needed(self) -> tuple[int, ...]:
        """Aggregator layers the enabled heads read (non-negative, sorted)."""
        needed = set()
        if self.enable_camera:
            needed.add(self.depth - 1)
        if self.enable_depth or self.enable_point:
            needed.update(i % self.depth for i in self.intermediate_layer_idx)
        return tuple(sorted(needed))
