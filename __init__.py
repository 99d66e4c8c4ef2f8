"""ImageDoctor for ComfyUI: diagnose text-to-image outputs instead of giving them one number.

This file is what ComfyUI imports. It must stay import-safe (and fast) without ComfyUI,
torch or transformers being imported: node classes load heavy libraries on first use.
Headless, the repo installs as the package ``imagedoctor`` (``imagedoctor.core`` ...).
"""

try:
    from .nodes.registry import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ImportError as _exc:  # the node layer is optional headless; never break `import imagedoctor`
    if "registry" not in str(_exc):
        raise
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = None
__version__ = "0.1.0"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
