"""Build a tiny, randomly initialised checkpoint in Stable Diffusion 1.5's single-file layout that
ComfyUI's CheckpointLoaderSimple loads (and detects as SD1.5). Run with ComfyUI's Python:

    COMFYUI_DIR=/path/to/ComfyUI python tests/e2e/tiny_sd15.py OUT.safetensors

What ComfyUI checks, and so what cannot shrink:
- UNet (``model.diffusion_model.*``, ldm layout): detected as SD1.5 by ``model_channels == 320``,
  ``context_dim == 768`` and non-linear transformer projections. Depth can shrink: one level, one
  res block, one transformer block (about 14 M parameters). Built with ComfyUI's own UNetModel
  class so the key names are exactly ComfyUI's; its layers start uninitialised, so every tensor
  is drawn here (normal, std 0.02; norms at 1/0).
- CLIP text encoder (``cond_stage_model.transformer.*``): ComfyUI builds CLIP-L from its own
  config (768 wide, 12 layers), so the weights must have that shape (123 M parameters). Built
  with transformers' CLIPTextModel (random init). transformers 5 names the keys without the
  ``text_model.`` infix (``embeddings.token_embedding.weight``); 4.x with it. SD1.5 checkpoints
  carry it, so it is added when missing (ComfyUI would add it too).
- VAE (``first_stage_model.*``): ComfyUI uses SD's fixed VAE config, so the VAE is full size
  (84 M parameters); built with diffusers' AutoencoderKL in SD's config (random init), saved in
  diffusers key names, which ComfyUI converts on load.
Weights are stored fp16 (about 0.45 GB). Outputs are noise: this checks plumbing, not quality.
"""

from __future__ import annotations

import os
import sys


def build(out_path: str, seed: int = 0) -> str:
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, os.environ["COMFYUI_DIR"])
    import comfy.options

    comfy.options.enable_args_parsing()
    argv, sys.argv = sys.argv, [sys.argv[0], "--cpu"]  # ComfyUI reads its device from the command line
    try:
        import comfy.cli_args  # noqa: F401
    finally:
        sys.argv = argv
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel  # ComfyUI's own class

    torch.manual_seed(seed)
    unet = UNetModel(
        image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1], channel_mult=[1],
        num_heads=8, num_head_channels=-1, use_spatial_transformer=True, transformer_depth=[1],
        transformer_depth_output=[1, 1], transformer_depth_middle=1, context_dim=768, use_linear_in_transformer=False,
        legacy=False, dtype=torch.float32, device="cpu",
    )
    sd = {}
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if p.ndim == 1 and ("norm" in name or name.endswith("in_layers.0.weight") or name.endswith("out_layers.0.weight")
                                or name.endswith("out.0.weight")):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif p.ndim == 1:
                p.zero_()
            else:
                p.normal_(0.0, 0.02)
            sd["model.diffusion_model." + name] = p.detach()

    from transformers import CLIPTextConfig, CLIPTextModel

    clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        hidden_act="quick_gelu", projection_dim=768))
    for key, t in clip.state_dict().items():
        if not key.startswith("text_model."):
            key = "text_model." + key
        sd["cond_stage_model.transformer." + key] = t

    from diffusers import AutoencoderKL

    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                        layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=256)
    for key, t in vae.state_dict().items():
        sd["first_stage_model." + key] = t

    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items() if not k.endswith("position_ids")}
    tmp = out_path + ".tmp"
    save_file(sd, tmp)
    os.replace(tmp, out_path)
    return out_path


if __name__ == "__main__":
    print(build(sys.argv[1]))
