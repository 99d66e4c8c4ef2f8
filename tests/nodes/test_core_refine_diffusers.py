"""core.refine through a real (tiny, random, offline) diffusers StableDiffusionInpaintPipeline.

The pipeline is built from configs (no download): tiny UNet (9 input channels), tiny VAE, tiny CLIP
text encoder and a character-level CLIP tokenizer written to a temp folder."""

import json

import numpy as np
import pytest
from PIL import Image

from imagedoctor.core.diagnosis import Defect, Diagnosis
from imagedoctor.core.refine import refine_defects

W, H = 64, 48


@pytest.fixture(scope="module")
def tiny_inpaint_pipe(tmp_path_factory):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    d = tmp_path_factory.mktemp("tok")
    chars = list("abcdefghijklmnopqrstuvwxyz")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=16, pad_token="<|endoftext|>")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=9, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4)
    vae = diffusers.AutoencoderKL(
        block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16,
                                        intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
                                        vocab_size=len(vocab), max_position_embeddings=16))
    pipe = diffusers.StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=diffusers.DDIMScheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_refine_with_tiny_diffusers_inpaint(tiny_inpaint_pipe):
    import torch

    img = np.full((H, W, 3), 0.5, np.float32)
    img[10:26, 12:30] = [1.0, 0.0, 1.0]
    seen = []

    def inpaint(crop: Image.Image, mask: np.ndarray):
        seen.append((crop.size, mask.shape))
        out = tiny_inpaint_pipe(
            prompt="a cube", image=crop, mask_image=Image.fromarray((mask * 255).astype(np.uint8)),
            height=crop.size[1], width=crop.size[0], num_inference_steps=2, guidance_scale=1.0,
            generator=torch.Generator().manual_seed(0), output_type="np")
        return out.images[0]

    def magenta(x):
        return float(((x[..., 0] > 0.8) & (x[..., 1] < 0.2) & (x[..., 2] > 0.8)).mean())

    def diagnose(x):  # deterministic stand-in: the magenta patch is the defect
        m = magenta(x)
        defects = [Defect((12, 10, 30, 26), "artifact", "patch", 90)] if m > 0.01 else []
        return Diagnosis(W, H, scores={"overall": 1 - m}, defects=defects)

    d0 = diagnose(img)
    res = refine_defects(img, d0, inpaint, diagnose, guide_size=64, context=1.5)
    assert seen and max(seen[0][0]) == 64 and seen[0][0][::-1] == seen[0][1]
    assert res.image.shape == img.shape and res.image.dtype == np.float32
    assert np.array_equal(res.image[:, 50:], img[:, 50:])  # outside the crop untouched
    # a random tiny model replaces the magenta patch with something else: verified and accepted
    assert res.accepted == 1 and magenta(res.image) < magenta(img)
    assert len(res.log) >= 3
