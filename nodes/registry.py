"""Builds NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS.

V3 ``io.ComfyNode`` classes when ``comfy_api.latest`` is importable (ComfyUI registers V3 classes
found in the mappings), classic V1 classes otherwise. Importing this module imports numpy and our
light core modules only: torch/transformers/diffusers load on first use.
"""

from __future__ import annotations

from . import analysis, comfy_env, masking, models, refining, saving, selection
from .spec import NodeSpec, build, v3_io

ALL_SPECS: list[NodeSpec] = [
    *models.SPECS,
    *analysis.SPECS,
    *selection.SPECS,
    *masking.SPECS,
    *refining.SPECS,
    *saving.SPECS,
]

comfy_env.register_model_folder()
API = "v3" if v3_io() is not None else "v1"


def build_mappings(io=None) -> tuple[dict, dict]:
    classes = {s.node_id: build(s, io) for s in ALL_SPECS}
    names = {s.node_id: s.display for s in ALL_SPECS}
    return classes, names


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = build_mappings(v3_io())

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "ALL_SPECS", "API", "build_mappings"]
