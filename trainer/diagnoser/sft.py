"""Cold-start supervised fine-tuning of the diagnoser (ImageDoctor recipe, or SDG-style targets).

    python -m imagedoctor.trainer sft --config sft.yaml [--resume latest|CHECKPOINT]
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

import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...core.diagnoser import Diagnoser, save_diagnoser
from ...core.diagnosis import Diagnosis
from ...core.formats import render
from ...core.geometry import Frame
from ...core.prompts import resize_for_model
from ..common import checkpoint as ckpt
from .config import ConfigError, DiagnoserTrainConfig, SFTConfig

logger = logging.getLogger("imagedoctor.trainer")
TASK_TOKENS = {"misalignment": "<MIS>", "artifact": "<ART>"}


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


# --- model preparation -----------------------------------------------------------------------
def ensure_task_tokens(dg: Diagnoser) -> bool:
    """Add ``<MIS>``/``<ART>`` to the tokenizer and embeddings when the base model lacks them."""
    tok = dg.processor.tokenizer
    missing = [name for name, tid in dg.task_token_ids.items() if tid is None]
    if not missing:
        return False
    tok.add_tokens([TASK_TOKENS[n] for n in ("misalignment", "artifact")], special_tokens=False)
    dg.model.resize_token_embeddings(len(tok))
    for name, attr in (("misalignment", "misalignment_token_id"), ("artifact", "artifact_token_id")):
        tid = tok.convert_tokens_to_ids(TASK_TOKENS[name])
        setattr(dg.model.config, attr, tid)
        dg.task_token_ids[name] = tid
    return True


def ensure_head(dg: Diagnoser) -> None:
    """Create a freshly initialised heatmap head (sized to the backbone) when the checkpoint has none."""
    from ...core.heatmap_head import HeatmapHead, HeatmapHeadConfig

    if dg.head is not None:
        return
    text_cfg = getattr(dg.model.config, "text_config", dg.model.config)
    head_cfg = HeatmapHeadConfig(text_dim=text_cfg.hidden_size, image_dim=dg.model.config.vision_config.out_hidden_size)
    dg.model.config.heatmap_head = head_cfg.to_dict()
    dg.head = HeatmapHead(head_cfg).to(device=dg.model.device, dtype=dg.model.dtype)


def lora_target_regex(targets: Sequence[str]) -> str:
    """peft regex selecting the language model's projections only (never the vision tower)."""
    return r".*language_model\..*\.(" + "|".join(sorted(set(targets))) + r")$"


def prepare_diagnoser(cfg: DiagnoserTrainConfig, need_head: bool) -> tuple[Diagnoser, Any]:
    """Load the diagnoser, add task tokens/head if needed, and set what trains.

    Returns (dg, peft_model or None). ``dg.model`` keeps pointing at the transformers model
    (peft injects its LoRA layers in place), so `Diagnoser.diagnose` runs the trained policy.
    """
    dg = Diagnoser.from_pretrained(cfg.model, dtype=cfg.dtype, device="cpu", format=cfg.format)
    added = ensure_task_tokens(dg) if cfg.uses_task_tokens else False
    if need_head:
        ensure_head(dg)
    model = dg.model
    for p in model.parameters():
        p.requires_grad_(False)
    peft_model = None
    if cfg.finetuning == "lora":
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=lora_target_regex(cfg.lora_target_modules),
                          modules_to_save=["embed_tokens", "lm_head"] if added else None, task_type=None)
        peft_model = get_peft_model(model, lcfg)
    else:
        for name, p in model.named_parameters():
            p.requires_grad_(cfg.train_vision or ".visual." not in f".{name}")
    if dg.head is not None:
        for p in dg.head.parameters():
            p.requires_grad_(True)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        model.config.use_cache = False
    return dg, peft_model


def save_final(dg: Diagnoser, peft_model, out_dir: Path, save_adapter: bool = False) -> Path:
    """Write ``out_dir/model`` (LoRA merged into a copy, loadable by `Diagnoser.from_pretrained`)."""
    import copy

    if peft_model is not None:
        if save_adapter:
            # Adapter + the trained head + the processor: `Diagnoser.from_pretrained(out_dir / "adapter")`
            # loads the base named in adapter_config.json and merges the adapter onto it.
            from safetensors.torch import save_file

            from ...core.diagnoser import HEAD_FILE

            peft_model.save_pretrained(out_dir / "adapter")
            dg.processor.save_pretrained(out_dir / "adapter")
            if dg.head is not None:
                head_sd = {k: v.detach().contiguous().cpu() for k, v in dg.head.state_dict().items()}
                save_file(head_sd, str(out_dir / "adapter" / HEAD_FILE), metadata={"format": "pt"})
        merged = copy.deepcopy(peft_model).merge_and_unload()
    else:
        merged = dg.model
    was_ckpt = getattr(merged, "is_gradient_checkpointing", False)
    if was_ckpt:
        merged.gradient_checkpointing_disable()
    merged.config.use_cache = True
    path = save_diagnoser(out_dir / "model", merged, dg.processor, dg.head)
    if was_ckpt and merged is dg.model:
        merged.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return path


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
                                        think=cfg.think, image_area=cfg.image_area,
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


def build_optimizer(module: nn.Module, cfg: DiagnoserTrainConfig):
    """AdamW with the head in its own group (head_learning_rate), linear warm-up then constant."""
    head_ids = {id(p) for p in module.head.parameters()} if getattr(module, "head", None) is not None else set()
    lm = [p for p in module.parameters() if p.requires_grad and id(p) not in head_ids]
    head = [p for p in module.parameters() if p.requires_grad and id(p) in head_ids]
    groups = [{"params": lm, "lr": cfg.learning_rate}]
    if head:
        groups.append({"params": head, "lr": cfg.head_learning_rate or cfg.learning_rate})
    if not lm and not head:
        raise ConfigError("config key 'finetuning': nothing is trainable with these settings")
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)
    warm = cfg.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    return opt, sched


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class MetricsLog:
    """TensorBoard (main process) + a metrics.jsonl beside it."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        if enabled:
            out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "logs"))

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, **{k: float(v) for k, v in values.items()}}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if v is not None and math.isfinite(float(v)):
                    self.tb.add_scalar(k, float(v), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# --- evaluation ------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_sft(dg: Diagnoser, module: DiagnoserSFTModule, examples: Sequence[Example], cfg: SFTConfig,
                 generate: bool = True) -> dict[str, float]:
    """Held-out metrics: teacher-forced CE (and heatmap MSE), heatmap CC of the head's maps against
    the GT (images with non-empty GT), and score PLCC of greedy generations (when ``generate``)."""
    from ...core.metrics import heatmap_metrics, score_correlations

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
                            think=cfg.think, image_area=cfg.image_area)
        corr = score_correlations([d.scores for d in diags], [e.gt.scores for e in examples])
        # a dimension that is never read, or constant, has no correlation: it counts as 0
        plcc = [corr["per_dim"][k]["plcc"] for k in corr["per_dim"]]
        result["eval/score_plcc"] = float(np.mean([v if math.isfinite(v) else 0.0 for v in plcc]))
        for k in corr["per_dim"]:
            result[f"eval/plcc_{k}"] = float(corr["per_dim"][k]["plcc"])
        result["eval/scores_parsed"] = float(np.mean([len(d.scores.present()) / 4 for d in diags]))
    module.train(was_training)
    return result


# --- trainer -------------------------------------------------------------------------------
class TrainerBase:
    """What the SFT and GRPO trainers share: atomic checkpoints and the end of a run."""

    def _checkpoint(self, step: int) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            ckpt.save_checkpoint(self.out / "checkpoints", step, self.raw_module, self.optimizer, self.scheduler,
                                 self.cfg.to_dict(), keep=self.cfg.save_total_limit)

    def _finish(self, step: int, last: dict[str, float], log: "MetricsLog") -> dict[str, Any]:
        """Final checkpoint, the merged model folder and held-out metrics; returns the run's summary."""
        acc = self.accelerator
        self._checkpoint(step)
        result: dict[str, Any] = {"step": step, **last}
        if acc.is_main_process:
            result["model_dir"] = str(save_final(self.dg, self.peft_model, self.out, self.cfg.save_adapter))
            result["eval"] = self.evaluate()
            log.log(step, result["eval"])
        log.close()
        acc.wait_for_everyone()
        return result


class SFTTrainer(TrainerBase):
    """Cold-start SFT of a diagnoser from an `SFTConfig`; ``train()`` runs it to ``max_steps``."""

    def __init__(self, config: SFTConfig, resume: str | None = None):
        if not isinstance(config, SFTConfig):
            raise TypeError(f"SFTTrainer needs an SFTConfig, got {type(config).__name__}")
        self.cfg = config
        self.resume = resume
        self.out = Path(config.output_dir)
        # data are checked before any model loads
        self.train_samples = load_samples(config.data, "data")
        self.eval_samples = load_samples(config.eval_data, "eval_data")[: config.eval_samples] if config.eval_data else []

    def _setup(self):
        from accelerate import Accelerator

        cfg = self.cfg
        self.accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
        seed_everything(cfg.seed)
        self.dg, self.peft_model = prepare_diagnoser(cfg, need_head=cfg.heatmap_weight > 0)
        family = self.dg.family
        self.train_examples = [load_example(s, cfg, family) for s in self.train_samples]
        self.eval_examples = [load_example(s, cfg, family) for s in self.eval_samples]
        if cfg.heatmap_weight > 0 and not any(
            any(e.gt.heatmaps.get(n) is not None for n in ("misalignment", "artifact")) for e in self.train_examples
        ):
            raise TrainingDataError("config key 'heatmap_weight' > 0 but no training sample has a heatmap; "
                                    "add heatmaps to data.jsonl or set heatmap_weight: 0")
        module = DiagnoserSFTModule(self.dg, cfg.heatmap_weight, cfg.heatmap_size)
        module.train()
        opt, sched = build_optimizer(module, cfg)
        self.module, self.optimizer, self.scheduler = self.accelerator.prepare(module, opt, sched)
        self.raw_module = module

    def evaluate(self, generate: bool = True) -> dict[str, float]:
        """Held-out metrics on ``eval_data`` (empty dict without it)."""
        if not self.eval_examples:
            return {}
        return evaluate_sft(self.dg, self.raw_module, self.eval_examples, self.cfg, generate=generate)

    def train(self) -> dict[str, Any]:
        """Train to ``max_steps``; returns {"step", "model_dir", "train/loss", "eval": {...}}."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        self._setup()
        acc = self.accelerator
        step = 0
        resume_path = ckpt.resolve_resume(self.resume, self.out / "checkpoints")
        if resume_path is not None:
            step = ckpt.load_checkpoint(resume_path, self.raw_module, self.optimizer, self.scheduler)
            logger.info("resumed from %s at step %d", resume_path, step)
        log = MetricsLog(self.out, acc.is_main_process, cfg.report_to == "tensorboard")
        bar = tqdm(total=cfg.max_steps, initial=step, disable=not (cfg.progress_bar and acc.is_main_process),
                   desc="sft")
        with_maps = cfg.heatmap_weight > 0
        last = {}
        while step < cfg.max_steps:
            totals = {"loss": 0.0, "ce": 0.0, "heatmap": 0.0}
            for micro in range(cfg.gradient_accumulation_steps):
                idx = batch_order(len(self.train_examples), cfg.batch_size, cfg.seed, step, micro,
                                  cfg.gradient_accumulation_steps, acc.process_index, acc.num_processes)
                batch = to_device(collate(self.dg, [self.train_examples[i] for i in idx], cfg, cfg.heatmap_size,
                                          with_maps), acc.device)
                sync = micro == cfg.gradient_accumulation_steps - 1
                ctx = acc.no_sync(self.module) if not sync else _null()
                with ctx:
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
            if cfg.eval_steps and step % cfg.eval_steps == 0 and step < cfg.max_steps:
                log.log(step, self.evaluate(generate=False))
            if cfg.save_steps and step % cfg.save_steps == 0 and step < cfg.max_steps:
                self._checkpoint(step)
        bar.close()
        return self._finish(step, last, log)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --- CLI -------------------------------------------------------------------------------------
def add_trainer_parser(subparsers, name: str, help: str, config_cls, trainer_cls) -> Any:
    """Register a diagnoser-training command: ``--config C.yaml [--resume latest|DIR]``, prints the summary."""

    def run(args) -> int:
        result = trainer_cls(config_cls.from_yaml(args.config), resume=args.resume).train()
        print(json.dumps(result, indent=2, default=str))
        return 0

    p = subparsers.add_parser(name, help=help)
    p.add_argument("--config", required=True, help="YAML config (keys: docs/training-diagnoser.md)")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint folder to resume from")
    p.set_defaults(func=run)
    return p


def add_parser(subparsers) -> Any:
    """Register ``sft`` on the trainer CLI (``python -m imagedoctor.trainer sft --config C.yaml``)."""
    return add_trainer_parser(subparsers, "sft", "cold-start SFT of the diagnoser (CE + heatmap MSE)", SFTConfig, SFTTrainer)
