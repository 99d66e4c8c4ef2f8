"""Load Diagnosis Model: checks the model folder when it runs; the weights load on first use."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import threading
from typing import Any

from . import comfy_env
from .comfy_io import DiagnosisModel as DiagnosisModelType
from .comfy_io import io
from .comfy_types import ComfyInputError

DTYPES = ["auto", "bf16", "fp16", "fp32"]
DEVICES = ["auto", "cpu"]
SUPPORTED_MODEL_TYPES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl")  # core.diagnoser.FAMILIES
NO_MODEL = "(none: put a model folder in models/imagedoctor or use hf_id)"


def attention_options() -> list[str]:
    opts = ["sdpa", "eager"]
    if importlib.util.find_spec("flash_attn") is not None:
        opts.append("flash_attention_2")
    return opts


def model_options() -> list[str]:
    return comfy_env.list_models() or [NO_MODEL]


class DiagnosisModel:
    """What travels on a DIAGNOSIS_MODEL socket: where the model is and how to load it.

    ``keep_loaded=False`` unloads the Diagnoser (``Diagnoser.unload()`` + cache flush) at the
    end of every `session`, so the memory really goes back to ComfyUI between runs.
    """

    def __init__(self, source: str, dtype: str = "auto", attention: str = "sdpa", device: str = "auto",
                 keep_loaded: bool = True, local_files_only: bool = True, diagnoser: Any = None):
        self.source, self.dtype, self.attention, self.device = source, dtype, attention, device
        self.keep_loaded, self.local_files_only = bool(keep_loaded), bool(local_files_only)
        self._dg = diagnoser
        self._lock = threading.RLock()
        self._depth = 0  # nested sessions (Refine Defects re-diagnoses inside its own session)

    @classmethod
    def from_diagnoser(cls, diagnoser: Any, keep_loaded: bool = True) -> "DiagnosisModel":
        return cls(source="<in-memory>", keep_loaded=keep_loaded, diagnoser=diagnoser)

    @property
    def loaded(self) -> bool:
        return self._dg is not None

    def get(self):
        with self._lock:
            if self._dg is None:
                from ..core.diagnoser import Diagnoser  # heavy: torch + transformers, first use only

                self._dg = Diagnoser.from_pretrained(
                    self.source,
                    dtype=self.dtype,
                    device=comfy_env.torch_device(self.device),
                    attn_implementation=self.attention,
                    local_files_only=self.local_files_only,
                )
            return self._dg

    def unload(self) -> None:
        with self._lock:
            if self._dg is not None and self.source != "<in-memory>":
                with contextlib.suppress(Exception):
                    self._dg.unload()
                self._dg = None
            comfy_env.free_memory()

    @contextlib.contextmanager
    def session(self):
        """Yield a loaded Diagnoser; unload afterwards unless ``keep_loaded``."""
        with self._lock:
            self._depth += 1
        try:
            yield self.get()
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0 and not self.keep_loaded:
                    self.unload()

    def __repr__(self) -> str:
        return f"DiagnosisModel({self.source!r}, dtype={self.dtype}, attention={self.attention}, loaded={self.loaded})"


# ---------------------------------------------------------------------------------- checks
def find_model_folder(model_name: str) -> str | None:
    """The folder of ``model_name`` in models/imagedoctor (or an existing folder path), or None."""
    path = comfy_env.resolve_model(model_name) if model_name else None
    if path is None and model_name and os.path.isfile(os.path.join(model_name, "config.json")):
        path = model_name
    return path


def missing_model_message(model_name: str) -> str:
    return (f"no model folder {model_name!r} in models/{comfy_env.MODEL_FOLDER} (searched {comfy_env.model_dirs()}). "
            "Put a saved diagnoser folder (config.json + *.safetensors) there and refresh, or fill hf_id")


def check_model_folder(folder: str) -> None:
    """Refuse a folder `Diagnoser.from_pretrained` would refuse, before any weights load."""
    names = set(os.listdir(folder))
    if "adapter_config.json" in names and "config.json" not in names:
        if not any(n.endswith(".safetensors") for n in names):
            raise ComfyInputError(f"{folder} is a LoRA adapter folder without .safetensors weights")
        return
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as fh:
            model_type = json.load(fh).get("model_type")
    except (OSError, ValueError) as exc:
        raise ComfyInputError(f"{folder}/config.json cannot be read ({exc}); re-save the model") from exc
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ComfyInputError(f"{folder} holds a {model_type!r} model; ImageDoctor diagnosers are "
                              f"{list(SUPPORTED_MODEL_TYPES)}")
    if not any(n.endswith(".safetensors") for n in names):
        raise ComfyInputError(f"{folder} has no .safetensors weights (pickled .bin checkpoints are refused); "
                              "convert it with save_pretrained(safe_serialization=True)")


def resolve_hub_id(hf_id: str, allow_download: bool) -> str:
    """The local snapshot of ``hf_id``: from the hub cache, or downloaded when ``allow_download``."""
    from ..core.diagnoser import _resolve_folder

    try:
        return str(_resolve_folder(hf_id, local_files_only=not allow_download))
    except FileNotFoundError as exc:
        if allow_download:
            raise ComfyInputError(f"hf_id {hf_id!r}: the download failed ({exc.__cause__ or exc}); check the id "
                                  "and your connection") from exc
        raise ComfyInputError(f"hf_id {hf_id!r} is not in the local Hugging Face cache. Turn on allow_download to "
                              f"download it, or download it yourself (hf download {hf_id})") from exc


class LoadDiagnosisModel(io.ComfyNode):
    """Point at a diagnoser; the folder is checked when the node runs, the weights load on first use."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ImageDoctorLoadDiagnosisModel",
            display_name="Load Diagnosis Model",
            category="ImageDoctor/loaders",
            description="Point at an ImageDoctor diagnoser: a folder in models/imagedoctor, or a Hugging Face id "
            "(read from the local hub cache; downloaded only with allow_download). The folder is checked when the "
            "node runs; the weights load on first use.",
            inputs=[
                io.Combo.Input("model_name", options=model_options(), tooltip="Model folder inside "
                               "models/imagedoctor (a saved diagnoser with config.json and *.safetensors)."),
                io.String.Input("hf_id", default="", tooltip="Optional Hugging Face repo id; overrides model_name. "
                                "Read from the local hub cache only, unless allow_download is on."),
                io.Combo.Input("dtype", options=DTYPES, default="auto",
                               tooltip="Weights dtype: auto picks bf16 on GPUs that support it, else fp32."),
                io.Combo.Input("attention", options=attention_options(), default="sdpa",
                               tooltip="Attention implementation (flash_attention_2 is listed only when installed)."),
                io.Combo.Input("device", options=DEVICES, default="auto",
                               tooltip="auto = ComfyUI's device (comfy.model_management); cpu forces the CPU."),
                io.Boolean.Input("keep_loaded", default=True, tooltip="Keep the model in memory between runs; off "
                                 "unloads it after every node run and frees the memory."),
                io.Boolean.Input("allow_download", default=False,
                                 tooltip="Allow downloading hf_id from the Hugging Face Hub (off: offline)."),
            ],
            outputs=[DiagnosisModelType.Output("model", display_name="model",
                                               tooltip="Diagnosis model handle for Diagnose / Refine Defects.")],
        )

    @classmethod
    def validate_inputs(cls, model_name=None, hf_id=""):
        if hf_id is None or (hf_id or "").strip():  # linked, or a hub id: checked when the node runs
            return True
        if model_name is None or find_model_folder(model_name) is not None:
            return True
        return missing_model_message(model_name)

    @classmethod
    def fingerprint_inputs(cls, model_name=None, hf_id="", **_):
        """Re-run (and reload) when the model folder's files change, e.g. after re-training into it."""
        folder = find_model_folder(model_name) if model_name and not (hf_id or "").strip() else None
        if folder is None:
            return ""
        return tuple(sorted((n, os.stat(os.path.join(folder, n)).st_mtime_ns) for n in os.listdir(folder)
                            if n.endswith((".json", ".safetensors"))))

    @classmethod
    def execute(cls, model_name, hf_id="", dtype="auto", attention="sdpa", device="auto", keep_loaded=True,
                allow_download=False):
        if dtype not in DTYPES:
            raise ComfyInputError(f"input 'dtype' must be one of {DTYPES}, got {dtype!r}")
        if attention not in attention_options():
            raise ComfyInputError(f"input 'attention' must be one of {attention_options()}, got {attention!r}")
        hf_id = (hf_id or "").strip()
        if hf_id:
            source = resolve_hub_id(hf_id, bool(allow_download))
        else:
            source = find_model_folder(model_name)
            if source is None:
                raise ComfyInputError(f"input 'model_name': {missing_model_message(model_name)}")
        check_model_folder(source)
        return io.NodeOutput(DiagnosisModel(source, dtype, attention, device, keep_loaded,
                                            local_files_only=not allow_download))


NODES = [LoadDiagnosisModel]
