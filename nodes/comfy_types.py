"""ComfyUI type conventions: validation and conversion helpers for IMAGE / MASK / DIAGNOSIS
(the socket types themselves are in `comfy_io`).

IMAGE is float32 [B, H, W, C] in 0-1 (C = 3; RGBA and grayscale are converted), MASK float32
[B, H, W] (a single [H, W] mask is accepted). Anything else raises `ComfyInputError` naming the
input and the shape it got. torch is imported on first use (ComfyUI has it loaded anyway).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..core.diagnosis import Diagnosis

class ComfyInputError(ValueError):
    """A node input has the wrong type, shape, size or content."""


def _torch():
    import torch

    return torch


def _shape(x: Any) -> str:
    shape = getattr(x, "shape", None)
    if shape is None:
        return type(x).__name__
    return str(list(shape))


def image_batch(image: Any, name: str = "image") -> "torch.Tensor":  # noqa: F821
    """Validate a ComfyUI IMAGE and return float32 [B, H, W, 3] on CPU (the input is not mutated)."""
    torch = _torch()
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    if not isinstance(image, torch.Tensor):
        raise ComfyInputError(f"input '{name}' must be an IMAGE tensor [B,H,W,C], got {type(image).__name__}")
    if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ComfyInputError(
            f"input '{name}' must be an IMAGE [B,H,W,C] with C in 1/3/4, got shape {_shape(image)}"
        )
    if image.shape[0] == 0:
        raise ComfyInputError(f"input '{name}' is an empty batch (shape {_shape(image)})")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ComfyInputError(f"input '{name}' has a zero-size image (shape {_shape(image)})")
    image = image.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(image).all()):
        raise ComfyInputError(f"input '{name}' contains NaN or infinite values")
    c = image.shape[-1]
    if c == 1:
        image = image.expand(-1, -1, -1, 3)
    elif c == 4:
        image = image[..., :3]
    return image.clamp(0.0, 1.0).contiguous()


def mask_batch(mask: Any, name: str = "mask", batch: int | None = None, size: tuple[int, int] | None = None):
    """Validate a MASK ([B,H,W] or [H,W]) -> float32 [B,H,W]; ``size`` is (H, W) it must match,
    ``batch`` the batch size it must match (a single mask is repeated)."""
    torch = _torch()
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if not isinstance(mask, torch.Tensor):
        raise ComfyInputError(f"input '{name}' must be a MASK tensor [B,H,W], got {type(mask).__name__}")
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3:
        raise ComfyInputError(f"input '{name}' must be a MASK [B,H,W] or [H,W], got shape {_shape(mask)}")
    if mask.shape[0] == 0:
        raise ComfyInputError(f"input '{name}' is an empty batch (shape {_shape(mask)})")
    mask = mask.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(mask).all()):
        raise ComfyInputError(f"input '{name}' contains NaN or infinite values")
    if size is not None and tuple(mask.shape[1:]) != tuple(size):
        raise ComfyInputError(
            f"input '{name}' is {mask.shape[2]}x{mask.shape[1]} (WxH) but the image is {size[1]}x{size[0]}"
        )
    if batch is not None and mask.shape[0] != batch:
        if mask.shape[0] != 1:
            raise ComfyInputError(f"input '{name}' has batch size {mask.shape[0]} but the images have {batch}")
        mask = mask.expand(batch, -1, -1)
    return mask.clamp(0.0, 1.0).contiguous()


def diagnoses(value: Any, name: str = "diagnosis", batch: int | None = None,
              size: tuple[int, int] | None = None) -> list[Diagnosis]:
    """Validate a DIAGNOSIS socket value (list of `Diagnosis`); ``batch`` = expected count
    (a single diagnosis broadcasts), ``size`` = (H, W) every diagnosis must describe."""
    if isinstance(value, Diagnosis):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(d, Diagnosis) for d in value):
        raise ComfyInputError(f"input '{name}' must be a DIAGNOSIS (list of Diagnosis), got {type(value).__name__}")
    value = list(value)
    if not value:
        raise ComfyInputError(f"input '{name}' is an empty DIAGNOSIS batch")
    if batch is not None and len(value) != batch:
        if len(value) != 1:
            raise ComfyInputError(f"input '{name}' has {len(value)} diagnoses but the image batch has {batch}")
        value = value * batch
    if size is not None:
        for i, d in enumerate(value):
            if (d.height, d.width) != tuple(size):
                raise ComfyInputError(
                    f"input '{name}' [{i}] describes a {d.width}x{d.height} image but the image is "
                    f"{size[1]}x{size[0]}"
                )
    return value


def to_numpy_list(image) -> list[np.ndarray]:
    """[B,H,W,3] tensor -> list of float32 (H,W,3) arrays (copies)."""
    return [img.numpy().copy() for img in image]


def to_pil_list(image) -> list:
    from PIL import Image

    return [Image.fromarray(np.round(a * 255).astype(np.uint8), mode="RGB") for a in to_numpy_list(image)]


def from_images(images: Sequence[Any]):
    """list of PIL / float (H,W,3) arrays of one size -> IMAGE [B,H,W,3] float32."""
    from ..core.refine import to_float_image

    torch = _torch()
    arrs = [to_float_image(im) for im in images]
    if not arrs:
        raise ComfyInputError("no images to stack")
    shapes = {a.shape for a in arrs}
    if len(shapes) != 1:
        raise ComfyInputError(f"images have different sizes {sorted(shapes)}")
    return torch.from_numpy(np.stack(arrs).astype(np.float32))


def from_masks(masks: Sequence[np.ndarray]):
    """list of (H,W) float arrays -> MASK [B,H,W] float32."""
    torch = _torch()
    return torch.from_numpy(np.stack([np.asarray(m, dtype=np.float32) for m in masks]))
