"""Image preprocessing as OFA does it: RGB, bicubic resize to a square ``patch_image_size``, then
normalise with mean = std = 0.5 so pixels lie in [-1, 1]."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IMAGE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
IMAGE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)


def check_patch_image_size(patch_image_size: int) -> int:
    if not isinstance(patch_image_size, int) or patch_image_size < 8:
        raise ValueError(f"patch_image_size={patch_image_size!r}: must be an int >= 8")
    return patch_image_size


def resize_square(image: Image.Image, patch_image_size: int) -> Image.Image:
    """RGB copy of ``image`` resized (bicubic) to ``patch_image_size`` x ``patch_image_size``."""
    check_patch_image_size(patch_image_size)
    img = image.convert("RGB")
    if img.size != (patch_image_size, patch_image_size):
        img = img.resize((patch_image_size, patch_image_size), Image.BICUBIC)
    return img


def to_tensor(image: Image.Image) -> torch.Tensor:
    """``FloatTensor[3, H, W]`` normalised with mean = std = 0.5 (values in [-1, 1])."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    mean = np.asarray(IMAGE_MEAN, dtype=np.float32)
    std = np.asarray(IMAGE_STD, dtype=np.float32)
    return torch.from_numpy(((arr - mean) / std).transpose(2, 0, 1).copy())


def preprocess_image(image: Image.Image, patch_image_size: int) -> torch.Tensor:
    """Resize and normalise one image: ``FloatTensor[3, S, S]`` in [-1, 1]."""
    return to_tensor(resize_square(image, patch_image_size))


def denormalize(patch_image: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`preprocess_image`'s normalisation: ``uint8[H, W, 3]`` for plotting."""
    x = patch_image.detach().cpu().float().numpy().transpose(1, 2, 0)
    x = x * np.asarray(IMAGE_STD, dtype=np.float32) + np.asarray(IMAGE_MEAN, dtype=np.float32)
    return (np.clip(x, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
