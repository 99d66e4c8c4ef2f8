"""Flow-GRPO building blocks: SDE/ODE steps with log-probabilities, a windowed-SDE sampler,
group advantages (scalar and per-pixel), and the PPO-clipped loss (scalar and dense).

Notation (Flow-GRPO): the flow-matching sample at noise level ``sigma`` moves to ``sigma_next``
(``dt = sigma_next - sigma < 0``) along the model velocity ``v``. The SDE step is Gaussian::

    std   = a * sqrt(sigma / (1 - sigma))          (at sigma == 1 the denominator uses sigmas[1])
    mean  = x * (1 + std^2 / (2 sigma) * dt) + v * (1 + std^2 (1 - sigma) / (2 sigma)) * dt
    x'    = mean + std * sqrt(-dt) * eps

and ``log_prob`` is the log-density of ``x'`` under ``N(mean, (std sqrt(-dt))^2)``, averaged over
all non-batch dimensions (or, with ``per_pixel=True``, over channels only: a ``[B, h, w]`` map on
the latent grid, which DenseFlow/BoxFlow need).

Latents here are always *unpacked* ``[B, C, h, w]``; `PipelineAdapter` packs them for FLUX.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------
def _step_indices(scheduler, timestep: torch.Tensor | float, batch: int) -> torch.Tensor:
    """Indices into ``scheduler.timesteps`` of ``timestep`` (scalar or ``[B]``), as a ``[B]`` long tensor."""
    schedule = scheduler.timesteps.detach().float().cpu()
    t = torch.as_tensor(timestep).detach().float().cpu().reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"timestep has {t.numel()} values for a batch of {batch}")
    return (schedule[None, :] - t[:, None]).abs().argmin(dim=1)


def _sigmas(scheduler, timestep, sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sigma, sigma_next, sigma_max)`` broadcastable to ``sample`` (float32)."""
    idx = _step_indices(scheduler, timestep, sample.shape[0])
    sigmas = scheduler.sigmas.detach().float().cpu()
    shape = (-1,) + (1,) * (sample.ndim - 1)
    sigma = sigmas[idx].view(shape).to(sample.device)
    sigma_next = sigmas[idx + 1].view(shape).to(sample.device)
    sigma_max = sigmas[1].to(sample.device)
    return sigma, sigma_next, sigma_max


def sde_std(sigma: torch.Tensor, sigma_max: torch.Tensor, noise_level: float) -> torch.Tensor:
    """Flow-GRPO's ``std_dev_t = a * sqrt(sigma / (1 - sigma))`` (``1 - sigmas[1]`` at sigma == 1)."""
    return noise_level * torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma)))


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, std^2)."""
    return -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - LOG_SQRT_2PI


def reduce_log_prob(log_prob: torch.Tensor, per_pixel: bool) -> torch.Tensor:
    """Mean over non-batch dims (``[B]``) or, per pixel, over channels only (``[B, h, w]``)."""
    if per_pixel:
        if log_prob.ndim != 4:
            raise ValueError(f"per_pixel log-probs need unpacked latents [B, C, h, w], got {tuple(log_prob.shape)}")
        return log_prob.mean(dim=1)
    return log_prob.mean(dim=tuple(range(1, log_prob.ndim)))


def sde_step_with_logprob(
    scheduler,
    model_output: torch.Tensor,
    timestep: torch.Tensor | float,
    sample: torch.Tensor,
    noise_level: float = 0.7,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    per_pixel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Flow-GRPO SDE step of a `FlowMatchEulerDiscreteScheduler` with its log-probability.

    Args:
        scheduler: a flow-matching scheduler after ``set_timesteps`` (reads ``timesteps``/``sigmas``).
        model_output: velocity ``v``, same shape as ``sample`` (``[B, C, h, w]`` or ``[B, N, D]``).
        timestep: the current timestep (scalar or ``[B]``, values of ``scheduler.timesteps``).
        sample: the current latents ``x``.
        noise_level: ``a`` in ``std = a * sqrt(sigma / (1 - sigma))``.
        prev_sample: if given, the log-prob of this sample is computed instead of drawing one.
        generator: torch generator(s) for the noise.
        per_pixel: return ``log_prob`` as a ``[B, h, w]`` map (mean over channels).

    Returns:
        ``(prev_sample, log_prob, prev_sample_mean, std_dev_t)``: the next latents (in
        ``sample.dtype``), ``[B]`` (or ``[B, h, w]``) log-probs in float32, the float32 mean, and
        ``std_dev_t`` (``[B, 1, ...]``; the step's standard deviation is ``std_dev_t * sqrt(-dt)``).
    """
    from diffusers.utils.torch_utils import randn_tensor

    x = sample.float()
    v = model_output.float()
    sigma, sigma_next, sigma_max = _sigmas(scheduler, timestep, x)
    dt = sigma_next - sigma
    std_dev_t = sde_std(sigma, sigma_max, noise_level)
    mean = x * (1 + std_dev_t**2 / (2 * sigma) * dt) + v * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    step_std = std_dev_t * torch.sqrt(-dt)
    if prev_sample is None:
        noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        prev = mean + step_std * noise
    else:
        prev = prev_sample.float()
    log_prob = reduce_log_prob(gaussian_log_prob(prev.detach(), mean, step_std), per_pixel)
    return prev.to(sample.dtype), log_prob, mean, std_dev_t


def ode_step(scheduler, model_output: torch.Tensor, timestep, sample: torch.Tensor) -> torch.Tensor:
    """Deterministic Euler step ``x' = x + (sigma_next - sigma) * v`` (float32 math)."""
    sigma, sigma_next, _ = _sigmas(scheduler, timestep, sample.float())
    return (sample.float() + (sigma_next - sigma) * model_output.float()).to(sample.dtype)


# --------------------------------------------------------------------------------------------
# Pipelines: one interface over SD3 and FLUX
# --------------------------------------------------------------------------------------------
def pipeline_family(pipeline) -> str:
    """"sd3" or "flux" from a diffusers pipeline instance."""
    name = type(pipeline).__name__
    if name.startswith("StableDiffusion3"):
        return "sd3"
    if name.startswith("Flux"):
        return "flux"
    raise ValueError(f"unsupported pipeline {name}; use a StableDiffusion3Pipeline or FluxPipeline")


@dataclass
class Conditioning:
    """Encoded prompts for one batch (``[B, L, D]`` embeddings, ``[B, P]`` pooled)."""

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor
    neg_prompt_embeds: torch.Tensor | None = None
    neg_pooled: torch.Tensor | None = None
    text_ids: torch.Tensor | None = None

    def select(self, index: torch.Tensor | slice) -> "Conditioning":
        """The rows ``index`` of every batched tensor."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return Conditioning(
            pick(self.prompt_embeds), pick(self.pooled), pick(self.neg_prompt_embeds), pick(self.neg_pooled),
            self.text_ids,
        )


class PipelineAdapter:
    """What the sampler and trainer need from a diffusers flow pipeline, for SD3 and FLUX.

    The transformer is passed to `velocity` explicitly so the trainer can call its
    accelerate-wrapped (DDP) copy; everything else comes from the pipeline.
    """

    def __init__(self, pipeline, max_sequence_length: int = 128):
        self.pipeline = pipeline
        self.family = pipeline_family(pipeline)
        self.max_sequence_length = max_sequence_length
        self.vae_scale = 2 ** (len(pipeline.vae.config.block_out_channels) - 1)

    # -- shapes ------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        return int(self.pipeline.vae.config.latent_channels)

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Unpacked latent grid ``(h, w)`` for an image of ``height x width`` pixels."""
        multiple = self.vae_scale * (2 if self.family == "flux" else self.pipeline.transformer.config.patch_size)
        if height % multiple or width % multiple:
            raise ValueError(f"resolution {width}x{height} must be a multiple of {multiple} for this {self.family} model")
        return height // self.vae_scale, width // self.vae_scale

    # -- prompts ---------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: Sequence[str], guidance_scale: float, device) -> Conditioning:
        """Encode ``prompts`` (and empty negatives when ``guidance_scale > 1`` on SD3)."""
        pipe = self.pipeline
        prompts = list(prompts)
        if self.family == "sd3":
            cfg = guidance_scale > 1.0
            pe, ne, pp, npool = pipe.encode_prompt(
                prompt=prompts, prompt_2=None, prompt_3=None, device=device, do_classifier_free_guidance=cfg,
                negative_prompt=[""] * len(prompts) if cfg else None, max_sequence_length=self.max_sequence_length,
            )
            return Conditioning(pe, pp, ne, npool)
        pe, pp, text_ids = pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=device, max_sequence_length=self.max_sequence_length
        )
        return Conditioning(pe, pp, text_ids=text_ids)

    # -- schedule --------------------------------------------------------------------
    def set_timesteps(self, num_steps: int, height: int, width: int, device) -> torch.Tensor:
        """Set the scheduler for ``num_steps`` and return its ``[T]`` timesteps."""
        scheduler = self.pipeline.scheduler
        if self.family == "flux" or scheduler.config.get("use_dynamic_shifting", False):
            import numpy as np
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift

            h, w = self.latent_size(height, width)
            seq_len = (h // 2) * (w // 2) if self.family == "flux" else h * w
            mu = calculate_shift(
                seq_len,
                scheduler.config.get("base_image_seq_len", 256), scheduler.config.get("max_image_seq_len", 4096),
                scheduler.config.get("base_shift", 0.5), scheduler.config.get("max_shift", 1.15),
            )
            sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
            scheduler.set_timesteps(sigmas=sigmas, device=device, mu=mu)
        else:
            scheduler.set_timesteps(num_steps, device=device)
        return scheduler.timesteps

    # -- model -----------------------------------------------------------------------
    @staticmethod
    def pack(latents: torch.Tensor) -> torch.Tensor:
        """FLUX packing: ``[B, C, h, w] -> [B, (h/2)(w/2), 4C]`` (2x2 patches, channel-major)."""
        b, c, h, w = latents.shape
        x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // 2) * (w // 2), c * 4)

    @staticmethod
    def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Inverse of `pack`: ``[B, (h/2)(w/2), 4C] -> [B, C, h, w]``."""
        b, _, d = tokens.shape
        c = d // 4
        x = tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c, h, w)

    @staticmethod
    def _image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
        ids = torch.zeros(h // 2, w // 2, 3)
        ids[..., 1] = torch.arange(h // 2)[:, None]
        ids[..., 2] = torch.arange(w // 2)[None, :]
        return ids.reshape(-1, 3).to(device=device, dtype=dtype)

    def velocity(self, model, latents: torch.Tensor, timestep: torch.Tensor, cond: Conditioning,
                 guidance_scale: float) -> torch.Tensor:
        """Model velocity ``[B, C, h, w]`` at ``latents`` (``[B, C, h, w]``) and ``timestep`` (``[B]``).

        SD3 applies classifier-free guidance when ``guidance_scale > 1`` (two passes in one
        batch); FLUX is guidance-distilled and feeds ``guidance_scale`` to its guidance embedding.
        """
        dtype = cond.prompt_embeds.dtype
        if self.family == "sd3":
            cfg = guidance_scale > 1.0 and cond.neg_prompt_embeds is not None
            x, t = latents.to(dtype), timestep.to(latents.device)
            pe, pp = cond.prompt_embeds, cond.pooled
            if cfg:
                x, t = torch.cat([x, x]), torch.cat([t, t])
                pe, pp = torch.cat([cond.neg_prompt_embeds, pe]), torch.cat([cond.neg_pooled, pp])
            out = model(hidden_states=x, timestep=t, encoder_hidden_states=pe, pooled_projections=pp,
                        return_dict=False)[0]
            if cfg:
                uncond, text = out.chunk(2)
                out = uncond + guidance_scale * (text - uncond)
            return out
        b, _, h, w = latents.shape
        config = getattr(model, "config", None) or getattr(model, "module").config
        guidance = None
        if config.guidance_embeds:
            guidance = torch.full((b,), float(guidance_scale), device=latents.device, dtype=torch.float32)
        out = model(
            hidden_states=self.pack(latents.to(dtype)), timestep=(timestep.to(latents.device) / 1000).to(dtype),
            guidance=guidance, pooled_projections=cond.pooled, encoder_hidden_states=cond.prompt_embeds,
            txt_ids=cond.text_ids, img_ids=self._image_ids(h, w, latents.device, dtype), return_dict=False,
        )[0]
        return self.unpack(out, h, w)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, C, h, w]`` -> images ``[B, 3, H, W]`` float32 in [0, 1]."""
        vae = self.pipeline.vae
        shift = vae.config.shift_factor or 0.0
        x = latents.to(vae.dtype) / vae.config.scaling_factor + shift
        return (vae.decode(x, return_dict=False)[0].float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] -> latents ``[B, C, h, w]`` (VAE mean, scaled and shifted)."""
        vae = self.pipeline.vae
        dist = vae.encode((images * 2 - 1).to(vae.dtype)).latent_dist
        shift = vae.config.shift_factor or 0.0
        return ((dist.mean - shift) * vae.config.scaling_factor).float()


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------
@dataclass
class Trajectory:
    """One sampled batch.

    latents: ``[B, T+1, C, h, w]`` (``[:, 0]`` is the initial noise, ``[:, -1]`` the final latents).
    log_probs: ``[B, T]`` mean log-probs (0 on ODE steps).
    log_prob_maps: ``[B, T, h, w]`` per-pixel log-probs, or None.
    timesteps: ``[T]``.
    sde_steps: indices of the steps sampled with the SDE (the trainable ones).
    """

    latents: torch.Tensor
    log_probs: torch.Tensor
    log_prob_maps: torch.Tensor | None
    timesteps: torch.Tensor
    sde_steps: list[int]

    @property
    def final(self) -> torch.Tensor:
        return self.latents[:, -1]


def sde_window_steps(num_steps: int, start: int = 0, size: int | None = None) -> list[int]:
    """Step indices ``[start, start + size)`` clipped to ``num_steps`` (``size=None``: to the end)."""
    end = num_steps if size is None else min(num_steps, start + size)
    if not 0 <= start < num_steps or end <= start:
        raise ValueError(f"SDE window start={start} size={size} selects no step of {num_steps}")
    return list(range(start, end))


@torch.no_grad()
def sample_trajectory(
    adapter: PipelineAdapter,
    model,
    cond: Conditioning,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    sde_steps: Sequence[int],
    noise_level: float = 0.7,
    guidance_scale: float = 4.5,
    generator: torch.Generator | list[torch.Generator] | None = None,
    per_pixel: bool = False,
    autocast=None,
) -> Trajectory:
    """Run a whole trajectory from ``noise`` (``[B, C, h, w]``): SDE on ``sde_steps``, ODE elsewhere.

    ``adapter.set_timesteps`` must have been called (``timesteps`` is what it returned).
    """
    import contextlib

    scheduler = adapter.pipeline.scheduler
    sde = set(int(s) for s in sde_steps)
    b = noise.shape[0]
    x = noise.float()
    latents, log_probs, maps = [x], [], []
    for i, t in enumerate(timesteps):
        t_b = t.expand(b)
        with autocast() if autocast else contextlib.nullcontext():
            v = adapter.velocity(model, x, t_b, cond, guidance_scale)
        if i in sde:
            x, lp, _, _ = sde_step_with_logprob(scheduler, v, t_b, x, noise_level, generator=generator, per_pixel=per_pixel)
            lp_mean = lp.mean(dim=(1, 2)) if per_pixel else lp
        else:
            x = ode_step(scheduler, v, t_b, x).float()
            lp = torch.zeros((b, *x.shape[2:]) if per_pixel else (b,), device=x.device)
            lp_mean = lp.mean(dim=(1, 2)) if per_pixel else lp
        latents.append(x.float())
        log_probs.append(lp_mean.float())
        if per_pixel:
            maps.append(lp.float())
    return Trajectory(
        latents=torch.stack(latents, dim=1),
        log_probs=torch.stack(log_probs, dim=1),
        log_prob_maps=torch.stack(maps, dim=1) if per_pixel else None,
        timesteps=timesteps.detach().clone(),
        sde_steps=sorted(sde),
    )


# --------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------
def _group_index(group_ids: Sequence[Any] | torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map arbitrary group ids (e.g. prompts) to ``0..G-1``; returns ``([B] long, G)``."""
    ids = group_ids.tolist() if isinstance(group_ids, torch.Tensor) else list(group_ids)
    table: dict[Any, int] = {}
    index = [table.setdefault(g, len(table)) for g in ids]
    return torch.tensor(index, dtype=torch.long), len(table)


def _group_mean_std(values: torch.Tensor, index: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group mean and (population) std of ``values`` ``[B, ...]``, gathered back to ``[B, ...]``."""
    flat = values.reshape(values.shape[0], -1).double()
    idx = index.to(values.device)
    count = torch.zeros(groups, device=values.device, dtype=torch.float64).index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))
    total = torch.zeros(groups, flat.shape[1], device=values.device, dtype=torch.float64).index_add_(0, idx, flat)
    mean = total / count[:, None]
    sq = torch.zeros_like(total).index_add_(0, idx, (flat - mean[idx]) ** 2)
    std = (sq / count[:, None]).sqrt()
    return mean[idx].reshape(values.shape).to(values.dtype), std[idx].reshape(values.shape).to(values.dtype)


def group_advantages(rewards: torch.Tensor, group_ids, eps: float = 1e-4, clip: float | None = 5.0) -> torch.Tensor:
    """Per-prompt group normalisation ``(r - mean_g) / (std_g + eps)``, clipped to ``+-clip``.

    A group whose rewards are all equal gets advantage 0.

    rewards: ``[B]``; group_ids: ``[B]`` hashables (e.g. the prompts). Returns ``[B]`` float32.
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if rewards.ndim != 1:
        raise ValueError(f"scalar rewards must be [B], got {tuple(rewards.shape)}")
    index, groups = _group_index(group_ids)
    mean, std = _group_mean_std(rewards, index, groups)
    centred = rewards - mean
    adv = torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))  # identical rewards: no signal
    return adv.clamp(-clip, clip) if clip else adv


def dense_advantages(
    reward_maps: torch.Tensor, group_ids, std_floor: float = 0.05, normalise: str = "pixel",
    clip: float | None = 5.0,
) -> torch.Tensor:
    """Per-prompt per-pixel advantages for reward maps ``[B, h, w]`` -> ``[B, h, w]``.

    The per-prompt mean of every pixel is subtracted; the result is divided by
    ``max(std, std_floor)`` where ``std`` is that pixel's per-prompt std (``normalise="pixel"``,
    BoxFlow) or one std over all centred values (``normalise="global"``, DenseFlow). The floor
    keeps pixels whose reward barely varies within a group from being blown up to +-clip.
    """
    maps = torch.as_tensor(reward_maps, dtype=torch.float32)
    if maps.ndim != 3:
        raise ValueError(f"reward maps must be [B, h, w], got {tuple(maps.shape)}")
    index, groups = _group_index(group_ids)
    mean, std = _group_mean_std(maps, index, groups)
    centred = maps - mean
    if normalise == "pixel":
        denom = std.clamp_min(std_floor)
    elif normalise == "global":
        denom = centred.std().clamp_min(std_floor)
    else:
        raise ValueError(f"normalise must be 'pixel' or 'global', got {normalise!r}")
    adv = centred / denom
    return adv.clamp(-clip, clip) if clip else adv


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------
def dense_ratio(log_prob_map: torch.Tensor, old_log_prob_map: torch.Tensor) -> torch.Tensor:
    """DenseFlow per-pixel ratio ``sg(exp(mean lp - mean lp_old)) * p / sg(p)`` (maps ``[B, h, w]``).

    Its value is the image's mean ratio everywhere (stable clipping), its gradient flows through
    each pixel's own log-prob, so each pixel's advantage steers that pixel.
    """
    mean_ratio = torch.exp(log_prob_map.mean(dim=(1, 2)) - old_log_prob_map.mean(dim=(1, 2))).detach()
    return mean_ratio[:, None, None] * torch.exp(log_prob_map - log_prob_map.detach())


def clipped_policy_loss(ratio: torch.Tensor, advantages: torch.Tensor, epsilon: float) -> torch.Tensor:
    """PPO: ``mean(max(-A r, -A clip(r, 1-eps, 1+eps)))`` over all elements (``ratio`` ~ ``advantages``)."""
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - epsilon, 1.0 + epsilon)
    return torch.maximum(unclipped, clipped).mean()


KL_NORMALISATIONS = ("flow_grpo", "exact")


def kl_to_reference(mean: torch.Tensor, ref_mean: torch.Tensor, std_dev_t: torch.Tensor, dt: torch.Tensor,
                    normalisation: str = "flow_grpo") -> torch.Tensor:
    """Per-image KL term between the policy's and the reference's Gaussian SDE steps. Returns ``[B]``.

    Both steps share the std ``s = std_dev_t * sqrt(-dt)``, so the Gaussian KL is
    ``||mu - mu_ref||^2 / (2 s^2)``. With ``D = mean over non-batch dims of (mu - mu_ref)^2``:

    - ``"flow_grpo"``: ``D / (2 std_dev_t^2)``, what flow_grpo's ``train_sd3.py`` adds to its loss
      (the ``-dt`` factor left out), so a ``beta`` copied from a flow_grpo config acts the same;
    - ``"exact"``: ``D / (2 std_dev_t^2 (-dt))``, the Gaussian KL of one step; ``1/(-dt)``
      (about 7-30x at 10 steps) times the flow_grpo value.
    """
    sq = ((mean - ref_mean.detach()) ** 2).mean(dim=tuple(range(1, mean.ndim)))
    flat = lambda t: t.reshape(t.shape[0], -1)[:, 0] if t.ndim > 1 else t  # noqa: E731 - [B, 1, ...] -> [B]
    var = flat(std_dev_t) ** 2
    if normalisation == "exact":
        var = var * (-flat(dt))
    elif normalisation != "flow_grpo":
        raise ValueError(f"kl normalisation must be one of {list(KL_NORMALISATIONS)}, got {normalisation!r}")
    return sq / (2 * var.clamp_min(1e-12))


def step_dt(scheduler, timestep, sample: torch.Tensor) -> torch.Tensor:
    """``sigma_next - sigma`` broadcastable to ``sample``."""
    sigma, sigma_next, _ = _sigmas(scheduler, timestep, sample)
    return sigma_next - sigma


@dataclass
class LossOutput:
    loss: torch.Tensor
    policy_loss: torch.Tensor
    kl: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor


def flow_grpo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    epsilon: float = 1e-4,
    kl: torch.Tensor | None = None,
    beta: float = 0.0,
) -> LossOutput:
    """Flow-GRPO loss for one timestep of a micro-batch.

    Scalar mode: ``log_prob``/``old_log_prob`` ``[B]`` and ``advantages`` ``[B]``.
    Dense mode: ``[B, h, w]`` per-pixel log-prob maps and advantages (`dense_ratio`).
    ``kl`` (``[B]``) is added with weight ``beta``.
    """
    if advantages.ndim == 3:
        if log_prob.ndim != 3:
            raise ValueError("dense advantages [B, h, w] need per-pixel log-prob maps [B, h, w]")
        ratio = dense_ratio(log_prob, old_log_prob)
        log_ratio = log_prob.mean(dim=(1, 2)) - old_log_prob.mean(dim=(1, 2))
    else:
        if log_prob.ndim == 3:
            log_prob, old_log_prob = log_prob.mean(dim=(1, 2)), old_log_prob.mean(dim=(1, 2))
        ratio = torch.exp(log_prob - old_log_prob)
        log_ratio = log_prob - old_log_prob
    policy = clipped_policy_loss(ratio, advantages.to(ratio.dtype), epsilon)
    kl_mean = kl.mean() if kl is not None else torch.zeros((), device=policy.device)
    loss = policy + beta * kl_mean if beta else policy
    with torch.no_grad():
        clip_fraction = ((ratio - 1.0).abs() > epsilon).float().mean()
        approx_kl = 0.5 * (log_ratio**2).mean()
    return LossOutput(loss, policy.detach(), kl_mean.detach(), clip_fraction, approx_kl)
