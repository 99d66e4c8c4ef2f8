"""LoRA export: key format, alpha folding, diffusers reload equality, ComfyUI-mappable key set."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from imagedoctor.trainer.generator.sde import PipelineAdapter
from imagedoctor.trainer.generator.flow_grpo import load_pipeline
from imagedoctor.trainer.generator.lora_export import (
    DEFAULT_TARGETS,
    add_lora,
    export_lora,
    exported_modules,
    lora_parameters,
    lora_state_dict,
)

# Diffusers module paths that ComfyUI's LoRA loader maps onto its own weights, read from its
# conversion tables (ComfyUI 0.3.64 `comfy/utils.py`: `mmdit_to_diffusers`, `flux_to_diffusers`;
# `comfy/lora.py` prefixes them with `transformer.`): q/k/v go into fused qkv tensors at offsets,
# the rest map one to one. Only modules with a LoRA-able weight (Linear/Conv) are listed.
# tests/e2e/test_comfyui_lora.py checks these sets against ComfyUI's own functions.
COMFY_SD3_BLOCK_MODULES = {
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",  # SD3.5 MMDiT-X blocks
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "norm1.linear", "norm1_context.linear",
}
COMFY_SD3_TOP_MODULES = {
    "context_embedder", "pos_embed.proj", "proj_out", "norm_out.linear",
    "time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2",
    "time_text_embed.text_embedder.linear_1", "time_text_embed.text_embedder.linear_2",
}
COMFY_FLUX_DOUBLE_MODULES = {
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "norm1.linear", "norm1_context.linear",
}
COMFY_FLUX_SINGLE_MODULES = {"attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out", "norm.linear"}
COMFY_FLUX_TOP_MODULES = {
    "x_embedder", "context_embedder", "proj_out", "norm_out.linear", "controlnet_x_embedder",
    "time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2",
    "time_text_embed.text_embedder.linear_1", "time_text_embed.text_embedder.linear_2",
    "time_text_embed.guidance_embedder.linear_1", "time_text_embed.guidance_embedder.linear_2",
}


def comfy_mappable(module: str, family: str, n_double: int, n_single: int) -> bool:
    """Whether ComfyUI maps ``transformer.<module>`` for this architecture."""
    if module in (COMFY_SD3_TOP_MODULES if family == "sd3" else COMFY_FLUX_TOP_MODULES):
        return True
    parts = module.split(".")
    if parts[0] == "transformer_blocks" and len(parts) > 2 and int(parts[1]) < n_double:
        rest = ".".join(parts[2:])
        return rest in (COMFY_SD3_BLOCK_MODULES if family == "sd3" else COMFY_FLUX_DOUBLE_MODULES)
    if family == "flux" and parts[0] == "single_transformer_blocks" and len(parts) > 2 and int(parts[1]) < n_single:
        return ".".join(parts[2:]) in COMFY_FLUX_SINGLE_MODULES
    return False


#: Every module ComfyUI maps that is not in a block, as LoRA targets (peft suffix match).
TOP_TARGETS = {
    "sd3": ["proj_out", "norm_out.linear", "context_embedder", "pos_embed.proj", "timestep_embedder.linear_1",
            "timestep_embedder.linear_2", "text_embedder.linear_1", "text_embedder.linear_2"],
    "flux": ["proj_out", "norm_out.linear", "context_embedder", "x_embedder", "timestep_embedder.linear_1",
             "timestep_embedder.linear_2", "text_embedder.linear_1", "text_embedder.linear_2",
             "guidance_embedder.linear_1", "guidance_embedder.linear_2"],
}


def randomise_lora(transformer, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(transformer):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def fixed_inputs(adapter, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, adapter.latent_channels, 8, 8, generator=g)
    timesteps = adapter.set_timesteps(4, 32, 32, "cpu")
    cond = adapter.encode(["a red cube", "a blue ball"], 3.0, "cpu")
    return latents, timesteps[1].expand(2), cond


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_export_reloads_identically_in_diffusers(family, tiny_sd3_path, tiny_flux_path, tmp_path):
    path = tiny_sd3_path if family == "sd3" else tiny_flux_path
    pipe = load_pipeline(str(path))
    add_lora(pipe.transformer, rank=4, alpha=12.0)  # alpha != r: the scale 3 must be folded
    randomise_lora(pipe.transformer)
    adapter = PipelineAdapter(pipe, 16)
    x, t, cond = fixed_inputs(adapter)
    with torch.no_grad():
        trained = adapter.velocity(pipe.transformer, x, t, cond, 3.0)
        pipe.transformer.disable_adapters()
        base = adapter.velocity(pipe.transformer, x, t, cond, 3.0)
        pipe.transformer.enable_adapters()
    assert (trained - base).abs().max() > 1e-3  # the LoRA really changes the output

    out = export_lora(pipe.transformer, tmp_path / "lora.safetensors")
    with safe_open(str(out), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("transformer.") for k in keys)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert not any(".alpha" in k or "base_model" in k for k in keys)
    peft = lora_state_dict(pipe.transformer)
    bkey = next(k for k in peft if k.endswith("lora_B.weight"))
    with safe_open(str(out), framework="pt") as f:
        torch.testing.assert_close(f.get_tensor("transformer." + bkey), peft[bkey] * 3.0)

    fresh = load_pipeline(str(path))
    fresh.load_lora_weights(str(out))
    fresh_adapter = PipelineAdapter(fresh, 16)
    with torch.no_grad():
        reloaded = fresh_adapter.velocity(fresh.transformer, x, t, cond, 3.0)
    torch.testing.assert_close(reloaded, trained, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["sd3", "flux"])
@pytest.mark.parametrize("top", [False, True], ids=["blocks", "with-top-level"])
def test_exported_keys_are_the_set_comfyui_maps(family, top, tiny_sd3_path, tiny_flux_path, tmp_path):
    path = tiny_sd3_path if family == "sd3" else tiny_flux_path
    pipe = load_pipeline(str(path))
    cfg = pipe.transformer.config
    n_double = cfg.num_layers
    n_single = getattr(cfg, "num_single_layers", 0) or 0
    targets = list(DEFAULT_TARGETS) + (TOP_TARGETS[family] + ["ff.net.0.proj", "norm1.linear"] if top else [])
    add_lora(pipe.transformer, rank=2, alpha=2.0, targets=targets)
    modules = exported_modules(export_lora(pipe.transformer, tmp_path / "l.safetensors"))
    unmapped = sorted(m for m in modules if not comfy_mappable(m, family, n_double, n_single))
    assert not unmapped, f"ComfyUI would ignore {unmapped}"
    # every default target really got exported for every block that has it
    expected = {f"transformer_blocks.{i}.attn.to_q" for i in range(n_double)}
    if family == "flux":
        expected |= {f"single_transformer_blocks.{i}.attn.to_q" for i in range(n_single)}
        expected |= {f"transformer_blocks.{i}.attn.to_add_out" for i in range(n_double)}
    else:
        expected |= {f"transformer_blocks.{i}.attn.to_add_out" for i in range(n_double - 1)}  # last block is context-pre-only
    if top:
        top_modules = COMFY_SD3_TOP_MODULES if family == "sd3" else COMFY_FLUX_TOP_MODULES - {"controlnet_x_embedder"}
        expected |= top_modules
        if family == "flux":
            expected |= {f"single_transformer_blocks.{i}.proj_out" for i in range(n_single)}
    assert expected <= modules, sorted(expected - modules)
    # a negative control: module names ComfyUI does not map must be reported
    assert not comfy_mappable("transformer_blocks.0.attn.to_qkv", family, n_double, n_single)
    assert not comfy_mappable("base_model.model.transformer_blocks.0.attn.to_q", family, n_double, n_single)
    assert not comfy_mappable("transformer_blocks.0.attn.norm_q", family, n_double, n_single)


def test_add_lora_rejects_unknown_targets(tiny_sd3_path):
    pipe = load_pipeline(str(tiny_sd3_path))
    with pytest.raises(ValueError, match="match no module"):
        add_lora(pipe.transformer, targets=["qkv_fused"])
