"""Our exported LoRA in a real ComfyUI: every key applied, same output change as diffusers.

Run by hand (not collected by the default ``pytest`` run), with a ComfyUI checkout and a Python
that has ComfyUI's requirements plus this project's (diffusers, peft)::

    COMFYUI_DIR=/path/to/ComfyUI python -m pytest tests/e2e/test_comfyui_lora.py -q

ComfyUI's model detection accepts SD3-family models only with head dim 64 and
heads = depth = hidden / 64 (16 latent channels), and FLUX only with hidden 3072, 24 heads and a
4096-wide text input, so the project's tiny pipelines do not load there. These tests build
shrunken models within those limits (SD3: depth 2, hidden 128, an SD3.5 dual-attention block
and RMS q/k norms; FLUX: 1 double + 1 single block at full width), save them as diffusers
transformer files, load them through ComfyUI's own loader (``comfy.sd.load_diffusion_model``,
what the UNETLoader node calls), apply our LoRA with the ``LoraLoader`` and
``LoraLoaderModelOnly`` nodes, and compare the output change with diffusers' LoRA loading.
Checked with ComfyUI 0.3.64.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest
import torch

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
if not COMFYUI_DIR or not (Path(COMFYUI_DIR) / "comfy" / "sd.py").is_file():
    pytest.skip("set COMFYUI_DIR to a ComfyUI checkout to run the ComfyUI LoRA tests", allow_module_level=True)
sys.path.insert(0, COMFYUI_DIR)
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True  # before comfy.model_management is imported: run on the CPU like `main.py --cpu`

from imagedoctor.trainer.generator.lora_export import DEFAULT_TARGETS, add_lora, export_lora, exported_modules  # noqa: E402

TOP = {
    "sd3": ["proj_out", "norm_out.linear", "context_embedder", "pos_embed.proj", "timestep_embedder.linear_1",
            "timestep_embedder.linear_2", "text_embedder.linear_1", "text_embedder.linear_2"],
    "flux": ["proj_out", "norm_out.linear", "context_embedder", "x_embedder", "timestep_embedder.linear_1",
             "timestep_embedder.linear_2", "text_embedder.linear_1", "text_embedder.linear_2",
             "guidance_embedder.linear_1", "guidance_embedder.linear_2"],
}
BLOCK_EXTRA = ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "norm1.linear",
               "norm1_context.linear", "proj_mlp", "norm.linear"]


def build_transformer(family: str, seed: int = 0):
    """A random diffusers transformer that ComfyUI's detection accepts (see module doc)."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    torch.manual_seed(seed)
    if family == "sd3":
        model = SD3Transformer2DModel(
            sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=64,
            num_attention_heads=2, joint_attention_dim=256, caption_projection_dim=128, pooled_projection_dim=64,
            pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm")
    else:
        model = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
            axes_dims_rope=(16, 56, 56))
    with torch.no_grad():  # zero-initialised output layers would hide every change: make them random
        for name, p in model.named_parameters():
            if p.abs().max() == 0 and p.ndim >= 1:
                p.normal_(0, 0.02)
    return model.eval()


def inputs(family: str):
    g = torch.Generator().manual_seed(1)
    if family == "sd3":
        return dict(x=torch.randn(1, 16, 8, 8, generator=g), t=torch.tensor([500.0]),
                    context=torch.randn(1, 6, 256, generator=g), y=torch.randn(1, 64, generator=g))
    return dict(x=torch.randn(1, 16, 8, 8, generator=g), t=torch.tensor([0.5]),
                context=torch.randn(1, 6, 4096, generator=g), y=torch.randn(1, 768, generator=g),
                guidance=torch.tensor([3.5]))


@torch.no_grad()
def diffusers_forward(model, family: str, inp) -> torch.Tensor:
    from imagedoctor.trainer.generator.sde import PipelineAdapter

    if family == "sd3":
        return model(hidden_states=inp["x"], timestep=inp["t"], encoder_hidden_states=inp["context"],
                     pooled_projections=inp["y"], return_dict=False)[0]
    b, _, h, w = inp["x"].shape
    img_ids = PipelineAdapter._image_ids(h, w, "cpu", torch.float32)
    out = model(hidden_states=PipelineAdapter.pack(inp["x"]), timestep=inp["t"], guidance=inp["guidance"],
                pooled_projections=inp["y"], encoder_hidden_states=inp["context"],
                txt_ids=torch.zeros(inp["context"].shape[1], 3), img_ids=img_ids, return_dict=False)[0]
    return PipelineAdapter.unpack(out, h, w)


@torch.no_grad()
def comfy_forward(patcher, family: str, inp) -> torch.Tensor:
    patcher.patch_model()
    try:
        dm = patcher.model.diffusion_model
        if family == "sd3":
            return dm(inp["x"], inp["t"], context=inp["context"], y=inp["y"]).float()
        return dm(inp["x"], inp["t"], inp["context"], y=inp["y"], guidance=inp["guidance"]).float()
    finally:
        patcher.unpatch_model()


@pytest.fixture(scope="module", params=["sd3", "flux"])
def setup(request, tmp_path_factory):
    """(family, saved transformer file, exported LoRA file, diffusers base and LoRA outputs)."""
    from safetensors.torch import save_file

    from imagedoctor.trainer.generator.lora_export import lora_parameters

    family = request.param
    root = tmp_path_factory.mktemp(f"comfy-{family}")
    model = build_transformer(family)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "transformer.safetensors"))
    inp = inputs(family)
    base_out = diffusers_forward(model, family, inp)
    targets = list(DEFAULT_TARGETS) + TOP[family] + BLOCK_EXTRA
    add_lora(model, rank=4, alpha=8.0, targets=targets)  # alpha/r = 2: folded into lora_B on export
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    lora_path = export_lora(model, root / "loras" / "ours.safetensors")
    del model
    # diffusers' own LoRA loading (what `pipe.load_lora_weights` does for the transformer)
    fresh = build_transformer(family)
    from safetensors.torch import load_file

    fresh.load_lora_adapter(load_file(str(lora_path)), prefix="transformer", adapter_name="ours")
    lora_out = diffusers_forward(fresh, family, inp)
    return family, root, lora_path, inp, base_out, lora_out


def comfy_model(root: Path):
    import comfy.sd

    return comfy.sd.load_diffusion_model(str(root / "transformer.safetensors"))


def test_comfyui_detects_and_reproduces_the_base_model(setup):
    family, root, _, inp, base_out, _ = setup
    import comfy.model_base

    patcher = comfy_model(root)
    expected = comfy.model_base.SD3 if family == "sd3" else comfy.model_base.Flux
    assert isinstance(patcher.model, expected), type(patcher.model)
    out = comfy_forward(patcher, family, inp)
    rel = float((out - base_out).norm() / base_out.norm())
    print(f"{family}: ComfyUI vs diffusers base output, relative difference {rel:.2e}")
    assert rel < 1e-4


@pytest.mark.parametrize("node", ["LoraLoader", "LoraLoaderModelOnly"])
def test_every_key_applies_and_the_change_matches_diffusers(setup, node, caplog):
    family, root, lora_path, inp, base_out, lora_out = setup
    import comfy.lora
    import comfy.utils
    import folder_paths
    import nodes

    folder_paths.add_model_folder_path("loras", str(lora_path.parent))
    patcher = comfy_model(root)
    lora = comfy.utils.load_torch_file(str(lora_path), safe_load=True)
    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    with caplog.at_level(logging.WARNING):
        patches = comfy.lora.load_lora(lora, key_map)
        if node == "LoraLoader":
            patched, clip = nodes.LoraLoader().load_lora(patcher, None, lora_path.name, 1.0, 1.0)
            assert clip is None
        else:
            (patched,) = nodes.LoraLoaderModelOnly().load_lora_model_only(patcher, lora_path.name, 1.0)
    problems = [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage().lower()]
    assert not problems, problems[:5]
    modules = exported_modules(lora_path)
    assert len(patches) == len(modules), (len(patches), len(modules))  # one patch per exported module
    top = {m for m in modules if not m.startswith(("transformer_blocks", "single_transformer_blocks"))}
    assert {"proj_out", "norm_out.linear", "context_embedder"} <= top
    out = comfy_forward(patched, family, inp)
    comfy_change, diffusers_change = out - base_out, lora_out - base_out
    rel = float((comfy_change - diffusers_change).norm() / diffusers_change.norm())
    print(f"{family} {node}: {len(modules)} modules applied; output change relative difference {rel:.2e}, "
          f"change size {float(diffusers_change.norm() / base_out.norm()):.3f} of the output")
    assert float(diffusers_change.norm() / base_out.norm()) > 1e-3  # the LoRA really changes the output
    assert rel < 1e-4


def test_the_unit_test_module_lists_match_comfyui_mapping():
    """tests/trainer_generator/test_lora_export.py lists by hand what ComfyUI maps (CI has no ComfyUI);
    this derives the same sets from ComfyUI's conversion functions and compares."""
    import importlib.util

    import comfy.utils

    spec = importlib.util.spec_from_file_location(
        "lora_export_unit", Path(__file__).resolve().parents[1] / "trainer_generator" / "test_lora_export.py")
    unit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(unit)

    def modules(key_map):
        return {k[: -len(".weight")] for k in key_map if k.endswith(".weight")}

    linear_like = lambda m: not m.endswith(("norm_q", "norm_k", "norm_added_q", "norm_added_k", "pos_embed"))  # noqa: E731
    sd3 = {m for m in modules(comfy.utils.mmdit_to_diffusers({"depth": 2, "num_blocks": 2})) if linear_like(m)}
    assert {m for m in sd3 if not m.startswith("transformer_blocks.")} == unit.COMFY_SD3_TOP_MODULES
    assert {m.split(".", 2)[2] for m in sd3 if m.startswith("transformer_blocks.0.")} == unit.COMFY_SD3_BLOCK_MODULES
    flux = {m for m in modules(comfy.utils.flux_to_diffusers({"depth": 1, "depth_single_blocks": 1,
                                                              "hidden_size": 3072})) if linear_like(m)}
    assert {m for m in flux if not m.startswith(("transformer_blocks.", "single_transformer_blocks."))} == \
        unit.COMFY_FLUX_TOP_MODULES
    assert {m.split(".", 2)[2] for m in flux if m.startswith("transformer_blocks.0.")} == \
        unit.COMFY_FLUX_DOUBLE_MODULES
    assert {m.split(".", 2)[2] for m in flux if m.startswith("single_transformer_blocks.0.")} == \
        unit.COMFY_FLUX_SINGLE_MODULES
