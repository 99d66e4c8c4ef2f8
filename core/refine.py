"""Verified local refinement: fix defect regions one by one and keep only what helps.

For each defect region of the current diagnosis (highest importance first):

1. crop a context box: the defect box scaled by ``context`` around its centre (at least
   ``min_crop`` px), clamped to the image;
2. upscale the crop so its longer side is ``guide_size`` (the size inpainting models like);
3. call ``inpaint(crop, mask) -> image`` (any callable: a diffusers pipeline, ComfyUI's
   sampler, a test function) with the defect's box as mask inside the crop;
4. downscale back, optionally colour-match the result to the original crop (per-channel mean
   and standard deviation, measured outside the mask), and paste it with a feathered mask;
5. re-diagnose the whole image and accept the change only if the chosen score improves
   (strictly) and, with ``require_penalty_drop``, the defect load (sum(importance)/100) drops (or stays
   0 when the regions come from elsewhere and the diagnosis had no defects).

Up to ``rounds`` rounds; a round that accepts nothing ends the loop. Images are float32
numpy arrays (H, W, 3) in [0, 1] throughout; PIL images and uint8 arrays are accepted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .diagnosis import Defect, Diagnosis
from .geometry import box_mask, clamp_box
from .masks import feather as feather_mask
from .masks import grow_shrink
from .select import DEFAULT_PENALTY, defect_load, score_value


class RefineCancelled(RuntimeError):
    """``should_cancel()`` returned True between two regions."""


@dataclass
class RefineResult:
    image: np.ndarray  # float32 (H, W, 3) in [0, 1]
    diagnosis: Diagnosis
    log: list[str] = field(default_factory=list)
    accepted: int = 0
    rejected: int = 0
    #: one dict per tried region: round, region, label, importance, box, before, after (None = no
    #: score), load_before, load_after, verdict ("accepted"/"rejected"), why
    steps: list[dict] = field(default_factory=list)


def to_float_image(image: Any, name: str = "image") -> np.ndarray:
    """PIL / uint8 / float array (H, W, C) -> float32 (H, W, 3) in [0, 1] (RGBA and gray converted)."""
    try:
        from PIL import Image

        if isinstance(image, Image.Image):
            return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except ImportError:  # pragma: no cover
        pass
    if hasattr(image, "detach"):  # torch tensor
        image = image.detach().cpu().float().numpy()
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"{name} must be (H, W, 1|3|4), got shape {tuple(arr.shape)}")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    else:
        arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return np.clip(arr, 0.0, 1.0)


def _to_pil(arr: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8), mode="RGB")


def _resize(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    if arr.shape[:2] == (height, width):
        return arr
    return np.asarray(_to_pil(arr).resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0


def _resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    if mask.shape == (height, width):
        return mask
    img = Image.fromarray(np.ascontiguousarray(mask, dtype=np.float32), mode="F")
    return np.clip(np.asarray(img.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32), 0, 1)


def context_box(box, width: int, height: int, context: float = 1.5, min_crop: int = 32) -> tuple[int, int, int, int]:
    """Integer crop box: ``box`` scaled by ``context`` around its centre, >= ``min_crop`` px, clamped."""
    if context < 1.0:
        raise ValueError(f"context must be >= 1, got {context}")
    x0, y0, x1, y1 = clamp_box(box, width, height)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bw = max((x1 - x0) * context, min(min_crop, width))
    bh = max((y1 - y0) * context, min(min_crop, height))
    bw, bh = min(bw, width), min(bh, height)
    nx0 = int(math.floor(min(max(cx - bw / 2, 0), width - bw)))
    ny0 = int(math.floor(min(max(cy - bh / 2, 0), height - bh)))
    nx1 = int(math.ceil(min(nx0 + bw, width)))
    ny1 = int(math.ceil(min(ny0 + bh, height)))
    return nx0, ny0, max(nx1, nx0 + 1), max(ny1, ny0 + 1)


def color_match(result: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Shift/scale each channel of ``result`` so its mean and std match ``reference``.

    Statistics are taken where ``mask < 0.5`` (the untouched context) when that has at least
    16 pixels, else over the whole crop. Returns float32 in [0, 1].
    """
    sel = None
    if mask is not None:
        sel = mask < 0.5
        if sel.sum() < 16:
            sel = None
    out = np.empty_like(result, dtype=np.float32)
    for c in range(3):
        r, ref = result[..., c], reference[..., c]
        rs, fs = (r[sel], ref[sel]) if sel is not None else (r, ref)
        r_std, f_std = float(rs.std()), float(fs.std())
        scale = f_std / r_std if r_std > 1e-6 else 1.0
        scale = min(max(scale, 0.5), 2.0)
        out[..., c] = (r - rs.mean()) * scale + fs.mean()
    return np.clip(out, 0.0, 1.0)


def _fmt_value(value: float) -> str:
    """A criterion value for the log: a missing score reads "n/a", not -inf."""
    return "n/a" if value == -math.inf else f"{value:.4f}"


def _criterion(diagnosis: Diagnosis, score: str, penalty: float) -> float:
    if score in ("overall", "weighted", "defect_penalty"):
        value, _ = score_value(diagnosis, score, None, penalty)
    else:
        value = diagnosis.scores[score]  # KeyError names the valid scores
    return -math.inf if value is None else float(value)


def refine_region(
    image: np.ndarray,
    defect: Defect,
    inpaint: Callable[[Any, np.ndarray], Any],
    context: float = 1.5,
    guide_size: int = 512,
    feather: float | None = None,
    color_matching: bool = True,
    grow: int = 0,
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Inpaint one defect region of ``image`` and paste it back; returns (new image, crop box)."""
    h, w = image.shape[:2]
    cx0, cy0, cx1, cy1 = context_box(defect.box, w, h, context)
    crop = image[cy0:cy1, cx0:cx1]
    ch, cw = crop.shape[:2]
    bx0, by0, bx1, by1 = defect.box
    mask = box_mask((bx0 - cx0, by0 - cy0, bx1 - cx0, by1 - cy0), cw, ch).astype(np.float32)
    if grow:
        mask = grow_shrink(mask, grow)
    scale = float(guide_size) / max(cw, ch)
    gw, gh = max(8, int(round(cw * scale / 8)) * 8), max(8, int(round(ch * scale / 8)) * 8)
    crop_up = _resize(crop, gw, gh)
    mask_up = (_resize_mask(mask, gw, gh) >= 0.5).astype(np.float32)
    result = inpaint(_to_pil(crop_up), mask_up)
    result = to_float_image(result, "inpaint result")
    if result.shape[:2] != (gh, gw):
        result = _resize(result, gw, gh)
    new_crop = _resize(result, cw, ch)
    if color_matching:
        new_crop = color_match(new_crop, crop, mask)
    if feather is None:
        feather = max(2.0, 0.08 * min(cw, ch))
    alpha = feather_mask(grow_shrink(mask, int(round(feather / 2))) if feather else mask, feather)
    alpha = np.maximum(alpha, mask * (feather == 0))[..., None]
    out = image.copy()
    out[cy0:cy1, cx0:cx1] = crop * (1 - alpha) + new_crop * alpha
    return out.astype(np.float32), (cx0, cy0, cx1, cy1)


def refine_defects(
    image: Any,
    diagnosis: Diagnosis,
    inpaint: Callable[[Any, np.ndarray], Any],
    diagnose: Callable[[np.ndarray], Diagnosis],
    score: str = "overall",
    context: float = 1.5,
    guide_size: int = 512,
    rounds: int = 1,
    feather: float | None = None,
    color_match: bool = True,  # noqa: A002
    min_importance: int = 0,
    labels=None,
    max_regions: int | None = None,
    regions: Sequence[Defect] | None = None,
    penalty: float = DEFAULT_PENALTY,
    require_penalty_drop: bool = True,
    grow: int = 0,
    progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> RefineResult:
    """Refine ``image`` region by region; see the module docstring. ``diagnosis`` describes ``image``.

    ``score`` is a score name (alignment/aesthetics/plausibility/overall) or a `best_of_n`
    criterion (``weighted`` = mean, ``defect_penalty``). ``diagnose(image) -> Diagnosis`` gets a
    float32 (H, W, 3) array. ``max_regions`` caps the regions per round (None = all).
    ``regions`` (e.g. an external detector's boxes) replaces the diagnosis' defects as the regions
    to refine in every round; acceptance still uses the re-diagnosed score and defect load.
    """
    current = to_float_image(image)
    if not isinstance(diagnosis, Diagnosis):
        raise TypeError(f"refine_defects expects a Diagnosis, got {type(diagnosis).__name__}")
    h, w = current.shape[:2]
    if (diagnosis.width, diagnosis.height) != (w, h):
        raise ValueError(
            f"diagnosis is for a {diagnosis.width}x{diagnosis.height} image but the image is {w}x{h}"
        )
    if int(rounds) < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if int(guide_size) < 64:
        raise ValueError(f"guide_size must be >= 64, got {guide_size}")
    label_set = None if labels in (None, "all", "both") else ({labels} if isinstance(labels, str) else set(labels))
    current_diag = diagnosis
    cur_value = _criterion(current_diag, score, penalty)
    cur_load = defect_load(current_diag)
    result = RefineResult(current, current_diag)
    log = result.log
    log.append(f"start: {score}={_fmt_value(cur_value)} defect load={cur_load:.2f} defects={len(current_diag.defects)}")
    for rnd in range(1, int(rounds) + 1):
        todo = [
            d for d in (current_diag.defects if regions is None else regions)
            if d.importance_or() >= min_importance and (label_set is None or d.label in label_set)
        ]
        todo = [d for d in todo if d.area >= 1.0]
        todo.sort(key=lambda d: (-d.importance_or(), d.box))
        if max_regions is not None:
            todo = todo[: int(max_regions)]
        if not todo:
            log.append(f"round {rnd}: no defect regions to refine (min importance {min_importance})")
            break
        accepted_this_round = 0
        for n, defect in enumerate(todo, 1):
            if should_cancel is not None and should_cancel():
                raise RefineCancelled("refinement cancelled")
            box_txt = "[" + ", ".join(f"{v:.0f}" for v in defect.box) + "]"
            candidate, crop_box = refine_region(
                current, defect, inpaint, context, guide_size, feather, color_match, grow
            )
            new_diag = diagnose(candidate)
            new_value = _criterion(new_diag, score, penalty)
            new_load = defect_load(new_diag)
            better = new_value > cur_value
            # nothing to drop from (regions given by an external detector on a defect-free
            # diagnosis): the load must then stay at zero
            load_ok = (new_load < cur_load or new_load == cur_load == 0) if require_penalty_drop else True
            verdict = "accepted" if better and load_ok else "rejected"
            why = []
            if not better:
                why.append(f"{score} did not improve")
            if not load_ok:
                why.append("defect load did not drop")
            log.append(
                f"round {rnd} region {n}/{len(todo)} {defect.label} imp={defect.importance_or()} box={box_txt}: "
                f"{score} {_fmt_value(cur_value)} -> {_fmt_value(new_value)}, load {cur_load:.2f} -> "
                f"{new_load:.2f}: {verdict}" + (f" ({'; '.join(why)})" if why else "")
            )
            result.steps.append({
                "round": rnd, "region": n, "regions": len(todo), "label": defect.label,
                "importance": defect.importance, "reason": defect.reason, "box": [round(v, 1) for v in defect.box],
                "before": None if cur_value == -math.inf else cur_value,
                "after": None if new_value == -math.inf else new_value,
                "load_before": cur_load, "load_after": new_load, "verdict": verdict, "why": "; ".join(why),
            })
            if verdict == "accepted":
                current, current_diag, cur_value, cur_load = candidate, new_diag, new_value, new_load
                result.accepted += 1
                accepted_this_round += 1
            else:
                result.rejected += 1
            if progress is not None:
                progress(n, len(todo))
        if accepted_this_round == 0:
            log.append(f"round {rnd}: nothing accepted, stopping")
            break
    log.append(f"done: {result.accepted} accepted, {result.rejected} rejected; final {score}={_fmt_value(cur_value)}")
    result.image, result.diagnosis = current, current_diag
    return result
