"""Best-of-N selection: rank a batch of diagnosed images.

`best_of_n` turns one `Diagnosis` per image into a `Ranking` (indices best first, the value
each image was ranked by, and a text table). Three criteria:

``overall``
    ``value = overall``. When the model gave no overall score, the mean of the scores it did
    give is used instead (and the table says so); an image with no score at all ranks last.

``weighted``
    ``value = sum_k w_k * s_k / sum_k w_k`` over the four scores ``k`` (alignment, aesthetics,
    plausibility, overall) that are present; missing scores drop out and the remaining weights
    are renormalised. Default weights are all 1 (a plain mean). Negative weights are refused.

``defect_penalty``
    ``value = base - penalty * load`` where ``base`` is the ``overall`` value above and
    ``load = sum_d importance_d / 100`` over the image's defects (a defect without importance
    counts `DEFAULT_IMPORTANCE`), i.e. a critical defect (importance 100) costs ``penalty``.

Ties are broken deterministically: higher value first, then lower defect load, then lower
batch index. NaN never reaches the ordering (missing values rank last, by index).

`BestOfN` is the result of the two-stage selection (`Diagnoser.best_of_n`): every image ranked
by a score-only ("fast") diagnosis with `best_of_n`, then full diagnoses for the top K only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .diagnosis import SCORE_NAMES, Diagnosis

CRITERIA = ("overall", "weighted", "defect_penalty")
DEFAULT_PENALTY = 0.1


@dataclass
class Ranking:
    """Result of `best_of_n`."""

    order: list[int]  # batch indices, best first (all of them)
    values: list[float]  # per image (batch order): the value it was ranked by (-inf = unscored)
    loads: list[float]  # per image: defect load sum(importance)/100
    criterion: str
    top_k: list[int] = field(default_factory=list)  # the first k of `order`
    table: str = ""

    @property
    def best(self) -> int:
        return self.order[0]

    def rank_of(self, index: int) -> int:
        """1-based rank of batch image ``index``."""
        return self.order.index(index) + 1


@dataclass
class BestOfN:
    """Two-stage best-of-N: fast (score-only) diagnoses of all N images, full ones of the top K.

    order: all N batch indices, best first, by the fast diagnoses (`best_of_n` rules: an image
    whose fast answer had no score ranks after every scored one, by index). fast: the N fast
    diagnoses, batch order. full: batch index -> full diagnosis (boxes, reasons, heatmaps) for the
    first K of ``order``. ranking: the fast `Ranking` (values, table).
    """

    order: list[int]
    fast: list[Diagnosis]
    full: dict[int, Diagnosis]
    ranking: Ranking

    @property
    def best(self) -> int:
        return self.order[0]

    @property
    def top_k(self) -> list[int]:
        """The fully diagnosed indices, best first."""
        return [i for i in self.order if i in self.full]

    @property
    def unscored(self) -> list[int]:
        """Indices whose fast diagnosis carried no usable score (ranked last)."""
        return [i for i, v in enumerate(self.ranking.values) if v == -math.inf]

    def diagnoses(self) -> list[Diagnosis]:
        """One diagnosis per image, batch order: the full one for the top K, the fast one otherwise."""
        return [self.full.get(i, d) for i, d in enumerate(self.fast)]


def defect_load(diagnosis: Diagnosis, min_importance: int = 0) -> float:
    """``sum(importance) / 100`` over the defects (missing importance = DEFAULT_IMPORTANCE)."""
    return sum(d.importance_or() for d in diagnosis.defects_of(None, min_importance)) / 100.0


def _base(diagnosis: Diagnosis) -> tuple[float | None, str]:
    present = diagnosis.scores.present()
    if "overall" in present:
        return present["overall"], ""
    if present:
        return sum(present.values()) / len(present), "no overall score: mean of the others"
    return None, "no scores"


def _check_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    if weights is None:
        return {name: 1.0 for name in SCORE_NAMES}
    unknown = set(weights) - set(SCORE_NAMES)
    if unknown:
        raise ValueError(f"unknown score name(s) in weights: {sorted(unknown)}; use {list(SCORE_NAMES)}")
    out = {name: float(weights.get(name, 0.0)) for name in SCORE_NAMES}
    for name, w in out.items():
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weight for {name!r} must be a finite number >= 0, got {w}")
    if sum(out.values()) <= 0:
        raise ValueError("at least one weight must be > 0")
    return out


def score_value(
    diagnosis: Diagnosis,
    criterion: str = "overall",
    weights: Mapping[str, float] | None = None,
    penalty: float = DEFAULT_PENALTY,
) -> tuple[float | None, str]:
    """The value `best_of_n` ranks by (None when it cannot be computed) and a note."""
    if criterion == "overall":
        return _base(diagnosis)
    if criterion == "weighted":
        w = _check_weights(weights)
        present = {k: v for k, v in diagnosis.scores.present().items() if w[k] > 0}
        if not present:
            return None, "no weighted score present"
        total = sum(w[k] for k in present)
        note = "" if len(present) == sum(1 for v in w.values() if v > 0) else "some weighted scores missing"
        return sum(w[k] * v for k, v in present.items()) / total, note
    if criterion == "defect_penalty":
        if not math.isfinite(float(penalty)) or penalty < 0:
            raise ValueError(f"penalty must be a finite number >= 0, got {penalty}")
        base, note = _base(diagnosis)
        if base is None:
            return None, note
        return base - float(penalty) * defect_load(diagnosis), note
    raise ValueError(f"unknown criterion {criterion!r}; use one of {list(CRITERIA)}")


def best_of_n(
    diagnoses: Sequence[Diagnosis],
    criterion: str = "overall",
    weights: Mapping[str, float] | None = None,
    penalty: float = DEFAULT_PENALTY,
    top_k: int = 1,
) -> Ranking:
    """Rank ``diagnoses`` (one per batch image) by ``criterion``; see the module docstring."""
    diagnoses = list(diagnoses)
    if not diagnoses:
        raise ValueError("best_of_n needs at least one diagnosis (got an empty batch)")
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; use one of {list(CRITERIA)}")
    top_k = int(top_k)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    values, notes, loads = [], [], []
    for d in diagnoses:
        if not isinstance(d, Diagnosis):
            raise TypeError(f"best_of_n expects Diagnosis objects, got {type(d).__name__}")
        v, note = score_value(d, criterion, weights, penalty)
        values.append(-math.inf if v is None else float(v))
        notes.append(note)
        loads.append(defect_load(d))
    order = sorted(range(len(diagnoses)), key=lambda i: (-values[i], loads[i], i))
    k = min(top_k, len(order))
    ranking = Ranking(order=order, values=values, loads=loads, criterion=criterion, top_k=order[:k])
    ranking.table = format_table(diagnoses, ranking, notes)
    return ranking


def _fmt(v: float | None) -> str:
    return "  -  " if v is None else f"{v:.3f}"


def format_table(diagnoses: Sequence[Diagnosis], ranking: Ranking, notes: Sequence[str] | None = None) -> str:
    """Plain-text table, rank order: rank, index, value, the four scores, defects, load, note."""
    head = f"{'rank':>4} {'idx':>4} {ranking.criterion:>14} " + " ".join(f"{n[:6]:>6}" for n in SCORE_NAMES)
    head += f" {'defects':>7} {'load':>5}  note"
    lines = [head]
    for rank, i in enumerate(ranking.order, 1):
        d = diagnoses[i]
        v = ranking.values[i]
        val = "   unscored" if v == -math.inf else f"{v:.4f}"
        row = f"{rank:>4} {i:>4} {val:>14} " + " ".join(f"{_fmt(d.scores[n]):>6}" for n in SCORE_NAMES)
        row += f" {len(d.defects):>7} {ranking.loads[i]:>5.2f}  {(notes[i] if notes else '')}"
        lines.append(row.rstrip())
    return "\n".join(lines)


def scores_table(diagnoses: Sequence[Diagnosis]) -> str:
    """Per-image scores table in batch order (what the Diagnose node outputs as STRING)."""
    lines = [f"{'idx':>4} " + " ".join(f"{n:>12}" for n in SCORE_NAMES) + f" {'defects':>7}  problems"]
    for i, d in enumerate(diagnoses):
        row = f"{i:>4} " + " ".join(f"{_fmt(d.scores[n]):>12}" for n in SCORE_NAMES)
        row += f" {len(d.defects):>7}  {'; '.join(d.problems)}"
        lines.append(row.rstrip())
    return "\n".join(lines)
