"""Evaluation metrics of the two papers, as plain functions on numpy arrays.

- `score_correlations`: PLCC / SRCC per score dimension and averaged (ImageDoctor, RichHF-18K).
- `heatmap_metrics`: MSE, CC, KLD, SIM, NSS, AUC-Judd over a batch of heatmaps (RichHF authors'
  conventions; sources in docs/provenance.md).
- `sdg_eval`: BoxF1@0.1 / BoxF1@0.5 per label and overall, DetTypeF1, ClnAcc, ImpAcc and DescCos
  over a data set (SDG-Eval). Two protocols: ``"sdg-release"`` reproduces the SDG authors' released
  evaluator number for number (raw model outputs, greedy IoU matching, its parsing and its
  definitions; `sdg_eval_release`); ``"pixel"`` evaluates parsed `Diagnosis` objects in pixels
  with Hungarian-on-(1 - DIoU) (the paper's description) or greedy-IoU matching.

Conventions shared by all functions:

- Undefined values (a correlation over fewer than two pairs, an F1 with nothing on either side)
  are ``nan`` in the returned dicts; `to_jsonable` turns them into ``None``.
- Heatmaps are float arrays in [0, 1] of shape (H, W); a prediction of a different size is
  resized (bilinear) to the ground truth's size first.
- Inputs are validated; a bad input raises ``ValueError`` naming it and saying how to fix it.
"""

from __future__ import annotations

import ast
import json
import math
import re
import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .diagnosis import LABELS, SCORE_NAMES, Defect, Diagnosis, Scores
from .geometry import diou, iou, pairwise

#: Default epsilon of the saliency metrics (KLD, SIM normalisation).
EPS = 1e-7

#: Three-way importance buckets used by ImpAcc, inclusive integer ranges on the SDG 1-100 scale.
#: negligible = SDG "negligible" + "minor" (1-39); moderate = SDG "moderate" (40-69);
#: critical = SDG "major" + "critical" (70-100).
IMPACC_BUCKETS = (("negligible", 1, 39), ("moderate", 40, 69), ("critical", 70, 100))

#: The five SDG buckets (``buckets="sdg5"``), as in `imagedoctor.core.diagnosis.IMPORTANCE_BUCKETS`.
SDG5_BUCKETS = (("negligible", 1, 14), ("minor", 15, 39), ("moderate", 40, 69), ("major", 70, 89),
                ("critical", 90, 100))

MATCHINGS = ("hungarian", "greedy")
SDG_PROTOCOLS = ("sdg-release", "pixel")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def to_jsonable(obj: Any) -> Any:
    """Copy of a metrics result with nan/inf floats as ``None`` and numpy scalars as Python ones."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


def _nanmean(values: Iterable[float]) -> float:
    """Mean of the finite values (nan when there are none)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else float("nan")


def _f1(tp: int, n_pred: int, n_gt: int) -> dict[str, float]:
    """Precision, recall and F1 from counts; nan where the denominator is zero.

    F1 is nan only when both sides are empty (nothing to find and nothing found); when one side
    is empty and the other is not, F1 is 0.
    """
    precision = tp / n_pred if n_pred else float("nan")
    recall = tp / n_gt if n_gt else float("nan")
    if n_pred == 0 and n_gt == 0:
        f1 = float("nan")
    else:
        f1 = 2.0 * tp / (n_pred + n_gt)
    return {"precision": precision, "recall": recall, "f1": f1, "tp": int(tp), "n_pred": int(n_pred),
            "n_gt": int(n_gt)}


# ----------------------------------------------------------------------------------------------
# scores
# ----------------------------------------------------------------------------------------------
def _score_matrix(values: Any, name: str) -> np.ndarray:
    """Turn score input into an (N, 4) float array in `SCORE_NAMES` order, nan = missing.

    Accepted: an (N, 4) array-like; a mapping ``{dimension: sequence of N}``; or a sequence of
    `Scores`, `Diagnosis` or ``{dimension: value}`` mappings (None values = missing).
    """
    if isinstance(values, Mapping):
        unknown = set(values) - set(SCORE_NAMES)
        if unknown:
            raise ValueError(f"{name}: unknown score dimension(s) {sorted(unknown)}; use {list(SCORE_NAMES)}")
        lengths = {len(v) for v in values.values()}
        if len(lengths) > 1:
            raise ValueError(f"{name}: score dimensions have different lengths {sorted(lengths)}")
        n = lengths.pop() if lengths else 0
        out = np.full((n, len(SCORE_NAMES)), np.nan)
        for j, dim in enumerate(SCORE_NAMES):
            if dim in values:
                out[:, j] = [np.nan if v is None else float(v) for v in values[dim]]
        return out
    if isinstance(values, np.ndarray) and values.dtype != object:
        arr = values.astype(np.float64)
        if arr.ndim != 2 or arr.shape[1] != len(SCORE_NAMES):
            raise ValueError(f"{name}: expected an (N, {len(SCORE_NAMES)}) array in order {list(SCORE_NAMES)}, "
                             f"got shape {arr.shape}")
        return arr
    rows = []
    for i, item in enumerate(values):
        if isinstance(item, Diagnosis):
            item = item.scores
        if isinstance(item, Scores):
            item = item.as_dict()
        if isinstance(item, Mapping):
            unknown = set(item) - set(SCORE_NAMES)
            if unknown:
                raise ValueError(f"{name}[{i}]: unknown score dimension(s) {sorted(unknown)}; use {list(SCORE_NAMES)}")
            rows.append([np.nan if item.get(d) is None else float(item[d]) for d in SCORE_NAMES])
        elif item is None:
            rows.append([np.nan] * len(SCORE_NAMES))
        else:
            row = list(item)
            if len(row) != len(SCORE_NAMES):
                raise ValueError(f"{name}[{i}]: expected {len(SCORE_NAMES)} scores {list(SCORE_NAMES)}, got {len(row)}")
            rows.append([np.nan if v is None else float(v) for v in row])
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(SCORE_NAMES))


def _corr(x: np.ndarray, y: np.ndarray, kind: str) -> float:
    """Pearson or Spearman correlation; nan for fewer than two pairs or a constant side."""
    from scipy import stats

    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = stats.pearsonr(x, y)[0] if kind == "pearson" else stats.spearmanr(x, y)[0]
    return float(r)


def score_correlations(pred: Any, gt: Any) -> dict[str, Any]:
    """PLCC and SRCC between predicted and ground-truth scores, per dimension and averaged.

    ``pred`` and ``gt`` hold N images each (see `_score_matrix` for the accepted shapes).
    Per dimension, pairs whose prediction is missing (None / nan) are left out of the
    correlation but counted in ``n_missing``; pairs whose ground truth is missing are left out
    and counted in ``n_gt_missing``. A correlation over fewer than two pairs, or with a constant
    side, is nan. ``average`` is the mean over dimensions whose value is finite.

    Returns ``{"per_dim": {dim: {"plcc", "srcc", "n", "n_missing", "n_gt_missing"}},
    "average": {"plcc", "srcc"}, "n_images": N}``.
    """
    p = _score_matrix(pred, "pred")
    g = _score_matrix(gt, "gt")
    if p.shape[0] != g.shape[0]:
        raise ValueError(f"pred has {p.shape[0]} images but gt has {g.shape[0]}; pass the same images in the same order")
    if np.isinf(p).any() or np.isinf(g).any():
        raise ValueError("scores must be finite (use None or nan for a missing prediction)")
    per_dim = {}
    for j, dim in enumerate(SCORE_NAMES):
        gt_ok = ~np.isnan(g[:, j])
        pred_ok = ~np.isnan(p[:, j])
        keep = gt_ok & pred_ok
        x, y = p[keep, j], g[keep, j]
        per_dim[dim] = {
            "plcc": _corr(x, y, "pearson"),
            "srcc": _corr(x, y, "spearman"),
            "n": int(keep.sum()),
            "n_missing": int((gt_ok & ~pred_ok).sum()),
            "n_gt_missing": int((~gt_ok).sum()),
        }
    average = {k: _nanmean(d[k] for d in per_dim.values()) for k in ("plcc", "srcc")}
    return {"per_dim": per_dim, "average": average, "n_images": int(p.shape[0])}


def _score_errors(pred: Any, gt: Any) -> np.ndarray:
    """|pred - gt| over the (image, dimension) pairs with a ground truth, nan where nothing (or a
    non-finite value) was written; inputs as in `score_correlations`."""
    p, g = _score_matrix(pred, "pred"), _score_matrix(gt, "gt")
    if p.shape[0] != g.shape[0]:
        raise ValueError(f"pred has {p.shape[0]} images but gt has {g.shape[0]}; pass the same images in the same order")
    return np.abs(p - g)[~np.isnan(g)]  # inf - finite = inf -> treated as unwritten below


def score_mae(pred: Any, gt: Any) -> float:
    """Mean |pred - gt| over every (image, dimension) with a ground truth; a score the model did not
    write counts as 1 (the largest error in [0, 1]). Unlike PLCC it is defined for constant answers,
    so it stays stable on a dozen held-out images. nan when nothing is annotated."""
    err = _score_errors(pred, gt)
    return float(np.where(np.isfinite(err), err, 1.0).mean()) if err.size else float("nan")


def score_mae_written(pred: Any, gt: Any) -> tuple[float, float]:
    """(share of the annotated scores the model wrote, mean |pred - gt| over those it wrote; nan when
    it wrote none). Unlike `score_mae`, the error ignores whether a score was written at all, so a
    run that only learns the format cannot lower it: it measures the values."""
    err = _score_errors(pred, gt)
    if not err.size:
        return float("nan"), float("nan")
    written = err[np.isfinite(err)]
    return written.size / err.size, (float(written.mean()) if written.size else float("nan"))


# ----------------------------------------------------------------------------------------------
# heatmaps
# ----------------------------------------------------------------------------------------------
def resize_map(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float (H, W) map to ``shape`` = (height, width)."""
    arr = np.asarray(arr, dtype=np.float32)
    if arr.shape == tuple(shape):
        return arr
    from PIL import Image

    img = Image.fromarray(arr, mode="F").resize((int(shape[1]), int(shape[0])), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def _check_map(arr: Any, name: str) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"{name}: a heatmap must be a non-empty 2-D (H, W) array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: heatmap has nan or inf values")
    if a.min() < 0 or a.max() > 1:
        raise ValueError(f"{name}: heatmap values must lie in [0, 1] (divide 8-bit maps by 255), "
                         f"got range [{a.min():.4g}, {a.max():.4g}]")
    return a


def map_mse(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean squared error over pixels of two same-shape maps."""
    return float(np.mean((pred - gt) ** 2))


def map_cc(pred: np.ndarray, gt: np.ndarray) -> float:
    """Pearson correlation over pixels; 0 when either map is constant (carries no information)."""
    if np.ptp(pred) == 0 or np.ptp(gt) == 0:
        return 0.0
    p = pred - pred.mean()
    g = gt - gt.mean()
    return float((p * g).sum() / math.sqrt((p * p).sum() * (g * g).sum()))


def map_kld(pred: np.ndarray, gt: np.ndarray, eps: float = EPS) -> float:
    """KL divergence of GT from prediction, both normalised to sum 1: sum g*log(g/(p+eps)+eps)."""
    p = pred / (pred.sum() + eps)
    g = gt / (gt.sum() + eps)
    return float(np.sum(g * np.log(g / (p + eps) + eps)))


def map_sim(pred: np.ndarray, gt: np.ndarray, eps: float = EPS) -> float:
    """Similarity (histogram intersection) of the sum-1 normalised maps: sum min(p, g)."""
    p = pred / (pred.sum() + eps)
    g = gt / (gt.sum() + eps)
    return float(np.minimum(p, g).sum())


def map_nss(pred: np.ndarray, gt: np.ndarray) -> float:
    """Normalised scanpath saliency: mean z-scored prediction over pixels with GT > 0.

    0 for a constant prediction (z-scores undefined, no information); nan when GT is empty.
    """
    fix = gt > 0
    if not fix.any():
        return float("nan")
    std = pred.std()
    if std == 0:
        return 0.0
    z = (pred - pred.mean()) / std
    return float(z[fix].mean())


def map_auc_judd(pred: np.ndarray, gt: np.ndarray) -> float:
    """AUC-Judd with GT binarised at > 0.

    Thresholds are the predicted values at GT pixels; at each threshold t the true-positive rate
    is the fraction of GT pixels with pred >= t and the false-positive rate the fraction of
    non-GT pixels with pred >= t; the curve (0,0)..(1,1) is integrated with the trapezoid rule.
    A constant prediction scores 0.5. nan when GT is empty or covers every pixel.
    """
    fix = gt.ravel() > 0
    n_fix, n_pix = int(fix.sum()), fix.size
    if n_fix == 0 or n_fix == n_pix:
        return float("nan")
    s = pred.ravel()
    thresholds = np.sort(s[fix])[::-1]
    sorted_all = np.sort(s)
    # number of pixels (all, and GT) with value >= each threshold
    above_all = n_pix - np.searchsorted(sorted_all, thresholds, side="left")
    above_fix = n_fix - np.searchsorted(np.sort(s[fix]), thresholds, side="left")
    tp = np.concatenate([[0.0], above_fix / n_fix, [1.0]])
    fp = np.concatenate([[0.0], (above_all - above_fix) / (n_pix - n_fix), [1.0]])
    return float(np.trapezoid(tp, fp) if hasattr(np, "trapezoid") else np.trapz(tp, fp))


def heatmap_metrics(pred: Sequence[Any], gt: Sequence[Any], eps: float = EPS) -> dict[str, Any]:
    """Heatmap metrics over a batch of N images (RichHF authors' conventions).

    ``pred`` and ``gt`` are sequences of N float (H, W) maps in [0, 1] (or an (N, H, W) array).
    A prediction of a different size is resized bilinearly to its GT's size. ``None`` in
    ``pred`` is a missing prediction (skipped, counted in ``n_missing``); ``None`` in ``gt`` is
    an image without annotation (skipped, counted in ``n_gt_missing``).

    - ``mse``: mean over all evaluated images of the per-image pixel MSE.
    - ``mse_gt_empty``: the same over images whose GT is all zero.
    - ``cc``, ``kld``, ``sim``, ``nss``, ``auc_judd``: means over images whose GT is not empty.
    Means over no images are nan.
    """
    if len(pred) != len(gt):
        raise ValueError(f"pred has {len(pred)} heatmaps but gt has {len(gt)}; pass the same images in the same order")
    per = {k: [] for k in ("mse", "mse_gt_empty", "cc", "kld", "sim", "nss", "auc_judd")}
    n_missing = n_gt_missing = n_empty = 0
    for i, (p_raw, g_raw) in enumerate(zip(pred, gt)):
        if g_raw is None:
            n_gt_missing += 1
            continue
        if p_raw is None:
            n_missing += 1
            continue
        g = _check_map(g_raw, f"gt[{i}]")
        p = _check_map(p_raw, f"pred[{i}]")
        if p.shape != g.shape:
            p = np.clip(resize_map(p, g.shape).astype(np.float64), 0.0, 1.0)
        mse = map_mse(p, g)
        per["mse"].append(mse)
        if not (g > 0).any():
            n_empty += 1
            per["mse_gt_empty"].append(mse)
            continue
        per["cc"].append(map_cc(p, g))
        per["kld"].append(map_kld(p, g, eps))
        per["sim"].append(map_sim(p, g, eps))
        per["nss"].append(map_nss(p, g))
        per["auc_judd"].append(map_auc_judd(p, g))
    out: dict[str, Any] = {k: _nanmean(v) for k, v in per.items()}
    out.update(n=len(per["mse"]), n_gt_empty=n_empty, n_gt_nonempty=len(per["cc"]), n_missing=n_missing,
               n_gt_missing=n_gt_missing)
    return out


# ----------------------------------------------------------------------------------------------
# structured defects (SDG-Eval)
# ----------------------------------------------------------------------------------------------
def match_boxes(pred_boxes: Sequence[Sequence[float]], gt_boxes: Sequence[Sequence[float]],
                matching: str = "hungarian", min_iou: float = 0.0) -> list[tuple[int, int, float]]:
    """One-to-one matches ``(pred_index, gt_index, iou)`` between two lists of xyxy boxes.

    - ``"hungarian"`` (SDG paper): optimal assignment minimising the summed cost 1 - DIoU, then
      pairs with IoU < ``min_iou`` are dropped.
    - ``"greedy"`` (SDG released evaluator): all pairs sorted by descending IoU, a pair is taken
      when both boxes are still free and IoU >= ``min_iou`` (pairs with IoU 0 are never taken).
    """
    if matching not in MATCHINGS:
        raise ValueError(f"unknown matching {matching!r}; use one of {list(MATCHINGS)}")
    if not len(pred_boxes) or not len(gt_boxes):
        return []
    ious = pairwise(iou, pred_boxes, gt_boxes)
    if matching == "hungarian":
        from scipy.optimize import linear_sum_assignment

        cost = 1.0 - pairwise(diou, pred_boxes, gt_boxes)
        rows, cols = linear_sum_assignment(cost)
        pairs = [(int(r), int(c), float(ious[r, c])) for r, c in zip(rows, cols)]
        return [m for m in pairs if m[2] >= min_iou and m[2] > 0]
    order = sorted(((ious[i, j], i, j) for i in range(ious.shape[0]) for j in range(ious.shape[1])),
                   key=lambda t: (-t[0], t[1], t[2]))
    used_p, used_g, out = set(), set(), []
    for value, i, j in order:
        if value <= 0 or value < min_iou:
            break
        if i in used_p or j in used_g:
            continue
        used_p.add(i)
        used_g.add(j)
        out.append((int(i), int(j), float(value)))
    return out


def impacc_bucket(importance: float | None, buckets: str | Sequence = "three") -> str | None:
    """Bucket name of an importance value (1-100) for ImpAcc; None when importance is None.

    ``buckets="three"`` uses `IMPACC_BUCKETS` (negligible 1-39, moderate 40-69, critical 70-100);
    ``"sdg5"`` the five SDG buckets; or pass a sequence of ``(name, low, high)``.
    """
    if importance is None:
        return None
    table = {"three": IMPACC_BUCKETS, "sdg5": SDG5_BUCKETS}.get(buckets, buckets) if isinstance(buckets, str) else buckets
    if isinstance(table, str):
        raise ValueError(f"unknown importance buckets {buckets!r}; use 'three', 'sdg5' or a list of (name, low, high)")
    value = min(max(int(round(float(importance))), 1), 100)
    for name, low, high in table:
        if low <= value <= high:
            return name
    raise ValueError(f"importance {importance} falls in no bucket of {list(table)}")


def _defects_of(d: Any, name: str, i: int) -> list[Defect]:
    if isinstance(d, Diagnosis):
        return list(d.defects)
    if isinstance(d, (list, tuple)):
        return [x if isinstance(x, Defect) else Defect.from_dict(x) for x in d]
    raise ValueError(f"{name}[{i}]: expected a Diagnosis or a list of defects, got {type(d).__name__}")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(np.dot(a, b) / (na * nb)) if na > 0 and nb > 0 else 0.0


def sdg_eval(
    pred: Sequence[Any],
    gt: Sequence[Any],
    matching: str = "hungarian",
    thresholds: Sequence[float] = (0.1, 0.5),
    attr_threshold: float = 0.1,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    buckets: str | Sequence = "three",
    protocol: str = "pixel",
    desc_iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """SDG-Eval over a data set of N images.

    ``protocol="sdg-release"`` delegates to `sdg_eval_release` (the released evaluator's numbers;
    ``thresholds``, ``embed`` and ``desc_iou_threshold`` apply, ``matching``/``attr_threshold``/
    ``buckets`` do not). The rest of this docstring is the ``"pixel"`` protocol.

    ``pred[i]`` and ``gt[i]`` are `Diagnosis` objects (or lists of `Defect`) for the same image,
    with boxes in the same pixel frame. ``pred[i] = None`` is a missing prediction: it is
    counted in ``n_missing`` and scored as "no defects".

    - ``box_f1[t]``: for each IoU threshold t, per label and overall, micro-averaged over the
      data set: matches are made within the same label with ``matching``; TP = matches with
      IoU >= t; precision = TP / #pred, recall = TP / #gt, F1 = 2 TP / (#pred + #gt).
    - ``det_type_f1``: per label, image-level F1 of "the image has at least one defect of this
      label" (pred vs GT); ``overall`` is the macro mean of the two labels.
    - ``cln_acc``: over images whose GT has no defect, the fraction predicted with no defect.
    - ``imp_acc``: over matches at IoU >= ``attr_threshold``, the fraction whose predicted and
      GT importance fall in the same bucket (`impacc_bucket`); pairs without importance on
      either side are skipped and counted.
    - ``desc_cos``: when ``embed`` (list of strings -> (n, d) array) is given, the mean cosine
      similarity of the embedded descriptions of the same matches.
    """
    if protocol not in SDG_PROTOCOLS:
        raise ValueError(f"unknown SDG-Eval protocol {protocol!r}; use one of {list(SDG_PROTOCOLS)}")
    if protocol == "sdg-release":
        return sdg_eval_release(pred, gt, thresholds=thresholds, desc_iou_threshold=desc_iou_threshold, embed=embed)
    if matching not in MATCHINGS:
        raise ValueError(f"unknown matching {matching!r}; use one of {list(MATCHINGS)}")
    if len(pred) != len(gt):
        raise ValueError(f"pred has {len(pred)} images but gt has {len(gt)}; pass the same images in the same order")
    thresholds = [float(t) for t in thresholds]
    for t in thresholds + [float(attr_threshold)]:
        if not 0.0 < t <= 1.0:
            raise ValueError(f"IoU thresholds must be in (0, 1], got {t}")
    counts = {t: {lab: [0, 0, 0] for lab in LABELS} for t in thresholds}  # tp, n_pred, n_gt
    det = {lab: [0, 0, 0] for lab in LABELS}  # tp, n_pred_pos, n_gt_pos (image level)
    clean_total = clean_ok = n_missing = 0
    imp_pairs, imp_skipped, desc_pairs = [], 0, []
    for i, (p_raw, g_raw) in enumerate(zip(pred, gt)):
        if g_raw is None:
            raise ValueError(f"gt[{i}] is None; every image needs ground truth (an empty defect list means clean)")
        if p_raw is None:
            n_missing += 1
            p_defects = []
        else:
            p_defects = _defects_of(p_raw, "pred", i)
        g_defects = _defects_of(g_raw, "gt", i)
        if not g_defects:
            clean_total += 1
            clean_ok += int(not p_defects)
        for lab in LABELS:
            pl = [d for d in p_defects if d.label == lab]
            gl = [d for d in g_defects if d.label == lab]
            det[lab][0] += int(bool(pl) and bool(gl))
            det[lab][1] += int(bool(pl))
            det[lab][2] += int(bool(gl))
            matches = match_boxes([d.box for d in pl], [d.box for d in gl], matching)
            for t in thresholds:
                c = counts[t][lab]
                c[0] += sum(1 for m in matches if m[2] >= t)
                c[1] += len(pl)
                c[2] += len(gl)
            for pi, gi, value in matches:
                if value < attr_threshold:
                    continue
                pd, gd = pl[pi], gl[gi]
                if pd.importance is None or gd.importance is None:
                    imp_skipped += 1
                else:
                    imp_pairs.append((pd.importance, gd.importance))
                desc_pairs.append((pd.reason, gd.reason))
    box_f1 = {}
    for t in thresholds:
        per_label = {lab: _f1(*counts[t][lab]) for lab in LABELS}
        total = [sum(counts[t][lab][k] for lab in LABELS) for k in range(3)]
        box_f1[f"{t:g}"] = {"per_label": per_label, "overall": _f1(*total)}
    det_per = {lab: _f1(*det[lab]) for lab in LABELS}
    imp_hits = sum(impacc_bucket(a, buckets) == impacc_bucket(b, buckets) for a, b in imp_pairs)
    result: dict[str, Any] = {
        "protocol": "pixel",
        "matching": matching,
        "n_images": len(gt),
        "n_missing": n_missing,
        "box_f1": box_f1,
        "det_type_f1": {"per_label": det_per, "overall": _nanmean(d["f1"] for d in det_per.values())},
        "cln_acc": clean_ok / clean_total if clean_total else float("nan"),
        "n_clean": clean_total,
        "imp_acc": imp_hits / len(imp_pairs) if imp_pairs else float("nan"),
        "imp_pairs": len(imp_pairs),
        "imp_skipped": imp_skipped,
        "imp_buckets": buckets if isinstance(buckets, str) else [list(b) for b in buckets],
        "attr_threshold": float(attr_threshold),
        "desc_cos": float("nan"),
        "desc_pairs": len(desc_pairs),
    }
    if embed is not None:
        result["desc_cos"] = desc_cos(desc_pairs, embed)
    return result


def desc_cos(pairs: Sequence[tuple[str, str]], embed: Callable[[list[str]], np.ndarray]) -> float:
    """Mean cosine similarity of ``embed(pred_text)`` and ``embed(gt_text)`` over ``pairs``.

    ``embed`` maps a list of n strings to an (n, d) array. nan for no pairs; a pair where either
    embedding is the zero vector scores 0.
    """
    if not pairs:
        return float("nan")
    texts = [p for p, _ in pairs] + [g for _, g in pairs]
    vecs = np.asarray(embed(texts), dtype=np.float64)
    if vecs.ndim != 2 or vecs.shape[0] != len(texts):
        raise ValueError(f"embed must return an (n, d) array for n={len(texts)} strings, got shape {vecs.shape}")
    n = len(pairs)
    return float(np.mean([_cosine(vecs[k], vecs[n + k]) for k in range(n)]))


def sentence_transformer_embedder(model_name: str = "sentence-transformers/all-MiniLM-L6-v2",
                                  device: str | None = None) -> Callable[[list[str]], np.ndarray]:
    """An ``embed`` function for `sdg_eval` backed by sentence-transformers (if installed)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise ValueError("DescCos needs the optional package sentence-transformers "
                         "(pip install sentence-transformers) or your own embed function") from exc
    model = SentenceTransformer(model_name, device=device)

    def embed(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(list(texts), convert_to_numpy=True))

    return embed


# ----------------------------------------------------------------------------------------------
# SDG-Eval as released (protocol "sdg-release")
# ----------------------------------------------------------------------------------------------
#: Labels the released evaluator reports per label (others are pooled into "overall" only).
RELEASE_LABELS = ("artifact", "misalignment")
_RELEASE_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S)
_RELEASE_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.S)


def _release_items(text: str) -> list[dict] | None:
    """A JSON (else Python-literal) list, keeping dicts with ``box_2d`` and ``label``; a non-list
    value is an empty list; None when neither parser reads it; an empty text is an empty list."""
    text = text.strip()
    if not text:
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = ast.literal_eval(text)
        except Exception:  # literal_eval raises many types on arbitrary text
            return None
    if not isinstance(data, list):
        return []
    return [b for b in data if isinstance(b, dict) and "box_2d" in b and "label" in b]


def sdg_release_parse(response: Any) -> list[dict] | None:
    """Defect items of a raw SDG response, read as the released evaluator reads them; None = parse
    failure (scored as "predicted clean").

    Tried in order: the first ``<answer>`` block (a ```` ``` ```` fence inside it stripped), the first
    ```` ``` ```` block of the response, the whole response when it starts with ``[``. Boxes are kept as
    written: reversed, zero-area and out-of-range boxes stay, nothing is clamped or reordered, and
    labels and importance are not normalised.
    """
    if not response or not isinstance(response, str):
        return None
    m = _RELEASE_ANSWER.search(response)
    if m:
        body = m.group(1).strip()
        fence = _RELEASE_FENCE.search(body)
        items = _release_items(fence.group(1).strip() if fence else body)
        if items is not None:
            return items
    fence = _RELEASE_FENCE.search(response)
    if fence:
        items = _release_items(fence.group(1).strip())
        if items is not None:
            return items
    stripped = response.strip()
    if stripped.startswith("["):
        return _release_items(stripped)
    return None


def _is_box(box: Any) -> bool:
    return isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)


def release_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU on raw coordinates: areas not clamped (a reversed box has a signed area), 0 when the
    union is <= 0."""
    inter = max(0, min(a[3], b[3]) - max(a[1], b[1])) * max(0, min(a[2], b[2]) - max(a[0], b[0]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def release_labels_match(pred_label: Any, gt_label: Any) -> bool:
    """Equal labels match; "both" on one side matches "artifact" or "misalignment" on the other."""
    if pred_label == gt_label:
        return True
    return (pred_label == "both" and gt_label in RELEASE_LABELS) or (gt_label == "both" and pred_label in RELEASE_LABELS)


def release_match(gt: Sequence[dict], pred: Sequence[dict], threshold: float) -> tuple[list[tuple[int, int, float]],
                                                                                        list[int], list[int]]:
    """Greedy one-to-one matching: all (IoU, pred index, GT index) with IoU >= ``threshold``, taken
    in descending order of that triple (equal IoUs: higher prediction index first, then higher GT
    index) when both are free and `release_labels_match`; a label mismatch skips the pair and
    leaves both free. A box that is not 4 numbers matches nothing. Returns (matches as
    (pred, gt, iou), unmatched pred indices, unmatched GT indices).
    """
    triples = []
    for pi, p in enumerate(pred):
        for gi, g in enumerate(gt):
            if _is_box(p.get("box_2d")) and _is_box(g.get("box_2d")):
                value = release_iou(p["box_2d"], g["box_2d"])
                if value >= threshold:
                    triples.append((value, pi, gi))
    triples.sort(reverse=True)
    used_p, used_g, matches = set(), set(), []
    for value, pi, gi in triples:
        if pi in used_p or gi in used_g:
            continue
        if release_labels_match(pred[pi].get("label", ""), gt[gi].get("label", "")):
            used_p.add(pi)
            used_g.add(gi)
            matches.append((pi, gi, float(value)))
    unmatched_p = [i for i, p in enumerate(pred) if "box_2d" in p and i not in used_p]
    unmatched_g = [i for i, g in enumerate(gt) if "box_2d" in g and i not in used_g]
    return matches, unmatched_p, unmatched_g


def _prf(tp: int, fp: int, fn: int) -> dict[str, Any]:
    """Precision, recall and F1 = 2PR/(P+R), each 0 when undefined (the released convention)."""
    p = tp / (tp + fp) if tp + fp > 0 else 0.0
    r = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"precision": p, "recall": r, "f1": f1, "tp": int(tp), "fp": int(fp), "fn": int(fn)}


def desc_token_f1(gt_desc: Any, pred_desc: Any) -> float:
    """The released evaluator's zero-dependency description similarity: token F1 after lower-casing
    and dropping tags and non-alphanumerics (both empty: 1; one empty: 0)."""
    def tokens(text: Any) -> list[str]:
        if not isinstance(text, str):
            return []
        text = re.sub(r"<[^>]+>", " ", text.lower().strip())
        return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9\s]+", " ", text)).strip().split()

    g, p = tokens(gt_desc), tokens(pred_desc)
    if not g and not p:
        return 1.0
    if not g or not p:
        return 0.0
    from collections import Counter

    gc, pc = Counter(g), Counter(p)
    overlap = sum(min(gc[t], pc[t]) for t in gc.keys() & pc.keys())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(p), overlap / len(g)
    return 2 * precision * recall / (precision + recall)


def _snap_norm(v: float) -> float:
    r = round(v)
    return float(r) if abs(v - r) < 1e-6 else float(v)


def diagnosis_to_sdg_items(d: Diagnosis) -> list[dict]:
    """A `Diagnosis`' defects as SDG items in the 0-1000 ``[x0, y0, x1, y1]`` frame (values within
    1e-6 of an integer are snapped, undoing the pixel round trip of integer ground truth)."""
    from .geometry import Frame

    frame = Frame.norm1000()
    return [{"box_2d": [_snap_norm(v) for v in frame.from_pixels(x.box, d.width, d.height)], "label": x.label,
             "description": x.reason, "importance": x.importance} for x in d.defects]


def _release_pred(p: Any, i: int) -> list[dict] | None:
    if p is None or isinstance(p, str):
        return sdg_release_parse(p)
    if isinstance(p, Diagnosis):
        if p.format == "sdg" and p.raw_text:
            return sdg_release_parse(p.raw_text)
        return diagnosis_to_sdg_items(p)
    if isinstance(p, list) and all(isinstance(x, dict) for x in p):
        return [x for x in p if "box_2d" in x and "label" in x]
    raise ValueError(f"pred[{i}]: the sdg-release protocol takes a raw response string, a Diagnosis or a list of "
                     f"SDG item dicts, got {type(p).__name__}")


def _release_gt(g: Any, i: int) -> list[dict]:
    if isinstance(g, Diagnosis):
        return diagnosis_to_sdg_items(g)
    if isinstance(g, list) and all(isinstance(x, dict) for x in g):
        return list(g)
    raise ValueError(f"gt[{i}]: the sdg-release protocol takes a Diagnosis or a list of SDG item dicts "
                     f"(box_2d, label, description), got {type(g).__name__}")


def sdg_eval_release(
    pred: Sequence[Any],
    gt: Sequence[Any],
    thresholds: Sequence[float] = (0.1, 0.5),
    desc_iou_threshold: float = 0.5,
    embed: Callable[[list[str]], np.ndarray] | None = None,
) -> dict[str, Any]:
    """SDG-Eval exactly as the SDG authors' released evaluator computes it.

    ``pred[i]``: the raw response text (parsed by `sdg_release_parse`), a `Diagnosis` (its raw text
    when it is an SDG output, else its defects in 0-1000), a list of item dicts, or None (missing:
    a parse failure). ``gt[i]``: a list of item dicts (``box_2d`` in the same frame and order as
    the predictions, ``label``, ``description``) or a ground-truth `Diagnosis` (converted to
    0-1000 ``[x0, y0, x1, y1]``). A parse failure counts as "predicted clean".

    - ``box_f1[t]``: `release_match` at IoU t per image; a match is a TP under its GT label, an
      unmatched prediction an FP under its own label, an unmatched GT box an FN under its label;
      per label (artifact, misalignment) and ``overall`` pooled over all labels; P, R, F1 each 0
      when undefined.
    - ``det_type_f1``: per label, image level: an image "has" label L when any of its boxes is L or
      "both" (GT and prediction alike). ``overall`` is the image-level any-defect F1.
    - ``cln_acc``: TN / (TN + FP) of the image-level any-defect table (nan without clean GT images).
    - ``desc_cos``: `release_match` at ``desc_iou_threshold``; mean over all matched pairs of the
      cosine of L2-normalised ``embed`` vectors of the two descriptions (``description``, else
      ``desc``, non-strings as ""); 0 without pairs, nan without ``embed``. ``desc_token_f1``: the
      same pairs scored with `desc_token_f1`.
    - ``imp_acc`` is nan: the released evaluator has no ImpAcc.
    """
    if len(pred) != len(gt):
        raise ValueError(f"pred has {len(pred)} images but gt has {len(gt)}; pass the same images in the same order")
    thresholds = [float(t) for t in thresholds]
    for t in thresholds + [float(desc_iou_threshold)]:
        if not 0.0 < t <= 1.0:
            raise ValueError(f"IoU thresholds must be in (0, 1], got {t}")
    preds, gts = [], []
    n_missing = n_fail = 0
    for i, (p, g) in enumerate(zip(pred, gt)):
        if g is None:
            raise ValueError(f"gt[{i}] is None; every image needs ground truth (an empty list means clean)")
        n_missing += p is None
        items = _release_pred(p, i)
        n_fail += items is None
        preds.append(items)
        gts.append(_release_gt(g, i))
    malformed = sum(1 for items in preds + gts for x in (items or []) if "box_2d" in x and not _is_box(x["box_2d"]))

    box_f1 = {}
    for t in thresholds:
        per: dict[Any, list[int]] = {}
        for items, g in zip(preds, gts):
            p = items or []
            matches, up, ug = release_match(g, p, t)
            for _, gi, _ in matches:
                per.setdefault(_key(g[gi].get("label", "")), [0, 0, 0])[0] += 1
            for pi in up:
                per.setdefault(_key(p[pi].get("label", "unknown")), [0, 0, 0])[1] += 1
            for gi in ug:
                per.setdefault(_key(g[gi].get("label", "unknown")), [0, 0, 0])[2] += 1
        total = [sum(c[k] for c in per.values()) for k in range(3)]
        box_f1[f"{t:g}"] = {"per_label": {lab: _prf(*per.get(lab, [0, 0, 0])) for lab in RELEASE_LABELS},
                            "overall": _prf(*total)}

    def has(items: list[dict] | None, label: str | None) -> bool:
        if items is None:
            return False
        if label is None:
            return len(items) > 0
        return any(x.get("label") == label or x.get("label") == "both" for x in items)

    def table(label: str | None) -> dict[str, Any]:
        tp = fp = fn = tn = 0
        for items, g in zip(preds, gts):
            gh, ph = has(g, label), has(items, label)
            tp += gh and ph
            fn += gh and not ph
            fp += ph and not gh
            tn += not gh and not ph
        out = _prf(tp, fp, fn)
        out["tn"] = int(tn)
        out["accuracy"] = (tp + tn) / (tp + fp + fn + tn) if preds else 0.0
        return out

    image_level = table(None)
    det = {lab: table(lab) for lab in RELEASE_LABELS}
    n_clean = image_level["tn"] + image_level["fp"]

    sims_tok, pairs = [], []
    for items, g in zip(preds, gts):
        p = items or []
        for pi, gi, _ in release_match(g, p, float(desc_iou_threshold))[0]:
            gd = g[gi].get("description", "") or g[gi].get("desc", "")
            pd = p[pi].get("description", "") or p[pi].get("desc", "")
            gd, pd = (gd if isinstance(gd, str) else ""), (pd if isinstance(pd, str) else "")
            pairs.append((gd, pd))
            sims_tok.append(desc_token_f1(gd, pd))
    desc = float("nan")
    if embed is not None:
        desc = 0.0
        if pairs:
            texts = sorted({t for pair in pairs for t in pair})
            vecs = np.asarray(embed(texts), dtype=np.float64)
            if vecs.ndim != 2 or vecs.shape[0] != len(texts):
                raise ValueError(f"embed must return an (n, d) array for n={len(texts)} strings, got shape {vecs.shape}")
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
            row = {t: vecs[k] for k, t in enumerate(texts)}
            desc = float(np.mean([float(np.dot(row[a], row[b])) for a, b in pairs]))
    return {
        "protocol": "sdg-release",
        "matching": "greedy IoU, labels equal or 'both' (released evaluator)",
        "n_images": len(gts),
        "n_missing": int(n_missing),
        "n_parse_failures": int(n_fail),
        "n_malformed_boxes": int(malformed),
        "box_f1": box_f1,
        "det_type_f1": {"per_label": det, "overall": image_level["f1"]},
        "image_level": image_level,
        "cln_acc": image_level["tn"] / n_clean if n_clean else float("nan"),
        "n_clean": int(n_clean),
        "imp_acc": float("nan"),
        "imp_pairs": 0,
        "imp_skipped": 0,
        "imp_buckets": None,
        "desc_iou_threshold": float(desc_iou_threshold),
        "desc_cos": desc,
        "desc_pairs": len(pairs),
        "desc_token_f1": float(np.mean(sims_tok)) if sims_tok else 0.0,
    }


def _key(label: Any) -> Any:
    """Labels index the per-label counts as written (unhashable ones by their text)."""
    try:
        hash(label)
        return label
    except TypeError:
        return str(label)


def mean_pool_embedder(model_name: str = "Qwen/Qwen3-Embedding-0.6B", max_length: int = 256, batch_size: int = 32,
                       device: str | None = None) -> Callable[[list[str]], np.ndarray]:
    """An ``embed`` function as the SDG authors' evaluator and GRPO reward compute DescCos: a
    transformers encoder's last hidden states mean-pooled over the attention mask (texts truncated
    to ``max_length`` tokens), L2-normalised. ``model_name`` is a local folder or a cached hub id
    (fp16 on CUDA, fp32 on CPU)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    model = AutoModel.from_pretrained(model_name, dtype=torch.float16 if str(device).startswith("cuda")
                                      else torch.float32).to(device).eval()

    @torch.no_grad()
    def embed(texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt").to(device)
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    return embed
