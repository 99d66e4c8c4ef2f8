"""Verifiable rewards for diagnoser GRPO: plain functions of (prediction, ground truth) -> float.

All take a predicted `Diagnosis` (parsed rollout, heatmaps attached when the head ran) and the
ground-truth `Diagnosis` of the same image; boxes are pixels of the original image.

ImageDoctor (sources: docs/provenance.md): `score_reward` (1 - 3|s - s~| per score), `heatmap_reward`
(1 - clip(80·MSE) misalignment, 1 - clip(40·MSE) artifact), `grounding_reward` (completeness +
compactness + uniqueness of the predicted boxes against the GT heat). Conventions: a term whose
prediction and ground truth are both empty is 1, one empty and not the other is 0.

SDG detector (sources: docs/provenance.md): `sdg_detector_reward` = -1 on a format failure, else
0.6·R_box + 0.25·R_desc + 0.15·R_imp with per-label Hungarian matching on -DIoU.

These are our variants (``variant="ours"``: bounded means, parsed boxes in pixels, per-label
matching). ``variant="upstream"`` runs the authors' exact definitions on the raw completion
(`trainer.diagnoser.rewards_upstream`); docs/fidelity.md lists every difference and its reason.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from ...core.diagnosis import HEATMAP_NAMES, LABELS, SCORE_NAMES, Diagnosis
from ...core.geometry import box_mask, diou, iou, pairwise
from . import rewards_upstream as upstream
from .config import REWARD_VARIANTS

#: Heatmap reward scales of upstream (MSE at 288x288).
HEATMAP_SCALES = {"misalignment": 80.0, "artifact": 40.0}
HEATMAP_SIZE = 288
#: Pixels with GT heat above this count as "hot"; a map whose max is below it is empty.
EMPTY_EPS = 1e-3


def _is_upstream(variant: str) -> bool:
    if variant not in REWARD_VARIANTS:
        raise ValueError(f"unknown reward variant {variant!r}; use one of {list(REWARD_VARIANTS)}")
    return variant == "upstream"


def _resize(arr: np.ndarray, size: int) -> np.ndarray:
    """(H, W) float map -> (size, size), bilinear."""
    from PIL import Image

    arr = np.asarray(arr, dtype=np.float32)
    if arr.shape == (size, size):
        return arr
    return np.asarray(Image.fromarray(arr, mode="F").resize((size, size), Image.BILINEAR), dtype=np.float32)


# --- ImageDoctor ---------------------------------------------------------------------------
def score_reward(pred: Diagnosis, gt: Diagnosis, scale: float = 3.0, variant: str = "ours") -> float:
    """Mean over the annotated scores of max(0, 1 - scale·|pred - gt|); a missing prediction scores 0.

    Returns 1.0 when the ground truth has no scores (nothing to be wrong about). ``variant="upstream"``:
    `rewards_upstream.score_reward` (unclipped terms summed, read from the raw completion).
    """
    if _is_upstream(variant):
        return upstream.score_reward(pred, gt)
    values = []
    for name in SCORE_NAMES:
        g = gt.scores[name]
        if g is None:
            continue
        p = pred.scores[name]
        values.append(0.0 if p is None else max(0.0, 1.0 - scale * abs(float(p) - float(g))))
    return float(np.mean(values)) if values else 1.0


def heatmap_reward(pred: Diagnosis, gt: Diagnosis, size: int = HEATMAP_SIZE,
                   scales: Mapping[str, float] = HEATMAP_SCALES, variant: str = "ours") -> float:
    """Mean over annotated maps of 1 - clip(scale·MSE, 0, 1) at ``size`` x ``size``.

    A GT map of None is not annotated (skipped); a missing predicted map scores 0; returns 1.0
    when no map is annotated. ``variant="upstream"``: `rewards_upstream.heatmap_reward` (both terms
    summed; missing predicted maps are all-zero maps).
    """
    if _is_upstream(variant):
        return upstream.heatmap_reward(pred, gt)
    values = []
    for name in HEATMAP_NAMES:
        g = gt.heatmaps.get(name)
        if g is None:
            continue
        p = pred.heatmaps.get(name)
        if p is None:
            values.append(0.0)
            continue
        mse = float(np.mean((_resize(p, size) - _resize(g, size)) ** 2))
        values.append(1.0 - min(max(scales[name] * mse, 0.0), 1.0))
    return float(np.mean(values)) if values else 1.0


def gt_heat(gt: Diagnosis) -> np.ndarray:
    """(H, W) ground-truth heat in [0, 1]: the max of both maps, or the GT boxes when no map exists."""
    maps = [m for m in (gt.heatmaps.get(n) for n in HEATMAP_NAMES) if m is not None]
    if maps:
        return np.clip(np.maximum.reduce([np.asarray(m, dtype=np.float32) for m in maps]), 0, 1)
    heat = np.zeros((gt.height, gt.width), dtype=np.float32)
    for d in gt.defects:
        heat[box_mask(d.box, gt.width, gt.height)] = 1.0
    return heat


def grounding_terms(pred_boxes: Sequence[Sequence[float]], heat: np.ndarray) -> dict[str, float]:
    """Completeness, compactness and uniqueness of ``pred_boxes`` (pixels) against ``heat`` (H, W).

    - completeness: share of the GT heat covered by the union of the boxes;
    - compactness: mean over boxes of the mean GT heat inside the box;
    - uniqueness: 1 - mean pairwise IoU of the boxes (1 for a single box).
    Both empty (no box, no heat) -> 1 each; exactly one empty -> 0 each.
    """
    h, w = heat.shape
    heat_empty = float(heat.max(initial=0.0)) <= EMPTY_EPS
    if not pred_boxes or heat_empty:
        value = 1.0 if (not pred_boxes and heat_empty) else 0.0
        return {"completeness": value, "compactness": value, "uniqueness": value}
    masks = [box_mask(b, w, h) for b in pred_boxes]
    union = np.logical_or.reduce(masks)
    completeness = float(heat[union].sum() / heat.sum())
    compactness = float(np.mean([heat[m].mean() if m.any() else 0.0 for m in masks]))
    if len(pred_boxes) > 1:
        m = pairwise(iou, pred_boxes, pred_boxes)
        off = m[~np.eye(len(pred_boxes), dtype=bool)]
        uniqueness = 1.0 - float(off.mean())
    else:
        uniqueness = 1.0
    return {"completeness": completeness, "compactness": compactness, "uniqueness": uniqueness}


def grounding_reward(pred: Diagnosis, gt: Diagnosis, variant: str = "ours") -> float:
    """Mean of `grounding_terms` of the predicted boxes against the GT heat, in [0, 1].

    ``variant="upstream"``: `rewards_upstream.grounding_reward` (six terms summed, every bracketed
    box of the raw completion against each map).
    """
    if _is_upstream(variant):
        return upstream.grounding_reward(pred, gt)
    terms = grounding_terms([d.box for d in pred.defects], gt_heat(gt))
    return float(np.mean(list(terms.values())))


def format_reward(pred: Diagnosis, format: str = "imagedoctor", stage: str = "full") -> float:
    """Share of the expected output read without problems, in [0, 1].

    imagedoctor: fraction of the four scores the parser found (stage 'full' also needs the
    answer block); sdg: 1 when the output parsed without problems, else 0.
    """
    if format == "sdg":
        return 0.0 if pred.problems else 1.0
    found = sum(pred.scores[n] is not None for n in SCORE_NAMES) / len(SCORE_NAMES)
    if stage == "full" and any("answer" in p.lower() for p in pred.problems):
        found *= 0.5
    return float(found)


# --- SDG detector ---------------------------------------------------------------------------
def _match_label(pred_boxes, gt_boxes) -> list[tuple[int, int, float]]:
    """Hungarian matching on -DIoU; returns (pred index, gt index, DIoU) for each matched pair."""
    from scipy.optimize import linear_sum_assignment

    if not pred_boxes or not gt_boxes:
        return []
    m = pairwise(diou, pred_boxes, gt_boxes)
    rows, cols = linear_sum_assignment(-m)
    return [(int(r), int(c), float(m[r, c])) for r, c in zip(rows, cols)]


def sdg_detector_reward(
    pred: Diagnosis,
    gt: Diagnosis,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    miss_penalty: float = 0.8,
    false_alarm_penalty: float = 0.3,
    both_empty_bonus: float = 0.3,
    weights: tuple[float, float, float] = (0.6, 0.25, 0.15),
    variant: str = "ours",
) -> float:
    """Our SDG detector GRPO reward of one prediction (the SDG paper's description; docs/provenance.md).

    Format failure (the parser reported problems) -> -1. Otherwise, per label, boxes are
    matched by Hungarian assignment on -DIoU; R_box = (Σ matched DIoU - miss_penalty·misses -
    false_alarm_penalty·false alarms) / (matched + misses + false alarms), or +both_empty_bonus
    when neither side has a box of any label. R_desc = mean clip((cos - 0.5)/0.4, 0, 1) over
    matched pairs (0 without ``embed``; ``embed(texts) -> [N, D]``); R_imp = mean
    clip(1 - |Δimportance|/50, 0, 1) (missing importance counts as 50). Both empty: R_desc =
    R_imp = 1. Returns w_box·R_box + w_desc·R_desc + w_imp·R_imp.

    ``variant="upstream"``: the authors' ``SDG_combined_v3`` on the raw completion
    (`rewards_upstream.sdg_detector_reward`; the penalty/weight arguments do not apply).
    """
    if _is_upstream(variant):
        return upstream.sdg_detector_reward(pred, gt, embed)
    if pred.problems:
        return -1.0
    if not pred.defects and not gt.defects:
        return float(weights[0] * both_empty_bonus + weights[1] + weights[2])
    total, n_terms, desc_pairs, imp_values = 0.0, 0, [], []
    for label in LABELS:
        p = pred.defects_of(label)
        g = gt.defects_of(label)
        matches = _match_label([d.box for d in p], [d.box for d in g])
        misses = len(g) - len(matches)
        false_alarms = len(p) - len(matches)
        total += sum(m[2] for m in matches) - miss_penalty * misses - false_alarm_penalty * false_alarms
        n_terms += len(matches) + misses + false_alarms
        for i, j, _ in matches:
            desc_pairs.append((p[i].reason, g[j].reason))
            imp_values.append(max(0.0, min(1.0, 1.0 - abs(p[i].importance_or() - g[j].importance_or()) / 50.0)))
    r_box = total / max(n_terms, 1)
    r_imp = float(np.mean(imp_values)) if imp_values else 0.0
    r_desc = 0.0
    if embed is not None and desc_pairs:
        a = np.asarray(embed([x for x, _ in desc_pairs]), dtype=np.float64)
        b = np.asarray(embed([y for _, y in desc_pairs]), dtype=np.float64)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        r_desc = float(np.mean(np.clip((cos - 0.5) / 0.4, 0.0, 1.0)))
    return float(weights[0] * r_box + weights[1] * r_desc + weights[2] * r_imp)


# --- combination ----------------------------------------------------------------------------
def compute_rewards(
    preds: Sequence[Diagnosis],
    gts: Sequence[Diagnosis],
    weights: Mapping[str, float],
    format: str = "imagedoctor",
    stage: str = "full",
    embed: Callable[[list[str]], np.ndarray] | None = None,
    variant: str = "ours",
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Weighted sum of the named rewards for each (pred, gt) pair.

    ``variant`` ("ours" | "upstream") selects the definitions of score/heatmap/grounding/sdg
    (``format`` has no upstream counterpart). Returns (total [N], {name: [N] per-reward values}).
    """
    _is_upstream(variant)
    fns: dict[str, Callable[[Diagnosis, Diagnosis], float]] = {
        "score": lambda p, g: score_reward(p, g, variant=variant),
        "heatmap": lambda p, g: heatmap_reward(p, g, variant=variant),
        "grounding": lambda p, g: grounding_reward(p, g, variant=variant),
        "sdg": lambda p, g: sdg_detector_reward(p, g, embed=embed, variant=variant),
        "format": lambda p, g: format_reward(p, format, stage),
    }
    unknown = set(weights) - set(fns)
    if unknown:
        raise ValueError(f"unknown reward(s) {sorted(unknown)}; known: {sorted(fns)}")
    parts = {name: np.array([fns[name](p, g) for p, g in zip(preds, gts)], dtype=np.float64) for name in weights}
    total = np.zeros(len(preds), dtype=np.float64)
    for name, w in weights.items():
        total += float(w) * parts[name]
    return total, parts
