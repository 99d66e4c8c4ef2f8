"""ImageDoctor for ComfyUI: diagnose text-to-image outputs instead of giving them one number.

This file is what ComfyUI imports. It must stay import-safe (and fast) without ComfyUI,
torch or transformers being imported: node classes load heavy libraries on first use.
Headless, the repo installs as the package ``imagedoctor`` (``imagedoctor.core`` ...).
"""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

# Imported as a package (ComfyUI, `import imagedoctor`) this registers the nodes. Imported as a
# plain module (e.g. a test runner importing a checkout whose folder name is no identifier)
# there is no package to import the nodes from, and nothing to register.
if __package__:
    from .nodes.registry import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

WEB_DIRECTORY = None
__version__ = "0.1.0"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
