"""Save Diagnosis (JSON next to the image outputs) and Load Diagnosis (the inverse)."""

from __future__ import annotations

import json
import os

from ..core.diagnosis import HEATMAP_ENCODINGS, Diagnosis, DiagnosisSchemaError, diagnoses_to_json
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



def _allowed_roots() -> list[str]:
    fp = comfy_env.folder_paths()
    if fp is None:
        return [os.path.abspath(os.environ.get("IMAGEDOCTOR_OUTPUT", "output"))]
    return [os.path.abspath(fp.get_output_directory()), os.path.abspath(fp.get_input_directory())]


def load_node(source):
    """``source``: diagnosis JSON text (an object or a list), or a file name relative to ComfyUI's
    output or input folder (what Save Diagnosis returns)."""
    text = (source or "").strip()
    if not text:
        raise ComfyInputError("input 'source' is empty: paste diagnosis JSON or give a saved file name")
    if not text.startswith(("{", "[")):
        for root in _allowed_roots():
            path = os.path.abspath(os.path.join(root, text))
            if os.path.commonpath([root, path]) == root and os.path.isfile(path):
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
                break
        else:
            raise ComfyInputError(f"input 'source': no file {text!r} in the output or input folder")
    try:
        data = json.loads(text)
        items = data if isinstance(data, list) else [data]
        diags = [Diagnosis.from_dict(d) for d in items]
    except (json.JSONDecodeError, DiagnosisSchemaError) as exc:
        raise ComfyInputError(f"input 'source' is not valid diagnosis JSON: {exc}") from exc
    if not diags:
        raise ComfyInputError("input 'source' holds an empty list of diagnoses")
    return (diags,)


LOAD = NodeSpec(
    key="LoadDiagnosis",
    display="Load Diagnosis",
    subcategory="",
    description="Read diagnoses saved by Save Diagnosis (or any imagedoctor.diagnosis/1 JSON) back into a DIAGNOSIS.",
    inputs=[
        In("source", "STRING", "Diagnosis JSON (object or list), or a file name relative to the output or input "
           "folder, e.g. ImageDoctor/diagnosis_00001_.json.", default="", multiline=True),
    ],
    outputs=[Out("diagnosis", DIAGNOSIS, "The loaded diagnoses (one per image).")],
    fn=load_node,
)

SPECS = [SAVE, LOAD]
