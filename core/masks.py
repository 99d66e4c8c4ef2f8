"""Masks from diagnoses: heatmaps and defect boxes -> float32 (H, W) masks in [0, 1].

`defect_mask` is what the Defect Mask node, Defects to SEGS and the refinement loop use.
`grow_shrink` and `feather` post-process any mask (pixels of the mask's own size), and
`resize_map` resamples a heatmap or mask to another size (bilinear).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .diagnosis import LABELS, Diagnosis
from .geometry import box_mask

SOURCES = ("heatmaps", "boxes", "both")
WEIGHTINGS = ("binary", "importance")


def _as_mask(mask, name: str = "mask") -> np.ndarray:
    arr = np.asarray(mask, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) array, got shape {tuple(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def resize_map(arr, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a 2-D float map to (height, width); returns float32."""
    arr = _as_mask(arr, "map")
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    if arr.shape == (height, width):
        return arr.copy()
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(arr), mode="F")
    return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def _disk(radius: int) -> np.ndarray:
    r = int(radius)
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y) <= r * r


def grow_shrink(mask, px: int) -> np.ndarray:
    """Grow (``px > 0``, grey dilation) or shrink (``px < 0``, grey erosion) by a disk of radius |px|."""
    arr = _as_mask(mask)
    px = int(round(px))
    if px == 0:
        return arr.copy()
    from scipy import ndimage

    fp = _disk(abs(px))
    if px > 0:
        out = ndimage.grey_dilation(arr, footprint=fp, mode="constant", cval=0.0)
    else:
        out = ndimage.grey_erosion(arr, footprint=fp, mode="nearest")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def feather(mask, px: float) -> np.ndarray:
    """Soften edges with a Gaussian blur whose ramp is about ``px`` pixels wide (sigma = px / 3)."""
    arr = _as_mask(mask)
    if px < 0:
        raise ValueError(f"feather must be >= 0 pixels, got {px}")
    if px == 0:
        return arr.copy()
    from scipy import ndimage

    out = ndimage.gaussian_filter(arr, sigma=float(px) / 3.0, mode="nearest")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _labels(labels: Iterable[str] | str | None) -> tuple[str, ...]:
    if labels is None or labels == "all" or labels == "both":
        return LABELS
    if isinstance(labels, str):
        labels = [labels]
    labels = tuple(labels)
    bad = [lab for lab in labels if lab not in LABELS]
    if bad:
        raise ValueError(f"unknown defect label(s) {bad}; use {list(LABELS)} or 'all'")
    return labels


def heatmap_mask(diagnosis: Diagnosis, labels=None, threshold: float = 0.5, weighting: str = "binary") -> np.ndarray:
    """Union (max) of the chosen heatmaps: ``binary`` -> 1 where ``hm >= threshold``;
    ``importance`` -> the heatmap value itself where ``hm >= threshold`` (soft)."""
    out = np.zeros((diagnosis.height, diagnosis.width), dtype=np.float32)
    for label in _labels(labels):
        hm = diagnosis.heatmaps.get(label)
        if hm is None:
            continue
        keep = hm >= threshold if threshold > 0 else hm > 0
        layer = keep.astype(np.float32) if weighting == "binary" else np.where(keep, hm, 0.0).astype(np.float32)
        np.maximum(out, layer, out=out)
    return out


def box_mask_of(diagnosis: Diagnosis, labels=None, min_importance: int = 0, weighting: str = "binary") -> np.ndarray:
    """Union (max) of the defect boxes: 1 inside (``binary``) or ``importance / 100`` (``importance``)."""
    out = np.zeros((diagnosis.height, diagnosis.width), dtype=np.float32)
    for label in _labels(labels):
        for d in diagnosis.defects_of(label, min_importance):
            value = 1.0 if weighting == "binary" else d.importance_or() / 100.0
            m = box_mask(d.box, diagnosis.width, diagnosis.height)
            out[m] = np.maximum(out[m], value)
    return out


def defect_mask(
    diagnosis: Diagnosis,
    source: str = "boxes",
    labels: Sequence[str] | str | None = None,
    min_importance: int = 0,
    threshold: float = 0.5,
    weighting: str = "binary",
    grow: int = 0,
    feather: float = 0,  # noqa: A002 - public keyword
) -> np.ndarray:
    """A float32 (height, width) mask in [0, 1] of where ``diagnosis`` says the defects are.

    ``source``: ``heatmaps`` (threshold the heatmaps of ``labels``), ``boxes`` (defect boxes of
    ``labels`` with importance >= ``min_importance``) or ``both`` (pixel-wise max). ``weighting``
    ``binary`` gives 0/1; ``importance`` gives importance/100 inside boxes and the heatmap value
    above threshold. Then ``grow`` (negative shrinks) and ``feather`` in pixels.
    A diagnosis without heatmaps gives an empty heatmap part (no error): check ``mask.any()``.
    """
    if not isinstance(diagnosis, Diagnosis):
        raise TypeError(f"defect_mask expects a Diagnosis, got {type(diagnosis).__name__}")
    if source not in SOURCES:
        raise ValueError(f"unknown mask source {source!r}; use one of {list(SOURCES)}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; use one of {list(WEIGHTINGS)}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    out = np.zeros((diagnosis.height, diagnosis.width), dtype=np.float32)
    if source in ("heatmaps", "both"):
        np.maximum(out, heatmap_mask(diagnosis, labels, threshold, weighting), out=out)
    if source in ("boxes", "both"):
        np.maximum(out, box_mask_of(diagnosis, labels, min_importance, weighting), out=out)
    if grow:
        out = grow_shrink(out, grow)
    if feather:
        out = _feather(out, feather)
    return out.astype(np.float32)


_feather = feather
