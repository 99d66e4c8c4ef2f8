"""Which node API the pack is built on: ComfyUI's own V3 ``comfy_api.latest.io`` when it is
importable (ComfyUI 0.3.4x and newer), else `v1_io` (older ComfyUI, headless use and tests).

Node classes subclass ``io.ComfyNode`` from here, so the same source is a native V3 node in a
current ComfyUI and a classic V1 node in an old one.
"""

from __future__ import annotations

from . import v1_io


def _load_io():
    try:
        from comfy_api.latest import io  # type: ignore
    except Exception:  # noqa: BLE001 - any failure (absent, too old, broken) means: V1
        return v1_io
    if not all(hasattr(io, name) for name in ("ComfyNode", "Schema", "NodeOutput", "Custom")):
        return v1_io
    return io


io = _load_io()
API = "v1" if io is v1_io else "v3"

#: Our sockets. SEGS is Impact Pack's; the V3 API names it (io.SEGS) from ComfyUI 0.3.5x on.
Diagnosis = io.Custom("DIAGNOSIS")
DiagnosisModel = io.Custom("DIAGNOSIS_MODEL")
Segs = getattr(io, "SEGS", None) or io.Custom("SEGS")

__all__ = ["io", "API", "Diagnosis", "DiagnosisModel", "Segs"]
