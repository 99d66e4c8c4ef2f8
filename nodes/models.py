"""Load Diagnosis Model: a lightweight handle; the Diagnoser (torch/transformers) loads on first use."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from typing import Any

from . import comfy_env
from .comfy_types import DIAGNOSIS_MODEL, ComfyInputError
from .spec import In, NodeSpec, Out

DTYPES = ["auto", "bf16", "fp16", "fp32"]
DEVICES = ["auto", "cpu"]


def attention_options() -> list[str]:
    opts = ["sdpa", "eager"]
    if importlib.util.find_spec("flash_attn") is not None:
        opts.append("flash_attention_2")
    return opts


def model_options() -> list[str]:
    return comfy_env.list_models() or ["(none: put a model folder in models/imagedoctor or use hf_id)"]


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


def load_model(model_name: str, hf_id: str = "", dtype: str = "auto", attention: str = "sdpa",
               device: str = "auto", keep_loaded: bool = True, allow_download: bool = False):
    if dtype not in DTYPES:
        raise ComfyInputError(f"input 'dtype' must be one of {DTYPES}, got {dtype!r}")
    if attention not in attention_options():
        raise ComfyInputError(f"input 'attention' must be one of {attention_options()}, got {attention!r}")
    hf_id = (hf_id or "").strip()
    if hf_id:
        source = hf_id
    else:
        path = comfy_env.resolve_model(model_name)
        if path is None:
            if model_name and os.path.isfile(os.path.join(model_name, "config.json")):
                path = model_name
            else:
                raise ComfyInputError(
                    f"input 'model_name': no model folder {model_name!r} in models/{comfy_env.MODEL_FOLDER} "
                    f"(searched {comfy_env.model_dirs()}); put a saved diagnoser there or fill 'hf_id'"
                )
        source = path
    return (DiagnosisModel(source, dtype, attention, device, keep_loaded, local_files_only=not allow_download),)


LOAD_MODEL = NodeSpec(
    key="LoadDiagnosisModel",
    display="Load Diagnosis Model",
    subcategory="loaders",
    description="Point at an ImageDoctor diagnoser (a folder in models/imagedoctor or a Hugging Face id "
    "already in your hub cache). The model itself loads on first use; offline unless allow_download.",
    inputs=[
        In("model_name", "COMBO", "Model folder inside models/imagedoctor (a saved diagnoser with config.json).",
           options=model_options),
        In("hf_id", "STRING", "Optional Hugging Face repo id; overrides model_name. Read from the local hub "
           "cache only, unless allow_download is on.", default=""),
        In("dtype", "COMBO", "Weights dtype: auto picks bf16 on GPUs that support it, else fp16/fp32.",
           options=DTYPES, default="auto"),
        In("attention", "COMBO", "Attention implementation (flash_attention_2 is listed only when installed).",
           options=attention_options, default="sdpa"),
        In("device", "COMBO", "auto = ComfyUI's device (comfy.model_management); cpu forces the CPU.",
           options=DEVICES, default="auto"),
        In("keep_loaded", "BOOLEAN", "Keep the model in memory between runs; off unloads it after every "
           "node run and frees the memory.", default=True),
        In("allow_download", "BOOLEAN", "Allow downloading hf_id from the Hugging Face Hub (off: offline).",
           default=False),
    ],
    outputs=[Out("model", DIAGNOSIS_MODEL, "Diagnosis model handle for Diagnose / Refine Defects.")],
    fn=load_model,
)

SPECS = [LOAD_MODEL]
