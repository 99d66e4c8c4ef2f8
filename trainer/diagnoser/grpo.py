"""GRPO of the diagnoser with verifiable rewards (ImageDoctor triplet, SDG detector reward).

    python -m imagedoctor.trainer grpo --config grpo.yaml [--set KEY=VALUE] [--resume [latest|CHECKPOINT]]

One iteration: take ``batch_size`` (image, prompt) pairs, sample ``num_generations`` (G)
completions of each with the current policy through the core batched decoder
(`core.generation.generate_batch`, which also captures the states the heatmap head needs), parse
them into `Diagnosis`, score them with the configured reward functions, normalise rewards within
each group of G, and take ``num_iterations`` (TRL's mu) clipped policy-gradient steps:

    ratio_t = exp(logp_t - logp_old_t)
    L_t = -min(ratio_t·A, clip(ratio_t, 1-ε, 1+ε)·A) + β·KL_t,
    KL_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1     (reference = the model with LoRA disabled)

``loss_type: token`` averages L over all completion tokens of the batch, ``sequence`` averages
per completion first.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from ...core.diagnosis import Diagnosis
from ...core.formats import parse
from ...core.generation import generate_batch
from ...core.metrics import score_mae_written
from ..common.cli import add_trainer_command
from .base import DiagnoserTrainer
from .config import GRPOConfig
from .data import Example, batch_order, load_example, target_frame
from .modeling import prepare_diagnoser
from .rewards import compute_rewards

logger = logging.getLogger("imagedoctor.trainer")
RewardFn = Callable[[Diagnosis, Diagnosis], float]


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """rewards [N] (N = prompts·G, groups contiguous) -> (r - group mean) / (group std + eps)."""
    r = rewards.view(-1, group_size)
    adv = r - r.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / (r.std(dim=1, keepdim=True, unbiased=False) + eps)
    return adv.reshape(-1)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                epsilon: float, beta: float = 0.0, ref_logp: torch.Tensor | None = None,
                loss_type: str = "token") -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped GRPO loss. logp/old_logp/ref_logp/mask [N, L]; advantages [N]. Returns (loss, stats)."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * adv)
    kl = torch.zeros_like(logp)
    if beta > 0 and ref_logp is not None:
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl
    mask = mask.to(per_token.dtype)
    if loss_type == "token":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
    else:
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    clipped = ((ratio - 1).abs() > epsilon).to(mask.dtype)
    with torch.no_grad():
        stats = {"kl": float((kl * mask).sum() / mask.sum().clamp(min=1)),
                 "clip_fraction": float((clipped * mask).sum() / mask.sum().clamp(min=1))}
    return loss, stats


class PolicyModule(nn.Module):
    """Wraps the backbone for DDP; ``forward`` gives per-token log-probs of the completion tokens."""

    def __init__(self, dg):
        super().__init__()
        self.model = dg.model
        self.head = dg.head

    def forward(self, input_ids, attention_mask, pixel_values, image_grid_thw, prompt_length: int,
                targets: torch.Tensor | None = None, mm_token_type_ids=None) -> torch.Tensor:
        """input_ids [N, P+L] (prompt left-padded to P, then completion); ``targets`` [N, L] the
        completion ids whose log-probs are wanted (default: input_ids[:, P:]). Returns logp [N, L]."""
        extra = {} if mm_token_type_ids is None else {"mm_token_type_ids": mm_token_type_ids}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                         image_grid_thw=image_grid_thw, use_cache=False, **extra)
        logits = out.logits[:, prompt_length - 1 : -1].float()
        targets = input_ids[:, prompt_length:] if targets is None else targets
        return torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)


def eos_ids(tokenizer) -> list[int]:
    ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"),
           tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    return sorted({i for i in ids if isinstance(i, int) and i >= 0})


class GRPOTrainer(DiagnoserTrainer):
    """GRPO of a diagnoser from a `GRPOConfig`; ``train()`` runs ``max_steps`` iterations.

    ``reward_fns`` adds extra plain reward functions ``fn(pred, gt) -> float`` by name; their
    weights come from ``extra_weights`` (default 1.0 each). Built-in ones are chosen in the config.
    """

    config_class = GRPOConfig

    def __init__(self, config: GRPOConfig, reward_fns: Mapping[str, RewardFn] | None = None,
                 extra_weights: Mapping[str, float] | None = None):
        super().__init__(config)
        self.extra_rewards = dict(reward_fns or {})
        self.extra_weights = {k: float((extra_weights or {}).get(k, 1.0)) for k in self.extra_rewards}
        self.embed = None
        if config.embedding_model:
            from ...core.metrics import mean_pool_embedder, sentence_transformer_embedder

            # The authors' SDG reward mean-pools a transformers encoder; ours uses sentence-transformers.
            make = mean_pool_embedder if config.reward_variant == "upstream" else sentence_transformer_embedder
            self.embed = make(config.embedding_model)

    def _build(self):
        cfg = self.cfg
        # The policy loss never reaches the heatmap head: it is frozen here (and DDP sees no unused parameter).
        self.dg, self.peft_model = prepare_diagnoser(cfg, need_head="heatmap" in cfg.rewards, train_head=False)
        self.train_examples = [load_example(s, cfg, self.dg.family) for s in self.train_samples]
        self.eval_examples = [load_example(s, cfg, self.dg.family) for s in self.eval_samples]
        module = PolicyModule(self.dg)
        return module, [{"params": [p for p in module.parameters() if p.requires_grad], "lr": cfg.learning_rate}]

    # --- rollouts ------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, examples: Sequence[Example], group_size: int, do_sample: bool, seed: int) -> dict[str, Any]:
        """Sample ``group_size`` completions per example (groups contiguous) and score them.

        Returns {"inputs": BatchFeature, "sequences": [N, L], "mask": [N, L], "diagnoses": list,
        "rewards": [N] tensor, "parts": {name: [N] array}}.
        """
        cfg, dg = self.cfg, self.dg
        images = [e.image for e in examples for _ in range(group_size)]
        prompts = [e.prompt for e in examples for _ in range(group_size)]
        gts = [e.gt for e in examples for _ in range(group_size)]
        inputs, resized, _ = dg.build_inputs(images, prompts, cfg.format, think=cfg.think, image_area=cfg.image_area,
                                             variant=cfg.prompt_variant)
        inputs = inputs.to(self.accelerator.device)
        tok = dg.processor.tokenizer
        need_maps = "heatmap" in cfg.rewards and dg.head is not None
        was_training = dg.model.training
        dg.model.eval()
        try:
            out = generate_batch(dg.model, inputs, max_new_tokens=cfg.max_new_tokens, eos_token_ids=eos_ids(tok),
                                 pad_token_id=tok.pad_token_id, do_sample=do_sample, temperature=cfg.temperature,
                                 top_p=cfg.top_p, seed=seed, capture_states=need_maps, capture_visual=need_maps,
                                 suppress_token_ids=dg.vision_token_ids)
        finally:
            dg.model.train(was_training)
        prefill = dg.prompt_variant_for(cfg.format, cfg.think, cfg.prompt_variant).prefill
        diags = []
        for i, img in enumerate(images):
            text = prefill + tok.decode(out.sequences[i, : out.lengths[i]], skip_special_tokens=True)
            diags.append(parse(text, cfg.format, img.width, img.height,
                               frame=target_frame(cfg, dg.family, img.width, img.height), prompt=prompts[i]))
        if need_maps:
            # A rollout that did not emit a task token gets no map (ours scores it 0, upstream as all-zero maps).
            dg.attach_heatmaps(diags, out, inputs["image_grid_thw"], [im.size for im in images], fallback=False)
        total, parts = compute_rewards(diags, gts, cfg.rewards, cfg.format, cfg.stage, self.embed,
                                       variant=cfg.reward_variant)
        for name, fn in self.extra_rewards.items():
            parts[name] = np.array([fn(p, g) for p, g in zip(diags, gts)], dtype=np.float64)
            total = total + self.extra_weights[name] * parts[name]
        lengths = torch.tensor(out.lengths, device=out.sequences.device)
        mask = torch.arange(out.sequences.shape[1], device=lengths.device)[None] < lengths[:, None]
        return {"inputs": inputs, "sequences": out.sequences, "mask": mask, "diagnoses": diags,
                "rewards": torch.tensor(total, dtype=torch.float32), "parts": parts}

    # --- optimisation ----------------------------------------------------------------------
    def _policy_inputs(self, roll: dict[str, Any]) -> dict[str, Any]:
        inputs = roll["inputs"]
        seqs = roll["sequences"]
        # Vision placeholders are never sampled (rollouts suppress them), so completions feed back as-is.
        ids = torch.cat([inputs["input_ids"], seqs], dim=1)
        mask = torch.cat([inputs["attention_mask"], roll["mask"].to(inputs["attention_mask"].dtype)], dim=1)
        batch = dict(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"],
                     image_grid_thw=inputs["image_grid_thw"], prompt_length=int(inputs["input_ids"].shape[1]),
                     targets=seqs.clone())  # generate ran under inference_mode: clone for autograd
        if "mm_token_type_ids" in inputs:  # Qwen3-VL's M-RoPE: completion tokens are text (0)
            tt = inputs["mm_token_type_ids"]
            batch["mm_token_type_ids"] = torch.cat([tt, torch.zeros_like(seqs, dtype=tt.dtype)], dim=1)
        return batch

    def _ref_logp(self, batch: dict[str, Any]) -> torch.Tensor | None:
        if self.cfg.beta <= 0:
            return None
        with torch.no_grad(), self.peft_model.disable_adapter(), self.accelerator.autocast():
            return self.raw_module(**batch)

    def step(self, step: int) -> dict[str, float]:
        """One GRPO iteration (rollout + `update`); returns logged scalars."""
        cfg, acc = self.cfg, self.accelerator
        idx = batch_order(len(self.train_examples), cfg.batch_size, cfg.seed, step, 0, 1,
                          acc.process_index, acc.num_processes)
        roll = self.rollout([self.train_examples[i] for i in idx], cfg.num_generations, True,
                            seed=cfg.seed * 100_003 + step * acc.num_processes + acc.process_index)
        logged = self.update(roll)
        self.scheduler.step()
        return logged

    def update(self, roll: dict[str, Any]) -> dict[str, float]:
        """Group-normalised advantages from ``roll["rewards"]`` and ``num_iterations`` clipped
        policy-gradient steps on the rollout's completions."""
        cfg, acc = self.cfg, self.accelerator
        adv = group_advantages(roll["rewards"], cfg.num_generations, cfg.scale_rewards).to(acc.device)
        batch = self._policy_inputs(roll)
        mask = roll["mask"]
        ref = self._ref_logp(batch)
        old = None
        if cfg.num_iterations > 1:
            with torch.no_grad():
                old = self.module(**batch)
        stats: dict[str, float] = {}
        for _ in range(cfg.num_iterations):
            logp = self.module(**batch)
            loss, stats = policy_loss(logp, logp.detach() if old is None else old, adv, mask, cfg.epsilon,
                                      cfg.beta, ref, cfg.loss_type)
            acc.backward(loss)
            if cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(self.raw_module.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        logged = {"train/loss": float(loss.detach()), "train/reward": float(roll["rewards"].mean()),
                  "train/reward_std": float(roll["rewards"].std()),
                  "train/completion_length": float(mask.sum(1).float().mean()), **{f"train/{k}": v for k, v in stats.items()}}
        for name, values in roll["parts"].items():
            logged[f"train/reward_{name}"] = float(np.mean(values))
        return logged

    def evaluate(self, examples: Sequence[Example] | None = None, num_samples: int = 1,
                 do_sample: bool = False) -> dict[str, float]:
        """Mean reward on held-out examples (per reward and total): greedy rollouts by default, or
        ``num_samples`` sampled rollouts per example (fixed seed: the policy's expected reward)."""
        self._setup()
        examples = self.eval_examples if examples is None else examples
        if not examples:
            return {}
        totals, parts, n = 0.0, {}, 0
        preds, gts = [], []
        for i in range(0, len(examples), self.cfg.batch_size):
            chunk = list(examples[i : i + self.cfg.batch_size])
            roll = self.rollout(chunk, num_samples, do_sample, seed=self.cfg.seed + 7 + i)
            totals += float(roll["rewards"].sum())
            for k, v in roll["parts"].items():
                parts[k] = parts.get(k, 0.0) + float(np.sum(v))
            n += len(roll["diagnoses"])
            preds += [d.scores for d in roll["diagnoses"]]
            gts += [e.gt.scores for e in chunk for _ in range(num_samples)]
        out = {"eval/reward": totals / n, **{f"eval/reward_{k}": v / n for k, v in parts.items()}}
        if self.cfg.format == "imagedoctor":
            # the values apart from the format: a run that only learns to write scores moves
            # eval/scores_written, not eval/score_mae_written
            out["eval/scores_written"], out["eval/score_mae_written"] = score_mae_written(preds, gts)
        return out

    def train(self, resume: str | None = None) -> dict[str, Any]:
        """Run to ``max_steps`` iterations (from a checkpoint when ``resume``); returns
        {"step", "model_dir", "train/...", "eval": {...}}."""
        cfg = self.cfg
        self._setup()
        acc = self.accelerator
        step = self._resume(resume)
        log = self._logger()
        bar = self._progress(step, "grpo")
        last: dict[str, float] = {}
        while step < cfg.max_steps:
            last = self.step(step)
            step += 1
            bar.update(1)
            bar.set_postfix(reward=f"{last['train/reward']:.3f}")
            if step % cfg.logging_steps == 0:
                log.log(step, last)
            if cfg.eval_steps and step % cfg.eval_steps == 0 and step < cfg.max_steps and acc.is_main_process:
                log.log(step, self.evaluate())
            if cfg.save_steps and step % cfg.save_steps == 0 and step < cfg.max_steps:
                self._checkpoint(step)
        bar.close()
        return self._finish(step, last, log)


# --- CLI -------------------------------------------------------------------------------------
def add_parser(subparsers) -> Any:
    """Register ``grpo`` on the trainer CLI (``python -m imagedoctor.trainer grpo --config C.yaml``)."""
    return add_trainer_command(subparsers, "grpo", "GRPO of the diagnoser with verifiable rewards", GRPOConfig,
                               GRPOTrainer)
