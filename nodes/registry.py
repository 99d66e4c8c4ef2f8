"""The pack's node list and ComfyUI's mappings, built when ComfyUI (or a caller) asks for them.

Importing this module imports numpy and our light core modules only: torch/transformers/diffusers
load on first use. Nodes are native V3 ``io.ComfyNode`` classes in a ComfyUI that has the V3 API,
classic V1 classes otherwise (see `comfy_io`).
"""

from __future__ import annotations

from . import analysis, comfy_env, masking, models, refining, saving, selection
from .comfy_io import API, io

NODES: list[type] = [*models.NODES, *analysis.NODES, *selection.NODES, *masking.NODES, *refining.NODES,
                     *saving.NODES]

comfy_env.register_model_folder()


def node_id(node: type) -> str:
    return node.define_schema().node_id


NODE_CLASS_MAPPINGS: dict[str, type] = {node_id(n): n for n in NODES}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {node_id(n): n.define_schema().display_name for n in NODES}


def comfy_extension():
    """The V3 ``ComfyExtension`` listing our nodes (for ComfyUI's ``comfy_entrypoint``)."""
    from comfy_api.latest import ComfyExtension  # type: ignore

    class ImageDoctorExtension(ComfyExtension):
        async def get_node_list(self) -> list[type[io.ComfyNode]]:
            return list(NODES)

    return ImageDoctorExtension()


__all__ = ["NODES", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "API", "comfy_extension"]
