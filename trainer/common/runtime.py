"""Run plumbing shared by the trainers: seeding, the accelerator, the optimiser and schedule."""

from __future__ import annotations

import random
from typing import Iterable

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_accelerator(config, find_unused_parameters: bool = False):
    """An `accelerate.Accelerator` for ``config.mixed_precision`` (CPU when no GPU is visible).

    Under ``torchrun``/``accelerate launch`` it joins the process group (gloo on CPU, NCCL on
    GPUs); a single process runs without one. ``find_unused_parameters``: DDP tolerates trainable
    parameters a step does not reach (e.g. a heatmap head on a batch without maps).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    # accelerate keeps one mixed-precision setting per process; a trainer built after another one
    # (tests, notebooks, a GRPO stage after SFT) brings its own. The process group is kept.
    AcceleratorState._reset_state()
    return Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available(),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)])


def build_optimizer(param_groups: Iterable, config, total_steps: int):
    """AdamW over ``param_groups`` (params or dicts with their own ``lr``) and the configured
    schedule (``lr_scheduler_type``, ``warmup_steps``) over ``total_steps`` optimiser steps."""
    from diffusers.optimization import get_scheduler

    groups = [g if isinstance(g, dict) else {"params": [g]} for g in param_groups]
    groups = [g for g in groups if list(g["params"])]
    if not groups:
        from .config import ConfigError

        raise ConfigError("nothing is trainable with these settings. Fix: check finetuning / lora_* keys")
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                  eps=config.adam_epsilon, weight_decay=config.weight_decay)
    scheduler = get_scheduler(config.lr_scheduler_type, optimizer, num_warmup_steps=config.warmup_steps,
                              num_training_steps=max(1, int(total_steps)))
    return optimizer, scheduler
