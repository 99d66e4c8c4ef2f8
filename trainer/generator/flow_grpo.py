"""The Flow-GRPO training loop (scalar, DenseFlow and BoxFlow rewards) for SD3 and FLUX LoRAs.

One iteration, per process::

    prompts (batch_size / num_generations of them, each repeated num_generations times)
      -> sample trajectories: SDE on the window [sde_window_start, +sde_window_size), ODE elsewhere,
         recording latents and (per-pixel) log-probs                      (no grad)
      -> decode, reward(images, prompts, latent_size=...) -> [B] or [B, h, w]
      -> advantages per prompt group (scalar) or per prompt and pixel (dense)
      -> num_iterations passes (TRL's mu) of: for every micro-batch and SDE step, recompute the
         step's log-prob with grad, PPO-clipped loss (+ beta * KL to the LoRA-disabled reference),
         accumulate; steps_per_generation optimiser steps per pass; EMA.

``accelerate`` handles devices, mixed precision and DDP (``accelerate launch -m imagedoctor.trainer
flow-grpo ...`` works unchanged). Checkpoints use the common format (`trainer.common.checkpoint`:
LoRA, optimiser, LR scheduler, per-process RNG, step, EMA and metric history, written to a temp
folder and renamed); ``resume`` continues bit-exactly because every random draw is keyed by
``(seed, iteration, process)``.

    trainer = FlowGRPOTrainer(config)            # or FlowGRPOTrainer(config, reward_fn=my_reward)
    trainer.train(resume="latest")               # -> OUTPUT_DIR/lora.safetensors
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..common import checkpoint as ckpt
from ..common.cli import add_trainer_command
from ..common.config import ConfigError
from ..common.metrics import MetricsLogger
from ..common.runtime import build_optimizer, make_accelerator
from .config import FlowGRPOConfig, GeneratorConfig
from .lora_export import add_lora, export_lora, lora_parameters
from .rewards import as_reward_tensor, load_reward
from .sde import (
    Conditioning,
    PipelineAdapter,
    dense_advantages,
    flow_grpo_loss,
    group_advantages,
    kl_to_reference,
    sample_trajectory,
    sde_step_with_logprob,
    step_dt,
)

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Shared helpers (also used by the generator SFT)
# --------------------------------------------------------------------------------------------
def weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def load_pipeline(path: str, family: str = "auto", dtype: torch.dtype = torch.float32):
    """Load an SD3 or FLUX diffusers pipeline (the same call users make)."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    if family == "auto":
        index = Path(os.path.expanduser(path)) / "model_index.json"
        name = json.loads(index.read_text()).get("_class_name", "") if index.exists() else ""
        family = "flux" if name.startswith("Flux") else "sd3"
    cls = FluxPipeline if family == "flux" else StableDiffusion3Pipeline
    pipe = cls.from_pretrained(os.path.expanduser(path), torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a .txt (one per line, blank lines and #comments skipped) or .jsonl ('prompt')."""
    path = Path(os.path.expanduser(str(path)))
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".jsonl":
        prompts = [str(json.loads(line)["prompt"]) for line in lines if line.strip()]
    else:
        prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ConfigError(f"config key 'prompts_file': {str(path)!r} holds no prompts. Fix: add one prompt per line")
    return prompts


class LoraTrainingState:
    """The LoRA parameters of a transformer and (optionally) their exponential moving average."""

    def __init__(self, transformer: torch.nn.Module, ema: bool, ema_decay: float):
        self.transformer = transformer
        self.params = lora_parameters(transformer)
        self.ema_decay = ema_decay
        self.ema = [p.detach().clone().float() for p in self.params] if ema else None

    def ema_tensors(self) -> dict[str, torch.Tensor]:
        """{"ema.<i>": tensor} for the checkpoint (empty without EMA)."""
        return {f"ema.{i}": e for i, e in enumerate(self.ema)} if self.ema is not None else {}

    def load_ema(self, tensors: dict[str, torch.Tensor], device) -> None:
        if self.ema is not None and tensors:
            self.ema = [tensors[f"ema.{i}"].to(device) for i in range(len(self.ema))]

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.ema is None:
            return
        for e, p in zip(self.ema, self.params):
            e.mul_(self.ema_decay).add_(p.detach().float(), alpha=1 - self.ema_decay)

    @contextlib.contextmanager
    def ema_weights(self):
        """Temporarily swap the EMA weights in (no-op without EMA)."""
        if self.ema is None:
            yield
            return
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, e in zip(self.params, self.ema):
                p.copy_(e.to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)


class GeneratorTrainer:
    """What the generator trainers share: pipeline + LoRA setup, optimiser, checkpoints, export."""

    trainer_name = "generator"

    def _setup_model(self, config: GeneratorConfig) -> None:
        self.accelerator = make_accelerator(config)
        self.device = self.accelerator.device
        self.pipeline = load_pipeline(config.model, config.family, weight_dtype(config.mixed_precision))
        self.pipeline.to(self.device)
        self.adapter = PipelineAdapter(self.pipeline, config.max_sequence_length)

    def _add_lora(self, config: GeneratorConfig, total_steps: int) -> None:
        transformer = self.pipeline.transformer
        add_lora(transformer, config.lora_r, config.lora_alpha, config.lora_target_modules,
                 init=_lora_init(config.lora_init), seed=config.seed)
        for p in lora_parameters(transformer):
            p.data = p.data.float()
        if config.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        optimizer, scheduler = build_optimizer(lora_parameters(transformer), config, total_steps)
        self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(transformer, optimizer, scheduler)
        self.transformer = transformer
        self.state = LoraTrainingState(transformer, config.ema, config.ema_decay)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.log = MetricsLogger(config.output_dir, self.accelerator.is_main_process, config.report_to)

    # -- checkpoints and export ------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        cfg = self.config
        return ckpt.save_checkpoint(Path(cfg.output_dir) / ckpt.CHECKPOINT_DIR, self.step, self.transformer,
                                    self.optimizer, self.lr_scheduler, cfg.to_dict(), keep=cfg.save_total_limit,
                                    accelerator=self.accelerator, extra_tensors=self.state.ema_tensors(),
                                    extra={"history": self.history})

    def load_checkpoint(self, path: str | Path) -> None:
        state = ckpt.load_checkpoint(path, self.transformer, self.optimizer, self.lr_scheduler, self.accelerator)
        self.step = state["step"]
        self.history = list(state["extra"].get("history", []))
        self.state.load_ema(state["extra_tensors"], self.device)
        logger.info("resumed from %s at step %d", path, self.step)

    def _begin(self, resume: str | None) -> None:
        out_dir = Path(self.config.output_dir)
        if self.accelerator.is_main_process:
            self.config.save(out_dir / "config.yaml")
        path = ckpt.resolve_resume(resume, out_dir / ckpt.CHECKPOINT_DIR)
        if path is not None:
            self.load_checkpoint(path)

    def _end(self) -> dict[str, Any]:
        self.save_checkpoint()
        path = self.export()
        self.log.close()
        return {"step": self.step, "lora_path": str(path), "history": self.history}

    def export(self, path: str | Path | None = None) -> Path:
        """Write the (EMA, if configured) LoRA in the diffusers/ComfyUI format."""
        cfg = self.config
        path = Path(path) if path else Path(cfg.output_dir) / cfg.export_name
        if self.accelerator.is_main_process:
            ctx = self.state.ema_weights() if (cfg.ema and cfg.export_ema) else contextlib.nullcontext()
            with ctx:
                export_lora(self.transformer, path, dtype=getattr(torch, cfg.export_dtype),
                            metadata={"imagedoctor.trainer": self.trainer_name,
                                      "imagedoctor.family": self.adapter.family})
        self.accelerator.wait_for_everyone()
        return path


def seeded_generators(seed: int, *keys: int, count: int) -> list[torch.Generator]:
    """``count`` CPU generators keyed by ``(seed, *keys, i)`` (independent of any global RNG)."""
    base = np.random.SeedSequence([seed, *keys]).generate_state(count, dtype=np.uint64)
    return [torch.Generator().manual_seed(int(s) & 0x7FFF_FFFF_FFFF_FFFF) for s in base]


def initial_noise(generators: list[torch.Generator], shape: tuple[int, int, int], device) -> torch.Tensor:
    """``[B, C, h, w]`` standard normal noise, one generator per image (batch-size independent)."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------
class FlowGRPOTrainer(GeneratorTrainer):
    """Flow-GRPO with scalar, DenseFlow or BoxFlow rewards on an SD3/FLUX LoRA.

    Args:
        config: a validated `FlowGRPOConfig`.
        reward_fn: a reward function (see `generator.rewards`); default: built from
            ``config.reward`` / ``config.reward_kwargs``.
    """

    trainer_name = "flow-grpo"

    def __init__(self, config: FlowGRPOConfig, reward_fn: Callable[..., Any] | None = None):
        self.config = config
        self.prompts = read_prompts(config.prompts_file)
        self.reward_fn = reward_fn if reward_fn is not None else self._build_reward()
        self.dense = config.reward_mode in ("dense", "box")
        total = config.max_steps * config.num_iterations * config.steps_per_generation
        self._setup_model(config)
        self.latent_size = self.adapter.latent_size(config.resolution, config.resolution)
        self.prompt_cache = self._cache_prompts() if config.cache_prompt_embeddings else None
        self._add_lora(config, total)

    def _build_reward(self):
        kwargs = dict(self.config.reward_kwargs)
        if self.config.reward == "diagnoser":
            kwargs.setdefault("mode", self.config.reward_mode)
            if self.config.reward_mode == "box":
                kwargs.setdefault("alpha", self.config.box_alpha)
        return load_reward(self.config.reward, **kwargs)

    # -- sampling -----------------------------------------------------------------------
    def _encode(self, prompts: Sequence[str], guidance_scale: float) -> Conditioning:
        if self.prompt_cache is None:
            return self.adapter.encode(prompts, guidance_scale, self.device)
        if guidance_scale != self.config.guidance_scale:
            raise ValueError("with cache_prompt_embeddings, sample at the config's guidance_scale "
                             f"({self.config.guidance_scale}), not {guidance_scale}")
        missing = sorted({p for p in prompts if p not in self.prompt_cache})
        if missing:
            raise ValueError(f"prompts {missing[:3]} were not cached; with cache_prompt_embeddings only "
                             "prompts from prompts_file can be sampled")
        rows = [self.prompt_cache[p] for p in prompts]
        stack = lambda name: None if getattr(rows[0], name) is None else torch.cat(  # noqa: E731
            [getattr(r, name) for r in rows]).to(self.device)
        return Conditioning(stack("prompt_embeds"), stack("pooled"), stack("neg_prompt_embeds"),
                            stack("neg_pooled"), None if rows[0].text_ids is None else rows[0].text_ids.to(self.device))

    @torch.no_grad()
    def _cache_prompts(self, chunk: int = 8) -> dict[str, Conditioning]:
        """Encode every training prompt once (rows kept on CPU), then drop the text encoders."""
        cache: dict[str, Conditioning] = {}
        unique = list(dict.fromkeys(self.prompts))
        for start in range(0, len(unique), chunk):
            part = unique[start:start + chunk]
            cond = self.adapter.encode(part, self.config.guidance_scale, self.device)
            for i, prompt in enumerate(part):
                row = cond.select(slice(i, i + 1))
                cache[prompt] = Conditioning(*(None if t is None else t.cpu() for t in (
                    row.prompt_embeds, row.pooled, row.neg_prompt_embeds, row.neg_pooled, row.text_ids)))
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            if getattr(self.pipeline, name, None) is not None:
                setattr(self.pipeline, name, None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return cache

    def _noise(self, generators) -> torch.Tensor:
        return initial_noise(generators, (self.adapter.latent_channels, *self.latent_size), self.device)

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], generators: list[torch.Generator], sde_steps: Sequence[int],
               num_steps: int | None = None, guidance_scale: float | None = None, sde_seed: int = 0):
        """Sample ``len(prompts)`` trajectories in chunks of ``sample_batch_size``.

        Returns ``(trajectory fields concatenated, conditioning, timesteps)``.
        """
        cfg = self.config
        gs = cfg.guidance_scale if guidance_scale is None else guidance_scale
        timesteps = self.adapter.set_timesteps(num_steps or cfg.num_steps, cfg.resolution, cfg.resolution, self.device)
        cond = self._encode(prompts, gs)
        noise = self._noise(generators)
        chunks = []
        for k, start in enumerate(range(0, len(prompts), cfg.sample_batch_size)):
            idx = slice(start, start + cfg.sample_batch_size)
            sde_gen = torch.Generator(device="cpu").manual_seed(sde_seed * 1000 + k)
            chunks.append(sample_trajectory(
                self.adapter, self.model, cond.select(idx), noise[idx], timesteps, sde_steps, cfg.noise_level, gs,
                generator=sde_gen, per_pixel=self.dense, autocast=self.accelerator.autocast,
            ))
        latents = torch.cat([c.latents for c in chunks])
        log_probs = torch.cat([c.log_probs for c in chunks])
        maps = torch.cat([c.log_prob_maps for c in chunks]) if self.dense else None
        return latents, log_probs, maps, cond, timesteps

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], seeds: Sequence[int], num_steps: int | None = None,
                 guidance_scale: float | None = None, use_ema: bool = False) -> torch.Tensor:
        """Deterministic (ODE) images ``[B, 3, H, W]`` in [0, 1] for ``prompts`` with per-image ``seeds``."""
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        ctx = self.state.ema_weights() if use_ema else contextlib.nullcontext()
        with ctx:
            latents, *_ = self.sample(prompts, gens, [], num_steps, guidance_scale)
        return self.adapter.decode(latents[:, -1]).cpu()

    def evaluate(self, prompts: Sequence[str], seeds: Sequence[int], reward_fn=None, **kwargs) -> float:
        """Mean reward (maps averaged) of `generate` images: the held-out measure of learning."""
        images = self.generate(prompts, seeds, **kwargs)
        reward = as_reward_tensor((reward_fn or self.reward_fn)(images, list(prompts), latent_size=self.latent_size),
                                  len(prompts))
        return float(reward.mean())

    # -- one iteration --------------------------------------------------------------------
    def _iteration_prompts(self, step: int) -> list[str]:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, step, self.accelerator.process_index, 1])
        n = cfg.batch_size // cfg.num_generations
        picks = rng.choice(len(self.prompts), size=n, replace=n > len(self.prompts))
        return [self.prompts[i] for i in picks for _ in range(cfg.num_generations)]

    def _rewards(self, images: torch.Tensor, prompts: list[str], step: int) -> torch.Tensor:
        reward = as_reward_tensor(self.reward_fn(images, prompts, latent_size=self.latent_size, step=step),
                                  len(prompts), self.latent_size)
        if self.dense and reward.ndim == 1:
            reward = reward[:, None, None].expand(-1, *self.latent_size).clone()
        if not self.dense and reward.ndim == 3:
            raise ValueError(f"reward_mode 'scalar' but the reward returned maps {tuple(reward.shape)}; "
                             "set reward_mode: dense (or box), or return one value per image")
        return reward

    def _advantages(self, rewards: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        cfg = self.config
        if self.dense:
            return dense_advantages(rewards, prompts, cfg.std_floor, cfg.dense_normalise, cfg.adv_clip)
        return group_advantages(rewards, prompts, cfg.adv_eps, cfg.adv_clip)

    def _micro_loss(self, latents, old_lp, old_maps, adv, cond: Conditioning, idx, j: int, timesteps):
        """Loss of micro-batch ``idx`` at SDE step ``j`` (with grad through the LoRA)."""
        cfg = self.config
        scheduler = self.pipeline.scheduler
        x, x_next = latents[idx, j], latents[idx, j + 1]
        t = timesteps[j].expand(x.shape[0])
        c = cond.select(idx)
        with self.accelerator.autocast():
            v = self.adapter.velocity(self.model, x, t, c, cfg.guidance_scale)
        _, lp, mean, std = sde_step_with_logprob(scheduler, v, t, x, cfg.noise_level, prev_sample=x_next,
                                                 per_pixel=self.dense)
        kl = None
        if cfg.beta > 0:
            with torch.no_grad(), _adapters_disabled(self.transformer), self.accelerator.autocast():
                v_ref = self.adapter.velocity(self.model, x, t, c, cfg.guidance_scale)
            _, _, mean_ref, _ = sde_step_with_logprob(scheduler, v_ref, t, x, cfg.noise_level, prev_sample=x_next)
            kl = kl_to_reference(mean, mean_ref, std, step_dt(scheduler, t, x.float()), cfg.kl_normalisation)
        old = old_maps[idx, j] if self.dense else old_lp[idx, j]
        return flow_grpo_loss(lp, old.to(lp.device), adv[idx].to(lp.device), cfg.epsilon, kl, cfg.beta)

    def _update(self, latents, old_lp, old_maps, adv, cond, timesteps, sde_steps) -> dict[str, float]:
        """Accumulate the loss over micro-batches and SDE steps; optimiser step(s); EMA."""
        cfg = self.config
        self.model.train()
        n_micro = cfg.batch_size // cfg.micro_batch_size
        per_opt = n_micro // cfg.steps_per_generation
        stats: dict[str, list[float]] = {"loss": [], "policy_loss": [], "kl": [], "clip_fraction": [], "approx_kl": []}
        grad_norms = []
        for m in range(n_micro):
            idx = slice(m * cfg.micro_batch_size, (m + 1) * cfg.micro_batch_size)
            last_of_step = (m + 1) % per_opt == 0
            for k, j in enumerate(sde_steps):
                sync = last_of_step and k == len(sde_steps) - 1
                with contextlib.nullcontext() if sync else self.accelerator.no_sync(self.model):
                    out = self._micro_loss(latents, old_lp, old_maps, adv, cond, idx, j, timesteps)
                    self.accelerator.backward(out.loss / (per_opt * len(sde_steps)))
                for key in stats:
                    stats[key].append(float(getattr(out, key).detach()))
            if last_of_step:
                if cfg.max_grad_norm:
                    grad_norms.append(float(self.accelerator.clip_grad_norm_(self.state.params, cfg.max_grad_norm)))
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.state.update_ema()
        out = {k: float(np.mean(v)) for k, v in stats.items()}
        if grad_norms:
            out["grad_norm"] = float(np.mean(grad_norms))
        out["lr"] = float(self.lr_scheduler.get_last_lr()[0])
        return out

    def iteration(self, step: int) -> dict[str, float]:
        """One sample -> reward -> update iteration; returns logged metrics."""
        cfg = self.config
        t0 = time.perf_counter()
        prompts = self._iteration_prompts(step)
        gens = seeded_generators(cfg.seed, step, self.accelerator.process_index, count=len(prompts))
        self.model.eval()
        latents, lp, maps, cond, timesteps = self.sample(prompts, gens, cfg.sde_steps, sde_seed=cfg.seed + 7919 * (step + 1))
        t_sample = time.perf_counter()
        images = self.adapter.decode(latents[:, -1])
        rewards = self._rewards(images.cpu(), prompts, step)
        adv = self._advantages(rewards, prompts)
        t_reward = time.perf_counter()
        for _ in range(cfg.num_iterations):  # TRL's mu: passes over the same samples
            metrics = self._update(latents, lp, maps, adv, cond, timesteps, cfg.sde_steps)
        t_end = time.perf_counter()
        per_image = rewards.reshape(len(prompts), -1).mean(dim=1).to(self.device)
        all_rewards = self.accelerator.gather(per_image)
        metrics.update(reward_mean=float(all_rewards.mean()), reward_std=float(all_rewards.std()),
                       time_sample=t_sample - t0, time_reward=t_reward - t_sample, time_update=t_end - t_reward,
                       time_iteration=t_end - t0)
        self._last_images = images
        return metrics

    # -- loop ---------------------------------------------------------------------------
    def train(self, resume: str | None = None) -> dict[str, Any]:
        """Run to ``max_steps`` iterations (continuing from a checkpoint when ``resume`` is "latest"
        or a folder) and export the LoRA. Returns {"step", "lora_path", "history"}."""
        from tqdm.auto import tqdm

        cfg = self.config
        self._begin(resume)
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="flow-grpo",
                   disable=not (cfg.progress_bar and self.accelerator.is_main_process))
        while self.step < cfg.max_steps:
            metrics = self.iteration(self.step)
            self.step += 1
            self.history.append(metrics)
            self._log(metrics)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.4f}", loss=f"{metrics['loss']:.3g}")
            if cfg.save_steps and self.step % cfg.save_steps == 0 and self.step < cfg.max_steps:
                self.save_checkpoint()
        bar.close()
        return self._end()

    def _log(self, metrics: dict[str, float]) -> None:
        cfg = self.config
        if self.step % cfg.logging_steps == 0:
            self.log.log(self.step, {f"train/{k}": v for k, v in metrics.items()})
        if cfg.sample_steps and self.step % cfg.sample_steps == 0:
            self.log.log_images(self.step, "samples", self._last_images[: cfg.num_generations])


def _lora_init(value: str) -> str | bool:
    return {"true": True, "false": False}.get(str(value).lower(), value)


@contextlib.contextmanager
def _adapters_disabled(transformer):
    """The reference model: the same transformer with its LoRA switched off."""
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()


__all__ = ["FlowGRPOTrainer", "GeneratorTrainer", "load_pipeline", "read_prompts"]


# --------------------------------------------------------------------------------------------
# CLI: python -m imagedoctor.trainer flow-grpo --config CONFIG.yaml
# --------------------------------------------------------------------------------------------
def add_parser(subparsers) -> None:
    add_trainer_command(
        subparsers, "flow-grpo", "Flow-GRPO / DenseFlow / BoxFlow LoRA training of an SD3 or FLUX generator",
        FlowGRPOConfig, FlowGRPOTrainer,
        description="Reinforcement fine-tuning of a flow-matching text-to-image model (LoRA) with scalar, heatmap "
                    "(DenseFlow) or box (BoxFlow) rewards.")
