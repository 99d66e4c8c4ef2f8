"""Configs for generator training (``flow-grpo`` and ``sft-generator``).

Dataclasses in the TRL style: every field documents itself in ``metadata["help"]`` (rendered by
``docs/training-generator.md`` and ``--help-config``), and ``__post_init__`` rejects bad values
and impossible combinations *before any model loads*, naming the key and the fix. YAML files
are flat mappings of these field names; unknown keys are errors (with a "did you mean").

    config = load_config("flow_grpo.yaml", FlowGRPOConfig, overrides={"num_iterations": 10})
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

FAMILIES = ("auto", "sd3", "flux")
MIXED_PRECISION = ("no", "fp16", "bf16")
EXPORT_DTYPES = ("float32", "float16", "bfloat16")
REWARD_MODES = ("scalar", "dense", "box")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
LOGGERS = ("tensorboard", "none")


class ConfigError(ValueError):
    """A config value or combination is invalid; the message names the key and the fix."""


def _help(text: str, **kw: Any) -> dict:
    return {"metadata": {"help": text}, **kw}


@dataclass
class GeneratorConfig:
    """Options shared by every generator trainer: model, LoRA, optimiser, output."""

    # -- model -------------------------------------------------------------------------
    pretrained_model: str = field(default="", **_help(
        "Diffusers pipeline folder (model_index.json + components) or Hugging Face id of an SD3/SD3.5 or FLUX model."))
    family: str = field(default="auto", **_help("Model family: auto (from model_index.json), sd3 or flux."))
    resolution: int = field(default=512, **_help("Square training resolution in pixels (multiple of 16)."))
    max_sequence_length: int = field(default=128, **_help("T5 tokens per prompt."))
    mixed_precision: str = field(default="no", **_help("accelerate mixed precision: no, fp16 or bf16."))
    gradient_checkpointing: bool = field(default=False, **_help("Recompute transformer activations in backward (saves memory)."))
    # -- LoRA --------------------------------------------------------------------------
    lora_rank: int = field(default=32, **_help("LoRA rank r."))
    lora_alpha: float = field(default=64.0, **_help("LoRA alpha; alpha/r is folded into lora_B on export."))
    lora_targets: list = field(default_factory=lambda: [
        "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"],
        **_help("Transformer module-name suffixes that get LoRA (peft target_modules)."))
    lora_init: str = field(default="gaussian", **_help("peft init_lora_weights: gaussian (Flow-GRPO) or true (kaiming)."))
    # -- optimiser ---------------------------------------------------------------------
    learning_rate: float = field(default=3e-4, **_help("AdamW learning rate."))
    adam_beta1: float = field(default=0.9, **_help("AdamW beta1."))
    adam_beta2: float = field(default=0.999, **_help("AdamW beta2."))
    adam_weight_decay: float = field(default=1e-4, **_help("AdamW weight decay."))
    adam_epsilon: float = field(default=1e-8, **_help("AdamW epsilon."))
    max_grad_norm: float = field(default=1.0, **_help("Gradient clipping norm (0 disables)."))
    lr_scheduler: str = field(default="constant_with_warmup", **_help("constant, constant_with_warmup, linear or cosine."))
    lr_warmup_steps: int = field(default=0, **_help("Warm-up optimiser steps."))
    ema: bool = field(default=False, **_help("Keep an exponential moving average of the LoRA weights."))
    ema_decay: float = field(default=0.9, **_help("EMA decay per optimiser step."))
    export_ema: bool = field(default=True, **_help("Export the EMA weights (when ema is on) instead of the raw ones."))
    # -- run ---------------------------------------------------------------------------
    seed: int = field(default=42, **_help("Seed for LoRA init, prompt order and sampling noise (resume is exact)."))
    output_dir: str = field(default="outputs/generator", **_help("Where checkpoints, logs and the exported LoRA go."))
    logging: str = field(default="tensorboard", **_help("tensorboard or none; logs go to OUTPUT_DIR/logs."))
    log_every: int = field(default=1, **_help("Log scalars every N iterations."))
    save_every: int = field(default=0, **_help("Write a checkpoint every N iterations (0: only at the end)."))
    keep_checkpoints: int = field(default=2, **_help("How many checkpoints to keep (oldest removed)."))
    export_name: str = field(default="lora.safetensors", **_help("File name of the exported LoRA inside output_dir."))
    export_dtype: str = field(default="float32", **_help("dtype of the exported LoRA: float32, float16 or bfloat16."))
    progress_bar: bool = field(default=True, **_help("Show a tqdm progress bar on the main process."))

    def __post_init__(self) -> None:
        self._check_common()

    # -- validation helpers ------------------------------------------------------------------
    def _fail(self, key: str, problem: str, fix: str) -> None:
        raise ConfigError(f"config key '{key}': {problem}. Fix: {fix}")

    def _choice(self, key: str, choices) -> None:
        value = getattr(self, key)
        if value not in choices:
            self._fail(key, f"{value!r} is not allowed", f"use one of {list(choices)}")

    def _positive(self, key: str, allow_zero: bool = False) -> None:
        value = getattr(self, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (value == 0 and not allow_zero):
            self._fail(key, f"must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}",
                       f"set {key} to a value {'>= 0' if allow_zero else '> 0'}")

    def _check_common(self) -> None:
        if not self.pretrained_model:
            self._fail("pretrained_model", "is empty", "set it to a diffusers SD3/FLUX pipeline folder")
        self._check_model_files()
        self._choice("family", FAMILIES)
        self._choice("mixed_precision", MIXED_PRECISION)
        self._choice("export_dtype", EXPORT_DTYPES)
        self._choice("lr_scheduler", LR_SCHEDULERS)
        self._choice("logging", LOGGERS)
        for key in ("resolution", "max_sequence_length", "lora_rank", "lora_alpha", "learning_rate", "log_every",
                    "keep_checkpoints"):
            self._positive(key)
        for key in ("max_grad_norm", "lr_warmup_steps", "save_every", "adam_weight_decay"):
            self._positive(key, allow_zero=True)
        if self.resolution % 16:
            self._fail("resolution", f"{self.resolution} is not a multiple of 16",
                       f"use {max(16, self.resolution // 16 * 16)} or {self.resolution // 16 * 16 + 16}")
        if not 0.0 <= self.ema_decay < 1.0:
            self._fail("ema_decay", f"{self.ema_decay} is outside [0, 1)", "use e.g. 0.9")
        if not isinstance(self.lora_targets, (list, tuple)) or not self.lora_targets:
            self._fail("lora_targets", "must be a non-empty list of module names", "e.g. [to_q, to_k, to_v, to_out.0]")
        if not self.export_name.endswith(".safetensors"):
            self._fail("export_name", f"{self.export_name!r} does not end in .safetensors", "e.g. lora.safetensors")

    def _check_model_files(self) -> None:
        path = Path(os.path.expanduser(self.pretrained_model))
        looks_local = path.is_absolute() or self.pretrained_model.startswith((".", "~")) or path.exists()
        if not looks_local:
            return  # a hub id; resolved (or refused, offline) by diffusers
        if not path.is_dir():
            self._fail("pretrained_model", f"folder {str(path)!r} does not exist",
                       "point it at a diffusers pipeline folder (the one holding model_index.json)")
        for required in ("model_index.json", "transformer/config.json", "vae/config.json", "scheduler"):
            if not (path / required).exists():
                self._fail("pretrained_model", f"{str(path)!r} has no {required}",
                           "use a full diffusers pipeline folder (save_pretrained output), not a single checkpoint file")
        if self.family == "auto":
            index = json.loads((path / "model_index.json").read_text())
            name = str(index.get("_class_name", ""))
            if not (name.startswith("StableDiffusion3") or name.startswith("Flux")):
                self._fail("pretrained_model", f"pipeline class {name!r} is not SD3 or FLUX",
                           "use a StableDiffusion3Pipeline or FluxPipeline model")

    def resolved_family(self) -> str:
        """"sd3" or "flux" (reads model_index.json when ``family`` is auto)."""
        if self.family != "auto":
            return self.family
        index_file = Path(os.path.expanduser(self.pretrained_model)) / "model_index.json"
        name = json.loads(index_file.read_text()).get("_class_name", "") if index_file.exists() else ""
        return "flux" if name.startswith("Flux") else "sd3"

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def help_text(cls) -> str:
        """One line per field: ``name (default): help`` (what ``--help-config`` prints)."""
        lines = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            lines.append(f"{f.name} ({default!r}): {f.metadata.get('help', '')}")
        return "\n".join(lines)


@dataclass
class FlowGRPOConfig(GeneratorConfig):
    """Flow-GRPO / DenseFlow / BoxFlow reinforcement fine-tuning of an SD3 or FLUX LoRA."""

    output_dir: str = field(default="outputs/flow-grpo", **_help("Where checkpoints, logs and the exported LoRA go."))
    prompts_file: str = field(default="", **_help("Training prompts: .txt (one per line) or .jsonl with a 'prompt' field."))
    num_iterations: int = field(default=100, **_help("Training iterations (sample -> reward -> update)."))
    batch_size: int = field(default=16, **_help("Images sampled per iteration per process (= prompts x group_size)."))
    group_size: int = field(default=8, **_help("Images per prompt; advantages are normalised within each group."))
    sample_batch_size: int = field(default=8, **_help("Images per sampling forward pass (divides batch_size)."))
    micro_batch_size: int = field(default=2, **_help("Images per training forward/backward (divides batch_size)."))
    optimizer_steps_per_iteration: int = field(default=1, **_help(
        "Optimiser steps per iteration; micro-batches are split evenly between them (PPO clipping acts from the 2nd on)."))
    num_steps: int = field(default=10, **_help("Sampling steps per trajectory."))
    sde_window_start: int = field(default=0, **_help("First step sampled with the SDE (the trainable steps)."))
    sde_window_size: int | None = field(default=None, **_help(
        "Number of SDE (trained) steps from sde_window_start; null = all remaining steps (full-SDE Flow-GRPO)."))
    noise_level: float = field(default=0.7, **_help("SDE noise level a in std = a*sqrt(sigma/(1-sigma))."))
    guidance_scale: float = field(default=4.5, **_help(
        "CFG scale for SD3 (1.0 = no-CFG mode: one forward per step in sampling and training); FLUX guidance embedding."))
    reward: str = field(default="diagnoser", **_help("'diagnoser' or 'python:package.module:function' (a reward or a factory)."))
    reward_mode: str = field(default="scalar", **_help("scalar (Flow-GRPO), dense (DenseFlow heatmaps) or box (BoxFlow)."))
    reward_kwargs: dict = field(default_factory=dict, **_help(
        "Arguments of the reward factory; for 'diagnoser': diagnoser (path), score, batch_size, think, max_new_tokens."))
    box_alpha: dict = field(default_factory=lambda: {"artifact": 0.5, "misalignment": 0.05},
                            **_help("BoxFlow weight per defect label."))
    adv_clip: float = field(default=5.0, **_help("Advantages are clipped to +-adv_clip."))
    adv_eps: float = field(default=1e-4, **_help("Added to the group std of scalar rewards."))
    std_floor: float = field(default=0.05, **_help("Floor of the per-pixel std in dense advantages."))
    dense_normalise: str = field(default="pixel", **_help("Dense advantage std: pixel (BoxFlow) or global (DenseFlow)."))
    clip_range: float = field(default=1e-4, **_help("PPO ratio clip range."))
    beta: float = field(default=0.0, **_help("KL weight to the reference (LoRA disabled); 0 skips the reference pass."))
    sample_every: int = field(default=0, **_help("Log sample images to TensorBoard every N iterations (0: never)."))
    cache_prompt_embeddings: bool = field(default=False, **_help(
        "Encode every training prompt once, keep the embeddings on CPU and free the text encoders "
        "(saves ~10 GB of GPU memory with T5-XXL); sampling then accepts only training prompts."))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.prompts_file:
            self._fail("prompts_file", "is empty", "set it to a .txt file with one prompt per line")
        if not Path(os.path.expanduser(self.prompts_file)).is_file():
            self._fail("prompts_file", f"{self.prompts_file!r} does not exist", "create it or fix the path")
        for key in ("num_iterations", "batch_size", "group_size", "sample_batch_size", "micro_batch_size",
                    "optimizer_steps_per_iteration", "num_steps", "noise_level", "guidance_scale", "clip_range",
                    "adv_clip", "std_floor"):
            self._positive(key)
        for key in ("beta", "sde_window_start", "sample_every", "adv_eps"):
            self._positive(key, allow_zero=True)
        self._choice("reward_mode", REWARD_MODES)
        self._choice("dense_normalise", ("pixel", "global"))
        if self.group_size < 2:
            self._fail("group_size", "must be at least 2 (advantages compare images of one prompt)", "use 2 or more")
        for key in ("group_size", "sample_batch_size", "micro_batch_size"):
            if self.batch_size % getattr(self, key):
                self._fail(key, f"{getattr(self, key)} does not divide batch_size={self.batch_size}",
                           f"make batch_size a multiple of {key} (e.g. batch_size={getattr(self, key) * max(1, self.batch_size // getattr(self, key))})")
        if self.sde_window_start >= self.num_steps:
            self._fail("sde_window_start", f"{self.sde_window_start} >= num_steps={self.num_steps}",
                       f"use a start in 0..{self.num_steps - 1}")
        if self.sde_window_size is not None and self.sde_window_size < 1:
            self._fail("sde_window_size", f"{self.sde_window_size} trains no step", "use null (all) or >= 1")
        micro = self.batch_size // self.micro_batch_size
        if micro % self.optimizer_steps_per_iteration:
            self._fail("optimizer_steps_per_iteration",
                       f"{self.optimizer_steps_per_iteration} does not divide the {micro} micro-batches per iteration",
                       "use a divisor of batch_size / micro_batch_size")
        if self.reward_mode == "box" and set(self.box_alpha) - {"artifact", "misalignment"}:
            self._fail("box_alpha", f"unknown labels {sorted(set(self.box_alpha) - {'artifact', 'misalignment'})}",
                       "use keys artifact and misalignment")
        if self.reward == "diagnoser" and "diagnoser" not in self.reward_kwargs:
            self._fail("reward_kwargs.diagnoser", "is missing for reward 'diagnoser'",
                       "set reward_kwargs: {diagnoser: PATH_TO_DIAGNOSER} or use reward: python:module:function")
        if not (self.reward == "diagnoser" or self.reward.startswith("python:")):
            self._fail("reward", f"{self.reward!r} is not a reward spec", "use 'diagnoser' or 'python:package.module:function'")

    @property
    def sde_steps(self) -> list[int]:
        end = self.num_steps if self.sde_window_size is None else min(self.num_steps, self.sde_window_start + self.sde_window_size)
        return list(range(self.sde_window_start, end))


@dataclass
class SFTGeneratorConfig(GeneratorConfig):
    """Supervised flow-matching LoRA fine-tuning on (prompt, image) pairs (e.g. best-of-N picks)."""

    output_dir: str = field(default="outputs/sft-generator", **_help("Where checkpoints, logs and the exported LoRA go."))
    data_dir: str = field(default="", **_help(
        "Folder of images with prompts: IMAGE.txt or IMAGE.json ('prompt') beside each image, or metadata.jsonl (file_name, prompt)."))
    num_epochs: int = field(default=10, **_help("Passes over the data."))
    max_steps: int | None = field(default=None, **_help("Stop after this many optimiser steps (overrides num_epochs)."))
    batch_size: int = field(default=4, **_help("Images per optimiser step per process."))
    micro_batch_size: int = field(default=1, **_help("Images per forward/backward (divides batch_size)."))
    timestep_sampling: str = field(default="logit_normal", **_help("uniform or logit_normal (SD3) sigma sampling."))
    learning_rate: float = field(default=1e-4, **_help("AdamW learning rate."))

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


def load_config(path: str | Path | None, cls: type = FlowGRPOConfig, overrides: Mapping[str, Any] | None = None):
    """Read a flat YAML mapping into ``cls``; unknown keys are a `ConfigError` with suggestions."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of keys to values, got {type(loaded).__name__}")
        data.update(loaded)
    data.update(overrides or {})
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), names, n=1)
            hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise ConfigError(f"unknown config key(s) {', '.join(hints)} for {cls.__name__}. "
                          f"Fix: remove them; valid keys are listed in docs/training-generator.md")
    return cls(**data)


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` (value parsed as YAML) for ``--set`` command-line overrides."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)
