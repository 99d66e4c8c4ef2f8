"""Images in any mode PIL reads -> 8-bit RGB, the one conversion every entry point shares.

PIL's own ``convert("RGB")`` clips deeper modes instead of scaling them: a 16-bit PNG (mode
``I;16``) or a 32-bit integer image (``I``) becomes white wherever a value exceeds 255, and a
float image (``F``) in [0, 1] becomes black. `to_rgb` scales them:

- ``I;16*`` (16-bit gray) and ``I`` (32-bit int, 16-bit data as Pillow reads PGM/PNG/TIFF):
  ``round(v * 255 / 65535)``, values clipped to [0, 65535];
- ``F`` (float): in [0, 1] -> x 255; else in [0, 255] -> as is; else scaled linearly from
  [min, max]; NaN or infinite values are an error;
- every other mode (``1``, ``L``, ``P``, ``LA``, ``RGBA``, ``CMYK``, ``YCbCr``, ...): PIL's
  conversion, alpha dropped (as ComfyUI's image loader does).

`array_to_rgb` does the same for numpy arrays (HWC or HW): uint8 as is, uint16 scaled like
``I;16``, bool -> 0/255, floats in 0-1 (ComfyUI's IMAGE convention) clipped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I;16S", "I")


def _gray_to_rgb(gray: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(gray.astype(np.uint8)), "L").convert("RGB")


def to_rgb(image: Any, name: str = "image"):
    """A PIL image of any mode -> an 8-bit RGB PIL image with the values scaled (see module doc).

    ``name`` goes into error messages (e.g. the file path)."""
    if image.mode == "RGB":
        image.load()  # read now: callers may close the file (``with Image.open(...)``)
        return image
    if image.mode in _SIXTEEN_BIT:
        arr = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        return _gray_to_rgb((arr * 255 + 32767) // 65535)
    if image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}: a float image with NaN or infinite values")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 1.0)
        if lo >= 0.0 and hi <= 1.0:
            arr = arr * 255.0
        elif not (lo >= 0.0 and hi <= 255.0):
            arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return _gray_to_rgb(np.round(arr))
    return image.convert("RGB")


def array_to_rgb(arr: Any, name: str = "image"):
    """An (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array -> an 8-bit RGB PIL image.

    uint8 as is; uint16 scaled by 255/65535; bool -> 0/255; other numbers are floats in [0, 1]
    (clipped), ComfyUI's IMAGE convention. Alpha is dropped, gray repeated."""
    from PIL import Image

    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be HxWxC with C in 1/3/4, got shape {arr.shape}")
    if arr.dtype == np.uint16:
        arr = ((arr.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        arr = np.round(np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")
