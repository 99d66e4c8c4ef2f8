"""Cold-start supervised fine-tuning of the diagnoser (ImageDoctor recipe, or SDG-style targets).

    python -m imagedoctor.trainer sft --config sft.yaml [--set KEY=VALUE] [--resume [latest|CHECKPOINT]]
    accelerate launch -m imagedoctor.trainer sft --config sft.yaml      # multi-GPU DDP

Loss per batch = CE(next token, assistant tokens only) + heatmap_weight · mean over images of
(MSE_misalignment + MSE_artifact) between the head's maps and the ground truth, both at
``heatmap_size``². The head reads the final hidden state *before* each task token (the one
that predicts ``<MIS>``/``<ART>``) and the merged visual tokens of the same forward pass.

Output: ``OUTPUT/model`` (a folder `Diagnoser.from_pretrained` loads: LoRA merged),
``OUTPUT/checkpoints/checkpoint-N`` (resume state), ``OUTPUT/logs`` (TensorBoard),
``OUTPUT/metrics.jsonl`` (train/eval scalars).
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...core.diagnoser import Diagnoser
from ..common.cli import add_trainer_command
from .base import DiagnoserTrainer
from .config import DiagnoserTrainConfig, SFTConfig
from .data import Example, LazyExamples, TrainingDataError, batch_order, gt_map_tensor, has_heatmap, load_example
from .modeling import prepare_diagnoser

logger = logging.getLogger("imagedoctor.trainer")


# --- the training module ---------------------------------------------------------------------
class DiagnoserSFTModule(nn.Module):
    """Backbone + head as one module (what accelerate wraps for DDP); ``forward`` returns the loss."""

    def __init__(self, dg: Diagnoser, heatmap_weight: float, heatmap_size: int):
        super().__init__()
        self.model = dg.model
        self.head = dg.head
        self.dg = [dg]  # not a submodule
        self.heatmap_weight = heatmap_weight
        self.heatmap_size = heatmap_size
        lm = self.model.model.language_model if hasattr(self.model.model, "language_model") else self.model.model
        self._norm = lm.norm
        self._visual = self.model.model.visual

    def forward(self, input_ids, attention_mask, pixel_values, image_grid_thw, labels, task_positions,
                gt_maps: list | None = None, mm_token_type_ids=None) -> dict[str, torch.Tensor]:
        """input_ids/attention_mask/labels [B, T]; task_positions [B, 2] (index of <MIS>/<ART>, -1 if
        absent); gt_maps: per image a list [mis, art] of [S, S] tensors or None. Returns
        {"loss", "ce", "heatmap"} (heatmap = mean over images of MSE_mis + MSE_art)."""
        want_maps = self.heatmap_weight > 0 and self.head is not None and gt_maps is not None
        captured: dict[str, Any] = {}
        handles = []
        if want_maps:
            handles.append(self._norm.register_forward_hook(lambda m, a, o: captured.__setitem__("h", o)))
            handles.append(self._visual.register_forward_hook(lambda m, a, o: captured.__setitem__("v", o)))
        try:
            extra = {} if mm_token_type_ids is None else {"mm_token_type_ids": mm_token_type_ids}
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                             image_grid_thw=image_grid_thw, labels=labels, use_cache=False, **extra)
        finally:
            for h in handles:
                h.remove()
        ce = out.loss
        hm_loss = ce.new_zeros(())
        if want_maps:
            hm_loss = self.heatmap_loss(captured["h"], visual_tokens(captured["v"], image_grid_thw, self._visual),
                                        image_grid_thw, task_positions, gt_maps)
        return {"loss": ce + self.heatmap_weight * hm_loss, "ce": ce.detach(), "heatmap": hm_loss.detach()}

    def predict_maps(self, hidden, visual, grid_thw, task_positions) -> list:
        """Per image a [2, 16h, 16w] map pair (None where a task token is absent)."""
        rows = [b for b in range(hidden.shape[0]) if bool((task_positions[b] > 0).all())]
        if not rows:
            return [None] * hidden.shape[0]
        idx = torch.tensor(rows, device=hidden.device)
        pos = task_positions[idx] - 1  # the state that predicts the token
        states = hidden[idx[:, None], pos]  # [n, 2, D]
        maps = self.dg[0].head_maps(states.to(next(self.head.parameters()).dtype),
                                    [visual[b] for b in rows], grid_thw[idx])
        out: list = [None] * hidden.shape[0]
        for r, m in zip(rows, maps):
            out[r] = m
        return out

    def heatmap_loss(self, hidden, visual, grid_thw, task_positions, gt_maps) -> torch.Tensor:
        maps = self.predict_maps(hidden, visual, grid_thw, task_positions)
        losses = []
        for pred, gts in zip(maps, gt_maps):
            if pred is None or gts is None:
                continue
            pred = F.interpolate(pred[:, None].float(), size=(self.heatmap_size,) * 2, mode="bilinear",
                                 align_corners=False)[:, 0]
            terms = [F.mse_loss(pred[k], g.to(pred.device)) for k, g in enumerate(gts) if g is not None]
            if terms:
                losses.append(torch.stack(terms).sum())
        return torch.stack(losses).mean() if losses else hidden.new_zeros(()).float()


def visual_tokens(output, grid_thw, visual_module) -> list[torch.Tensor]:
    """Merged visual tokens per image ([h*w, Dv]) from the vision tower's forward output."""
    merged = getattr(output, "pooler_output", None)
    merged = output if merged is None else merged
    if isinstance(merged, (tuple, list)):
        return list(merged)
    merge = getattr(visual_module, "spatial_merge_size", 2)
    return list(torch.split(merged, (grid_thw.prod(-1) // merge**2).tolist()))


def collate(dg: Diagnoser, examples: Sequence[Example], cfg: DiagnoserTrainConfig, heatmap_size: int,
            with_maps: bool) -> dict[str, Any]:
    """Tokenise a batch (left-padded) and build labels (-100 on prompt, image and pad tokens),
    the task-token positions [B, 2] and the GT maps at heatmap_size²."""
    inputs, _, prefix = dg.build_inputs([e.image for e in examples], [e.prompt for e in examples], cfg.format,
                                        think=cfg.think, image_area=cfg.image_area, variant=cfg.prompt_variant,
                                        assistant_texts=[e.target for e in examples])
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    labels = torch.full_like(ids, -100)
    task_pos = torch.full((ids.shape[0], 2), -1, dtype=torch.long)
    for b in range(ids.shape[0]):
        start = int((mask[b] == 0).sum()) + prefix[b]
        labels[b, start:] = ids[b, start:]
        for k, name in enumerate(("misalignment", "artifact")):
            tid = dg.task_token_ids.get(name)
            if tid is not None:
                hits = (ids[b, start:] == tid).nonzero()
                if len(hits):
                    task_pos[b, k] = start + int(hits[0])
    batch = dict(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"],
                 image_grid_thw=inputs["image_grid_thw"], labels=labels, task_positions=task_pos)
    if "mm_token_type_ids" in inputs:  # Qwen3-VL's M-RoPE needs it
        batch["mm_token_type_ids"] = inputs["mm_token_type_ids"]
    if with_maps:
        batch["gt_maps"] = [[gt_map_tensor(e.gt.heatmaps.get(n), heatmap_size) for n in ("misalignment", "artifact")]
                            for e in examples]
    return batch


def to_device(batch: dict[str, Any], device) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        out[k] = v.to(device) if isinstance(v, torch.Tensor) else v
    return out


def param_groups(module: nn.Module, cfg: DiagnoserTrainConfig) -> list[dict[str, Any]]:
    """Trainable parameters: the backbone at learning_rate, the head at head_learning_rate."""
    head_ids = {id(p) for p in module.head.parameters()} if getattr(module, "head", None) is not None else set()
    lm = [p for p in module.parameters() if p.requires_grad and id(p) not in head_ids]
    head = [p for p in module.parameters() if p.requires_grad and id(p) in head_ids]
    groups = [{"params": lm, "lr": cfg.learning_rate}]
    if head:
        groups.append({"params": head, "lr": cfg.head_learning_rate or cfg.learning_rate})
    return groups


# --- evaluation ------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_sft(dg: Diagnoser, module: DiagnoserSFTModule, examples: Sequence[Example], cfg: SFTConfig,
                 generate: bool = True) -> dict[str, float]:
    """Held-out metrics: teacher-forced CE (and heatmap MSE), heatmap CC of the head's maps against
    the GT (images with non-empty GT), and score PLCC and MAE of greedy generations (when ``generate``)."""
    from ...core.metrics import heatmap_metrics, score_correlations, score_mae

    was_training = module.training
    module.eval()
    ce, hm, n = 0.0, 0.0, 0
    preds = {"misalignment": [], "artifact": []}
    gts = {"misalignment": [], "artifact": []}
    device = next(module.parameters()).device
    with_maps = cfg.uses_task_tokens and dg.head is not None
    for i in range(0, len(examples), cfg.batch_size):
        chunk = list(examples[i : i + cfg.batch_size])
        batch = to_device(collate(dg, chunk, cfg, cfg.heatmap_size, with_maps), device)
        captured = {}
        hooks = [module._norm.register_forward_hook(lambda m, a, o: captured.__setitem__("h", o)),
                 module._visual.register_forward_hook(lambda m, a, o: captured.__setitem__("v", o))]
        try:
            out = module(**batch)
        finally:
            for h in hooks:
                h.remove()
        ce += float(out["ce"]) * len(chunk)
        hm += float(out["heatmap"]) * len(chunk)
        n += len(chunk)
        if with_maps:
            vis = visual_tokens(captured["v"], batch["image_grid_thw"], module._visual)
            maps = module.predict_maps(captured["h"], vis, batch["image_grid_thw"], batch["task_positions"])
            for e, m in zip(chunk, maps):
                for k, name in enumerate(("misalignment", "artifact")):
                    g = e.gt.heatmaps.get(name)
                    preds[name].append(None if m is None else m[k].float().cpu().numpy())
                    gts[name].append(g)
    result = {"eval/loss": ce / max(n, 1), "eval/heatmap_mse_loss": hm / max(n, 1)}
    if with_maps:
        ccs = [heatmap_metrics(preds[k], gts[k])["cc"] for k in preds]
        finite = [c for c in ccs if c is not None and math.isfinite(c)]
        result["eval/heatmap_cc"] = float(np.mean(finite)) if finite else float("nan")
    if generate and cfg.format == "imagedoctor":
        diags = dg.diagnose([e.image for e in examples], [e.prompt for e in examples], format=cfg.format,
                            max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.batch_size, heatmaps=False,
                            think=cfg.think, image_area=cfg.image_area, variant=cfg.prompt_variant)
        corr = score_correlations([d.scores for d in diags], [e.gt.scores for e in examples])
        # a dimension that is never read, or constant, has no correlation: it counts as 0
        plcc = [corr["per_dim"][k]["plcc"] for k in corr["per_dim"]]
        result["eval/score_plcc"] = float(np.mean([v if math.isfinite(v) else 0.0 for v in plcc]))
        for k in corr["per_dim"]:
            result[f"eval/plcc_{k}"] = float(corr["per_dim"][k]["plcc"])
        result["eval/scores_parsed"] = float(np.mean([len(d.scores.present()) / 4 for d in diags]))
        result["eval/score_mae"] = score_mae([d.scores for d in diags], [e.gt.scores for e in examples])
    module.train(was_training)
    return result


# --- trainer -------------------------------------------------------------------------------
class SFTTrainer(DiagnoserTrainer):
    """Cold-start SFT of a diagnoser from an `SFTConfig`; ``train()`` runs it to ``max_steps``."""

    config_class = SFTConfig

    def _find_unused_parameters(self) -> bool:
        # The head skips batches without a map, and its SAM prompt encoder has parts maps never use.
        return self.cfg.heatmap_weight > 0

    def _build(self):
        cfg = self.cfg
        # Without the heatmap loss nothing reaches the head: it stays as loaded (frozen).
        self.dg, self.peft_model = prepare_diagnoser(cfg, need_head=cfg.heatmap_weight > 0,
                                                     train_head=cfg.heatmap_weight > 0)
        family = self.dg.family
        self.train_examples = LazyExamples(self.train_samples, cfg, family)
        self.eval_examples = [load_example(s, cfg, family) for s in self.eval_samples]
        self.train_examples[0]  # a sample that cannot be read fails here, not at step N
        if cfg.heatmap_weight > 0 and not any(has_heatmap(s) for s in self.train_samples):
            raise TrainingDataError("config key 'heatmap_weight' > 0 but no training sample has a heatmap. Fix: add "
                                    "heatmaps to data.jsonl or set heatmap_weight: 0")
        module = DiagnoserSFTModule(self.dg, cfg.heatmap_weight, cfg.heatmap_size)
        return module, param_groups(module, cfg)

    def evaluate(self, generate: bool = True) -> dict[str, float]:
        """Held-out metrics on ``eval_data`` (empty dict without it)."""
        self._setup()
        if not self.eval_examples:
            return {}
        with self.accelerator.autocast():
            return evaluate_sft(self.dg, self.raw_module, self.eval_examples, self.cfg, generate=generate)

    def train(self, resume: str | None = None) -> dict[str, Any]:
        """Train to ``max_steps`` (from a checkpoint when ``resume`` is "latest" or a folder).

        Returns {"step", "model_dir", "train/loss", "train/ce", "train/heatmap", "eval": {...}}.
        """
        cfg = self.cfg
        self._setup()
        acc = self.accelerator
        step = self._resume(resume)
        log = self._logger()
        bar = self._progress(step, "sft")
        with_maps = cfg.heatmap_weight > 0
        last: dict[str, float] = {}
        while step < cfg.max_steps:
            totals = {"loss": 0.0, "ce": 0.0, "heatmap": 0.0}
            for micro in range(cfg.gradient_accumulation_steps):
                idx = batch_order(len(self.train_examples), cfg.batch_size, cfg.seed, step, micro,
                                  cfg.gradient_accumulation_steps, acc.process_index, acc.num_processes)
                batch = to_device(collate(self.dg, [self.train_examples[i] for i in idx], cfg, cfg.heatmap_size,
                                          with_maps), acc.device)
                sync = micro == cfg.gradient_accumulation_steps - 1
                with contextlib.nullcontext() if sync else acc.no_sync(self.module):
                    out = self.module(**batch)
                    acc.backward(out["loss"] / cfg.gradient_accumulation_steps)
                for k in totals:
                    totals[k] += float(out[k].detach()) / cfg.gradient_accumulation_steps
            if cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(self.raw_module.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            step += 1
            last = {f"train/{k}": v for k, v in totals.items()}
            bar.update(1)
            bar.set_postfix(loss=f"{totals['loss']:.4f}")
            if step % cfg.logging_steps == 0:
                log.log(step, {**last, "train/lr": self.scheduler.get_last_lr()[0]})
            if cfg.eval_steps and step % cfg.eval_steps == 0 and step < cfg.max_steps and acc.is_main_process:
                log.log(step, self.evaluate(generate=False))
            if cfg.save_steps and step % cfg.save_steps == 0 and step < cfg.max_steps:
                self._checkpoint(step)
        bar.close()
        return self._finish(step, last, log)


# --- CLI -------------------------------------------------------------------------------------
def add_parser(subparsers) -> Any:
    """Register ``sft`` on the trainer CLI (``python -m imagedoctor.trainer sft --config C.yaml``)."""
    return add_trainer_command(subparsers, "sft", "cold-start SFT of the diagnoser (CE + heatmap MSE)", SFTConfig,
                               SFTTrainer)
