"""Refine Defects: verified local refinement through ComfyUI's own sampler."""

from __future__ import annotations

import numpy as np

from ..core.refine import RefineCancelled, refine_defects
from . import comfy_env
from .comfy_types import DIAGNOSIS, DIAGNOSIS_MODEL, ComfyInputError, diagnoses, from_images, image_batch
from .spec import In, NodeSpec, Out

SCORES = ["overall", "alignment", "aesthetics", "plausibility", "weighted", "defect_penalty"]
_FALLBACK_SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "ddim", "uni_pc"]
_FALLBACK_SCHEDULERS = ["normal", "karras", "exponential", "sgm_uniform", "simple", "beta"]


def sampler_names() -> list[str]:
    try:
        import comfy.samplers  # type: ignore

        return list(comfy.samplers.KSampler.SAMPLERS)
    except Exception:  # noqa: BLE001
        return _FALLBACK_SAMPLERS


def scheduler_names() -> list[str]:
    try:
        import comfy.samplers  # type: ignore

        return list(comfy.samplers.KSampler.SCHEDULERS)
    except Exception:  # noqa: BLE001
        return _FALLBACK_SCHEDULERS


def comfy_inpaint(model, vae, positive, negative, seed, steps, cfg, sampler_name, scheduler, denoise):
    """An ``inpaint(crop, mask) -> image`` callable running ComfyUI's KSampler with a latent noise
    mask (like VAE Encode + Set Latent Noise Mask + KSampler + VAE Decode). Inputs are not mutated."""
    import torch

    import nodes as comfy_nodes  # type: ignore  # ComfyUI's nodes.py

    calls = [0]

    def inpaint(crop, mask):
        comfy_env.raise_if_interrupted()
        pixels = torch.from_numpy(np.asarray(crop.convert("RGB"), dtype=np.float32) / 255.0)[None]
        m = torch.from_numpy(np.asarray(mask, dtype=np.float32))
        latent = {"samples": vae.encode(pixels[:, :, :, :3]),
                  "noise_mask": m.reshape((-1, 1, m.shape[-2], m.shape[-1]))}
        (out,) = comfy_nodes.common_ksampler(model, (int(seed) + calls[0]) % 2**64, int(steps), float(cfg), sampler_name,
                                             scheduler, positive, negative, latent, denoise=float(denoise))
        calls[0] += 1
        decoded = vae.decode(out["samples"])
        if decoded.ndim == 5:  # video VAEs: [B, T, H, W, C]
            decoded = decoded.reshape(-1, *decoded.shape[-3:])
        return decoded[0, :, :, :3].float().cpu().numpy()

    return inpaint


def refine_node(diagnosis_model, image, diagnosis, model, vae, positive, negative, seed=0, steps=20, cfg=7.0,
                sampler_name="euler", scheduler="normal", denoise=0.6, score="overall", rounds=1, context=1.5,
                guide_size=512, feather=-1.0, color_match=True, min_importance=0, labels="all", max_regions=8,
                max_new_tokens=512, prompt=""):
    from .analysis import run_diagnosis
    from .models import DiagnosisModel

    if not isinstance(diagnosis_model, DiagnosisModel):
        raise ComfyInputError(f"input 'diagnosis_model' must be a DIAGNOSIS_MODEL, got {type(diagnosis_model).__name__}")
    imgs = image_batch(image, "image")
    b, h, w = imgs.shape[0], imgs.shape[1], imgs.shape[2]
    diags = diagnoses(diagnosis, "diagnosis", batch=b, size=(h, w))
    if score not in SCORES:
        raise ComfyInputError(f"input 'score' must be one of {SCORES}, got {score!r}")
    if labels not in ("all", "artifact", "misalignment"):
        raise ComfyInputError(f"input 'labels' must be all/artifact/misalignment, got {labels!r}")
    inpaint = comfy_inpaint(model, vae, positive, negative, seed, steps, cfg, sampler_name, scheduler, denoise)
    out_images, out_diags, log = [], [], []
    with diagnosis_model.session():  # keep the diagnoser loaded for the whole refinement
        for i in range(b):
            d = diags[i]
            text = prompt.strip() or d.prompt
            fmt = d.format if d.format in ("imagedoctor", "sdg") else "imagedoctor"

            def rediagnose(arr, text=text, fmt=fmt):
                import torch

                return run_diagnosis(diagnosis_model, torch.from_numpy(arr)[None], [text], fmt, max_new_tokens,
                                     seed)[0]

            progress = comfy_env.progress_bar(max(1, len(d.defects)))
            try:
                res = refine_defects(
                    imgs[i].numpy(), d, inpaint, rediagnose, score=score, context=float(context),
                    guide_size=int(guide_size), rounds=int(rounds), feather=None if feather < 0 else float(feather),
                    color_match=bool(color_match), min_importance=int(min_importance),
                    labels=None if labels == "all" else labels, max_regions=int(max_regions) or None,
                    progress=progress, should_cancel=comfy_env.interrupted,
                )
            except RefineCancelled:
                comfy_env.raise_if_interrupted()
                raise
            out_images.append(res.image)
            out_diags.append(res.diagnosis)
            log.extend([f"image {i}: {line}" for line in res.log])
    return (from_images(out_images), out_diags, "\n".join(log))


REFINE = NodeSpec(
    key="RefineDefects",
    display="Refine Defects",
    subcategory="refine",
    description="For each defect: crop with context, upscale to the guide size, inpaint with your model and "
    "sampler, paste back (feathered, colour-matched), re-diagnose and keep the change only if the chosen score "
    "improves and the defect load drops. Up to K rounds.",
    inputs=[
        In("diagnosis_model", DIAGNOSIS_MODEL, "Diagnosis model used to re-diagnose each candidate."),
        In("image", "IMAGE", "Images to refine."),
        In("diagnosis", DIAGNOSIS, "DIAGNOSIS of these images (from Diagnose)."),
        In("model", "MODEL", "Diffusion model used for inpainting (not modified)."),
        In("vae", "VAE", "VAE of the diffusion model."),
        In("positive", "CONDITIONING", "Positive conditioning for the inpaint."),
        In("negative", "CONDITIONING", "Negative conditioning for the inpaint."),
        In("seed", "INT", "Sampler seed (incremented per region).", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
           control_after_generate=True),
        In("steps", "INT", "Sampler steps.", default=20, min=1, max=10000),
        In("cfg", "FLOAT", "Classifier-free guidance scale.", default=7.0, min=0.0, max=100.0, step=0.1),
        In("sampler_name", "COMBO", "Sampler.", options=sampler_names, default="euler"),
        In("scheduler", "COMBO", "Scheduler.", options=scheduler_names, default="normal"),
        In("denoise", "FLOAT", "Denoising strength inside the mask.", default=0.6, min=0.0, max=1.0, step=0.01),
        In("score", "COMBO", "Score that must improve for a change to be kept.", options=SCORES, default="overall"),
        In("rounds", "INT", "Maximum refinement rounds (a round that accepts nothing stops).", default=1, min=1,
           max=10),
        In("context", "FLOAT", "Crop = defect box x this factor.", default=1.5, min=1.0, max=8.0, step=0.1),
        In("guide_size", "INT", "Longer side of the upscaled crop given to the sampler.", default=512, min=64,
           max=4096, step=8),
        In("feather", "FLOAT", "Paste-back feather in pixels (-1 = automatic, 8% of the crop).", default=-1.0,
           min=-1.0, max=256.0, step=1.0),
        In("color_match", "BOOLEAN", "Match colour statistics of the inpainted crop to the original.",
           default=True),
        In("min_importance", "INT", "Only refine defects at least this important.", default=0, min=0, max=100),
        In("labels", "COMBO", "Which defect labels to refine.", options=["all", "artifact", "misalignment"],
           default="all"),
        In("max_regions", "INT", "At most this many regions per round (0 = all).", default=8, min=0, max=256),
        In("max_new_tokens", "INT", "Token budget of each re-diagnosis.", default=512, min=16, max=4096, step=16),
        In("prompt", "STRING", "Prompt for re-diagnosis (empty: the prompt stored in the diagnosis).",
           default="", optional=True),
    ],
    outputs=[
        Out("image", "IMAGE", "Refined images."),
        Out("diagnosis", DIAGNOSIS, "Final diagnoses."),
        Out("log", "STRING", "What was accepted or rejected, and why."),
    ],
    fn=refine_node,
)

SPECS = [REFINE]
