"""Boxes and coordinate frames.

Every box leaving `core/` is ``[x0, y0, x1, y1]`` in pixels of the caller's original image.
Models write boxes in other frames; a `Frame` says which, and `Frame.to_pixels` maps back:

- ``Frame.pixels(w, h)``: absolute pixels of the image the model saw (Qwen2.5-VL, ImageDoctor).
- ``Frame.norm1000()``: coordinates normalised to 0-1000 (Qwen2-VL/Qwen3-VL, SDG).
- ``order="yxyx"``: Gemini's ``[y0, x0, y1, x1]`` order (SDG-30K ground-truth files).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Frame:
    """The coordinate system a model writes boxes in."""

    width: float
    height: float
    order: str = "xyxy"  # or "yxyx"

    @classmethod
    def pixels(cls, width: float, height: float) -> "Frame":
        return cls(float(width), float(height), "xyxy")

    @classmethod
    def norm1000(cls, order: str = "xyxy") -> "Frame":
        return cls(1000.0, 1000.0, order)

    def to_pixels(self, box: Sequence[float], image_width: int, image_height: int) -> Box:
        """Map a box from this frame to pixels of an image of the given size, ordered and clamped."""
        if len(box) != 4:
            raise ValueError(f"a box needs 4 numbers, got {len(box)}: {list(box)!r}")
        a, b, c, d = (float(v) for v in box)
        if self.order == "yxyx":
            a, b, c, d = b, a, d, c
        elif self.order != "xyxy":
            raise ValueError(f"unknown box order {self.order!r}; use 'xyxy' or 'yxyx'")
        sx, sy = image_width / self.width, image_height / self.height
        return clamp_box((a * sx, b * sy, c * sx, d * sy), image_width, image_height)

    def from_pixels(self, box: Sequence[float], image_width: int, image_height: int) -> Box:
        """Inverse of `to_pixels` (used to render training targets)."""
        x0, y0, x1, y1 = (float(v) for v in box)
        sx, sy = self.width / image_width, self.height / image_height
        out = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
        if self.order == "yxyx":
            out = (out[1], out[0], out[3], out[2])
        return out


def order_box(box: Sequence[float]) -> Box:
    x0, y0, x1, y1 = (float(v) for v in box)
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def clamp_box(box: Sequence[float], width: float, height: float) -> Box:
    """Order the corners and clamp to the image; non-finite values raise ValueError."""
    x0, y0, x1, y1 = order_box(box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"box has a non-finite coordinate: {list(box)!r}")
    return (
        min(max(x0, 0.0), float(width)),
        min(max(y0, 0.0), float(height)),
        min(max(x1, 0.0), float(width)),
        min(max(y1, 0.0), float(height)),
    )


def box_area(box: Sequence[float]) -> float:
    x0, y0, x1, y1 = box
    return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two xyxy boxes (0 when both are empty)."""
    ix0, iy0 = max(a[0], b[0]), max(a[1], b[1])
    ix1, iy1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, ix1 - ix0) * max(0.0, iy1 - iy0)
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def diou(a: Sequence[float], b: Sequence[float]) -> float:
    """Distance-IoU: IoU minus squared centre distance over the enclosing box's squared diagonal."""
    cxa, cya = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
    cxb, cyb = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    ex0, ey0 = min(a[0], b[0]), min(a[1], b[1])
    ex1, ey1 = max(a[2], b[2]), max(a[3], b[3])
    diag = (ex1 - ex0) ** 2 + (ey1 - ey0) ** 2
    dist = (cxa - cxb) ** 2 + (cya - cyb) ** 2
    return iou(a, b) - (dist / diag if diag > 0 else 0.0)


def pairwise(fn, boxes_a: Sequence[Sequence[float]], boxes_b: Sequence[Sequence[float]]) -> np.ndarray:
    """Matrix ``[len(a), len(b)]`` of ``fn(a_i, b_j)``."""
    out = np.zeros((len(boxes_a), len(boxes_b)), dtype=np.float64)
    for i, a in enumerate(boxes_a):
        for j, b in enumerate(boxes_b):
            out[i, j] = fn(a, b)
    return out


def box_mask(box: Sequence[float], width: int, height: int) -> np.ndarray:
    """Boolean (height, width) mask of the pixels whose centres lie inside the box."""
    x0, y0, x1, y1 = box
    xs = np.arange(width) + 0.5
    ys = np.arange(height) + 0.5
    return (ys[:, None] >= y0) & (ys[:, None] < y1) & (xs[None, :] >= x0) & (xs[None, :] < x1)
