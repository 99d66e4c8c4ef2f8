"""Save Diagnosis: JSON next to the image outputs."""

from __future__ import annotations

import os

from ..core.diagnosis import HEATMAP_ENCODINGS, diagnoses_to_json
from . import comfy_env
from .comfy_types import DIAGNOSIS, ComfyInputError, diagnoses
from .spec import In, NodeSpec, Out, Result


def save_node(diagnosis, filename_prefix="ImageDoctor", heatmaps="png8"):
    diags = diagnoses(diagnosis, "diagnosis")
    if heatmaps not in (*HEATMAP_ENCODINGS, "none"):
        raise ComfyInputError(f"input 'heatmaps' must be one of {[*HEATMAP_ENCODINGS, 'none']}, got {heatmaps!r}")
    if not filename_prefix or os.path.isabs(filename_prefix) or ".." in filename_prefix.replace("\\", "/").split("/"):
        raise ComfyInputError(f"input 'filename_prefix' must be a relative name, got {filename_prefix!r}")
    folder, filename, counter, subfolder = comfy_env.output_path(filename_prefix)
    name = f"{filename}_{counter:05}_.json"
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(diagnoses_to_json(diags, None if heatmaps == "none" else heatmaps))
    rel = os.path.join(subfolder, name) if subfolder else name
    return Result((rel,), ui={"text": [f"saved {len(diags)} diagnoses to {rel}"]})


SAVE = NodeSpec(
    key="SaveDiagnosis",
    display="Save Diagnosis",
    subcategory="",
    description="Write the diagnoses of a batch as JSON (imagedoctor.diagnosis/1 schema) into the output folder.",
    inputs=[
        In("diagnosis", DIAGNOSIS, "DIAGNOSIS to save."),
        In("filename_prefix", "STRING", "File name prefix inside the output folder (same rules as Save Image).",
           default="ImageDoctor"),
        In("heatmaps", "COMBO", "Heatmap encoding: png8 (small), f16 (exact) or none.",
           options=[*HEATMAP_ENCODINGS, "none"], default="png8"),
    ],
    outputs=[Out("path", "STRING", "Path of the JSON file relative to the output folder.")],
    fn=save_node,
    output_node=True,
)

SPECS = [SAVE]
