"""ImageDoctor for ComfyUI: diagnose text-to-image outputs instead of giving them one number.

This file is what ComfyUI imports. It stays import-safe and fast without ComfyUI, torch or
transformers: the node classes are built only when ``NODE_CLASS_MAPPINGS`` (or
``comfy_entrypoint``) is first asked for, which ComfyUI does when it loads the pack, and node code
loads heavy libraries on first use. Headless, the repo installs as the package ``imagedoctor``:
``import imagedoctor.core`` builds no node class.
"""

WEB_DIRECTORY = "./web"
__version__ = "0.1.0"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY", "comfy_entrypoint"]


def __getattr__(name):
    # PEP 562: built on first access. Imported as a plain module (a test runner importing a
    # checkout whose folder name is no identifier) there is no package to import nodes from.
    if name in ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"):
        if not __package__:
            return {}
        from .nodes import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


async def comfy_entrypoint():
    """The V3 entry point (ComfyUI uses it where NODE_CLASS_MAPPINGS is absent)."""
    from .nodes.registry import comfy_extension

    return comfy_extension()
