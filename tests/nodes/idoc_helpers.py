"""Helpers for tests/nodes: ComfyUI module stubs (ComfyUI's own modules only) and node callers."""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagedoctor.core.diagnosis import Defect, Diagnosis


# ----------------------------------------------------------------------------- folder_paths
def make_folder_paths(base: Path) -> types.ModuleType:
    fp = types.ModuleType("folder_paths")
    fp.base_path = str(base)
    fp.models_dir = str(base / "models")
    fp.folder_names_and_paths = {}
    (base / "temp").mkdir(parents=True, exist_ok=True)
    (base / "output").mkdir(parents=True, exist_ok=True)
    (base / "input").mkdir(parents=True, exist_ok=True)

    def add_model_folder_path(name, path, is_default=False):
        paths, exts = fp.folder_names_and_paths.setdefault(name, ([], set()))
        if path not in paths:
            paths.append(path)

    def get_folder_paths(name):
        return list(fp.folder_names_and_paths[name][0])

    def get_save_image_path(prefix, output_dir, width=0, height=0):
        subfolder, filename = str(Path(prefix).parent), Path(prefix).name
        subfolder = "" if subfolder == "." else subfolder
        full = Path(output_dir) / subfolder
        full.mkdir(parents=True, exist_ok=True)
        counter = 1 + sum(1 for f in full.iterdir() if f.name.startswith(filename + "_"))
        return str(full), filename, counter, subfolder, prefix

    fp.add_model_folder_path = add_model_folder_path
    fp.get_folder_paths = get_folder_paths
    fp.get_save_image_path = get_save_image_path
    fp.get_temp_directory = lambda: str(base / "temp")
    fp.get_output_directory = lambda: str(base / "output")
    fp.get_input_directory = lambda: str(base / "input")
    return fp


class InterruptProcessingException(Exception):
    pass


class ComfyState:
    interrupted = False
    progress: list = []
    ksampler_calls: list = []


def make_comfy(state) -> dict[str, types.ModuleType]:
    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total):
            self.total, self.current = total, 0
            state.progress.append(self)

        def update_absolute(self, value, total=None, preview=None):
            if total is not None:
                self.total = total
            self.current = value

        def update(self, value):
            self.current += value

    utils.ProgressBar = ProgressBar
    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = InterruptProcessingException
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.processing_interrupted = lambda: state.interrupted

    def throw():
        if state.interrupted:
            state.interrupted = False
            raise InterruptProcessingException()

    mm.throw_exception_if_processing_interrupted = throw
    mm.soft_empty_cache = lambda force=False: None
    samplers = types.ModuleType("comfy.samplers")

    class KSampler:
        SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m"]
        SCHEDULERS = ["normal", "karras", "simple"]

    samplers.KSampler = KSampler
    comfy.utils, comfy.model_management, comfy.samplers = utils, mm, samplers
    # ComfyUI's nodes.common_ksampler: here a deterministic "sampler" that fills the masked
    # latent with a constant (what a denoiser does to a defect, minus the model).
    nodes = types.ModuleType("nodes")

    def common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                        denoise=1.0, **kw):
        state.ksampler_calls.append(dict(seed=seed, steps=steps, sampler=sampler_name, denoise=denoise))
        s = latent["samples"].clone()
        m = latent["noise_mask"]
        m = torch.nn.functional.interpolate(m, size=s.shape[-2:], mode="nearest")
        s = s * (1 - m) + 0.5 * m
        return ({"samples": s},)

    nodes.common_ksampler = common_ksampler
    return {"comfy": comfy, "comfy.utils": utils, "comfy.model_management": mm, "comfy.samplers": samplers,
            "nodes": nodes}


class FakeVAE:
    """A VAE of ComfyUI's interface (encode [B,H,W,C] -> latent, decode latent -> [B,H,W,C]); identity-like."""

    def encode(self, pixels):
        return pixels.permute(0, 3, 1, 2).clone()

    def decode(self, samples):
        return samples.permute(0, 2, 3, 1).clone()


# ----------------------------------------------------------------------------- comfy_api stub
def make_comfy_api() -> dict[str, types.ModuleType]:
    """A stand-in for comfy_api.latest(.io) with the constructor signatures of ComfyUI 0.3.64's
    (no catch-all keyword arguments: a parameter the real API lacks is a TypeError here too).
    The real API is exercised by tests/e2e."""
    io = types.ModuleType("comfy_api.latest.io")

    class _Input:
        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, extra_dict=None):
            self.id, self.display_name, self.optional, self.tooltip = id, display_name, optional, tooltip
            self.default, self.options = None, None
            self.io_type = self.Parent.io_type

    class _Widget(_Input):
        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                     socketless=None, force_input=None):
            super().__init__(id, display_name, optional, tooltip, lazy)
            self.default = default

    class _Int(_Widget):
        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                     max=None, step=None, control_after_generate=None, display_mode=None, socketless=None,
                     force_input=None):
            super().__init__(id, display_name, optional, tooltip, lazy, default)
            self.min, self.max, self.control_after_generate = min, max, control_after_generate

    class _Float(_Widget):
        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                     max=None, step=None, round=None, display_mode=None, socketless=None, force_input=None):
            super().__init__(id, display_name, optional, tooltip, lazy, default)
            self.min, self.max = min, max

    class _String(_Widget):
        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, multiline=False,
                     placeholder=None, default=None, dynamic_prompts=None, socketless=None, force_input=None):
            super().__init__(id, display_name, optional, tooltip, lazy, default)
            self.multiline = multiline

    class _Boolean(_Widget):
        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                     label_on=None, label_off=None, socketless=None, force_input=None):
            super().__init__(id, display_name, optional, tooltip, lazy, default)

    class _Combo(_Widget):
        def __init__(self, id, options=None, display_name=None, optional=False, tooltip=None, lazy=None,
                     default=None, control_after_generate=None, upload=None, image_folder=None, remote=None,
                     socketless=None):
            super().__init__(id, display_name, optional, tooltip, lazy, default)
            self.options = options

    class _Output:
        def __init__(self, id=None, display_name=None, tooltip=None, is_output_list=False):
            self.id, self.display_name, self.tooltip = id, display_name, tooltip
            self.io_type = self.Parent.io_type

    def comfytype(io_type, input_cls=_Input):
        T = type(io_type, (), {"io_type": io_type})
        T.Input = type("Input", (input_cls,), {"Parent": T})
        T.Output = type("Output", (_Output,), {"Parent": T})
        return T

    for attr, name in [("Image", "IMAGE"), ("Mask", "MASK"), ("Model", "MODEL"), ("Vae", "VAE"),
                       ("Conditioning", "CONDITIONING"), ("SEGS", "SEGS")]:
        setattr(io, attr, comfytype(name))
    io.Int, io.Float = comfytype("INT", _Int), comfytype("FLOAT", _Float)
    io.String, io.Boolean = comfytype("STRING", _String), comfytype("BOOLEAN", _Boolean)
    io.Combo = comfytype("COMBO", _Combo)
    io.Custom = comfytype

    @dataclass
    class Schema:
        node_id: str
        display_name: str = None
        category: str = "sd"
        inputs: list = None
        outputs: list = None
        hidden: list = None
        description: str = ""
        is_input_list: bool = False
        is_output_node: bool = False
        is_deprecated: bool = False
        is_experimental: bool = False
        is_api_node: bool = False
        not_idempotent: bool = False
        enable_expand: bool = False

        def validate(self):
            ids = [i.id for i in self.inputs or []] + [o.id for o in self.outputs or []]
            if len(ids) != len(set(ids)):
                raise ValueError(f"duplicate ids {ids}")

    class NodeOutput:
        def __init__(self, *args, ui=None, expand=None, block_execution=None):
            self.args, self.ui = args, ui

        @property
        def result(self):
            return self.args

    class ComfyNode:
        pass

    io.Schema, io.NodeOutput, io.ComfyNode = Schema, NodeOutput, ComfyNode
    latest = types.ModuleType("comfy_api.latest")
    latest.io = io

    class ComfyExtension:
        async def on_load(self):
            return None

    latest.ComfyExtension = ComfyExtension
    root = types.ModuleType("comfy_api")
    root.__path__ = []
    root.latest = latest
    latest.__path__ = []
    return {"comfy_api": root, "comfy_api.latest": latest, "comfy_api.latest.io": io}


# ----------------------------------------------------------------------------- calling nodes
SOCKET_CHECKS = {
    "IMAGE": lambda v: isinstance(v, torch.Tensor) and v.ndim == 4 and v.shape[-1] == 3 and v.dtype == torch.float32
    and float(v.min()) >= 0 and float(v.max()) <= 1,
    "MASK": lambda v: isinstance(v, torch.Tensor) and v.ndim == 3 and v.dtype == torch.float32,
    "FLOAT": lambda v: isinstance(v, float) and math.isfinite(v),
    "INT": lambda v: isinstance(v, int),
    "STRING": lambda v: isinstance(v, str),
    "DIAGNOSIS": lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(d, Diagnosis) for d in v),
    "SEGS": lambda v: isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], list),
}


def v1_defaults(cls) -> dict[str, Any]:
    out = {}
    for section in ("required", "optional"):
        for name, spec in cls.INPUT_TYPES().get(section, {}).items():
            opts = spec[1] if len(spec) > 1 else {}
            if "default" in opts:
                out[name] = opts["default"]
            elif isinstance(spec[0], list) and spec[0]:
                out[name] = spec[0][0]
    return out


def call_v1(cls, **inputs):
    """What ComfyUI does for a V1 node: defaults from INPUT_TYPES, instantiate, call FUNCTION, check outputs."""
    kwargs = {**v1_defaults(cls), **inputs}
    required = cls.INPUT_TYPES()["required"]
    missing = [k for k in required if k not in kwargs]
    assert not missing, f"test forgot required inputs {missing}"
    result = getattr(cls(), cls.FUNCTION)(**kwargs)
    ui = None
    if isinstance(result, dict):
        ui, result = result.get("ui"), result["result"]
    assert isinstance(result, tuple) and len(result) == len(cls.RETURN_TYPES)
    for value, rtype, name in zip(result, cls.RETURN_TYPES, cls.RETURN_NAMES):
        check = SOCKET_CHECKS.get(rtype)
        if check is not None:
            assert check(value), f"{cls.__name__} output {name!r} is not a valid {rtype}: {type(value)} {getattr(value, 'shape', '')}"
    return result, ui


def call_v3(cls, **inputs):
    """What ComfyUI does for a V3 node: schema defaults, execute(**kwargs) -> NodeOutput."""
    schema = cls.define_schema()
    schema.validate()
    kwargs = {}
    for inp in schema.inputs:
        if inp.default is not None:
            kwargs[inp.id] = inp.default
        elif inp.options:
            kwargs[inp.id] = inp.options[0]
    kwargs.update(inputs)
    assert not [i.id for i in schema.inputs if not i.optional and i.id not in kwargs], "missing required inputs"
    out = cls.execute(**kwargs)
    assert len(out.args) == len(schema.outputs)
    for value, o in zip(out.args, schema.outputs):
        check = SOCKET_CHECKS.get(o.io_type)
        if check is not None:
            assert check(value), f"{schema.node_id} output {o.display_name!r} is not a valid {o.io_type}"
    return out.args, out.ui


# ----------------------------------------------------------------------------- data
def make_diag(w=64, h=48, overall=0.5, defects=(), heatmaps=True, seed=0, **scores) -> Diagnosis:
    rng = np.random.default_rng(seed)
    hms = {"artifact": rng.random((h, w)).astype(np.float32), "misalignment": rng.random((h, w)).astype(np.float32)}
    return Diagnosis(w, h, scores={"overall": overall, **scores}, defects=[
        d if isinstance(d, Defect) else Defect(*d) for d in defects], heatmaps=hms if heatmaps else {},
        prompt="a red cube", format="imagedoctor")


