"""Pictures of a diagnosis: heatmap overlays, labelled defect boxes, side-by-side panels.

PIL + numpy only. Colours: misalignment boxes blue, artifact boxes red (the same in every view).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .diagnosis import Diagnosis
from .images import to_rgb

LABEL_COLOURS = {"misalignment": (40, 120, 255), "artifact": (255, 50, 50)}
COLORMAPS = ("jet", "inferno", "gray")


def _colormap(values: np.ndarray, name: str) -> np.ndarray:
    """values (H, W) in [0, 1] -> (H, W, 3) uint8."""
    v = np.clip(values.astype(np.float32), 0, 1)
    if name == "jet":
        r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
        g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
        b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    elif name == "inferno":
        r = np.clip(1.6 * v, 0, 1)
        g = np.clip(1.6 * v - 0.6, 0, 1) ** 1.2
        b = np.clip(np.sin(np.pi * v) * 0.7 + np.clip(v - 0.8, 0, 1) * 2, 0, 1)
    elif name == "gray":
        r = g = b = v
    else:
        raise ValueError(f"unknown colormap {name!r}; use one of {list(COLORMAPS)}")
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def heatmap_overlay(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
    """Blend a colour-mapped heatmap (H, W) in [0, 1] over ``image``; opacity grows with the heat."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = np.asarray(to_rgb(image), dtype=np.float32)
    hm = np.asarray(heatmap, dtype=np.float32)
    if hm.shape != base.shape[:2]:
        hm = np.asarray(Image.fromarray(hm).resize((base.shape[1], base.shape[0]), Image.BILINEAR))
    colour = _colormap(hm, colormap).astype(np.float32)
    a = (alpha * np.clip(hm, 0, 1))[..., None]
    return Image.fromarray(np.round(base * (1 - a) + colour * a).astype(np.uint8))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_defects(image: Image.Image, diagnosis: Diagnosis, min_importance: int = 0, labels: Sequence[str] | None = None,
                 width: int | None = None, font_size: int | None = None) -> Image.Image:
    """Draw defect boxes coloured by label, captioned ``label importance``; returns a new image.

    The diagnosis' boxes are in its own pixel frame; they are scaled if ``image`` has another size.
    ``width`` (line) and ``font_size`` default to sizes proportional to the image.
    """
    img = to_rgb(image).copy()
    sx, sy = img.width / diagnosis.width, img.height / diagnosis.height
    draw = ImageDraw.Draw(img)
    line = width or max(2, round(min(img.size) / 200))
    font = _font(font_size or max(10, round(min(img.size) / 40)))
    for d in diagnosis.defects:
        if labels is not None and d.label not in labels:
            continue
        if d.importance_or() < min_importance:
            continue
        colour = LABEL_COLOURS[d.label]
        x0, y0, x1, y1 = d.box[0] * sx, d.box[1] * sy, d.box[2] * sx, d.box[3] * sy
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=line)
        caption = d.label if d.importance is None else f"{d.label} {d.importance}"
        cap_font, caption, (tw, th) = _fit_caption(draw, caption, font, img.width - 4)
        ty = y0 - th - 4 if y0 - th - 4 >= 0 else y0
        # keep the caption inside the image: shift it left from a box near the right edge
        tx = max(0.0, min(x0, img.width - tw - 4))
        draw.rectangle([tx, ty, tx + tw + 4, ty + th + 4], fill=colour)
        draw.text((tx + 2, ty + 1), caption, fill=(255, 255, 255), font=cap_font)
    return img


def _fit_caption(draw, caption: str, font, max_width: int):
    """(font, text, (w, h)) of a caption no wider than ``max_width``: a smaller font first, then
    the text shortened with an ellipsis."""

    def size(text, f):
        tb = draw.textbbox((0, 0), text, font=f)
        return tb[2] - tb[0], tb[3] - tb[1]

    w, h = size(caption, font)
    if w <= max_width:
        return font, caption, (w, h)
    small = _font(8)
    w, h = size(caption, small)
    text = caption
    while w > max_width and len(text) > 1:
        text = text[:-1]
        w, h = size(text + ".", small)
    return small, (text + "." if text != caption else text), (w, h)


def overlay(image: Image.Image, diagnosis: Diagnosis, alpha: float = 0.45, min_importance: int = 0,
            colormap: str = "jet") -> Image.Image:
    """The default picture of a diagnosis: both heatmaps (max) blended, then the defect boxes."""
    img = to_rgb(image)
    maps = [m for m in diagnosis.heatmaps.values() if m is not None]
    if maps:
        img = heatmap_overlay(img, np.maximum.reduce(maps), alpha=alpha, colormap=colormap)
    return draw_defects(img, diagnosis, min_importance=min_importance)


def scores_caption(diagnosis: Diagnosis) -> str:
    parts = []
    for name, value in diagnosis.scores.as_dict().items():
        parts.append(f"{name[:5]} {'-' if value is None else f'{value:.2f}'}")
    return "  ".join(parts)


def panel(images: Sequence[Image.Image], titles: Sequence[str] | None = None, height: int = 384) -> Image.Image:
    """Images side by side at a common height, each with a title strip above it."""
    if not images:
        raise ValueError("panel needs at least one image")
    titles = list(titles or [""] * len(images))
    if len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    font = _font(14)
    strip = 22 if any(titles) else 0
    scaled = [to_rgb(im).resize((max(1, round(im.width * height / im.height)), height), Image.BILINEAR) for im in images]
    out = Image.new("RGB", (sum(im.width for im in scaled) + 4 * (len(scaled) - 1), height + strip), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    x = 0
    for im, title in zip(scaled, titles):
        out.paste(im, (x, strip))
        if title:
            draw.text((x + 4, 3), title, fill=(0, 0, 0), font=font)
        x += im.width + 4
    return out


def diagnosis_panel(image: Image.Image, diagnosis: Diagnosis, height: int = 384) -> Image.Image:
    """Original | boxes | misalignment heat | artifact heat, titled with the scores."""
    views, titles = [image, draw_defects(image, diagnosis)], [scores_caption(diagnosis), f"{len(diagnosis.defects)} defects"]
    for name in ("misalignment", "artifact"):
        hm = diagnosis.heatmaps.get(name)
        if hm is not None:
            views.append(heatmap_overlay(image, hm, alpha=0.6))
            titles.append(f"{name} heatmap")
    return panel(views, titles, height=height)
