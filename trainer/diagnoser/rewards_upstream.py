"""The authors' GRPO rewards, definition by definition (``variant="upstream"``).

- ImageDoctor (``EthanG97/ImageDoctor``, VLM-R1 fork ``grpo_jsonl_np.py``; its trainer adds every
  reward function unweighted): four score terms, two heatmap terms, six grounding terms.
- SDG detector (``nianbai006/SDG`` ``sdg_detector/scripts/plugin.py``, reward ``SDG_combined_v3``).

The functions on raw inputs (completion text, maps, box dicts) follow the authors' definitions,
odd corners included (they are what the published checkpoints were trained against); each says
which. The ``*_reward(pred, gt)`` functions at the bottom apply them to our `Diagnosis` pairs:
the prediction's raw completion is ``pred.raw_text`` (or pass the text itself), and they are
what `trainer.diagnoser.rewards` dispatches to. File and line of every rule: docs/fidelity.md.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ...core.diagnosis import HEATMAP_NAMES, SCORE_NAMES, Diagnosis
from ...core.geometry import Frame

Embed = Callable[[list[str]], Any]

# ==============================================================================================
# ImageDoctor
# ==============================================================================================
#: Score regexes of the authors' reward (the first three need a ';' after the number).
SCORE_PATTERNS = {
    "alignment": re.compile(r"Semantic Alignment score: ([0-9.]+);"),
    "aesthetics": re.compile(r"Aesthetic score: ([0-9.]+);"),
    "plausibility": re.compile(r"Plausibility score: ([0-9.]+);"),
    "overall": re.compile(r"Overall Impression score: ([0-9.]+)"),
}
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.S)
#: Every ``[n, n, n, n]`` in the completion is a box (think and answer alike).
_BRACKET_BOX = re.compile(r"\[\s*([+-]?\d+(?:\.\d+)?)\s*,\s*([+-]?\d+(?:\.\d+)?)\s*,\s*([+-]?\d+(?:\.\d+)?)\s*,"
                          r"\s*([+-]?\d+(?:\.\d+)?)\s*\]")
HEATMAP_SIZE = 288
#: Boxes are written in the 512 px GRPO frame and scaled to the 288 px maps.
BOX_FRAME = 512
HEATMAP_SCALES = {"misalignment": 80.0, "artifact": 40.0}
GROUNDING_TERMS = ("uniqueness", "compactness", "completeness")


def answer_block(completion: str) -> str | None:
    """Body of the first ``<answer>...</answer>`` (None without a closed block)."""
    m = _ANSWER_BLOCK.search(completion)
    return m.group(1) if m else None


def read_score(block: str, name: str) -> float:
    """Score ``name`` read from an answer block with the authors' regex; 0.0 when absent or unparsable
    (e.g. ``0.8`` without the ``;``, ``1.2.3``, a negative number)."""
    m = SCORE_PATTERNS[name].search(block)
    if m is None:
        return 0.0
    try:
        return float(m.group(1))
    except ValueError:
        return 0.0


def score_terms(completion: str, gt_scores: Mapping[str, float | None]) -> dict[str, float]:
    """The four score rewards ``1 - 3|p - g|`` (unclipped, in [-2, 1]).

    A completion without a closed answer block scores 0 on each; a missing or unparsable score
    reads as 0 (so it is rewarded ``1 - 3g``). A missing ground-truth score also reads as 0,
    as the authors' regex would read it from a ground-truth text without it.
    """
    block = answer_block(completion)
    out = {}
    for name in SCORE_NAMES:
        if block is None:
            out[name] = 0.0
            continue
        g = gt_scores.get(name)
        out[name] = 1.0 - 3 * abs(read_score(block, name) - (0.0 if g is None else float(g)))
    return out


def resize_linear(arr: Any, size: int = HEATMAP_SIZE) -> np.ndarray:
    """(H, W) map -> (size, size) float32, bilinear with half-pixel centres and no antialiasing
    (what OpenCV's ``INTER_LINEAR`` computes)."""
    import torch
    import torch.nn.functional as F

    a = np.asarray(arr, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"a heatmap must be a non-empty (H, W) array, got shape {a.shape}")
    if a.shape != (size, size):
        t = F.interpolate(torch.from_numpy(a)[None, None], size=(size, size), mode="bilinear", align_corners=False)
        a = t[0, 0].numpy()
    return a.astype(np.float32)


def heatmap_terms(pred_maps: Mapping[str, Any] | None, gt_maps: Mapping[str, Any]) -> dict[str, float]:
    """``1 - clip(scale * MSE, 0, 1)`` per map at 288x288 (scale 80 misalignment, 40 artifact).

    ``pred_maps`` None means the rollout lacked ``<MIS>`` or ``<ART>``: both predicted maps are then
    all zero, so an empty ground-truth map still scores 1. ``gt_maps`` hold (H, W) maps in [0, 1]
    (None = all zero); both sides go to 288x288 with `resize_linear`.
    """
    out = {}
    for name in HEATMAP_NAMES:
        g = gt_maps.get(name)
        g = np.zeros((HEATMAP_SIZE, HEATMAP_SIZE), np.float32) if g is None else resize_linear(g)
        p = np.zeros((HEATMAP_SIZE, HEATMAP_SIZE), np.float32) if pred_maps is None else resize_linear(pred_maps[name])
        mse = np.mean((p - g) ** 2)
        out[name] = float(1.0 - np.clip(mse * HEATMAP_SCALES[name], 0.0, 1.0))
    return out


def completion_boxes(completion: str, frame: int = BOX_FRAME, size: int = HEATMAP_SIZE) -> np.ndarray:
    """[K, 4] float32: every ``[n, n, n, n]`` in the completion, scaled by ``size / frame``."""
    scale = size / frame
    boxes = [[float(v) * scale for v in m.groups()] for m in _BRACKET_BOX.finditer(completion)]
    return np.array(boxes, dtype=np.float32).reshape(-1, 4)


def _pair_iou(a, b):
    """IoU with negative widths/heights counted as zero area; 0 when the union is empty."""
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area_a = max(0, a[2] - a[0]) * max(0, a[3] - a[1])
    area_b = max(0, b[2] - b[0]) * max(0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def _pixel_window(box, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer window of a box: coordinates ``int()``-truncated, the low corner raised to 0 and the
    high corner lowered to the map size (not the other way round)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return max(0, x0), max(0, y0), min(width, x1), min(height, y1)


def grounding_terms(boxes: np.ndarray, heat: np.ndarray) -> dict[str, float]:
    """Uniqueness, compactness and completeness of ``boxes`` ([K, 4] at 288 px) against one map.

    No box and an all-zero map: 1 each; exactly one of them empty: 0 each. Otherwise
    uniqueness = 1 - mean IoU over pairs i < j (1 for one box); compactness = mean over boxes of
    the map's mean inside the box's `_pixel_window` (windows left empty are skipped; none left: 0);
    completeness = sum(map * union of windows) / (sum(map) + 1e-8).
    """
    heat = np.asarray(heat, dtype=np.float32)
    heat_empty, no_box = heat.sum() == 0, len(boxes) == 0
    if heat_empty or no_box:
        value = 1.0 if (heat_empty and no_box) else 0.0
        return {name: value for name in GROUNDING_TERMS}
    ious = [_pair_iou(boxes[i], boxes[j]) for i in range(len(boxes)) for j in range(i + 1, len(boxes))]
    uniqueness = float(1.0 - (np.mean(ious) if ious else 0.0))
    h, w = heat.shape
    means, union = [], np.zeros_like(heat, dtype=bool)
    for box in boxes:
        x0, y0, x1, y1 = _pixel_window(box, w, h)
        if x1 > x0 and y1 > y0:
            means.append(heat[y0:y1, x0:x1].mean())
            union[y0:y1, x0:x1] = True
    compactness = float(np.mean(means)) if means else 0.0
    completeness = float((heat * union).sum() / (heat.sum() + 1e-8))
    return {"uniqueness": uniqueness, "compactness": compactness, "completeness": completeness}


# ==============================================================================================
# SDG detector: SDG_combined_v3
# ==============================================================================================
_SDG_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.S)
SDG_WEIGHTS = {"box": 0.6, "desc": 0.25, "imp": 0.15}
SDG_UNMATCHED_PENALTY = -0.5
#: R_box when one side or both are empty (R_desc = R_imp = 0 then).
SDG_EMPTY_BOX = {"both": 0.3, "gt_only": -0.8, "pred_only": -0.3}
SDG_INCOMPATIBLE_COST = 2.0
SDG_FORMAT_FAILURE = -1.0


def sdg_answer_items(completion: str) -> list[dict] | None:
    """Items of the first answer block, or None when it is missing or not a strict JSON list.

    A ```` ``` ```` fence inside the block is stripped; an empty block is ``[]``; no repair (a trailing
    comma or single quotes fail). Items that are not dicts with ``box_2d`` and ``label`` are dropped.
    """
    m = _SDG_ANSWER.search(completion)
    if not m:
        return None
    body = m.group(1).strip()
    fence = _FENCE.search(body)
    if fence:
        body = fence.group(1).strip()
    if not body:
        return []
    import json

    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, list):
        return None
    return [item for item in data if isinstance(item, dict) and "box_2d" in item and "label" in item]


def _is_number(v) -> bool:
    return isinstance(v, (int, float))  # bools pass, as upstream


def sdg_format_ok(completion: str) -> bool:
    """The format gate: a ``<think>`` tag (closing not needed), a parsable answer (`sdg_answer_items`),
    and every kept item with a 4-number ``box_2d`` where x0 < x1 and y0 < y1, and a
    ``description`` or ``desc`` key. An empty list passes."""
    if "<think>" not in completion:
        return False
    items = sdg_answer_items(completion)
    if items is None:
        return False
    for item in items:
        box = item["box_2d"]
        if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
            return False
        if not (box[0] < box[2] and box[1] < box[3]):
            return False
        if "description" not in item and "desc" not in item:
            return False
    return True


def sdg_diou(a: Sequence[float], b: Sequence[float], eps: float = 1e-9) -> float:
    """DIoU on raw coordinates: IoU (0 when the union is <= eps; areas not clamped) minus squared
    centre distance over the squared diagonal of the enclosing box (skipped when that is <= eps)."""
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    iou = inter / union if union > eps else 0.0
    d2 = ((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) ** 2 + ((a[1] + a[3]) / 2 - (b[1] + b[3]) / 2) ** 2
    c2 = (max(a[2], b[2]) - min(a[0], b[0])) ** 2 + (max(a[3], b[3]) - min(a[1], b[1])) ** 2
    return iou - d2 / c2 if c2 > eps else iou


def sdg_labels_compatible(gt_label: str, pred_label: str) -> bool:
    g, p = gt_label.lower(), pred_label.lower()
    return g == p or p == "both" or g == "both"


def sdg_match(gt: Sequence[dict], pred: Sequence[dict]) -> list[tuple[int, int, float]]:
    """One Hungarian assignment over all GT x prediction pairs (cost -DIoU when the labels are
    compatible, else 2.0); assigned pairs with cost < 1.5 are matches ``(gt, pred, DIoU)``."""
    from scipy.optimize import linear_sum_assignment

    if not gt or not pred:
        return []
    cost = np.full((len(gt), len(pred)), SDG_INCOMPATIBLE_COST)
    dious = np.zeros((len(gt), len(pred)))
    for gi, g in enumerate(gt):
        for pi, p in enumerate(pred):
            if sdg_labels_compatible(g["label"], p["label"]):
                dious[gi, pi] = sdg_diou(p["box_2d"], g["box_2d"])
                cost[gi, pi] = -dious[gi, pi]
    rows, cols = linear_sum_assignment(cost)
    return [(int(g), int(p), float(dious[g, p])) for g, p in zip(rows, cols) if cost[g, p] < 1.5]


def sdg_gt_from_fields(gt_misalignment_bboxes: Any, gt_artifact_bboxes: Any) -> list[dict]:
    """Ground-truth items from the GRPO data's two fields, as the reward reads them: boxes taken
    as ``[y0, x0, y1, x1]`` and swapped to xyxy, the label from the field, a missing importance 50
    (misalignment items first)."""
    items = []
    for raw, label in ((gt_misalignment_bboxes, "misalignment"), (gt_artifact_bboxes, "artifact")):
        if not isinstance(raw, list):
            continue
        for item in raw:
            if isinstance(item, dict) and "box_2d" in item:
                c = item["box_2d"]
                items.append({"box_2d": [c[1], c[0], c[3], c[2]], "label": label,
                              "description": item.get("description", "") or item.get("desc", ""),
                              "importance": item.get("importance", 50)})
            elif isinstance(item, list) and len(item) == 4:
                items.append({"box_2d": [item[1], item[0], item[3], item[2]], "label": label,
                              "description": "", "importance": 50})
    return items


def _unit_rows(vectors: Any) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def sdg_combined_v3(completion: str, gt: Sequence[dict], embed: Embed | None = None) -> dict[str, float]:
    """``SDG_combined_v3`` of one completion against GT items (xyxy ``box_2d``, ``label``,
    ``description``, ``importance``). Returns {"total", "box", "desc", "imp", "format_ok"}.

    Format failure (`sdg_format_ok`) -> total -1. Empty cases set R_box (both 0.3, GT only -0.8,
    prediction only -0.3) with R_desc = R_imp = 0. Otherwise, with N = max(n_gt, n_pred, 1) and the
    `sdg_match` matches: R_box = clip((sum DIoU - 0.5 (unmatched pred + unmatched GT)) / N, -1, 1);
    R_desc = sum clip((cos - 0.5) / 0.4, 0, 1) / N over matches whose two descriptions are both
    non-empty (cosine of ``embed`` vectors; 0 without ``embed``); R_imp = sum clip(1 - |p - g| / 50,
    0, 1) / N over matches whose predicted importance is a number (raw, not clamped to 1-100).
    Total = 0.6 R_box + 0.25 R_desc + 0.15 R_imp. Inputs that make the authors' code raise (a
    non-string label or description, a null GT importance) give -1, as their catch-all does.
    """
    failed = {"total": SDG_FORMAT_FAILURE, "box": SDG_FORMAT_FAILURE, "desc": 0.0, "imp": 0.0, "format_ok": 0.0}
    completion = "" if completion is None else str(completion)
    if not sdg_format_ok(completion):
        return failed
    pred = sdg_answer_items(completion) or []
    if not gt or not pred:
        r_box = SDG_EMPTY_BOX["both" if not gt and not pred else ("gt_only" if gt else "pred_only")]
        return {"total": SDG_WEIGHTS["box"] * r_box, "box": r_box, "desc": 0.0, "imp": 0.0, "format_ok": 1.0}
    if not all(isinstance(p["label"], str) for p in pred):
        return {**failed, "format_ok": 1.0}
    matches = sdg_match(gt, pred)
    n = max(len(gt), len(pred), 1)
    unmatched = (len(pred) - len(matches)) + (len(gt) - len(matches))
    r_box = max(-1.0, min(1.0, (sum(m[2] for m in matches) + unmatched * SDG_UNMATCHED_PENALTY) / n))

    pairs = [(gt[g].get("description", ""), pred[p].get("description", "") or pred[p].get("desc", ""))
             for g, p, _ in matches]
    if any((a and not isinstance(a, str)) or (b and not isinstance(b, str)) for a, b in pairs):
        return {**failed, "format_ok": 1.0}
    desc_sum = 0.0
    both = [(a, b) for a, b in pairs if a and b]
    if embed is not None and both:
        texts = sorted({t for pair in both for t in pair})
        table = dict(zip(texts, _unit_rows(embed(texts))))
        for a, b in both:
            desc_sum += max(0.0, min(1.0, (float(np.dot(table[a], table[b])) - 0.5) / 0.4))
    imp_sum = 0.0
    for g, p, _ in matches:
        p_imp, g_imp = pred[p].get("importance"), gt[g].get("importance", 50)
        if p_imp is not None and _is_number(p_imp):
            try:
                g_value = float(g_imp)
            except (TypeError, ValueError):  # a null or non-numeric GT importance
                return {**failed, "format_ok": 1.0}
            imp_sum += max(0.0, min(1.0, 1.0 - abs(float(p_imp) - g_value) / 50.0))
    r_desc, r_imp = desc_sum / n, imp_sum / n
    total = SDG_WEIGHTS["box"] * r_box + SDG_WEIGHTS["desc"] * r_desc + SDG_WEIGHTS["imp"] * r_imp
    return {"total": float(total), "box": r_box, "desc": r_desc, "imp": r_imp, "format_ok": 1.0}


# ==============================================================================================
# on Diagnosis pairs (what `trainer.diagnoser.rewards` dispatches to)
# ==============================================================================================
def completion_text(pred: Diagnosis | str) -> str:
    """The raw completion the authors' rewards read: the text itself, or ``pred.raw_text``."""
    if isinstance(pred, str):
        return pred
    if isinstance(pred, Diagnosis):
        return pred.raw_text or ""
    raise TypeError(f"an upstream reward needs the completion text or a Diagnosis, got {type(pred).__name__}")


def _gt_maps(gt: Diagnosis) -> dict[str, Any]:
    return {name: gt.heatmaps.get(name) for name in HEATMAP_NAMES}


def score_reward(pred: Diagnosis | str, gt: Diagnosis) -> float:
    """Sum of the four `score_terms` (in [-8, 4])."""
    return float(sum(score_terms(completion_text(pred), gt.scores.as_dict()).values()))


def heatmap_reward(pred: Diagnosis, gt: Diagnosis) -> float:
    """Sum of the two `heatmap_terms` (in [0, 2]); a prediction without both maps (a task token
    was not generated) has two all-zero maps."""
    maps = {name: pred.heatmaps.get(name) for name in HEATMAP_NAMES}
    return float(sum(heatmap_terms(None if any(m is None for m in maps.values()) else maps, _gt_maps(gt)).values()))


def grounding_reward(pred: Diagnosis | str, gt: Diagnosis) -> float:
    """Sum of the six `grounding_terms` (in [0, 6]): every box of the completion scored against
    each ground-truth map (288x288, `resize_linear`; a missing map is all zero)."""
    boxes = completion_boxes(completion_text(pred))
    total = 0.0
    for name, m in _gt_maps(gt).items():
        heat = np.zeros((HEATMAP_SIZE, HEATMAP_SIZE), np.float32) if m is None else resize_linear(m)
        total += sum(grounding_terms(boxes, heat).values())
    return float(total)


def _snap(v: float) -> float:
    """Undo float noise of a pixel -> 0-1000 round trip (ground-truth files hold integers)."""
    r = round(v)
    return float(r) if abs(v - r) < 1e-6 else v


def diagnosis_gt_items(gt: Diagnosis) -> list[dict]:
    """GT items for `sdg_combined_v3` from a ground-truth `Diagnosis`: boxes in 0-1000 xyxy (what
    the reward holds after its swap), misalignment items first as the reward lists them, a
    missing importance 50."""
    frame = Frame.norm1000()
    items = []
    for label in ("misalignment", "artifact"):
        for d in gt.defects:
            if d.label == label:
                box = [_snap(v) for v in frame.from_pixels(d.box, gt.width, gt.height)]
                items.append({"box_2d": box, "label": label, "description": d.reason,
                              "importance": 50 if d.importance is None else d.importance})
    return items


def sdg_detector_reward(pred: Diagnosis | str, gt: Diagnosis, embed: Embed | None = None) -> float:
    """`sdg_combined_v3` of the raw completion against the ground truth (total, in [-1, 1])."""
    return sdg_combined_v3(completion_text(pred), diagnosis_gt_items(gt), embed)["total"]
