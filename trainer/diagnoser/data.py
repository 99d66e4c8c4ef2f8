"""Diagnoser training data: project data sets -> examples with rendered targets, and the batch order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...core.diagnosis import Diagnosis
from ...core.formats import render
from ...core.geometry import Frame
from ...core.prompts import resize_for_model
from .config import DiagnoserTrainConfig


class TrainingDataError(ValueError):
    """The training data cannot be used (empty, unreadable, or missing what the config needs)."""


# --- data ----------------------------------------------------------------------------------
@dataclass
class Example:
    """One training example: image, prompt, ground truth and the rendered target text."""

    id: str
    image: Any  # PIL.Image, original size
    prompt: str
    gt: Diagnosis
    target: str


def load_samples(path: str | Path, what: str = "data") -> list:
    """Samples of a project data set folder; clear errors when it is missing or empty."""
    from ...core.data import load_project_dataset

    path = Path(path)
    if not path.exists():
        raise TrainingDataError(f"config key {what!r}: {path} does not exist")
    samples = load_project_dataset(path, strict=False)
    if not samples:
        skipped = getattr(samples.report, "skipped", {})
        raise TrainingDataError(f"config key {what!r}: {path} has no usable sample (skipped: {skipped}); "
                                "check data.jsonl (see docs/training-diagnoser.md)")
    return list(samples)


def target_frame(cfg: DiagnoserTrainConfig, family: str, width: int, height: int) -> Frame | None:
    """The box frame targets are written in: the one `Diagnoser.diagnose` parses with."""
    if cfg.format == "imagedoctor" and family == "qwen2_5_vl":
        return Frame.pixels(*resize_for_model(width, height, cfg.image_area))
    return None


def render_target(gt: Diagnosis, cfg: DiagnoserTrainConfig, family: str, prompt: str) -> str:
    """The assistant text the model is trained to produce for ``gt`` (stage and format from cfg)."""
    frame = target_frame(cfg, family, gt.width, gt.height)
    if cfg.format == "imagedoctor":
        gt = Diagnosis(width=gt.width, height=gt.height, scores=gt.scores, defects=gt.defects,
                       reasoning=gt.reasoning, prompt=gt.prompt or prompt)
        return render(gt, "imagedoctor", frame=frame, think=cfg.think, task_tokens=True,
                      scores_only=cfg.stage == "scores")
    return render(gt, "sdg", frame=frame, think=cfg.think)


def load_example(sample, cfg: DiagnoserTrainConfig, family: str) -> Example:
    """Read one sample (image + GT with heatmaps) and render its target; errors name the sample."""
    try:
        image = sample.load_image()
        gt = sample.diagnosis
    except Exception as exc:
        raise TrainingDataError(f"sample {sample.id!r}: cannot be read ({type(exc).__name__}: {exc})") from exc
    if cfg.format == "imagedoctor" and not gt.scores.present():
        raise TrainingDataError(f"sample {sample.id!r} has no scores; ImageDoctor targets need at least one")
    return Example(sample.id, image, sample.prompt, gt, render_target(gt, cfg, family, sample.prompt))


def gt_map_tensor(hm: np.ndarray | None, size: int) -> torch.Tensor | None:
    """(H, W) map in [0, 1] -> [size, size] float tensor (bilinear), or None."""
    if hm is None:
        return None
    t = torch.as_tensor(np.asarray(hm, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0]


def batch_order(n: int, batch_size: int, seed: int, step: int, micro: int, accum: int,
                rank: int = 0, world: int = 1) -> list[int]:
    """Indices of the micro-batch ``micro`` of optimizer step ``step`` for process ``rank``.

    The data are shuffled once per epoch with ``seed + epoch``; the order depends only on
    (seed, step, micro), which makes ``--resume`` replay exactly what an uninterrupted run sees.
    """
    global_bs = batch_size * world
    k = (step * accum + micro) * global_bs
    out = []
    while len(out) < global_bs:
        epoch, pos = divmod(k + len(out), n)
        perm = np.random.RandomState(seed + epoch).permutation(n)
        out.append(int(perm[pos]))
    return out[rank * batch_size : (rank + 1) * batch_size]
