"""Configuration of the diagnoser trainers (`SFTConfig`, `GRPOConfig`), TRL style.

Built on `trainer.common.config.TrainerConfig`: every field carries help text (``--help-config``
and the docs tables are generated from it), values are type-checked, and ``__post_init__``
rejects bad values and combinations, naming the key and the fix, before any model is loaded.
"""

from __future__ import annotations

from ..common.config import ConfigError, TrainerConfig, config_class, option

__all__ = ["ConfigError", "DiagnoserTrainConfig", "SFTConfig", "GRPOConfig"]

FORMATS = ("imagedoctor", "sdg")
STAGES = ("scores", "full")
FINETUNING = ("lora", "full")
DTYPES = ("fp32", "bf16", "fp16", "auto")
LOSS_TYPES = ("token", "sequence")
REWARD_NAMES = ("score", "heatmap", "grounding", "sdg", "format")
REWARD_VARIANTS = ("ours", "upstream")
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@config_class
class DiagnoserTrainConfig(TrainerConfig):
    """Fields shared by the diagnoser's SFT and GRPO."""

    _docs = "docs/training-diagnoser.md"

    model: str = option("", "Diagnoser folder (or cached hub id) to start from.")
    data: str = option("", "Training data set folder in the project format (data.jsonl).")
    eval_data: str | None = option(None, "Held-out data set folder for evaluation (optional).")
    output_dir: str = option("", "Where the trained diagnoser, checkpoints and logs go.")
    format: str = option("imagedoctor", f"Output format to train: one of {list(FORMATS)}.")
    stage: str = option("full", "imagedoctor only: 'scores' (cold start 1, scores only) or 'full' (cold start 2: "
                                "think + boxes + reasons + task tokens).")
    think: bool = option(True, "Render and ask for the <think> block.")
    image_area: int | None = option(512 * 512, "Images are resized to about this many pixels (aspect kept); "
                                               "null keeps them.")
    prompt_variant: str | None = option(None, "Prompt variant of the training prompts (user text, system turn; "
                                              "imagedoctor.core.prompts.PROMPT_VARIANTS, of this format, e.g. "
                                              "'imagedoctor-grpo' or 'sdg-grpo'); null = the starting checkpoint's "
                                              "own (its config.json), else the format's default. Images are still "
                                              "sized by image_area.")
    finetuning: str = option("lora", "'lora' (peft adapters on the language model) or 'full'.")
    lora_r: int = option(16, "LoRA rank r.")
    lora_alpha: float = option(32.0, "LoRA alpha (scale alpha / r).")
    lora_dropout: float = option(0.0, "LoRA dropout.")
    lora_target_modules: list[str] = option(default_factory=lambda: list(DEFAULT_LORA_TARGETS),
                                            help="Projection names of the language model that get LoRA (the vision "
                                                 "tower is always excluded).")
    train_vision: bool = option(False, "Also train the vision tower and projector (finetuning: full only).")
    dtype: str = option("fp32", f"Weight dtype at load: one of {list(DTYPES)}.")
    head_learning_rate: float | None = option(None, "Learning rate of the heatmap head (default: learning_rate).")
    lr_scheduler_type: str = option("constant_with_warmup", "Learning-rate schedule: one of ['constant', "
                                    "'constant_with_warmup', 'linear', 'cosine'].")
    max_steps: int = option(1000, "Optimiser steps (SFT) or iterations (GRPO) to train.")
    lr_schedule_steps: int | None = option(None, "Steps the learning-rate schedule spans (default: max_steps). Set it "
                                                 "above max_steps to stop a longer schedule early, as a run "
                                                 "interrupted at max_steps would have (the mini recipe does).")
    batch_size: int = option(4, "Images per process per micro-batch (GRPO: images per iteration, each with "
                                "num_generations completions).")
    gradient_accumulation_steps: int = option(1, "Micro-batches per optimiser step (SFT).")
    eval_steps: int = option(0, "Evaluate on eval_data every N steps (0 = only at the end).")
    save_adapter: bool = option(False, "Also write the LoRA adapter alone (peft format) to OUTPUT/adapter; "
                                       "OUTPUT/model is always merged.")
    eval_max_new_tokens: int = option(512, "Generation length when evaluating scores.")
    eval_samples: int = option(64, "Evaluate on at most this many eval_data samples.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data:
            self._fail("data", "is empty", "set it to a data set folder (data.jsonl)")
        self._choice("format", FORMATS)
        self._choice("stage", STAGES)
        if self.format == "sdg" and self.stage == "scores":
            self._fail("stage", "'scores' exists only for format 'imagedoctor' (SDG outputs have no scores)",
                       "use stage: full")
        self._choice("finetuning", FINETUNING)
        if self.train_vision and self.finetuning == "lora":
            self._fail("train_vision", "needs finetuning: full (LoRA targets the language model only)",
                       "set finetuning: full or train_vision: false")
        self._choice("dtype", DTYPES)
        if self.prompt_variant is not None:
            self._check_prompt_variant()
        if self.image_area is not None and self.image_area < 28 * 28:
            self._fail("image_area", f"{self.image_area} is below 784 (28x28)", "use an area >= 784, or null")
        if self.lr_schedule_steps is not None and self.lr_schedule_steps < self.max_steps:
            self._fail("lr_schedule_steps", f"is {self.lr_schedule_steps}, below max_steps ({self.max_steps}): the "
                       "schedule would end before training does", "leave it unset or set it >= max_steps")
        for key in ("max_steps", "batch_size", "eval_max_new_tokens", "eval_samples", "gradient_accumulation_steps",
                    "lora_r", "lora_alpha"):
            self._positive(key)
        self._positive("eval_steps", allow_zero=True)
        if self.head_learning_rate is not None:
            self._positive("head_learning_rate")
        if not 0 <= self.lora_dropout < 1:
            self._fail("lora_dropout", f"{self.lora_dropout} is outside [0, 1)", "use e.g. 0.05")
        if not self.lora_target_modules:
            self._fail("lora_target_modules", "is empty", "name at least one projection, e.g. [q_proj, v_proj]")

    def _check_prompt_variant(self) -> None:
        from ...core.prompts import PROMPT_VARIANTS

        names = sorted(n for n, v in PROMPT_VARIANTS.items() if v.format == self.format and not v.prefill)
        v = PROMPT_VARIANTS.get(self.prompt_variant)
        if v is None or v.format != self.format:
            self._fail("prompt_variant", f"{self.prompt_variant!r} is not a prompt variant of format {self.format!r}",
                       f"use one of {names}, or null")
        if v.prefill:
            self._fail("prompt_variant", f"{self.prompt_variant!r} pre-fills the answer (a reward scorer's query)",
                       f"train the score-only mode with think: false, or use one of {names}")
        if not self.think:
            self._fail("prompt_variant", "applies with think: true (think: false uses the score-only prompt)",
                       "set think: true or prompt_variant: null")

    @property
    def uses_task_tokens(self) -> bool:
        """Whether targets carry <MIS>/<ART> (ImageDoctor full stage): the head can be trained."""
        return self.format == "imagedoctor" and self.stage == "full"


@config_class
class SFTConfig(DiagnoserTrainConfig):
    """Cold-start supervised fine-tuning: CE on assistant tokens + heatmap_weight x heatmap MSE."""

    heatmap_weight: float = option(1.0, "Weight of (MSE_misalignment + MSE_artifact) through the head; needs "
                                        "stage 'full'.")
    heatmap_size: int = option(288, "Heatmap loss resolution: predicted and GT maps are compared at heatmap_size "
                                    "x heatmap_size (upstream 288).")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._positive("heatmap_weight", allow_zero=True)
        if self.heatmap_weight > 0 and not self.uses_task_tokens:
            self._fail("heatmap_weight", "needs the <MIS>/<ART> task tokens in the targets (format: imagedoctor, "
                                         "stage: full)", "set heatmap_weight: 0 for this stage")
        if self.heatmap_size < 16:
            self._fail("heatmap_size", f"{self.heatmap_size} is below 16", "use e.g. 288 (upstream) or 64")


@config_class
class GRPOConfig(DiagnoserTrainConfig):
    """GRPO with verifiable rewards on the diagnoser's own rollouts."""

    _renamed = {"num_inner_steps": "num_iterations"}

    learning_rate: float = option(2e-6, "Peak learning rate (upstream 2e-6).")
    num_generations: int = option(8, "Completions G sampled per (image, prompt); advantages are group-relative.")
    num_iterations: int = option(1, "Optimisation steps on each rollout batch (TRL's mu; clipping acts from the "
                                    "2nd on).")
    max_new_tokens: int = option(1024, "Maximum completion length of a rollout.")
    temperature: float = option(1.0, "Sampling temperature of rollouts.")
    top_p: float = option(1.0, "Nucleus sampling of rollouts.")
    beta: float = option(0.04, "KL weight to the reference (the model with its LoRA disabled); 0 = no KL.")
    epsilon: float = option(0.2, "PPO clip range of the ratio.")
    loss_type: str = option("token", "'token': loss summed over all tokens / total tokens (DAPO); 'sequence': mean "
                                     "per completion, then mean.")
    rewards: dict[str, float] = option(default_factory=lambda: {"score": 1.0, "heatmap": 1.0, "grounding": 1.0},
                                       help=f"Reward name -> weight; names: {list(REWARD_NAMES)}.")
    embedding_model: str | None = option(None, "Text encoder of the SDG description reward: a sentence-transformers "
                                               "model (reward_variant ours) or a transformers model mean-pooled as "
                                               "the authors do (upstream); null = R_desc off.")
    scale_rewards: bool = option(True, "Divide group-centred rewards by the group std.")
    reward_variant: str = option("ours", "Definitions of the score/heatmap/grounding/sdg rewards: 'ours' (bounded "
                                         "means over parsed boxes; docs/fidelity.md gives the reasons) or 'upstream' "
                                         "(the authors' exact definitions on the raw completion, as the published "
                                         "checkpoints were trained).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_generations < 2:
            self._fail("num_generations", f"{self.num_generations} < 2 (advantages compare completions of one image)",
                       "use 2 or more")
        for key in ("max_new_tokens", "num_iterations"):
            self._positive(key)
        if not self.temperature > 0:
            self._fail("temperature", f"{self.temperature} is not > 0 (rollouts are sampled)", "use e.g. 1.0")
        if not 0 < self.top_p <= 1:
            self._fail("top_p", f"{self.top_p} is outside (0, 1]", "use e.g. 1.0")
        self._positive("beta", allow_zero=True)
        if self.beta > 0 and self.finetuning != "lora":
            self._fail("beta", "the KL reference is the model with its LoRA disabled, which needs finetuning: lora",
                       "use finetuning: lora or set beta: 0")
        if not 0 < self.epsilon < 1:
            self._fail("epsilon", f"{self.epsilon} is outside (0, 1)", "use e.g. 0.2")
        self._choice("loss_type", LOSS_TYPES)
        self._choice("reward_variant", REWARD_VARIANTS)
        if not self.rewards:
            self._fail("rewards", "is empty", "map at least one reward name to a weight, e.g. {score: 1.0}")
        for name in self.rewards:
            if name not in REWARD_NAMES:
                self._fail("rewards", f"unknown reward {name!r}", f"use names from {list(REWARD_NAMES)}")
        if self.format == "sdg" and {"score", "heatmap"} & set(self.rewards):
            self._fail("rewards", "'score' and 'heatmap' need ImageDoctor outputs", "with format sdg use 'sdg' or "
                                                                                   "'format'")
        if "heatmap" in self.rewards and not self.uses_task_tokens:
            self._fail("rewards", "'heatmap' needs the task tokens (format imagedoctor, stage full)",
                       "remove it or set stage: full")
        if "grounding" in self.rewards and self.stage == "scores":
            self._fail("rewards", "'grounding' needs boxes in the output", "set stage: full or remove it")
        if self.format == "imagedoctor" and "sdg" in self.rewards:
            self._fail("rewards", "'sdg' is the SDG detector reward", "use format: sdg or remove it")
