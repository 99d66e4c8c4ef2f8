"""Thin, optional access to ComfyUI's own modules (folder_paths, comfy.utils,
comfy.model_management). Every helper works headless too (no ComfyUI installed)."""

from __future__ import annotations

import os
from typing import Any, Callable

MODEL_FOLDER = "imagedoctor"


def folder_paths():
    try:
        import folder_paths as fp  # type: ignore

        return fp
    except ImportError:
        return None


def register_model_folder() -> None:
    """Register ``models/imagedoctor`` with ComfyUI's folder_paths (no-op headless)."""
    fp = folder_paths()
    if fp is None:
        return
    path = os.path.join(fp.models_dir, MODEL_FOLDER)
    try:
        if MODEL_FOLDER in getattr(fp, "folder_names_and_paths", {}):
            fp.add_model_folder_path(MODEL_FOLDER, path)
        else:
            fp.folder_names_and_paths[MODEL_FOLDER] = ([path], set())
    except Exception:  # noqa: BLE001 - never break pack import over a path
        pass


def model_dirs() -> list[str]:
    fp = folder_paths()
    if fp is None:
        env = os.environ.get("IMAGEDOCTOR_MODELS")
        return [env] if env else []
    try:
        return list(fp.get_folder_paths(MODEL_FOLDER))
    except Exception:  # noqa: BLE001
        return []


def list_models() -> list[str]:
    """Sub-folders of models/imagedoctor holding a saved model (a config.json), sorted."""
    found = set()
    for root in model_dirs():
        if not os.path.isdir(root):
            continue
        for dirpath, _dirs, files in os.walk(root):
            if "config.json" in files:
                rel = os.path.relpath(dirpath, root)
                if rel != ".":
                    found.add(rel.replace(os.sep, "/"))
            if dirpath.count(os.sep) - root.count(os.sep) >= 2:
                _dirs[:] = []
    return sorted(found)


def resolve_model(name: str) -> str | None:
    for root in model_dirs():
        path = os.path.join(root, name)
        if os.path.isfile(os.path.join(path, "config.json")):
            return path
    return None


def model_management():
    try:
        import comfy.model_management as mm  # type: ignore

        return mm
    except ImportError:
        return None


def torch_device(choice: str = "auto"):
    """'auto' -> ComfyUI's device (comfy.model_management), else cuda if available; 'cpu' -> cpu."""
    import torch

    if choice == "cpu":
        return torch.device("cpu")
    mm = model_management()
    if mm is not None:
        return mm.get_torch_device()
    if choice == "gpu" or choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def free_memory() -> None:
    import gc

    gc.collect()
    mm = model_management()
    if mm is not None and hasattr(mm, "soft_empty_cache"):
        mm.soft_empty_cache()
        return
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def interrupted() -> bool:
    mm = model_management()
    return bool(mm is not None and mm.processing_interrupted())


def raise_if_interrupted() -> None:
    mm = model_management()
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def progress_bar(total: int) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback driving comfy.utils.ProgressBar (no-op headless)."""
    try:
        import comfy.utils  # type: ignore

        bar = comfy.utils.ProgressBar(max(1, int(total)))
    except ImportError:
        return lambda done, total=None: None

    def progress(done: int, total_: int | None = None) -> None:
        bar.update_absolute(int(done), int(total_) if total_ else None)

    return progress


def save_previews(images: list, prefix: str = "imagedoctor") -> list[dict[str, Any]]:
    """Save PIL images to ComfyUI's temp folder; returns the UI ``images`` entries (empty headless)."""
    fp = folder_paths()
    if fp is None or not images:
        return []
    import random

    temp = fp.get_temp_directory()
    suffix = "_" + "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))
    w, h = images[0].size
    full, filename, counter, subfolder, _ = fp.get_save_image_path(prefix + suffix, temp, w, h)
    out = []
    for i, img in enumerate(images):
        name = f"{filename}_{counter + i:05}_.png"
        img.save(os.path.join(full, name), compress_level=1)
        out.append({"filename": name, "subfolder": subfolder, "type": "temp"})
    return out


def output_path(prefix: str) -> tuple[str, str, int, str]:
    """(folder, filename, counter, subfolder) in ComfyUI's output dir, like SaveImage uses."""
    fp = folder_paths()
    if fp is None:
        folder = os.path.abspath(os.environ.get("IMAGEDOCTOR_OUTPUT", "output"))
        os.makedirs(folder, exist_ok=True)
        base = os.path.basename(prefix) or "imagedoctor"
        counter = 1
        while any(f.startswith(f"{base}_{counter:05}_") for f in os.listdir(folder)):
            counter += 1
        return folder, base, counter, ""
    full, filename, counter, subfolder, _ = fp.get_save_image_path(prefix, fp.get_output_directory())
    return full, filename, counter, subfolder
