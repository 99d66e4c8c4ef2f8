"""Save Diagnosis (JSON next to the image outputs) and Load Diagnosis (the inverse)."""

from __future__ import annotations

import json
import os

from ..core.diagnosis import HEATMAP_ENCODINGS, Diagnosis, DiagnosisSchemaError, diagnoses_to_json
from . import comfy_env, panels
from .comfy_io import Diagnosis as DiagnosisType
from .comfy_io import io
from .comfy_types import ComfyInputError, diagnoses

HEATMAP_CHOICES = [*HEATMAP_ENCODINGS, "none"]


def prefix_problem(prefix) -> str | None:
    if not prefix or os.path.isabs(prefix) or ".." in str(prefix).replace("\\", "/").split("/"):
        return f"filename_prefix must be a relative name inside the output folder, got {prefix!r}"
    return None


class SaveDiagnosis(io.ComfyNode):
    """Diagnoses as JSON in the output folder; the node shows where."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ImageDoctorSaveDiagnosis",
            display_name="Save Diagnosis",
            category="ImageDoctor",
            description="Write the diagnoses of a batch as JSON (imagedoctor.diagnosis/1 schema) into the output "
            "folder. The node shows the saved path.",
            inputs=[
                DiagnosisType.Input("diagnosis", tooltip="DIAGNOSIS to save."),
                io.String.Input("filename_prefix", default="ImageDoctor/diagnosis",
                                tooltip="File name prefix inside the output folder (same rules as Save Image)."),
                io.Combo.Input("heatmaps", options=HEATMAP_CHOICES, default="png8",
                               tooltip="Heatmap encoding: png8 (small), f16 (exact) or none."),
            ],
            outputs=[io.String.Output("path", display_name="path",
                                      tooltip="Path of the JSON file relative to the output folder.")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, filename_prefix="ImageDoctor/diagnosis"):
        if filename_prefix is None:  # linked: checked when the node runs
            return True
        return prefix_problem(filename_prefix) or True

    @classmethod
    def execute(cls, diagnosis, filename_prefix="ImageDoctor/diagnosis", heatmaps="png8"):
        diags = diagnoses(diagnosis, "diagnosis")
        if heatmaps not in HEATMAP_CHOICES:
            raise ComfyInputError(f"input 'heatmaps' must be one of {HEATMAP_CHOICES}, got {heatmaps!r}")
        problem = prefix_problem(filename_prefix)
        if problem:
            raise ComfyInputError(f"input {problem}")
        folder, filename, counter, subfolder = comfy_env.output_path(filename_prefix)
        name = f"{filename}_{counter:05}_.json"
        path = os.path.join(folder, name)
        text = diagnoses_to_json(diags, None if heatmaps == "none" else heatmaps)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)  # never a half-written file under the final name
        rel = os.path.join(subfolder, name) if subfolder else name
        ui = panels.ui(panels.saved_panel(rel, len(diags)), text=f"saved {len(diags)} diagnoses to {rel}")
        return io.NodeOutput(rel, ui=ui)


def _allowed_roots() -> list[str]:
    fp = comfy_env.folder_paths()
    if fp is None:
        return [os.path.abspath(os.environ.get("IMAGEDOCTOR_OUTPUT", "output"))]
    return [os.path.abspath(fp.get_output_directory()), os.path.abspath(fp.get_input_directory())]


def find_saved(name: str) -> str | None:
    """A file ``name`` inside the output or input folder (never outside them), or None."""
    for root in _allowed_roots():
        path = os.path.abspath(os.path.join(root, name))
        if os.path.commonpath([root, path]) == root and os.path.isfile(path):
            return path
    return None


def _is_json_text(text: str) -> bool:
    return text.startswith(("{", "["))


class LoadDiagnosis(io.ComfyNode):
    """Diagnoses back from Save Diagnosis' JSON (a file in the output/input folder, or pasted text)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ImageDoctorLoadDiagnosis",
            display_name="Load Diagnosis",
            category="ImageDoctor",
            description="Read diagnoses saved by Save Diagnosis (or any imagedoctor.diagnosis/1 JSON) back into a "
            "DIAGNOSIS.",
            inputs=[
                io.String.Input("source", default="", multiline=True, tooltip="Diagnosis JSON (object or list), or a "
                                "file name relative to the output or input folder, e.g. "
                                "ImageDoctor/diagnosis_00001_.json."),
            ],
            outputs=[DiagnosisType.Output("diagnosis", display_name="diagnosis",
                                          tooltip="The loaded diagnoses (one per image).")],
        )

    @classmethod
    def validate_inputs(cls, source=""):
        if source is None:
            return True
        text = source.strip()
        if not text:
            return "source is empty: paste diagnosis JSON or give a saved file name"
        if not _is_json_text(text) and find_saved(text) is None:
            return f"source: no file {text!r} in the output or input folder"
        return True

    @classmethod
    def fingerprint_inputs(cls, source="", **_):
        """A saved file can be rewritten under the same name: re-read it when it changes."""
        text = (source or "").strip()
        path = None if _is_json_text(text) else find_saved(text)
        return (text, os.stat(path).st_mtime_ns) if path else text

    @classmethod
    def execute(cls, source):
        text = (source or "").strip()
        if not text:
            raise ComfyInputError("input 'source' is empty: paste diagnosis JSON or give a saved file name")
        if not _is_json_text(text):
            path = find_saved(text)
            if path is None:
                raise ComfyInputError(f"input 'source': no file {text!r} in the output or input folder")
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        try:
            data = json.loads(text)
            items = data if isinstance(data, list) else [data]
            diags = [Diagnosis.from_dict(d) for d in items]
        except (json.JSONDecodeError, DiagnosisSchemaError) as exc:
            raise ComfyInputError(f"input 'source' is not valid diagnosis JSON: {exc}") from exc
        if not diags:
            raise ComfyInputError("input 'source' holds an empty list of diagnoses")
        return io.NodeOutput(diags)


NODES = [SaveDiagnosis, LoadDiagnosis]
