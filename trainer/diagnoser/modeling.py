"""Loading a diagnoser for training: task tokens, heatmap head, LoRA or full fine-tuning, saving."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ...core.diagnoser import Diagnoser, save_diagnoser
from .config import DiagnoserTrainConfig

TASK_TOKENS = {"misalignment": "<MIS>", "artifact": "<ART>"}


def ensure_task_tokens(dg: Diagnoser) -> bool:
    """Add ``<MIS>``/``<ART>`` to the tokenizer and embeddings when the base model lacks them."""
    tok = dg.processor.tokenizer
    missing = [name for name, tid in dg.task_token_ids.items() if tid is None]
    if not missing:
        return False
    tok.add_tokens([TASK_TOKENS[n] for n in ("misalignment", "artifact")], special_tokens=False)
    dg.model.resize_token_embeddings(len(tok))
    for name, attr in (("misalignment", "misalignment_token_id"), ("artifact", "artifact_token_id")):
        tid = tok.convert_tokens_to_ids(TASK_TOKENS[name])
        setattr(dg.model.config, attr, tid)
        dg.task_token_ids[name] = tid
    return True


def ensure_head(dg: Diagnoser) -> None:
    """Create a freshly initialised heatmap head (sized to the backbone) when the checkpoint has none."""
    from ...core.heatmap_head import HeatmapHead, HeatmapHeadConfig

    if dg.head is not None:
        return
    text_cfg = getattr(dg.model.config, "text_config", dg.model.config)
    head_cfg = HeatmapHeadConfig(text_dim=text_cfg.hidden_size, image_dim=dg.model.config.vision_config.out_hidden_size)
    dg.model.config.heatmap_head = head_cfg.to_dict()
    dg.head = HeatmapHead(head_cfg).to(device=dg.model.device, dtype=dg.model.dtype)


def lora_target_regex(targets: Sequence[str]) -> str:
    """peft regex selecting the language model's projections only (never the vision tower)."""
    return r".*language_model\..*\.(" + "|".join(sorted(set(targets))) + r")$"


def prepare_diagnoser(cfg: DiagnoserTrainConfig, need_head: bool, train_head: bool = True) -> tuple[Diagnoser, Any]:
    """Load the diagnoser, add task tokens/head if needed, and set what trains.

    Returns (dg, peft_model or None). ``dg.model`` keeps pointing at the transformers model
    (peft injects its LoRA layers in place), so `Diagnoser.diagnose` runs the trained policy.
    """
    dg = Diagnoser.from_pretrained(cfg.model, dtype=cfg.dtype, device="cpu", format=cfg.format)
    added = ensure_task_tokens(dg) if cfg.uses_task_tokens else False
    if need_head:
        ensure_head(dg)
    model = dg.model
    for p in model.parameters():
        p.requires_grad_(False)
    peft_model = None
    if cfg.finetuning == "lora":
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=lora_target_regex(cfg.lora_target_modules),
                          modules_to_save=["embed_tokens", "lm_head"] if added else None, task_type=None)
        peft_model = get_peft_model(model, lcfg)
    else:
        for name, p in model.named_parameters():
            p.requires_grad_(cfg.train_vision or ".visual." not in f".{name}")
    if dg.head is not None:
        for p in dg.head.parameters():
            p.requires_grad_(train_head)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        model.config.use_cache = False
    return dg, peft_model


def save_final(dg: Diagnoser, peft_model, out_dir: Path, save_adapter: bool = False) -> Path:
    """Write ``out_dir/model`` (LoRA merged into a copy, loadable by `Diagnoser.from_pretrained`)."""
    import copy

    if peft_model is not None:
        if save_adapter:
            # Adapter + the trained head + the processor: `Diagnoser.from_pretrained(out_dir / "adapter")`
            # loads the base named in adapter_config.json and merges the adapter onto it.
            from safetensors.torch import save_file

            from ...core.diagnoser import HEAD_FILE

            peft_model.save_pretrained(out_dir / "adapter")
            dg.processor.save_pretrained(out_dir / "adapter")
            if dg.head is not None:
                head_sd = {k: v.detach().contiguous().cpu() for k, v in dg.head.state_dict().items()}
                save_file(head_sd, str(out_dir / "adapter" / HEAD_FILE), metadata={"format": "pt"})
        merged = copy.deepcopy(peft_model).merge_and_unload()
    else:
        merged = dg.model
    was_ckpt = getattr(merged, "is_gradient_checkpointing", False)
    if was_ckpt:
        merged.gradient_checkpointing_disable()
    merged.config.use_cache = True
    path = save_diagnoser(out_dir / "model", merged, dg.processor, dg.head)
    if was_ckpt and merged is dg.model:
        merged.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return path
