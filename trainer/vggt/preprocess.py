"""Image preprocessing equivalent to the official VGGT loader (``load_and_preprocess_images``).

* ``mode="crop"``: width -> 518, height -> ``round(h * 518 / w / 14) * 14`` (Python's round, i.e.
  half to even), PIL bicubic; a height above 518 is centre-cropped to 518.
* ``mode="pad"``: the longer side -> 518, the shorter -> ``round(short * 518 / long / 14) * 14``,
  bicubic, then padded with white (1.0) to 518 x 518, ``top = pad // 2`` and the rest at the bottom
  (same for left / right).
* RGBA is alpha-composited onto white; any other mode is converted to RGB.
* Images of different resulting shapes are padded with white (same split rule) to the largest height
  and width, with a warning.
Output: float32 ``[N,3,H,W]`` in [0,1], not mean/std normalised (the model does that).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ImageLike = str | os.PathLike | Image.Image
PAD_VALUE = 1.0


def _open_rgb(image: ImageLike) -> Image.Image:
    if not isinstance(image, Image.Image):
        try:
            image = Image.open(image)
            image.load()
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read image {image}: {exc}") from exc
    if image.mode == "RGBA":
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image)
    return image.convert("RGB")


def resized_size(width: int, height: int, mode: str, target_size: int = 518, patch: int = 14) -> tuple[int, int]:
    """(new_width, new_height) before cropping / padding."""
    if mode == "crop" or width >= height:
        return target_size, round(height * (target_size / width) / patch) * patch
    return round(width * (target_size / height) / patch) * patch, target_size


def _pad_white(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    pad_h, pad_w = height - tensor.shape[-2], width - tensor.shape[-1]
    if pad_h <= 0 and pad_w <= 0:
        return tensor
    top, left = pad_h // 2, pad_w // 2
    return F.pad(tensor, (left, pad_w - left, top, pad_h - top), value=PAD_VALUE)


def preprocess_image(image: ImageLike, mode: str = "crop", target_size: int = 518) -> torch.Tensor:
    """One image -> ``[3,H,W]`` float32 in [0,1] following the rules of the module docstring."""
    if mode not in ("crop", "pad"):
        raise ValueError(f"mode must be 'crop' or 'pad', got {mode!r}")
    rgb = _open_rgb(image)
    new_w, new_h = resized_size(*rgb.size, mode=mode, target_size=target_size)
    if new_w <= 0 or new_h <= 0:
        raise ValueError(
            f"image {getattr(image, 'filename', '') or image} of size {rgb.size} is too "
            f"elongated: it would resize to {new_w}x{new_h}"
        )
    rgb = rgb.resize((new_w, new_h), Image.Resampling.BICUBIC)
    tensor = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    if mode == "crop" and new_h > target_size:
        start = (new_h - target_size) // 2
        tensor = tensor[:, start : start + target_size]
    if mode == "pad":
        tensor = _pad_white(tensor, target_size, target_size)
    return tensor


def load_and_preprocess_images(images: Sequence[ImageLike], mode: str = "crop", target_size: int = 518) -> torch.Tensor:
    """Paths or PIL images -> ``[N,3,H,W]`` float32 in [0,1] (see the module docstring)."""
    if len(images) == 0:
        raise ValueError("at least one image is required")
    tensors = [preprocess_image(image, mode, target_size) for image in images]
    shapes = {tuple(t.shape[-2:]) for t in tensors}
    if len(shapes) > 1:
        max_h = max(h for h, _ in shapes)
        max_w = max(w for _, w in shapes)
        warnings.warn(
            f"images have different shapes {sorted(shapes)}; padding all to {max_h}x{max_w} with white", stacklevel=2
        )
        tensors = [_pad_white(t, max_h, max_w) for t in tensors]
    return torch.stack(tensors)
