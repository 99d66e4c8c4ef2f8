"""Refine Defects: verified local refinement through ComfyUI's own sampler."""

from __future__ import annotations

import numpy as np

from ..core.diagnosis import Defect
from ..core.refine import RefineCancelled, refine_defects
from . import comfy_env, panels
from .comfy_io import Diagnosis, DiagnosisModel, Segs, io
from .comfy_types import ComfyInputError, diagnoses, from_images, image_batch

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


def segs_regions(segs, height: int, width: int) -> list[Defect]:
    """Impact Pack SEGS ``((H, W), [SEG, ...])`` -> regions to refine (the SEGs' bboxes).

    A SEG's ``confidence`` (0-1) becomes the region's importance (1-100) and its label the reason;
    every region counts as an artifact (detectors do not say "misaligned")."""
    if not (isinstance(segs, tuple) and len(segs) == 2 and isinstance(segs[1], (list, tuple))):
        raise ComfyInputError(f"input 'segs' must be Impact Pack SEGS ((H, W), [SEG, ...]), got {type(segs).__name__}")
    (sh, sw), items = segs
    if (int(sh), int(sw)) != (height, width):
        raise ComfyInputError(f"input 'segs' describes a {sw}x{sh} image but the image is {width}x{height}")
    regions = []
    for seg in items:
        x0, y0, x1, y1 = (float(v) for v in seg.bbox)
        conf = getattr(seg, "confidence", None)
        conf = float(np.asarray(conf).max()) if conf is not None and np.size(conf) else 0.5
        importance = int(min(100, max(1, round(conf * 100))))
        regions.append(Defect((x0, y0, x1, y1), "artifact", f"SEGS: {getattr(seg, 'label', '')}", importance))
    return regions


class RefineDefects(io.ComfyNode):
    """Inpaint each defect through your sampler and keep only the changes the diagnoser confirms."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ImageDoctorRefineDefects",
            display_name="Refine Defects",
            category="ImageDoctor/refine",
            description="For each defect (or each SEG of an optional SEGS input, e.g. from Impact Pack's "
            "detectors): crop with context, upscale to the guide size, inpaint with your model and sampler, paste "
            "back (feathered, colour-matched), re-diagnose and keep the change only if the chosen score improves "
            "and the defect load drops. Up to K rounds. The node lists every region with the score before and "
            "after and whether it was kept.",
            inputs=[
                DiagnosisModel.Input("diagnosis_model", tooltip="Diagnosis model used to re-diagnose each candidate."),
                io.Image.Input("image", tooltip="Images to refine."),
                Diagnosis.Input("diagnosis", tooltip="DIAGNOSIS of these images (from Diagnose)."),
                io.Model.Input("model", tooltip="Diffusion model used for inpainting (not modified)."),
                io.Vae.Input("vae", tooltip="VAE of the diffusion model."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning for the inpaint."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning for the inpaint."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Sampler seed (incremented per region)."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampler steps."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Classifier-free guidance scale."),
                io.Combo.Input("sampler_name", options=sampler_names(), default="euler", tooltip="Sampler."),
                io.Combo.Input("scheduler", options=scheduler_names(), default="normal", tooltip="Scheduler."),
                io.Float.Input("denoise", default=0.6, min=0.0, max=1.0, step=0.01,
                               tooltip="Denoising strength inside the mask."),
                io.Combo.Input("score", options=SCORES, default="overall",
                               tooltip="Score that must improve for a change to be kept."),
                io.Int.Input("rounds", default=1, min=1, max=10,
                             tooltip="Maximum refinement rounds (a round that accepts nothing stops)."),
                io.Float.Input("crop_factor", default=1.5, min=1.0, max=8.0, step=0.1,
                               tooltip="Crop region = defect box x this factor (Impact Pack's crop_factor)."),
                io.Int.Input("guide_size", default=512, min=64, max=4096, step=8,
                             tooltip="Longer side of the upscaled crop given to the sampler."),
                io.Float.Input("feather", default=-1.0, min=-1.0, max=256.0, step=1.0,
                               tooltip="Paste-back feather in pixels (-1 = automatic, 8% of the crop)."),
                io.Boolean.Input("color_match", default=True,
                                 tooltip="Match colour statistics of the inpainted crop to the original."),
                io.Int.Input("min_importance", default=0, min=0, max=100,
                             tooltip="Only refine defects at least this important."),
                io.Combo.Input("labels", options=["all", "artifact", "misalignment"], default="all",
                               tooltip="Which defect labels to refine."),
                io.Int.Input("max_regions", default=8, min=0, max=256,
                             tooltip="At most this many regions per round (0 = all)."),
                io.Int.Input("max_new_tokens", default=512, min=16, max=4096, step=16,
                             tooltip="Token budget of each re-diagnosis."),
                io.String.Input("prompt", default="", optional=True,
                                tooltip="Prompt for re-diagnosis (empty: the prompt stored in the diagnosis)."),
                Segs.Input("segs", optional=True, tooltip="Optional Impact Pack SEGS (e.g. from a detector): refine "
                           "these regions instead of the diagnosis' defects; the diagnosis still decides what is "
                           "kept."),
            ],
            outputs=[
                io.Image.Output("refined_image", display_name="image", tooltip="Refined images."),
                Diagnosis.Output("final_diagnosis", display_name="diagnosis", tooltip="Final diagnoses."),
                io.String.Output("log", display_name="log", tooltip="What was accepted or rejected, and why."),
            ],
        )

    @classmethod
    def execute(cls, diagnosis_model, image, diagnosis, model, vae, positive, negative, seed=0, steps=20, cfg=7.0,
                sampler_name="euler", scheduler="normal", denoise=0.6, score="overall", rounds=1, crop_factor=1.5,
                guide_size=512, feather=-1.0, color_match=True, min_importance=0, labels="all", max_regions=8,
                max_new_tokens=512, prompt="", segs=None):
        from .analysis import run_diagnosis
        from .models import DiagnosisModel as Handle

        if not isinstance(diagnosis_model, Handle):
            raise ComfyInputError(
                f"input 'diagnosis_model' must be a DIAGNOSIS_MODEL, got {type(diagnosis_model).__name__}")
        imgs = image_batch(image, "image")
        b, h, w = imgs.shape[0], imgs.shape[1], imgs.shape[2]
        diags = diagnoses(diagnosis, "diagnosis", batch=b, size=(h, w))
        if score not in SCORES:
            raise ComfyInputError(f"input 'score' must be one of {SCORES}, got {score!r}")
        if labels not in ("all", "artifact", "misalignment"):
            raise ComfyInputError(f"input 'labels' must be all/artifact/misalignment, got {labels!r}")
        regions = None if segs is None else segs_regions(segs, h, w)
        inpaint = comfy_inpaint(model, vae, positive, negative, seed, steps, cfg, sampler_name, scheduler, denoise)
        out_images, out_diags, log, steps_ui, summary = [], [], [], [], []
        with diagnosis_model.session():  # keep the diagnoser loaded for the whole refinement
            for i in range(b):
                d = diags[i]
                text = (prompt or "").strip() or d.prompt
                fmt = d.format if d.format in ("imagedoctor", "sdg") else None

                def rediagnose(arr, text=text, fmt=fmt):
                    import torch

                    return run_diagnosis(diagnosis_model, torch.from_numpy(arr)[None], [text], fmt,
                                         max_new_tokens)[0]

                progress = comfy_env.progress_bar(max(1, len(d.defects) if regions is None else len(regions)))
                try:
                    res = refine_defects(
                        imgs[i].numpy(), d, inpaint, rediagnose, score=score, context=float(crop_factor),
                        guide_size=int(guide_size), rounds=int(rounds),
                        feather=None if feather < 0 else float(feather), color_match=bool(color_match),
                        min_importance=int(min_importance), labels=None if labels == "all" else labels,
                        max_regions=int(max_regions) or None, regions=regions, progress=progress,
                        should_cancel=comfy_env.interrupted,
                    )
                except RefineCancelled:
                    comfy_env.raise_if_interrupted()
                    raise
                out_images.append(res.image)
                out_diags.append(res.diagnosis)
                log.extend([f"image {i}: {line}" for line in res.log])
                steps_ui.extend({"image": i, **st} for st in res.steps)
                summary.append({"image": i, "accepted": res.accepted, "rejected": res.rejected})
        text_log = "\n".join(log)
        ui = panels.ui(panels.refine_panel(steps_ui, score, summary), text=text_log)
        return io.NodeOutput(from_images(out_images), out_diags, text_log, ui=ui)


NODES = [RefineDefects]
