"""The Flow-GRPO training loop (scalar, DenseFlow and BoxFlow rewards) for SD3 and FLUX LoRAs.

One iteration, per process::

    prompts (batch_size / group_size of them, each repeated group_size times)
      -> sample trajectories: SDE on the window [sde_window_start, +sde_window_size), ODE elsewhere,
         recording latents and (per-pixel) log-probs                      (no grad)
      -> decode, reward(images, prompts, latent_size=...) -> [B] or [B, h, w]
      -> advantages per prompt group (scalar) or per prompt and pixel (dense)
      -> for every micro-batch and SDE step: recompute the step's log-prob with grad, PPO-clipped
         loss (+ beta * KL to the LoRA-disabled reference), accumulate; optimiser step(s); EMA.

``accelerate`` handles devices, mixed precision and DDP (``accelerate launch -m imagedoctor.trainer
flow-grpo ...`` works unchanged). Checkpoints (``save_state``: LoRA, optimiser, LR scheduler, RNG,
plus step and EMA) are written to a temp folder and renamed, so a crash never leaves half a
checkpoint; ``resume`` continues bit-exactly because every random draw is keyed by
``(seed, iteration, process)``.

    trainer = FlowGRPOTrainer(config)            # or FlowGRPOTrainer(config, reward_fn=my_reward)
    trainer.train(resume="latest")               # -> OUTPUT_DIR/lora.safetensors
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

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
from .config import ConfigError, FlowGRPOConfig, GeneratorConfig
from .rewards import as_reward_tensor, load_reward
from .lora_export import add_lora, export_lora, load_lora_state_dict, lora_parameters, lora_state_dict

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LORA_CHECKPOINT_FILE = "lora_weights.safetensors"
TRAINER_STATE_FILE = "trainer_state.pt"


# --------------------------------------------------------------------------------------------
# Shared helpers (also used by sft_generator)
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


def make_accelerator(config: GeneratorConfig, project_name: str):
    """An `Accelerator` with the config's mixed precision and (optional) TensorBoard tracker."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    log_with = "tensorboard" if config.logging == "tensorboard" else None
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=config.output_dir, logging_dir=str(Path(config.output_dir) / "logs")),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    if log_with and accelerator.is_main_process:
        hparams = {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(project_name, config=hparams)
    return accelerator


class LoraTrainingState:
    """LoRA parameters, their EMA, and checkpoint hooks for `accelerate.save_state`.

    The hooks make ``save_state`` write only the LoRA (not the frozen base model) and
    ``load_state`` read it back, so checkpoints stay small and resume is exact.
    """

    def __init__(self, accelerator, transformer: torch.nn.Module, ema: bool, ema_decay: float):
        self.accelerator = accelerator
        self.transformer = transformer
        self.params = lora_parameters(transformer)
        self.ema_decay = ema_decay
        self.ema = [p.detach().clone().float() for p in self.params] if ema else None
        accelerator.register_save_state_pre_hook(self._save_hook)
        accelerator.register_load_state_pre_hook(self._load_hook)

    def _save_hook(self, models, weights, output_dir):
        from safetensors.torch import save_file

        if self.accelerator.is_main_process:
            save_file({k: v.contiguous().cpu() for k, v in lora_state_dict(self.transformer).items()},
                      str(Path(output_dir) / LORA_CHECKPOINT_FILE))
        while weights:
            weights.pop()

    def _load_hook(self, models, input_dir):
        from safetensors.torch import load_file

        load_lora_state_dict(self.transformer, load_file(str(Path(input_dir) / LORA_CHECKPOINT_FILE)))
        while models:
            models.pop()

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


def build_optimizer(config: GeneratorConfig, params: Sequence[torch.nn.Parameter], total_steps: int):
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW(
        params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay, eps=config.adam_epsilon,
    )
    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps,
                              num_training_steps=max(1, total_steps))
    return optimizer, scheduler


def save_checkpoint(accelerator, output_dir: str | Path, step: int, extra: dict, keep: int) -> Path:
    """``save_state`` into ``checkpoints/checkpoint-STEP`` atomically (temp folder + rename)."""
    root = Path(output_dir) / CHECKPOINT_DIR
    final = root / f"checkpoint-{step:07d}"
    tmp = root / f".tmp-checkpoint-{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        torch.save({"step": step, **extra}, tmp / TRAINER_STATE_FILE)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        checkpoints = sorted(p for p in root.glob("checkpoint-*") if p.is_dir())
        for old in checkpoints[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def find_checkpoint(output_dir: str | Path, resume: str) -> Path:
    """``resume`` = "latest" (newest complete checkpoint in output_dir) or a checkpoint folder."""
    if resume != "latest":
        path = Path(resume)
        if not (path / TRAINER_STATE_FILE).exists():
            raise FileNotFoundError(f"--resume {resume!r} is not a checkpoint folder (no {TRAINER_STATE_FILE})")
        return path
    found = sorted(p for p in (Path(output_dir) / CHECKPOINT_DIR).glob("checkpoint-*") if (p / TRAINER_STATE_FILE).exists())
    if not found:
        raise FileNotFoundError(f"--resume latest: no checkpoint in {Path(output_dir) / CHECKPOINT_DIR}")
    return found[-1]


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
class FlowGRPOTrainer:
    """Flow-GRPO with scalar, DenseFlow or BoxFlow rewards on an SD3/FLUX LoRA.

    Args:
        config: a validated `FlowGRPOConfig`.
        reward_fn: a reward function (see `generator_rewards`); default: built from
            ``config.reward`` / ``config.reward_kwargs``.
    """

    def __init__(self, config: FlowGRPOConfig, reward_fn: Callable[..., Any] | None = None):
        self.config = config
        self.prompts = read_prompts(config.prompts_file)
        self.reward_fn = reward_fn if reward_fn is not None else self._build_reward()
        self.dense = config.reward_mode in ("dense", "box")
        self.accelerator = make_accelerator(config, "flow_grpo")
        self.device = self.accelerator.device
        self.pipeline = load_pipeline(config.pretrained_model, config.family, weight_dtype(config.mixed_precision))
        self.pipeline.to(self.device)
        self.adapter = PipelineAdapter(self.pipeline, config.max_sequence_length)
        self.latent_size = self.adapter.latent_size(config.resolution, config.resolution)
        self.prompt_cache = self._cache_prompts() if config.cache_prompt_embeddings else None
        transformer = self.pipeline.transformer
        add_lora(transformer, config.lora_rank, config.lora_alpha, config.lora_targets,
                 init=_lora_init(config.lora_init), seed=config.seed)
        for p in lora_parameters(transformer):
            p.data = p.data.float()
        if config.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        optimizer, scheduler = build_optimizer(
            config, lora_parameters(transformer), config.num_iterations * config.optimizer_steps_per_iteration)
        self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(transformer, optimizer, scheduler)
        self.transformer = transformer
        self.state = LoraTrainingState(self.accelerator, transformer, config.ema, config.ema_decay)
        self.step = 0
        self.history: list[dict[str, float]] = []

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
        n = cfg.batch_size // cfg.group_size
        picks = rng.choice(len(self.prompts), size=n, replace=n > len(self.prompts))
        return [self.prompts[i] for i in picks for _ in range(cfg.group_size)]

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
            kl = kl_to_reference(mean, mean_ref, std, step_dt(scheduler, t, x.float()))
        old = old_maps[idx, j] if self.dense else old_lp[idx, j]
        return flow_grpo_loss(lp, old.to(lp.device), adv[idx].to(lp.device), cfg.clip_range, kl, cfg.beta)

    def _update(self, latents, old_lp, old_maps, adv, cond, timesteps, sde_steps) -> dict[str, float]:
        """Accumulate the loss over micro-batches and SDE steps; optimiser step(s); EMA."""
        cfg = self.config
        self.model.train()
        n_micro = cfg.batch_size // cfg.micro_batch_size
        per_opt = n_micro // cfg.optimizer_steps_per_iteration
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
    def train(self, resume: str | None = None) -> list[dict[str, float]]:
        """Run ``num_iterations`` (continuing from a checkpoint when ``resume``), export the LoRA.

        Returns the per-iteration metrics of this run.
        """
        from tqdm.auto import tqdm

        cfg = self.config
        out_dir = Path(cfg.output_dir)
        if self.accelerator.is_main_process:
            out_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(out_dir / "config.yaml")
        if resume:
            self.load_checkpoint(find_checkpoint(out_dir, resume))
        bar = tqdm(total=cfg.num_iterations, initial=self.step, desc="flow-grpo",
                   disable=not (cfg.progress_bar and self.accelerator.is_main_process))
        while self.step < cfg.num_iterations:
            metrics = self.iteration(self.step)
            self.step += 1
            self.history.append(metrics)
            self._log(metrics)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.4f}", loss=f"{metrics['loss']:.3g}")
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.num_iterations:
                self.save_checkpoint()
        bar.close()
        self.save_checkpoint()
        self.export()
        self.accelerator.end_training()
        return self.history

    def _log(self, metrics: dict[str, float]) -> None:
        cfg = self.config
        if cfg.logging == "none":
            return
        if self.step % cfg.log_every == 0:
            self.accelerator.log({f"train/{k}": v for k, v in metrics.items()}, step=self.step)
        if cfg.sample_every and self.step % cfg.sample_every == 0 and self.accelerator.is_main_process:
            with contextlib.suppress(Exception):  # image logging must never stop training
                tracker = self.accelerator.get_tracker("tensorboard", unwrap=True)
                tracker.add_images("samples", self._last_images[: cfg.group_size].float().cpu(), self.step,
                                   dataformats="NCHW")

    # -- checkpoints and export ------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        extra = {"ema": self.state.ema, "history": self.history}
        return save_checkpoint(self.accelerator, self.config.output_dir, self.step, extra, self.config.keep_checkpoints)

    def load_checkpoint(self, path: str | Path) -> None:
        path = Path(path)
        self.accelerator.load_state(str(path))
        state = torch.load(path / TRAINER_STATE_FILE, map_location="cpu", weights_only=False)
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        if self.state.ema is not None and state.get("ema") is not None:
            self.state.ema = [e.to(self.device) for e in state["ema"]]
        logger.info("resumed from %s at iteration %d", path, self.step)

    def export(self, path: str | Path | None = None) -> Path:
        """Write the (EMA, if configured) LoRA in the diffusers/ComfyUI format."""
        cfg = self.config
        path = Path(path) if path else Path(cfg.output_dir) / cfg.export_name
        if self.accelerator.is_main_process:
            ctx = self.state.ema_weights() if (cfg.ema and cfg.export_ema) else contextlib.nullcontext()
            with ctx:
                export_lora(self.transformer, path, dtype=getattr(torch, cfg.export_dtype),
                            metadata={"imagedoctor.trainer": "flow-grpo", "imagedoctor.family": self.adapter.family})
        self.accelerator.wait_for_everyone()
        return path


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


__all__ = ["FlowGRPOTrainer", "load_pipeline", "read_prompts", "save_checkpoint", "find_checkpoint"]


# --------------------------------------------------------------------------------------------
# CLI: python -m imagedoctor.trainer flow-grpo --config CONFIG.yaml
# --------------------------------------------------------------------------------------------
def add_config_arguments(parser) -> None:
    """``--config``, ``--set KEY=VALUE``, ``--resume`` and ``--help-config`` (shared with sft-generator)."""
    parser.add_argument("--config", help="YAML config (flat mapping of config keys; see docs/training-generator.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (value parsed as YAML); repeatable")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                        help="continue from the newest checkpoint in output_dir (or the given folder)")
    parser.add_argument("--help-config", action="store_true", help="list every config key with its default and help")


def config_from_args(args, cls):
    """Validated config from ``--config`` + ``--set`` (raises `ConfigError` before any model loads)."""
    from .config import load_config, parse_override

    overrides = dict(parse_override(o) for o in args.overrides)
    if not args.config and not overrides:
        raise ConfigError("no config given. Fix: pass --config CONFIG.yaml (see docs/training-generator.md)")
    return load_config(args.config, cls, overrides)


def run_command(args, config_cls, trainer_cls) -> int:
    """Run one generator-training command (``flow-grpo``, ``sft-generator``) from parsed CLI args."""
    if args.help_config:
        print(config_cls.help_text())
        return 0
    config = config_from_args(args, config_cls)
    trainer = trainer_cls(config)
    trainer.train(resume=args.resume)
    if trainer.accelerator.is_main_process:
        print(f"LoRA written to {Path(config.output_dir) / config.export_name}")
    return 0


def _run(args) -> int:
    return run_command(args, FlowGRPOConfig, FlowGRPOTrainer)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "flow-grpo", help="Flow-GRPO / DenseFlow / BoxFlow LoRA training of an SD3 or FLUX generator",
        description="Reinforcement fine-tuning of a flow-matching text-to-image model (LoRA) with "
                    "scalar, heatmap (DenseFlow) or box (BoxFlow) rewards.")
    add_config_arguments(parser)
    parser.set_defaults(func=_run)
