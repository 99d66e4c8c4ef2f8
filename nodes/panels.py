"""What the web extension (web/imagedoctor.js) draws under a node: small JSON-able dicts sent in
the node's UI output under the key ``imagedoctor``, one per run, and kept in ComfyUI's history so
they come back after a page reload. Plain data only (no numpy)."""

from __future__ import annotations

import math
from typing import Sequence

from ..core.diagnosis import SCORE_NAMES, Diagnosis

UI_KEY = "imagedoctor"
MAX_DEFECTS = 32  # per image: the panel is a summary, the DIAGNOSIS output has them all
MAX_REASON = 240


def _score(v) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else round(float(v), 4)


def _defects(d: Diagnosis) -> list[dict]:
    ranked = sorted(d.defects, key=lambda x: -x.importance_or())[:MAX_DEFECTS]
    return [{"label": x.label, "importance": x.importance, "reason": x.reason[:MAX_REASON]} for x in ranked]


def diagnose_panel(diags: Sequence[Diagnosis], fmt: str, mode: str, full: Sequence[bool] | None = None,
                   order: Sequence[int] | None = None) -> dict:
    """Scores and defects per image; ``full[i]`` False marks a scores-only diagnosis."""
    full = list(full) if full is not None else [True] * len(diags)
    images = []
    for i, d in enumerate(diags):
        images.append({
            "index": i,
            "scores": {n: _score(d.scores[n]) for n in SCORE_NAMES},
            "defects": _defects(d) if full[i] else [],
            "n_defects": len(d.defects),
            "problems": list(d.problems)[:4],
            "full": bool(full[i]),
        })
    panel = {"kind": "diagnose", "format": fmt, "mode": mode, "images": images}
    if order is not None:
        panel["order"] = [int(i) for i in order]
    return panel


def ranking_panel(ranking, diags: Sequence[Diagnosis], notes: Sequence[str] | None = None) -> dict:
    """Best of N: rows in rank order."""
    rows = []
    for rank, i in enumerate(ranking.order, 1):
        d = diags[i]
        v = ranking.values[i]
        rows.append({
            "rank": rank, "index": int(i), "value": None if v == -math.inf else round(float(v), 4),
            "scores": {n: _score(d.scores[n]) for n in SCORE_NAMES},
            "defects": len(d.defects), "load": round(float(ranking.loads[i]), 3),
        })
    return {"kind": "ranking", "criterion": ranking.criterion, "top_k": [int(i) for i in ranking.top_k], "rows": rows}


def refine_panel(steps: Sequence[dict], score: str, summary: Sequence[dict]) -> dict:
    """Refine Defects: one row per tried region (score before/after, verdict), one summary per image."""
    return {"kind": "refine", "score": score, "steps": list(steps), "images": list(summary)}


def saved_panel(path: str, count: int) -> dict:
    return {"kind": "saved", "path": path, "count": int(count)}


def ui(panel: dict, images: list | None = None, text: str | None = None) -> dict:
    out = {UI_KEY: [panel]}
    if images:
        out["images"] = images
    if text is not None:
        out["text"] = [text]  # other packs' text viewers draw this
    return out
