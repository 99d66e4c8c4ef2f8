"""Stubs of ComfyUI's *own* modules (folder_paths, comfy.utils, comfy.model_management,
comfy.samplers, nodes.common_ksampler, comfy_api.latest.io) so the pack runs the way ComfyUI
calls it, headless. None of our logic is stubbed. Helpers call nodes like ComfyUI does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from idoc_helpers import ComfyState, make_comfy, make_comfy_api, make_diag, make_folder_paths  # noqa: E402

@pytest.fixture
def comfy(tmp_path, monkeypatch):
    """Install ComfyUI module stubs for one test; yields the shared state."""
    state = ComfyState()
    state.interrupted, state.progress, state.ksampler_calls = False, [], []
    fp = make_folder_paths(tmp_path / "comfy")
    mods = {"folder_paths": fp, **make_comfy(state)}
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    from imagedoctor.nodes import comfy_env

    comfy_env.register_model_folder()
    state.folder_paths = fp
    state.base = tmp_path / "comfy"
    return state

@pytest.fixture
def v3_nodes(monkeypatch):
    """The node modules imported afresh with a V3 ``comfy_api`` importable (the stub of
    idoc_helpers), as ComfyUI would import them; the V1 copies come back afterwards."""
    import importlib

    import imagedoctor

    for name, mod in make_comfy_api().items():
        monkeypatch.setitem(sys.modules, name, mod)
    saved = {k: v for k, v in sys.modules.items() if k.startswith("imagedoctor.nodes")}
    saved_attr = imagedoctor.__dict__.get("nodes")
    for k in saved:
        del sys.modules[k]
    try:
        registry = importlib.import_module("imagedoctor.nodes.registry")
        yield registry
    finally:
        for k in [k for k in sys.modules if k.startswith("imagedoctor.nodes")]:
            del sys.modules[k]
        sys.modules.update(saved)
        if saved_attr is not None:
            imagedoctor.nodes = saved_attr


@pytest.fixture
def batch():
    """4 images 48x64 with matching diagnoses."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 48, 64, 3, generator=g)
    diags = [
        make_diag(overall=0.4, defects=[((4, 4, 20, 20), "artifact", "hand", 80)], seed=1),
        make_diag(overall=0.9, defects=[], seed=2),
        make_diag(overall=0.7, defects=[((30, 10, 50, 30), "misalignment", "no cube", 30)], seed=3),
        make_diag(overall=0.9, defects=[((0, 0, 10, 10), "artifact", "blur", 20)], seed=4),
    ]
    return images, diags

