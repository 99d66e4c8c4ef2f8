"""Configs for generator training (``flow-grpo`` and ``sft-generator``).

Built on `trainer.common.config.TrainerConfig` (help text per field, YAML + ``--set``,
did-you-mean, renamed keys, checks before any model loads, key and fix in every message)::

    config = FlowGRPOConfig.from_yaml("flow_grpo.yaml", overrides={"max_steps": 10})
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..common.config import ConfigError, TrainerConfig, config_class, load_config, option, parse_override

__all__ = ["ConfigError", "GeneratorConfig", "FlowGRPOConfig", "SFTGeneratorConfig", "load_config", "parse_override"]

FAMILIES = ("auto", "sd3", "flux")
EXPORT_DTYPES = ("float32", "float16", "bfloat16")
REWARD_MODES = ("scalar", "dense", "box")
KL_NORMALISATIONS = ("flow_grpo", "exact")

#: Names of the first generator configs -> the one name per idea used by every trainer now.
GENERATOR_RENAMES = {
    "pretrained_model": "model",
    "lora_rank": "lora_r",
    "lora_targets": "lora_target_modules",
    "save_every": "save_steps",
    "keep_checkpoints": "save_total_limit",
    "logging": "report_to",
    "log_every": "logging_steps",
    "lr_scheduler": "lr_scheduler_type",
    "lr_warmup_steps": "warmup_steps",
    "adam_weight_decay": "weight_decay",
}


@config_class
class GeneratorConfig(TrainerConfig):
    """Options shared by every generator trainer: model, LoRA, optimiser, output."""

    _docs = "docs/training-generator.md"
    _renamed = GENERATOR_RENAMES

    # -- model -------------------------------------------------------------------------
    model: str = option("", "Diffusers pipeline folder (model_index.json + components) or Hugging Face id of an "
                            "SD3/SD3.5 or FLUX model.")
    output_dir: str = option("outputs/generator", "Where checkpoints, logs and the exported LoRA go.")
    seed: int = option(42, "Seed for LoRA init, prompt order and sampling noise (resume is exact).")
    family: str = option("auto", "Model family: auto (from model_index.json), sd3 or flux.")
    resolution: int = option(512, "Square training resolution in pixels (multiple of 16).")
    max_sequence_length: int = option(128, "T5 tokens per prompt.")
    # -- LoRA --------------------------------------------------------------------------
    lora_r: int = option(32, "LoRA rank r.")
    lora_alpha: float = option(64.0, "LoRA alpha; alpha/r is folded into lora_B on export.")
    lora_target_modules: list[str] = option(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                                 "to_add_out"],
        help="Transformer module-name suffixes that get LoRA (peft target_modules).")
    lora_init: str = option("gaussian", "peft init_lora_weights: gaussian (Flow-GRPO) or true (kaiming).")
    # -- optimiser ---------------------------------------------------------------------
    learning_rate: float = option(3e-4, "Peak AdamW learning rate.")
    weight_decay: float = option(1e-4, "AdamW weight decay.")
    ema: bool = option(False, "Keep an exponential moving average of the LoRA weights.")
    ema_decay: float = option(0.9, "EMA decay per optimiser step.")
    export_ema: bool = option(True, "Export the EMA weights (when ema is on) instead of the raw ones.")
    # -- run ---------------------------------------------------------------------------
    logging_steps: int = option(1, "Log scalars every N steps (TensorBoard + metrics.jsonl).")
    save_steps: int = option(0, "Write a checkpoint every N steps (0 = only at the end).")
    export_name: str = option("lora.safetensors", "File name of the exported LoRA inside output_dir.")
    export_dtype: str = option("float32", "dtype of the exported LoRA: float32, float16 or bfloat16.")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_model_files()
        self._choice("family", FAMILIES)
        self._choice("export_dtype", EXPORT_DTYPES)
        for key in ("resolution", "max_sequence_length", "lora_r", "lora_alpha"):
            self._positive(key)
        if self.resolution % 16:
            self._fail("resolution", f"{self.resolution} is not a multiple of 16",
                       f"use {max(16, self.resolution // 16 * 16)} or {self.resolution // 16 * 16 + 16}")
        if not 0.0 <= self.ema_decay < 1.0:
            self._fail("ema_decay", f"{self.ema_decay} is outside [0, 1)", "use e.g. 0.9")
        if not self.lora_target_modules:
            self._fail("lora_target_modules", "is empty", "e.g. [to_q, to_k, to_v, to_out.0]")
        if not self.export_name.endswith(".safetensors"):
            self._fail("export_name", f"{self.export_name!r} does not end in .safetensors", "e.g. lora.safetensors")

    def _check_model_files(self) -> None:
        path = Path(os.path.expanduser(self.model))
        looks_local = path.is_absolute() or self.model.startswith((".", "~")) or path.exists()
        if not looks_local:
            return  # a hub id; resolved (or refused, offline) by diffusers
        if not path.is_dir():
            self._fail("model", f"folder {str(path)!r} does not exist",
                       "point it at a diffusers pipeline folder (the one holding model_index.json)")
        for required in ("model_index.json", "transformer/config.json", "vae/config.json", "scheduler"):
            if not (path / required).exists():
                self._fail("model", f"{str(path)!r} has no {required}",
                           "use a full diffusers pipeline folder (save_pretrained output), not a single checkpoint file")
        if self.family == "auto":
            index = json.loads((path / "model_index.json").read_text())
            name = str(index.get("_class_name", ""))
            if not (name.startswith("StableDiffusion3") or name.startswith("Flux")):
                self._fail("model", f"pipeline class {name!r} is not SD3 or FLUX",
                           "use a StableDiffusion3Pipeline or FluxPipeline model")

    def resolved_family(self) -> str:
        """"sd3" or "flux" (reads model_index.json when ``family`` is auto)."""
        if self.family != "auto":
            return self.family
        index_file = Path(os.path.expanduser(self.model)) / "model_index.json"
        name = json.loads(index_file.read_text()).get("_class_name", "") if index_file.exists() else ""
        return "flux" if name.startswith("Flux") else "sd3"


@config_class
class FlowGRPOConfig(GeneratorConfig):
    """Flow-GRPO / DenseFlow / BoxFlow reinforcement fine-tuning of an SD3 or FLUX LoRA."""

    _renamed = {"group_size": "num_generations", "clip_range": "epsilon",
                "optimizer_steps_per_iteration": "steps_per_generation", "sample_every": "sample_steps"}

    output_dir: str = option("outputs/flow-grpo", "Where checkpoints, logs and the exported LoRA go.")
    prompts_file: str = option("", "Training prompts: .txt (one per line) or .jsonl with a 'prompt' field.")
    max_steps: int = option(100, "Training iterations (sample -> reward -> update).")
    batch_size: int = option(16, "Images sampled per iteration per process (= prompts x num_generations).")
    num_generations: int = option(8, "Images per prompt; advantages are normalised within each group.")
    sample_batch_size: int = option(8, "Images per sampling forward pass (divides batch_size).")
    micro_batch_size: int = option(2, "Images per training forward/backward (divides batch_size).")
    steps_per_generation: int = option(1, "Optimiser steps per pass over the sampled batch; its micro-batches are "
                                          "split evenly between them (TRL's steps_per_generation).")
    num_iterations: int = option(1, "Passes over each sampled batch (TRL's mu; flow_grpo's num_inner_epochs). "
                                    "PPO clipping acts from the 2nd optimiser step on.")
    num_steps: int = option(10, "Sampling steps per trajectory.")
    sde_window_start: int = option(0, "First step sampled with the SDE (the trainable steps).")
    sde_window_size: int | None = option(None, "Number of SDE (trained) steps from sde_window_start; null = all "
                                               "remaining steps (full-SDE Flow-GRPO).")
    noise_level: float = option(0.7, "SDE noise level a in std = a*sqrt(sigma/(1-sigma)).")
    guidance_scale: float = option(4.5, "CFG scale for SD3 (1.0 = no-CFG mode: one forward per step in sampling and "
                                        "training); FLUX guidance embedding.")
    reward: str = option("diagnoser", "'diagnoser' or 'python:package.module:function' (a reward or a factory).")
    reward_mode: str = option("scalar", "scalar (Flow-GRPO), dense (DenseFlow heatmaps) or box (BoxFlow).")
    reward_kwargs: dict[str, Any] = option(default_factory=dict, help="Arguments of the reward factory; for "
                                           "'diagnoser': diagnoser (path), score, batch_size, think, max_new_tokens.")
    box_alpha: dict[str, float] = option(default_factory=lambda: {"artifact": 0.5, "misalignment": 0.05},
                                         help="BoxFlow weight per defect label.")
    adv_clip: float = option(5.0, "Advantages are clipped to +-adv_clip.")
    adv_eps: float = option(1e-4, "Added to the group std of scalar rewards.")
    std_floor: float = option(0.05, "Floor of the per-pixel std in dense advantages.")
    dense_normalise: str = option("pixel", "Dense advantage std: pixel (BoxFlow) or global (DenseFlow).")
    epsilon: float = option(1e-4, "PPO ratio clip range (flow_grpo's clip_range).")
    beta: float = option(0.0, "KL weight to the reference (LoRA disabled); 0 skips the reference pass.")
    kl_normalisation: str = option("flow_grpo", "KL per SDE step: 'flow_grpo' = mean||mu - mu_ref||^2 / "
                                                "(2 std_dev_t^2), as flow_grpo's train_sd3.py (so its beta carries "
                                                "over); 'exact' = the Gaussian KL, / (2 std_dev_t^2 (-dt)).")
    sample_steps: int = option(0, "Log sample images to TensorBoard every N iterations (0: never).")
    cache_prompt_embeddings: bool = option(False, "Encode every training prompt once, keep the embeddings on CPU "
                                                  "and free the text encoders (saves ~10 GB of GPU memory with "
                                                  "T5-XXL); sampling then accepts only training prompts.")

    @classmethod
    def _resolve_keys(cls, data):
        # `num_iterations` used to be the run length here; it is now TRL's mu. A config that sets it
        # without `max_steps` is an old one: refuse to guess rather than run mu=300 iterations.
        if "num_iterations" in data and "max_steps" not in data:
            raise ConfigError(
                f"config key 'num_iterations': its meaning changed: it is now TRL's mu (passes over each sampled "
                f"batch, default 1) and the number of training iterations is 'max_steps'. Fix: rename "
                f"num_iterations: {data['num_iterations']} to max_steps: {data['num_iterations']} if it is the run "
                f"length, or also set max_steps to keep it as mu")
        return super()._resolve_keys(data)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.prompts_file:
            self._fail("prompts_file", "is empty", "set it to a .txt file with one prompt per line")
        if not Path(os.path.expanduser(self.prompts_file)).is_file():
            self._fail("prompts_file", f"{self.prompts_file!r} does not exist", "create it or fix the path")
        for key in ("max_steps", "batch_size", "num_generations", "sample_batch_size", "micro_batch_size",
                    "steps_per_generation", "num_iterations", "num_steps", "noise_level", "guidance_scale", "epsilon",
                    "adv_clip", "std_floor"):
            self._positive(key)
        for key in ("beta", "sde_window_start", "sample_steps", "adv_eps"):
            self._positive(key, allow_zero=True)
        self._choice("reward_mode", REWARD_MODES)
        self._choice("dense_normalise", ("pixel", "global"))
        self._choice("kl_normalisation", KL_NORMALISATIONS)
        if self.num_generations < 2:
            self._fail("num_generations", "must be at least 2 (advantages compare images of one prompt)",
                       "use 2 or more")
        for key in ("num_generations", "sample_batch_size", "micro_batch_size"):
            if self.batch_size % getattr(self, key):
                self._fail(key, f"{getattr(self, key)} does not divide batch_size={self.batch_size}",
                           f"make batch_size a multiple of {key} (e.g. batch_size="
                           f"{getattr(self, key) * max(1, self.batch_size // getattr(self, key))})")
        if self.sde_window_start >= self.num_steps:
            self._fail("sde_window_start", f"{self.sde_window_start} >= num_steps={self.num_steps}",
                       f"use a start in 0..{self.num_steps - 1}")
        if self.sde_window_size is not None and self.sde_window_size < 1:
            self._fail("sde_window_size", f"{self.sde_window_size} trains no step", "use null (all) or >= 1")
        micro = self.batch_size // self.micro_batch_size
        if micro % self.steps_per_generation:
            self._fail("steps_per_generation",
                       f"{self.steps_per_generation} does not divide the {micro} micro-batches per iteration",
                       "use a divisor of batch_size / micro_batch_size")
        if self.reward_mode == "box" and set(self.box_alpha) - {"artifact", "misalignment"}:
            self._fail("box_alpha", f"unknown labels {sorted(set(self.box_alpha) - {'artifact', 'misalignment'})}",
                       "use keys artifact and misalignment")
        if self.reward == "diagnoser" and "diagnoser" not in self.reward_kwargs:
            self._fail("reward_kwargs.diagnoser", "is missing for reward 'diagnoser'",
                       "set reward_kwargs: {diagnoser: PATH_TO_DIAGNOSER} or use reward: python:module:function")
        if not (self.reward == "diagnoser" or self.reward.startswith("python:")):
            self._fail("reward", f"{self.reward!r} is not a reward spec",
                       "use 'diagnoser' or 'python:package.module:function'")

    @property
    def sde_steps(self) -> list[int]:
        end = self.num_steps if self.sde_window_size is None else min(self.num_steps,
                                                                      self.sde_window_start + self.sde_window_size)
        return list(range(self.sde_window_start, end))


@config_class
class SFTGeneratorConfig(GeneratorConfig):
    """Supervised flow-matching LoRA fine-tuning on (prompt, image) pairs (e.g. best-of-N picks)."""

    output_dir: str = option("outputs/sft-generator", "Where checkpoints, logs and the exported LoRA go.")
    learning_rate: float = option(1e-4, "Peak AdamW learning rate.")
    data_dir: str = option("", "Folder of images with prompts: IMAGE.txt or IMAGE.json ('prompt') beside each image, "
                               "or metadata.jsonl (file_name, prompt).")
    num_epochs: int = option(10, "Passes over the data.")
    max_steps: int | None = option(None, "Stop after this many optimiser steps (overrides num_epochs).")
    batch_size: int = option(4, "Images per optimiser step per process.")
    micro_batch_size: int = option(1, "Images per forward/backward (divides batch_size).")
    timestep_sampling: str = option("logit_normal", "uniform or logit_normal (SD3) sigma sampling.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data_dir:
            self._fail("data_dir", "is empty", "set it to a folder of images with prompts")
        if not Path(os.path.expanduser(self.data_dir)).is_dir():
            self._fail("data_dir", f"{self.data_dir!r} is not a folder", "create it or fix the path")
        for key in ("num_epochs", "batch_size", "micro_batch_size"):
            self._positive(key)
        if self.max_steps is not None:
            self._positive("max_steps")
        if self.batch_size % self.micro_batch_size:
            self._fail("micro_batch_size", f"{self.micro_batch_size} does not divide batch_size={self.batch_size}",
                       "make batch_size a multiple of micro_batch_size")
        self._choice("timestep_sampling", ("uniform", "logit_normal"))
