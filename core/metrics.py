"""Evaluation metrics of the two papers, as plain functions on numpy arrays.

- `score_correlations`: PLCC / SRCC per score dimension and averaged (ImageDoctor, RichHF-18K).
- `heatmap_metrics`: MSE, CC, KLD, SIM, NSS, AUC-Judd over a batch of heatmaps (RichHF authors'
  conventions; sources in docs/provenance.md).
- `sdg_eval`: BoxF1@0.1 / BoxF1@0.5 per label and overall, DetTypeF1, ClnAcc, ImpAcc and DescCos
  over a data set of `Diagnosis` objects (SDG-Eval), with Hungarian-on-(1 - DIoU) or greedy-IoU
  matching.

Conventions shared by all functions:

- Undefined values (a correlation over fewer than two pairs, an F1 with nothing on either side)
  are ``nan`` in the returned dicts; `to_jsonable` turns them into ``None``.
- Heatmaps are float arrays in [0, 1] of shape (H, W); a prediction of a different size is
  resized (bilinear) to the ground truth's size first.
- Inputs are validated; a bad input raises ``ValueError`` naming it and saying how to fix it.
"""

from __future__ import annotations

import math
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
) -> dict[str, Any]:
    """SDG-Eval over a data set of N images.

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
