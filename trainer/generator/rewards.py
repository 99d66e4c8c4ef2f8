"""Rewards for generator training, as plain functions.

A *reward function* has the signature ``reward(images, prompts, **context)`` where ``images`` is a
float tensor ``[B, 3, H, W]`` in [0, 1] (decoded samples, on CPU) and ``prompts`` a list of ``B``
strings. ``context`` always carries ``latent_size=(h, w)``, the latent grid. It returns either

- a scalar per image: array/tensor ``[B]`` (Flow-GRPO), or
- a reward map on the latent grid: ``[B, h, w]`` (DenseFlow / BoxFlow).

The trainer only sees that contract; it never knows where a reward comes from. This module
turns `Diagnosis` objects into both kinds:

- `diagnosis_scalar`: one score of each diagnosis (e.g. ``overall``).
- `dense_from_heatmaps` (DenseFlow): ``scalar * (1 - heatmap)`` average-pooled to the latent grid.
- `box_reward_map` (BoxFlow): ``scalar - sum_label alpha_label * importance / 100`` inside that
  label's boxes (same-label overlaps take the max, different labels add).
- `diagnoser_reward`: runs the core `Diagnoser` batched on the decoded images and applies one of
  the three above.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ...core.diagnosis import HEATMAP_NAMES, LABELS, Diagnosis

RewardFn = Callable[..., Any]
REWARD_MODES = ("scalar", "dense", "box")
#: BoxFlow-GRPO's per-label weights.
DEFAULT_BOX_ALPHA = {"artifact": 0.5, "misalignment": 0.05}


# --------------------------------------------------------------------------------------------
# Shape helpers
# --------------------------------------------------------------------------------------------
def as_reward_tensor(value: Any, batch: int, latent_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Validate a reward function's output: float32 ``[B]`` or ``[B, h, w]`` on CPU."""
    t = torch.as_tensor(np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value,
                                   dtype=np.float32))
    if t.ndim not in (1, 3) or t.shape[0] != batch:
        raise ValueError(f"a reward must be [B] or [B, h, w] with B={batch}, got shape {tuple(t.shape)}")
    if t.ndim == 3 and latent_size is not None and tuple(t.shape[1:]) != tuple(latent_size):
        raise ValueError(f"reward map is {tuple(t.shape[1:])}, expected the latent grid {tuple(latent_size)}")
    if not torch.isfinite(t).all():
        raise ValueError("reward contains NaN or inf")
    return t


def pool_to_grid(heatmap: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Average-pool a ``[H, W]`` map to ``grid = (h, w)`` (adaptive: any sizes)."""
    t = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))[None, None]
    return torch.nn.functional.adaptive_avg_pool2d(t, grid)[0, 0].numpy()


def box_coverage(box: Sequence[float], image_size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """Fraction of each latent cell covered by ``box`` (pixels ``[x0, y0, x1, y1]`` of an image
    ``(width, height)``): a ``grid = (h, w)`` array in [0, 1]; cells fully inside are 1."""
    width, height = image_size
    h, w = grid
    x0, y0, x1, y1 = (float(v) for v in box)
    xs = np.linspace(0, width, w + 1)
    ys = np.linspace(0, height, h + 1)
    cover_x = np.clip(np.minimum(xs[1:], x1) - np.maximum(xs[:-1], x0), 0, None) / np.diff(xs)
    cover_y = np.clip(np.minimum(ys[1:], y1) - np.maximum(ys[:-1], y0), 0, None) / np.diff(ys)
    return np.outer(cover_y, cover_x).astype(np.float32)


# --------------------------------------------------------------------------------------------
# From diagnoses
# --------------------------------------------------------------------------------------------
def diagnosis_scalar(diagnoses: Sequence[Diagnosis], score: str = "overall", missing: float = 0.0) -> np.ndarray:
    """``[B]`` scores named ``score`` (``missing`` where the diagnoser gave none)."""
    values = [d.scores[score] for d in diagnoses]
    return np.array([missing if v is None else v for v in values], dtype=np.float32)


def dense_from_heatmaps(
    diagnoses: Sequence[Diagnosis],
    latent_size: tuple[int, int],
    score: str = "overall",
    heatmaps: Sequence[str] = HEATMAP_NAMES,
    missing: float = 0.0,
) -> np.ndarray:
    """DenseFlow reward maps ``[B, h, w]``: ``scalar * (1 - mean of the named heatmaps)`` pooled.

    Heatmaps the diagnosis lacks count as zero (no defect there).
    """
    unknown = set(heatmaps) - set(HEATMAP_NAMES)
    if unknown:
        raise ValueError(f"unknown heatmap(s) {sorted(unknown)}; use {list(HEATMAP_NAMES)}")
    scalars = diagnosis_scalar(diagnoses, score, missing)
    out = np.empty((len(diagnoses), *latent_size), dtype=np.float32)
    for i, d in enumerate(diagnoses):
        maps = [pool_to_grid(d.heatmaps[n], latent_size) if d.heatmaps.get(n) is not None
                else np.zeros(latent_size, np.float32) for n in heatmaps]
        heat = np.mean(maps, axis=0) if maps else np.zeros(latent_size, np.float32)
        out[i] = scalars[i] * (1.0 - np.clip(heat, 0.0, 1.0))
    return out


def box_penalty_map(
    diagnosis: Diagnosis, latent_size: tuple[int, int], alpha: Mapping[str, float] | None = None,
    default_importance: int = 50,
) -> np.ndarray:
    """BoxFlow penalty ``[h, w]``: ``sum_label alpha_label * max_box(importance / 100 * coverage)``.

    Coverage is the fraction of a latent cell inside the box, so cells fully inside get the full
    penalty and a box smaller than a cell still counts in proportion.
    """
    alpha = dict(DEFAULT_BOX_ALPHA if alpha is None else alpha)
    unknown = set(alpha) - set(LABELS)
    if unknown:
        raise ValueError(f"box alpha has unknown label(s) {sorted(unknown)}; use {list(LABELS)}")
    penalty = np.zeros(latent_size, dtype=np.float32)
    for label in LABELS:
        per_label = np.zeros(latent_size, dtype=np.float32)
        for defect in diagnosis.defects_of(label):
            weight = defect.importance_or(default_importance) / 100.0
            cover = box_coverage(defect.box, diagnosis.size, latent_size)
            per_label = np.maximum(per_label, weight * cover)
        penalty += float(alpha.get(label, 0.0)) * per_label
    return penalty


def box_reward_map(
    diagnoses: Sequence[Diagnosis],
    latent_size: tuple[int, int],
    score: str = "overall",
    alpha: Mapping[str, float] | None = None,
    missing: float = 0.0,
    default_importance: int = 50,
) -> np.ndarray:
    """BoxFlow reward maps ``[B, h, w]``: the scalar score minus `box_penalty_map`."""
    scalars = diagnosis_scalar(diagnoses, score, missing)
    return np.stack([
        scalars[i] - box_penalty_map(d, latent_size, alpha, default_importance) for i, d in enumerate(diagnoses)
    ]).astype(np.float32)


def rewards_from_diagnoses(
    diagnoses: Sequence[Diagnosis], mode: str, latent_size: tuple[int, int], score: str = "overall",
    alpha: Mapping[str, float] | None = None, missing: float = 0.0,
) -> np.ndarray:
    """Dispatch on ``mode``: "scalar" -> ``[B]``, "dense" / "box" -> ``[B, h, w]``."""
    if mode == "scalar":
        return diagnosis_scalar(diagnoses, score, missing)
    if mode == "dense":
        return dense_from_heatmaps(diagnoses, latent_size, score, missing=missing)
    if mode == "box":
        return box_reward_map(diagnoses, latent_size, score, alpha, missing)
    raise ValueError(f"unknown reward mode {mode!r}; use one of {list(REWARD_MODES)}")


# --------------------------------------------------------------------------------------------
# Reward functions
# --------------------------------------------------------------------------------------------
def to_pil(images: torch.Tensor) -> list:
    """``[B, 3, H, W]`` float in [0, 1] -> list of RGB PIL images."""
    from PIL import Image

    arr = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a, mode="RGB") for a in arr]


def scalar(fn: Callable[..., Any]) -> RewardFn:
    """Wrap any per-image callable ``fn(images, prompts, **context) -> [B]`` as a checked scalar reward."""

    def reward(images, prompts, **context):
        return as_reward_tensor(fn(images, prompts, **context), len(prompts))

    reward.__name__ = getattr(fn, "__name__", "scalar_reward")
    return reward


def diagnoser_reward(
    diagnoser: Any,
    mode: str = "scalar",
    score: str = "overall",
    alpha: Mapping[str, float] | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 1024,
    think: bool = True,
    missing: float = 0.0,
    **diagnose_kwargs: Any,
) -> RewardFn:
    """A reward backed by the core `Diagnoser` (an instance, or a path to load one from).

    The returned function converts the decoded images to PIL, runs ``diagnoser.diagnose`` in
    batches of ``batch_size`` (with heatmaps only when ``mode="dense"``), and turns the
    diagnoses into rewards with `rewards_from_diagnoses`. A diagnosis that failed to parse
    gets ``missing`` as its score.
    """
    if mode not in REWARD_MODES:
        raise ValueError(f"unknown reward mode {mode!r}; use one of {list(REWARD_MODES)}")
    if isinstance(diagnoser, (str, bytes)) or hasattr(diagnoser, "__fspath__"):
        from ...core.diagnoser import Diagnoser

        diagnoser = Diagnoser.from_pretrained(str(diagnoser))

    def reward(images, prompts, latent_size=None, **context):
        if latent_size is None and mode != "scalar":
            raise ValueError(f"reward mode {mode!r} needs latent_size=(h, w) in the context")
        pil = to_pil(images) if isinstance(images, torch.Tensor) else list(images)
        diagnoses = diagnoser.diagnose(
            pil, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size,
            heatmaps=(mode == "dense"), think=think, **diagnose_kwargs,
        )
        reward.last_diagnoses = diagnoses
        return rewards_from_diagnoses(diagnoses, mode, latent_size, score, alpha, missing)

    reward.__name__ = f"diagnoser_{mode}_{score}"
    reward.last_diagnoses = []
    return reward


def load_reward(spec: str, **kwargs: Any) -> RewardFn:
    """Build a reward from a config spec.

    - ``"diagnoser"``: `diagnoser_reward` with ``kwargs`` (``diagnoser=PATH``, ``mode``, ...).
    - ``"python:package.module:name"``: ``name`` is either a reward function (used as is when
      ``kwargs`` is empty) or a factory called with ``kwargs`` that returns one.
    """
    if spec == "diagnoser":
        kwargs = dict(kwargs)
        if "diagnoser" not in kwargs:
            raise ValueError("reward 'diagnoser' needs reward_kwargs.diagnoser: the diagnoser model path")
        return diagnoser_reward(kwargs.pop("diagnoser"), **kwargs)
    if spec.startswith("python:"):
        target = spec[len("python:"):]
        module_name, _, attr = target.partition(":")
        if not module_name or not attr:
            raise ValueError(f"reward {spec!r}: write python:package.module:function")
        fn = getattr(importlib.import_module(module_name), attr)
        return fn(**kwargs) if kwargs else fn
    raise ValueError(f"unknown reward {spec!r}; use 'diagnoser' or 'python:package.module:function'")
