"""Diagnose, Heatmap Overlay, Defect Boxes Overlay."""

from __future__ import annotations

import numpy as np

from . import comfy_env
from .comfy_types import DIAGNOSIS, DIAGNOSIS_MODEL, ComfyInputError, diagnoses, from_images, from_masks
from .comfy_types import image_batch, to_pil_list
from .spec import In, NodeSpec, Out, Result

FORMATS = ["imagedoctor", "sdg"]
HEATMAP_CHOICES = ["artifact", "misalignment", "max"]
LABEL_CHOICES = ["all", "artifact", "misalignment"]
COLORMAPS = ["jet", "inferno", "gray"]  # core.render.COLORMAPS
NO_SCORE = -1.0


def split_prompts(prompt, batch: int, per_line: bool = False) -> list[str]:
    """One prompt for every image, or (``per_line``/list input) exactly one per image."""
    if isinstance(prompt, (list, tuple)):
        prompts = [str(p) for p in prompt]
    elif not isinstance(prompt, str):
        raise ComfyInputError(f"input 'prompt' must be a STRING, got {type(prompt).__name__}")
    elif per_line:
        prompts = [line.strip() for line in prompt.splitlines() if line.strip()]
    else:
        return [prompt] * batch
    if len(prompts) == 1:
        return prompts * batch
    if len(prompts) != batch:
        raise ComfyInputError(
            f"input 'prompt' has {len(prompts)} prompts but the image batch has {batch} images; "
            "give one prompt for all or exactly one per image"
        )
    return prompts


def _heatmap(d, which: str) -> np.ndarray:
    if which == "max":
        layers = [hm for hm in d.heatmaps.values() if hm is not None]
        return np.maximum.reduce(layers) if layers else np.zeros((d.height, d.width), np.float32)
    hm = d.heatmaps.get(which)
    return np.zeros((d.height, d.width), np.float32) if hm is None else hm


def run_diagnosis(model, images, prompt, format="imagedoctor", max_new_tokens=512, seed=0, heatmaps=True):
    """Call the Diagnoser with ComfyUI's progress bar and interrupt; returns list[Diagnosis]."""
    from .models import DiagnosisModel

    if not isinstance(model, DiagnosisModel):
        raise ComfyInputError(f"input 'model' must be a DIAGNOSIS_MODEL, got {type(model).__name__}")
    b, h, w = images.shape[0], images.shape[1], images.shape[2]
    progress = comfy_env.progress_bar(b)
    with model.session() as dg:
        try:
            out = dg.diagnose(
                images, prompt, format=format, max_new_tokens=int(max_new_tokens), seed=int(seed) % 2**63,
                heatmaps=bool(heatmaps), progress=progress, should_cancel=comfy_env.interrupted,
            )
        except Exception as exc:
            if type(exc).__name__ == "DiagnosisCancelled":
                comfy_env.raise_if_interrupted()
            raise
    return diagnoses(out, "model output", batch=b, size=(h, w))


def diagnose_node(model, images, prompt, format="imagedoctor", max_new_tokens=512, seed=0,
                  per_line_prompts=False, heatmaps=True):
    imgs = image_batch(images, "images")
    if format not in FORMATS:
        raise ComfyInputError(f"input 'format' must be one of {FORMATS}, got {format!r}")
    prompts = split_prompts(prompt, imgs.shape[0], per_line_prompts)
    diags = run_diagnosis(model, imgs, prompts, format, max_new_tokens, seed, heatmaps)
    from ..core.render import overlay
    from ..core.select import scores_table

    pils = to_pil_list(imgs)
    overlays = [overlay(p, d) for p, d in zip(pils, diags)]
    table = scores_table(diags)
    first = diags[0].scores
    floats = tuple(NO_SCORE if first[n] is None else float(first[n])
                   for n in ("alignment", "aesthetics", "plausibility", "overall"))
    mis = from_masks([_heatmap(d, "misalignment") for d in diags])
    art = from_masks([_heatmap(d, "artifact") for d in diags])
    ui = {"images": comfy_env.save_previews(overlays, "imagedoctor_overlay"), "text": [table]}
    return Result((diags, *floats, table, mis, art, from_images(overlays)), ui=ui)


def _paired(images, diagnosis):
    imgs = image_batch(images, "images")
    diags = diagnoses(diagnosis, "diagnosis", batch=imgs.shape[0], size=(imgs.shape[1], imgs.shape[2]))
    return imgs, diags


def heatmap_overlay_node(images, diagnosis, heatmap="max", alpha=0.5, colormap="jet"):
    from ..core.render import heatmap_overlay

    imgs, diags = _paired(images, diagnosis)
    if heatmap not in HEATMAP_CHOICES:
        raise ComfyInputError(f"input 'heatmap' must be one of {HEATMAP_CHOICES}, got {heatmap!r}")
    out = [heatmap_overlay(p, _heatmap(d, heatmap), alpha=float(alpha), colormap=colormap)
           for p, d in zip(to_pil_list(imgs), diags)]
    return (from_images(out),)


def boxes_overlay_node(images, diagnosis, min_importance=0, labels="all"):
    from ..core.render import draw_defects

    imgs, diags = _paired(images, diagnosis)
    if labels not in LABEL_CHOICES:
        raise ComfyInputError(f"input 'labels' must be one of {LABEL_CHOICES}, got {labels!r}")
    label_list = None if labels == "all" else [labels]
    out = [draw_defects(p, d, min_importance=int(min_importance), labels=label_list)
           for p, d in zip(to_pil_list(imgs), diags)]
    return (from_images(out),)


T_IMAGES = "Images to diagnose (IMAGE batch [B,H,W,C]; RGBA/grayscale are converted)."
T_DIAG = "DIAGNOSIS from the Diagnose node (one per image)."

DIAGNOSE = NodeSpec(
    key="Diagnose",
    display="Diagnose",
    subcategory="",
    description="Diagnose every image of a batch: four scores, defect boxes with reasons, misalignment "
    "and artifact heatmaps. Shows the overlay and scores in the node.",
    inputs=[
        In("model", DIAGNOSIS_MODEL, "From Load Diagnosis Model."),
        In("images", "IMAGE", T_IMAGES),
        In("prompt", "STRING", "The text prompt the images were generated from.", default="", multiline=True),
        In("format", "COMBO", "Output format the model was trained on: imagedoctor (scores + regions) or sdg "
           "(reasoning + defects with importance).", options=FORMATS, default="imagedoctor"),
        In("max_new_tokens", "INT", "Upper bound on generated tokens per image.", default=512, min=16, max=4096,
           step=16),
        In("seed", "INT", "Sampling seed (generation is greedy unless the model samples).", default=0, min=0,
           max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
        In("per_line_prompts", "BOOLEAN", "Treat each non-empty line of prompt as the prompt of one image "
           "(must match the batch size).", default=False),
        In("heatmaps", "BOOLEAN", "Predict the heatmaps (needs the heatmap head).", default=True),
    ],
    outputs=[
        Out("diagnosis", DIAGNOSIS, "One Diagnosis per image."),
        Out("alignment", "FLOAT", "Alignment score of the first image (-1 if not predicted)."),
        Out("aesthetics", "FLOAT", "Aesthetics score of the first image (-1 if not predicted)."),
        Out("plausibility", "FLOAT", "Plausibility score of the first image (-1 if not predicted)."),
        Out("overall", "FLOAT", "Overall score of the first image (-1 if not predicted)."),
        Out("scores", "STRING", "Per-image scores table."),
        Out("misalignment_heatmap", "MASK", "Misalignment heatmaps [B,H,W] (zeros if none)."),
        Out("artifact_heatmap", "MASK", "Artifact heatmaps [B,H,W] (zeros if none)."),
        Out("overlay", "IMAGE", "Images with heatmaps and defect boxes drawn on them."),
    ],
    fn=diagnose_node,
    output_node=True,
)

HEATMAP_OVERLAY = NodeSpec(
    key="HeatmapOverlay",
    display="Heatmap Overlay",
    subcategory="visualize",
    description="Blend a diagnosis heatmap over the images.",
    inputs=[
        In("images", "IMAGE", "Images the diagnosis describes (same batch size and size)."),
        In("diagnosis", DIAGNOSIS, T_DIAG),
        In("heatmap", "COMBO", "Which heatmap: artifact, misalignment or their maximum.", options=HEATMAP_CHOICES,
           default="max"),
        In("alpha", "FLOAT", "Heatmap opacity.", default=0.5, min=0.0, max=1.0, step=0.05),
        In("colormap", "COMBO", "Colour map of the heatmap.", options=COLORMAPS, default="jet"),
    ],
    outputs=[Out("image", "IMAGE", "Images with the heatmap blended in.")],
    fn=heatmap_overlay_node,
)

BOXES_OVERLAY = NodeSpec(
    key="DefectBoxesOverlay",
    display="Defect Boxes Overlay",
    subcategory="visualize",
    description="Draw defect boxes coloured by label with importance in the caption.",
    inputs=[
        In("images", "IMAGE", "Images the diagnosis describes (same batch size and size)."),
        In("diagnosis", DIAGNOSIS, T_DIAG),
        In("min_importance", "INT", "Hide defects below this importance (1-100; 0 shows all).", default=0, min=0,
           max=100),
        In("labels", "COMBO", "Which defect labels to draw.", options=LABEL_CHOICES, default="all"),
    ],
    outputs=[Out("image", "IMAGE", "Images with defect boxes drawn.")],
    fn=boxes_overlay_node,
)

SPECS = [DIAGNOSE, HEATMAP_OVERLAY, BOXES_OVERLAY]
