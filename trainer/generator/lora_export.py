"""LoRA for flow transformers: attach with peft, export one file that diffusers and ComfyUI read alike.

Export format (one ``.safetensors``)::

    transformer.<diffusers module path>.lora_A.weight   [r, in]
    transformer.<diffusers module path>.lora_B.weight   [out, r]   (already multiplied by alpha / r)

No ``.alpha`` tensors and no ``base_model.model.`` prefix: diffusers' ``load_lora_weights``
assumes alpha = r without metadata (scale 1) and refuses ``.alpha`` keys, ComfyUI's
``LoraLoader`` uses scale 1 when no ``.alpha`` is present, so folding ``alpha / r`` into
``lora_B`` makes the file apply identically in both.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Mapping

import torch

#: Flow-GRPO's default targets: the joint-attention projections of SD3/FLUX blocks.
DEFAULT_TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
)
ADAPTER_NAME = "default"
PREFIX = "transformer."


def add_lora(
    transformer: torch.nn.Module,
    rank: int = 32,
    alpha: float = 64.0,
    targets: Iterable[str] = DEFAULT_TARGETS,
    init: str | bool = "gaussian",
    seed: int | None = 0,
) -> torch.nn.Module:
    """Freeze ``transformer`` and attach a trainable peft LoRA on the ``targets`` modules.

    Targets are module-name suffixes (``"to_q"``, ``"attn.to_out.0"``, ...) as in peft's
    ``target_modules``. ``init="gaussian"`` (Flow-GRPO) draws ``lora_A`` from a normal and zeros
    ``lora_B``, so the model is unchanged at step 0. Returns ``transformer``.
    """
    from peft import LoraConfig

    targets = list(targets)
    names = [n for n, _ in transformer.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if len(missing) == len(targets):
        raise ValueError(
            f"lora_target_modules {missing} match no module of {type(transformer).__name__}; "
            f"use module-name suffixes such as {list(DEFAULT_TARGETS)}"
        )
    if missing:
        warnings.warn(f"lora_target_modules {missing} match no module of {type(transformer).__name__}; skipped", stacklevel=2)
        targets = [t for t in targets if t not in missing]
    transformer.requires_grad_(False)
    if seed is not None:
        torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=init, target_modules=targets)
    transformer.add_adapter(config, adapter_name=ADAPTER_NAME)
    return transformer


def lora_parameters(transformer: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trainable LoRA parameters, in a stable (named) order."""
    return [p for n, p in transformer.named_parameters() if "lora_" in n and p.requires_grad]


def lora_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """peft-format LoRA weights ``<module>.lora_A.weight`` / ``.lora_B.weight`` (unscaled, detached)."""
    from peft.utils import get_peft_model_state_dict

    sd = get_peft_model_state_dict(transformer, adapter_name=ADAPTER_NAME)
    return {k: v.detach().clone() for k, v in sd.items()}


def load_lora_state_dict(transformer: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load `lora_state_dict` output back into an adapter-carrying transformer (exact copy)."""
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(transformer, dict(state), adapter_name=ADAPTER_NAME)
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise ValueError(f"LoRA state has keys this model lacks: {unexpected[:5]}")


def lora_scale(transformer: torch.nn.Module) -> float:
    """``alpha / r`` of the attached adapter."""
    config = transformer.peft_config[ADAPTER_NAME]
    if config.rank_pattern or config.alpha_pattern:
        raise ValueError("rank_pattern/alpha_pattern LoRAs cannot be folded into one scale; train without them")
    return float(config.lora_alpha) / float(config.r)


def to_export_format(state: Mapping[str, torch.Tensor], scale: float, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """peft keys -> ``transformer.``-prefixed keys with ``scale`` folded into ``lora_B``."""
    out = {}
    for key, value in state.items():
        if key.endswith(".alpha") or not (".lora_A." in key or ".lora_B." in key):
            raise ValueError(f"unexpected LoRA key {key!r}")
        name = key.removeprefix("base_model.model.")
        tensor = value.detach().float() * (scale if ".lora_B." in key else 1.0)
        out[PREFIX + name] = tensor.to(dtype or value.dtype).contiguous().cpu()
    return out


def export_lora(
    transformer_or_state: torch.nn.Module | Mapping[str, torch.Tensor],
    path: str | Path,
    scale: float | None = None,
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write the LoRA as one ``.safetensors`` readable by diffusers and ComfyUI (see module doc).

    Pass the transformer (its adapter and ``alpha / r`` are read), or a peft-format state dict
    plus ``scale = alpha / r``. The write is atomic (temp file, then rename).
    """
    from safetensors.torch import save_file

    if isinstance(transformer_or_state, torch.nn.Module):
        state = lora_state_dict(transformer_or_state)
        scale = lora_scale(transformer_or_state) if scale is None else scale
    else:
        state = dict(transformer_or_state)
        if scale is None:
            raise ValueError("export_lora: pass scale=alpha/r with a state dict")
    tensors = to_export_format(state, scale, dtype)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    meta = {"format": "pt", "imagedoctor.lora_scale_folded": str(scale)}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def exported_modules(path: str | Path) -> set[str]:
    """Module paths (without ``transformer.`` and ``.lora_X.weight``) in an exported file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    return {k.removeprefix(PREFIX).rsplit(".lora_", 1)[0] for k in keys}
