"""Configuration of the diagnoser trainers (`SFTConfig`, `GRPOConfig`), TRL style.

Every field carries ``metadata={"help": ...}`` (the docs table is generated from it).
``__post_init__`` rejects bad values and bad combinations, naming the key and the fix, so a
config is fully checked *before* any model is loaded. ``from_yaml(path)`` rejects unknown keys.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

FORMATS = ("imagedoctor", "sdg")
STAGES = ("scores", "full")
FINETUNING = ("lora", "full")
PRECISIONS = ("no", "fp16", "bf16")
LOSS_TYPES = ("token", "sequence")
REWARD_NAMES = ("score", "heatmap", "grounding", "sdg", "format")
REWARD_VARIANTS = ("ours", "upstream")
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ConfigError(ValueError):
    """A trainer config is invalid; the message names the key and how to fix it."""


def _fail(key: str, message: str) -> None:
    raise ConfigError(f"config key {key!r}: {message}")


@dataclass
class DiagnoserTrainConfig:
    """Fields shared by SFT and GRPO."""

    model: str = field(default="", metadata={"help": "Diagnoser folder (or cached hub id) to start from."})
    data: str = field(default="", metadata={"help": "Training data set folder in the project format (data.jsonl)."})
    eval_data: str | None = field(default=None, metadata={"help": "Held-out data set folder for evaluation (optional)."})
    output_dir: str = field(default="", metadata={"help": "Where the trained diagnoser, checkpoints and logs go."})
    format: str = field(default="imagedoctor", metadata={"help": f"Output format to train: one of {list(FORMATS)}."})
    stage: str = field(default="full", metadata={"help": "imagedoctor only: 'scores' (cold start 1, scores only) or "
                                                         "'full' (cold start 2: think + boxes + reasons + task tokens)."})
    think: bool = field(default=True, metadata={"help": "Render and ask for the <think> block."})
    image_area: int | None = field(default=512 * 512, metadata={"help": "Images are resized to about this many "
                                                                          "pixels (aspect kept); null keeps them."})
    finetuning: str = field(default="lora", metadata={"help": "'lora' (peft adapters on the language model) or 'full'."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale alpha/r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS),
                                           metadata={"help": "Projection names of the language model that get LoRA "
                                                             "(the vision tower is always excluded)."})
    train_vision: bool = field(default=False, metadata={"help": "Also train the vision tower and projector (full only)."})
    dtype: str = field(default="fp32", metadata={"help": "Weight dtype at load: fp32, bf16, fp16 or auto."})
    mixed_precision: str = field(default="no", metadata={"help": f"accelerate mixed precision: {list(PRECISIONS)}."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in backward."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate of the language model."})
    head_learning_rate: float | None = field(default=None, metadata={"help": "Learning rate of the heatmap head "
                                                                              "(default: learning_rate)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up steps (then constant)."})
    max_steps: int = field(default=1000, metadata={"help": "Optimizer steps to train."})
    batch_size: int = field(default=4, metadata={"help": "Images per device per micro-batch."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 = off)."})
    seed: int = field(default=0, metadata={"help": "Seed of data order, sampling and initialisation."})
    logging_steps: int = field(default=10, metadata={"help": "Log every N steps (TensorBoard + progress bar)."})
    save_steps: int = field(default=500, metadata={"help": "Checkpoint every N steps (0 = only at the end)."})
    save_total_limit: int = field(default=2, metadata={"help": "Keep at most N checkpoints (oldest deleted)."})
    eval_steps: int = field(default=0, metadata={"help": "Evaluate on eval_data every N steps (0 = only at the end)."})
    report_to: str = field(default="tensorboard", metadata={"help": "'tensorboard' or 'none'."})
    save_adapter: bool = field(default=False, metadata={"help": "Also write the LoRA adapter alone (peft format) to "
                                                                "OUTPUT/adapter; OUTPUT/model is always merged."})
    eval_max_new_tokens: int = field(default=512, metadata={"help": "Generation length when evaluating scores."})
    eval_samples: int = field(default=64, metadata={"help": "Evaluate on at most this many eval_data samples."})
    progress_bar: bool = field(default=True, metadata={"help": "Show a tqdm progress bar."})

    def __post_init__(self) -> None:
        for key in ("model", "data", "output_dir"):
            if not getattr(self, key):
                _fail(key, "is required; set it to a folder path")
        if self.format not in FORMATS:
            _fail("format", f"must be one of {list(FORMATS)}, got {self.format!r}")
        if self.stage not in STAGES:
            _fail("stage", f"must be one of {list(STAGES)}, got {self.stage!r}")
        if self.format == "sdg" and self.stage == "scores":
            _fail("stage", "'scores' exists only for format 'imagedoctor' (SDG outputs have no scores); use 'full'")
        if self.finetuning not in FINETUNING:
            _fail("finetuning", f"must be one of {list(FINETUNING)}, got {self.finetuning!r}")
        if self.train_vision and self.finetuning == "lora":
            _fail("train_vision", "needs finetuning: full (LoRA targets the language model only)")
        if self.mixed_precision not in PRECISIONS:
            _fail("mixed_precision", f"must be one of {list(PRECISIONS)}, got {self.mixed_precision!r}")
        if self.dtype not in ("fp32", "bf16", "fp16", "auto"):
            _fail("dtype", f"must be fp32, bf16, fp16 or auto, got {self.dtype!r}")
        if self.report_to not in ("tensorboard", "none"):
            _fail("report_to", f"must be 'tensorboard' or 'none', got {self.report_to!r}")
        if self.image_area is not None and (not isinstance(self.image_area, int) or self.image_area < 28 * 28):
            _fail("image_area", f"must be an integer >= 784 (28x28) or null, got {self.image_area!r}")
        positive = ("max_steps", "batch_size", "eval_max_new_tokens", "eval_samples", "gradient_accumulation_steps", "lora_r", "lora_alpha", "logging_steps")
        for key in positive:
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                _fail(key, f"must be a positive integer, got {getattr(self, key)!r}")
        for key in ("warmup_steps", "save_steps", "eval_steps", "save_total_limit"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                _fail(key, f"must be a non-negative integer, got {getattr(self, key)!r}")
        if not self.learning_rate > 0:
            _fail("learning_rate", f"must be > 0, got {self.learning_rate!r}")
        if self.head_learning_rate is not None and not self.head_learning_rate > 0:
            _fail("head_learning_rate", f"must be > 0 or null, got {self.head_learning_rate!r}")
        if not 0 <= self.lora_dropout < 1:
            _fail("lora_dropout", f"must be in [0, 1), got {self.lora_dropout!r}")
        if self.max_grad_norm < 0 or self.weight_decay < 0:
            _fail("max_grad_norm" if self.max_grad_norm < 0 else "weight_decay", "must be >= 0")
        if not self.lora_target_modules:
            _fail("lora_target_modules", "must name at least one projection, e.g. [q_proj, v_proj]")

    @property
    def uses_task_tokens(self) -> bool:
        """Whether targets carry <MIS>/<ART> (ImageDoctor full stage): the head can be trained."""
        return self.format == "imagedoctor" and self.stage == "full"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DiagnoserTrainConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a mapping of keys to values, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown} for {cls.__name__}; known keys: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "DiagnoserTrainConfig":
        """Read and validate a YAML config (unknown keys are errors)."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        try:
            return cls.from_dict(data)
        except TypeError as exc:  # pragma: no cover - dataclass signature errors
            raise ConfigError(f"{path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def help_table(cls) -> list[tuple[str, Any, str]]:
        """(key, default, help) rows for the documentation."""
        rows = []
        for f in fields(cls):
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            rows.append((f.name, default, f.metadata.get("help", "")))
        return rows


@dataclass
class SFTConfig(DiagnoserTrainConfig):
    """Cold-start supervised fine-tuning: CE on assistant tokens + heatmap_weight x heatmap MSE."""

    heatmap_weight: float = field(default=1.0, metadata={"help": "Weight of (MSE_misalignment + MSE_artifact) "
                                                                   "through the head; needs stage 'full'."})
    heatmap_size: int = field(default=288, metadata={"help": "Heatmap loss resolution: predicted and GT maps are "
                                                               "compared at heatmap_size x heatmap_size (upstream 288)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.heatmap_weight < 0:
            _fail("heatmap_weight", f"must be >= 0, got {self.heatmap_weight}")
        if self.heatmap_weight > 0 and not self.uses_task_tokens:
            _fail("heatmap_weight", "needs the <MIS>/<ART> task tokens in the targets (format: imagedoctor, "
                                    "stage: full); set heatmap_weight: 0 for this stage")
        if self.heatmap_size < 16:
            _fail("heatmap_size", f"must be >= 16, got {self.heatmap_size}")


@dataclass
class GRPOConfig(DiagnoserTrainConfig):
    """GRPO with verifiable rewards on the diagnoser's own rollouts."""

    learning_rate: float = field(default=2e-6, metadata={"help": "Peak learning rate (upstream 2e-6)."})
    num_generations: int = field(default=8, metadata={"help": "Completions G sampled per (image, prompt)."})
    max_new_tokens: int = field(default=1024, metadata={"help": "Maximum completion length of a rollout."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of rollouts."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling of rollouts."})
    beta: float = field(default=0.04, metadata={"help": "KL weight to the reference (LoRA disabled); 0 = no KL."})
    epsilon: float = field(default=0.2, metadata={"help": "PPO clip range of the ratio."})
    num_inner_steps: int = field(default=1, metadata={"help": "Optimizer passes over each rollout batch (mu)."})
    loss_type: str = field(default="token", metadata={"help": "'token': loss summed over all tokens / total tokens "
                                                               "(DAPO); 'sequence': mean per completion, then mean."})
    rewards: dict[str, float] = field(default_factory=lambda: {"score": 1.0, "heatmap": 1.0, "grounding": 1.0},
                                      metadata={"help": f"Reward name -> weight; names: {list(REWARD_NAMES)}."})
    embedding_model: str | None = field(default=None, metadata={"help": "Text encoder of the SDG description reward: "
                                                                          "a sentence-transformers model (reward_variant "
                                                                          "ours) or a transformers model mean-pooled as "
                                                                          "the authors do (upstream); null = R_desc off."})
    scale_rewards: bool = field(default=True, metadata={"help": "Divide group-centred rewards by the group std."})
    reward_variant: str = field(default="ours", metadata={"help": "Definitions of the score/heatmap/grounding/sdg "
                                                                   "rewards: 'ours' (bounded means over parsed boxes; "
                                                                   "docs/fidelity.md gives the reasons) or 'upstream' (the "
                                                                   "authors' exact definitions on the raw completion, as "
                                                                   "the published checkpoints were trained)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.num_generations, int) or self.num_generations < 2:
            _fail("num_generations", f"must be an integer >= 2 (advantages are group-relative), got {self.num_generations!r}")
        for key in ("max_new_tokens", "num_inner_steps"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                _fail(key, f"must be a positive integer, got {getattr(self, key)!r}")
        if not self.temperature > 0:
            _fail("temperature", f"must be > 0 (rollouts are sampled), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            _fail("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.beta < 0:
            _fail("beta", f"must be >= 0, got {self.beta}")
        if self.beta > 0 and self.finetuning != "lora":
            _fail("beta", "the KL reference is the model with its LoRA disabled; use finetuning: lora or set beta: 0")
        if not 0 < self.epsilon < 1:
            _fail("epsilon", f"must be in (0, 1), got {self.epsilon}")
        if self.reward_variant not in REWARD_VARIANTS:
            _fail("reward_variant", f"must be one of {list(REWARD_VARIANTS)}, got {self.reward_variant!r}")
        if self.loss_type not in LOSS_TYPES:
            _fail("loss_type", f"must be one of {list(LOSS_TYPES)}, got {self.loss_type!r}")
        if not isinstance(self.rewards, dict) or not self.rewards:
            _fail("rewards", "must map at least one reward name to a weight, e.g. {score: 1.0}")
        for name, weight in self.rewards.items():
            if name not in REWARD_NAMES:
                _fail("rewards", f"unknown reward {name!r}; use names from {list(REWARD_NAMES)}")
            if not isinstance(weight, (int, float)):
                _fail("rewards", f"weight of {name!r} must be a number, got {weight!r}")
        if self.format == "sdg" and {"score", "heatmap"} & set(self.rewards):
            _fail("rewards", "'score' and 'heatmap' need ImageDoctor outputs; with format sdg use 'sdg' or 'format'")
        if "heatmap" in self.rewards and not self.uses_task_tokens:
            _fail("rewards", "'heatmap' needs the task tokens (format imagedoctor, stage full); remove it or set stage: full")
        if "grounding" in self.rewards and self.stage == "scores":
            _fail("rewards", "'grounding' needs boxes in the output; set stage: full or remove it")
        if self.format == "imagedoctor" and "sdg" in self.rewards:
            _fail("rewards", "'sdg' is the SDG detector reward; use format: sdg or remove it")
