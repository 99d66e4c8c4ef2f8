"""Supervised LoRA fine-tuning of SD3/FLUX generators on (prompt, image) pairs.

Distils best-of-N choices into the generator: point ``data_dir`` at the picks (one image per
prompt) and train with the rectified-flow loss

    x_t = (1 - sigma) * x_0 + sigma * noise,   loss = || v_theta(x_t, sigma) - (noise - x_0) ||^2

with ``sigma`` drawn uniformly or logit-normally (SD3's default). Same config style, checkpoints
(the common format: atomic, exact ``--resume``) and LoRA export as ``flow-grpo``.

Data layout (any of, per image ``NAME.png|jpg|jpeg|webp``):

- ``NAME.txt`` beside the image holding the prompt;
- ``NAME.json`` beside it with a ``"prompt"`` field (e.g. a saved `Diagnosis`);
- ``metadata.jsonl`` in ``data_dir`` with lines ``{"file_name": "NAME.png", "prompt": "..."}``.

    python -m imagedoctor.trainer sft-generator --config sft.yaml
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.cli import add_trainer_command
from ..common.config import ConfigError
from .config import SFTGeneratorConfig
from .flow_grpo import GeneratorTrainer, seeded_generators

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def read_pairs(data_dir: str | Path) -> list[tuple[Path, str]]:
    """``(image path, prompt)`` pairs of a folder, sorted by file name (see module doc for the layout)."""
    root = Path(data_dir)
    meta = {}
    if (root / "metadata.jsonl").exists():
        for line in (root / "metadata.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                meta[str(row["file_name"])] = str(row["prompt"])
    pairs = []
    for image in sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        prompt = meta.get(image.name)
        if prompt is None and image.with_suffix(".txt").exists():
            prompt = image.with_suffix(".txt").read_text(encoding="utf-8").strip()
        if prompt is None and image.with_suffix(".json").exists():
            data = json.loads(image.with_suffix(".json").read_text(encoding="utf-8"))
            prompt = data.get("prompt") if isinstance(data, dict) else None
        if prompt:
            pairs.append((image, prompt))
    if not pairs:
        raise ConfigError(f"config key 'data_dir': no (image, prompt) pairs in {str(root)!r}. "
                          "Fix: put NAME.txt (or NAME.json with 'prompt', or metadata.jsonl) beside each image")
    return pairs


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """Resize the short side to ``resolution``, centre-crop: ``[3, R, R]`` float in [0, 1]."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    scale = resolution / min(img.size)
    img = img.resize((max(resolution, round(img.width * scale)), max(resolution, round(img.height * scale))),
                     Image.BICUBIC)
    left, top = (img.width - resolution) // 2, (img.height - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)


def sample_sigmas(generator: torch.Generator, n: int, mode: str) -> torch.Tensor:
    """``[n]`` noise levels in (0, 1): uniform, or logit-normal ``sigmoid(N(0, 1))``."""
    if mode == "uniform":
        return torch.rand(n, generator=generator).clamp(1e-3, 1 - 1e-3)
    return torch.sigmoid(torch.randn(n, generator=generator))


class SFTGeneratorTrainer(GeneratorTrainer):
    """Flow-matching LoRA fine-tuning on a folder of (prompt, image) pairs."""

    trainer_name = "sft-generator"

    def __init__(self, config: SFTGeneratorConfig):
        self.config = config
        self.pairs = read_pairs(config.data_dir)
        self._setup_model(config)
        self.adapter.latent_size(config.resolution, config.resolution)  # validates the resolution
        self.guidance = 1.0  # SD3: no CFG in training; FLUX: guidance embedding value
        self._encode_data()
        self.total_steps = self._total_steps()
        self._add_lora(config, self.total_steps)

    @torch.no_grad()
    def _encode_data(self) -> None:
        """Encode every prompt and image once (the frozen text encoders and VAE never change)."""
        images = torch.stack([load_image(p, self.config.resolution) for p, _ in self.pairs]).to(self.device)
        self.latents = torch.cat([self.adapter.encode_images(images[i:i + 8]) for i in range(0, len(images), 8)])
        self.cond = self.adapter.encode([t for _, t in self.pairs], 1.0, self.device)

    def _total_steps(self) -> int:
        cfg = self.config
        per_epoch = max(1, len(self.pairs) // (cfg.batch_size * self.accelerator.num_processes))
        return cfg.max_steps if cfg.max_steps else per_epoch * cfg.num_epochs

    def _batch_indices(self, step: int) -> np.ndarray:
        """This process's ``batch_size`` pair indices at ``step`` (epoch-wise seeded permutation)."""
        cfg = self.config
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        per_step = cfg.batch_size * world
        per_epoch = max(1, len(self.pairs) // per_step)
        epoch, within = divmod(step, per_epoch)
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(self.pairs))
        if len(order) < per_step:  # tiny data sets: repeat the permutation
            order = np.resize(order, per_step)
        chunk = order[within * per_step:(within + 1) * per_step]
        return chunk[rank * cfg.batch_size:(rank + 1) * cfg.batch_size]

    def loss(self, idx: np.ndarray, step: int, micro: int) -> torch.Tensor:
        """Rectified-flow MSE for the pairs ``idx`` (noise and sigmas keyed by step and micro-batch)."""
        cfg = self.config
        x0 = self.latents[idx]
        gens = seeded_generators(cfg.seed, step, micro, self.accelerator.process_index, count=len(idx))
        noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens]).to(x0)
        sigma = sample_sigmas(gens[0], len(idx), cfg.timestep_sampling).to(x0)[:, None, None, None]
        x_t = (1 - sigma) * x0 + sigma * noise
        t = sigma.flatten() * 1000.0
        with self.accelerator.autocast():
            v = self.adapter.velocity(self.model, x_t, t, self.cond.select(torch.as_tensor(idx)), self.guidance)
        return torch.nn.functional.mse_loss(v.float(), (noise - x0).float())

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.config
        self.model.train()
        idx = self._batch_indices(step)
        n_micro = cfg.batch_size // cfg.micro_batch_size
        losses = []
        for m in range(n_micro):
            part = idx[m * cfg.micro_batch_size:(m + 1) * cfg.micro_batch_size]
            ctx = contextlib.nullcontext() if m == n_micro - 1 else self.accelerator.no_sync(self.model)
            with ctx:
                loss = self.loss(part, step, m)
                self.accelerator.backward(loss / n_micro)
            losses.append(float(loss.detach()))
        if cfg.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.state.params, cfg.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.update_ema()
        return {"loss": float(np.mean(losses)), "lr": float(self.lr_scheduler.get_last_lr()[0])}

    def train(self, resume: str | None = None) -> dict[str, Any]:
        """Train to the configured steps (from a checkpoint when ``resume``), export the LoRA.
        Returns {"step", "lora_path", "history"}."""
        from tqdm.auto import tqdm

        cfg = self.config
        self._begin(resume)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="sft-generator",
                   disable=not (cfg.progress_bar and self.accelerator.is_main_process))
        while self.step < self.total_steps:
            metrics = self.train_step(self.step)
            self.step += 1
            self.history.append(metrics)
            if self.step % cfg.logging_steps == 0:
                self.log.log(self.step, {f"train/{k}": v for k, v in metrics.items()})
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if cfg.save_steps and self.step % cfg.save_steps == 0 and self.step < self.total_steps:
                self.save_checkpoint()
        bar.close()
        return self._end()

    @torch.no_grad()
    def eval_loss(self, seed: int = 1234) -> float:
        """Mean flow-matching loss over all pairs at fixed noise (lower = the LoRA fits the picks)."""
        self.model.eval()
        losses = [float(self.loss(np.array([i]), 10_000_000 + seed, i)) for i in range(len(self.pairs))]
        return float(np.mean(losses))


def add_parser(subparsers) -> None:
    add_trainer_command(
        subparsers, "sft-generator", "supervised flow-matching LoRA fine-tuning on (prompt, image) pairs",
        SFTGeneratorConfig, SFTGeneratorTrainer,
        description="Fine-tune an SD3/FLUX LoRA on a folder of (prompt, image) pairs, e.g. best-of-N picks.")
