"""Diagnose, Heatmap Overlay, Defect Boxes Overlay."""

from __future__ import annotations

import numpy as np

from . import comfy_env, panels
from .comfy_io import Diagnosis, DiagnosisModel, io
from .comfy_types import ComfyInputError, diagnoses, from_images, from_masks, image_batch, to_pil_list

FORMATS = ["auto", "imagedoctor", "sdg"]
MODES = ["full", "scores only (fast)", "fast ranking, full top-K"]
SAMPLING = ["greedy", "sample"]
HEATMAP_CHOICES = ["artifact", "misalignment", "max"]
LABEL_CHOICES = ["all", "artifact", "misalignment"]
COLORMAPS = ["jet", "inferno", "gray"]  # core.render.COLORMAPS
NO_SCORE = -1.0
SEED_MAX = 0xFFFFFFFFFFFFFFFF


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


def _check_model(model):
    from .models import DiagnosisModel as Handle

    if not isinstance(model, Handle):
        raise ComfyInputError(f"input 'model' must be a DIAGNOSIS_MODEL, got {type(model).__name__}")
    return model


def _cancellable(call):
    """Run a diagnoser call; ComfyUI's interrupt becomes its own exception."""
    try:
        return call()
    except Exception as exc:
        if type(exc).__name__ == "DiagnosisCancelled":
            comfy_env.raise_if_interrupted()
        raise


def run_diagnosis(model, images, prompts, format=None, max_new_tokens=512, heatmaps=True, think=True,
                  sampling="greedy", seed=0):
    """Diagnose an IMAGE batch with ComfyUI's progress bar and interrupt; returns list[Diagnosis].
    ``format`` None = the checkpoint's own format."""
    model = _check_model(model)
    b, h, w = images.shape[0], images.shape[1], images.shape[2]
    with model.session() as dg:
        out = _cancellable(lambda: dg.diagnose(
            images, prompts, format=format, max_new_tokens=int(max_new_tokens), heatmaps=bool(heatmaps),
            think=think, **_sampling_kwargs(sampling, seed), progress=comfy_env.progress_bar(b),
            should_cancel=comfy_env.interrupted,
        ))
    return diagnoses(out, "model output", batch=b, size=(h, w))


def _sampling_kwargs(sampling: str, seed: int) -> dict:
    if sampling == "sample":
        return {"do_sample": True, "seed": int(seed) % 2**63}
    return {"do_sample": False, "seed": None}


def fast_then_full(dg, images, prompts, top_k: int, **kwargs):
    """(order, fast, full): `Diagnoser.best_of_n` (score-only answers of all images ranked by overall,
    full diagnoses of the top-K); it sets ``think`` per stage itself."""
    kwargs.pop("think", None)
    res = dg.best_of_n(images, prompts, top_k=top_k, criterion="overall", **kwargs)
    return list(res.order), list(res.fast), dict(res.full)


class Diagnose(io.ComfyNode):
    """Scores, defects and heatmaps for every image of a batch; the panel under the node lists them."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ImageDoctorDiagnose",
            display_name="Diagnose",
            category="ImageDoctor",
            description="Diagnose every image of a batch: four scores, defect boxes with reasons, misalignment and "
            "artifact heatmaps. The node shows the overlays, a scores table and the defect list.",
            inputs=[
                DiagnosisModel.Input("model", tooltip="From Load Diagnosis Model."),
                io.Image.Input("images", tooltip="Images to diagnose (IMAGE batch [B,H,W,C]; RGBA/grayscale are "
                               "converted)."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The text prompt the images were generated from."),
                io.Combo.Input("format", options=FORMATS, default="auto", tooltip="Output format: auto = the one "
                               "the checkpoint was trained on; imagedoctor (scores + regions) or sdg (defects with "
                               "importance, no scores)."),
                io.Combo.Input("mode", options=MODES, default="full", tooltip="full: reasoning, scores and defects "
                               "for every image. scores only (fast): scores without reasoning or defects. fast "
                               "ranking, full top-K: scores for all, full diagnoses for the top_k best "
                               "(ImageDoctor-format models)."),
                io.Int.Input("top_k", default=4, min=1, max=4096,
                             tooltip="How many of the best images get a full diagnosis in 'fast ranking, full top-K'."),
                io.Int.Input("max_new_tokens", default=512, min=16, max=4096, step=16,
                             tooltip="Upper bound on generated tokens per image."),
                io.Combo.Input("sampling", options=SAMPLING, default="greedy", tooltip="greedy: the same answer "
                               "every run (seed unused). sample: temperature 0.7, top-p 0.9, drawn with seed."),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=False,
                             tooltip="Seed of sampling=sample (unused when greedy)."),
                io.Boolean.Input("per_line_prompts", default=False, tooltip="Treat each non-empty line of prompt as "
                                 "the prompt of one image (must match the batch size)."),
                io.Boolean.Input("heatmaps", default=True, tooltip="Predict the heatmaps (needs the heatmap head)."),
            ],
            outputs=[
                Diagnosis.Output("diagnosis", display_name="diagnosis", tooltip="One Diagnosis per image."),
                io.Float.Output("alignment", display_name="alignment",
                                tooltip="Alignment score of the first image (-1 if not predicted)."),
                io.Float.Output("aesthetics", display_name="aesthetics",
                                tooltip="Aesthetics score of the first image (-1 if not predicted)."),
                io.Float.Output("plausibility", display_name="plausibility",
                                tooltip="Plausibility score of the first image (-1 if not predicted)."),
                io.Float.Output("overall", display_name="overall",
                                tooltip="Overall score of the first image (-1 if not predicted)."),
                io.String.Output("scores", display_name="scores", tooltip="Per-image scores table."),
                io.Mask.Output("misalignment_heatmap", display_name="misalignment_heatmap",
                               tooltip="Misalignment heatmaps [B,H,W] (zeros if none)."),
                io.Mask.Output("artifact_heatmap", display_name="artifact_heatmap",
                               tooltip="Artifact heatmaps [B,H,W] (zeros if none)."),
                io.Image.Output("overlay", display_name="overlay",
                                tooltip="Images with heatmaps and defect boxes drawn on them."),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, prompt="", format="auto", mode="full"):
        if format not in FORMATS:
            return f"format must be one of {FORMATS}, got {format!r}"
        if mode not in MODES:
            return f"mode must be one of {MODES}, got {mode!r}"
        if format == "sdg" and mode != "full":
            return f"mode {mode!r} ranks by scores, and SDG-format models give none; use mode 'full'"
        if isinstance(prompt, str) and not prompt.strip():
            return "prompt is empty: give the prompt the images were generated from (alignment is judged against it)"
        return True

    @classmethod
    def execute(cls, model, images, prompt, format="auto", mode="full", top_k=4, max_new_tokens=512,
                sampling="greedy", seed=0, per_line_prompts=False, heatmaps=True):
        imgs = image_batch(images, "images")
        if format not in FORMATS:
            raise ComfyInputError(f"input 'format' must be one of {FORMATS}, got {format!r}")
        if mode not in MODES:
            raise ComfyInputError(f"input 'mode' must be one of {MODES}, got {mode!r}")
        if sampling not in SAMPLING:
            raise ComfyInputError(f"input 'sampling' must be one of {SAMPLING}, got {sampling!r}")
        prompts = split_prompts(prompt, imgs.shape[0], per_line_prompts)
        model = _check_model(model)
        fmt = None if format == "auto" else format
        b, h, w = imgs.shape[0], imgs.shape[1], imgs.shape[2]
        order = None
        with model.session() as dg:
            used = fmt or dg.format
            if mode != "full" and used != "imagedoctor":
                raise ComfyInputError(f"input 'mode' {mode!r} needs scores, and this {used!r}-format model gives "
                                      "none; use mode 'full'")
            kwargs = dict(format=fmt, max_new_tokens=int(max_new_tokens), heatmaps=bool(heatmaps),
                          **_sampling_kwargs(sampling, seed), progress=comfy_env.progress_bar(b),
                          should_cancel=comfy_env.interrupted)
            if mode == "full":
                diags = _cancellable(lambda: dg.diagnose(imgs, prompts, think=True, **kwargs))
                full = [True] * b
            elif mode == MODES[1]:
                diags = _cancellable(lambda: dg.diagnose(imgs, prompts, think=False, **kwargs))
                full = [False] * b
            else:
                order, fast, full_diags = _cancellable(lambda: fast_then_full(dg, imgs, prompts, int(top_k), **kwargs))
                diags = [full_diags.get(i, fast[i]) for i in range(b)]
                full = [i in full_diags for i in range(b)]
        diags = diagnoses(diags, "model output", batch=b, size=(h, w))
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
        panel = panels.diagnose_panel(diags, used, mode, full, order)
        ui = panels.ui(panel, comfy_env.save_previews(overlays, "imagedoctor_overlay"), table)
        return io.NodeOutput(diags, *floats, table, mis, art, from_images(overlays), ui=ui)


def _paired(images, diagnosis):
    imgs = image_batch(images, "images")
    diags = diagnoses(diagnosis, "diagnosis", batch=imgs.shape[0], size=(imgs.shape[1], imgs.shape[2]))
    return imgs, diags


T_DIAG = "DIAGNOSIS from the Diagnose node (one per image)."
T_PAIRED = "Images the diagnosis describes (same batch size and size)."


class HeatmapOverlay(io.ComfyNode):
    """A diagnosis heatmap blended over its images."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ImageDoctorHeatmapOverlay",
            display_name="Heatmap Overlay",
            category="ImageDoctor/visualize",
            description="Blend a diagnosis heatmap over the images.",
            inputs=[
                io.Image.Input("images", tooltip=T_PAIRED),
                Diagnosis.Input("diagnosis", tooltip=T_DIAG),
                io.Combo.Input("heatmap", options=HEATMAP_CHOICES, default="max",
                               tooltip="Which heatmap: artifact, misalignment or their maximum."),
                io.Float.Input("alpha", default=0.5, min=0.0, max=1.0, step=0.05, tooltip="Heatmap opacity."),
                io.Combo.Input("colormap", options=COLORMAPS, default="jet", tooltip="Colour map of the heatmap."),
            ],
            outputs=[io.Image.Output("image", display_name="image", tooltip="Images with the heatmap blended in.")],
        )

    @classmethod
    def execute(cls, images, diagnosis, heatmap="max", alpha=0.5, colormap="jet"):
        from ..core.render import heatmap_overlay

        imgs, diags = _paired(images, diagnosis)
        if heatmap not in HEATMAP_CHOICES:
            raise ComfyInputError(f"input 'heatmap' must be one of {HEATMAP_CHOICES}, got {heatmap!r}")
        out = [heatmap_overlay(p, _heatmap(d, heatmap), alpha=float(alpha), colormap=colormap)
               for p, d in zip(to_pil_list(imgs), diags)]
        return io.NodeOutput(from_images(out))


class DefectBoxesOverlay(io.ComfyNode):
    """Defect boxes drawn on their images, coloured by label."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ImageDoctorDefectBoxesOverlay",
            display_name="Defect Boxes Overlay",
            category="ImageDoctor/visualize",
            description="Draw defect boxes coloured by label with importance in the caption.",
            inputs=[
                io.Image.Input("images", tooltip=T_PAIRED),
                Diagnosis.Input("diagnosis", tooltip=T_DIAG),
                io.Int.Input("min_importance", default=0, min=0, max=100,
                             tooltip="Hide defects below this importance (1-100; 0 shows all)."),
                io.Combo.Input("labels", options=LABEL_CHOICES, default="all", tooltip="Which defect labels to draw."),
            ],
            outputs=[io.Image.Output("image", display_name="image", tooltip="Images with defect boxes drawn.")],
        )

    @classmethod
    def execute(cls, images, diagnosis, min_importance=0, labels="all"):
        from ..core.render import draw_defects

        imgs, diags = _paired(images, diagnosis)
        if labels not in LABEL_CHOICES:
            raise ComfyInputError(f"input 'labels' must be one of {LABEL_CHOICES}, got {labels!r}")
        label_list = None if labels == "all" else [labels]
        out = [draw_defects(p, d, min_importance=int(min_importance), labels=label_list)
               for p, d in zip(to_pil_list(imgs), diags)]
        return io.NodeOutput(from_images(out))


NODES = [Diagnose, HeatmapOverlay, DefectBoxesOverlay]
