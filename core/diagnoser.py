"""`Diagnoser`: a Qwen-VL model (+ optional heatmap head) that turns (image, prompt) into `Diagnosis`.

    from imagedoctor.core import Diagnoser
    dg = Diagnoser.from_pretrained("GYX97/ImageDoctor")      # or a local folder
    [d] = dg.diagnose([image], ["a red cube left of a blue ball"])
    d.scores.overall, d.defects, d.heatmaps["artifact"]

Backbones: Qwen2.5-VL (ImageDoctor, absolute-pixel boxes) and Qwen3-VL (SDG detector, 0-1000
boxes), detected from ``config.model_type``. The published ImageDoctor checkpoint's head weights
load by name, without ``trust_remote_code`` and without upstream code.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .diagnosis import Diagnosis
from .formats import FORMATS, parse
from .generation import DiagnosisCancelled, decode, resolve_decoder
from .geometry import Frame
from .prompts import ImagePolicy, PromptVariant, build_messages, get_variant, resolve_image_policy, resolve_variant

__all__ = ["Diagnoser", "DiagnosisCancelled", "LoadReport", "save_diagnoser", "to_pil_images"]

logger = logging.getLogger("imagedoctor")

#: model_type -> (transformers class name, default output format, box frame of free-form boxes)
FAMILIES = {
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "imagedoctor"),
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "sdg"),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "sdg"),
}
DTYPES = ("auto", "bf16", "fp16", "fp32")
HEAD_FILE = "model-heatmap-head.safetensors"
#: Models shipped inside the package, by name. ``imagedoctor-mini`` is trained on synthetic shapes
#: only (docs/mini-model.md): for trying the pack; real images need the published checkpoints.
BUILTIN_MODELS = {"imagedoctor-mini": Path(__file__).resolve().parent / "weights" / "imagedoctor-mini"}
#: What each built-in model is, in one line (demo page, ComfyUI loader).
BUILTIN_DESCRIPTIONS = {
    "imagedoctor-mini": "trained on synthetic shapes only, for trying the pack, and weak even there (its heatmaps "
                        "follow the defects, its scores barely do); real images need the published checkpoints "
                        "GYX97/ImageDoctor or P1n3/sdg-detector-*",
}


@dataclass
class LoadReport:
    """What `from_pretrained` found: head tensors missing/unexpected, and notes for the user."""

    family: str = ""
    has_head: bool = False
    missing_head_keys: list[str] = field(default_factory=list)
    unexpected_head_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- input conversion ----------------------------------------------------------------------
def to_pil_images(images: Any) -> list:
    """Accept PIL images (any mode: 16-bit and float scaled, see `images.to_rgb`), HWC numpy arrays
    (uint8, uint16 or float 0-1), or a torch [B,H,W,C] / [H,W,C] tensor in 0-1 (ComfyUI IMAGE).
    Grayscale and RGBA become RGB. Anything else raises ValueError."""
    from PIL import Image

    from .images import array_to_rgb, to_rgb

    if images is None:
        raise ValueError("no images given")
    if hasattr(images, "detach") and hasattr(images, "cpu"):  # torch tensor
        arr = images.detach().cpu().float().numpy()
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise ValueError(f"image tensor must be [B,H,W,C] or [H,W,C], got shape {tuple(arr.shape)}")
        images = list(arr)
    elif isinstance(images, (Image.Image, np.ndarray)):
        images = [images]
    out = []
    for i, img in enumerate(images):
        if isinstance(img, Image.Image):
            if img.width <= 0 or img.height <= 0:
                raise ValueError(f"image {i} is empty ({img.width}x{img.height})")
            out.append(to_rgb(img, f"image {i}"))
            continue
        out.append(array_to_rgb(img, f"image {i}"))
    if not out:
        raise ValueError("no images given (empty batch)")
    return out


def _resolve_folder(path_or_id: str | os.PathLike, local_files_only: bool) -> Path:
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{p} has neither config.json nor adapter_config.json: not a model folder "
                                    "(build one with `imagedoctor tiny-model DIR`)")
        return p
    if p.exists():
        raise FileNotFoundError(f"{p} is a file; point to the model folder that contains config.json")
    name = str(path_or_id)
    # Precedence: an existing local folder (above) > a built-in name > a hub id ("owner/name").
    if name in BUILTIN_MODELS:
        folder = BUILTIN_MODELS[name]
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"built-in model {name!r} is missing from this installation ({folder}); "
                                    "reinstall imagedoctor or pass a model folder")
        return folder
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise FileNotFoundError(f"model folder {name!r} does not exist (and it is not a hub id like 'GYX97/ImageDoctor')")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                name,
                local_files_only=local_files_only,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken"],
            )
        )
    except Exception as exc:  # hub errors come in many types
        hint = (
            "it is not in the local Hugging Face cache; download it first (e.g. `hf download "
            f"{name}`) or pass local_files_only=False to allow downloading"
            if local_files_only
            else "the download failed"
        )
        raise FileNotFoundError(f"model {name!r}: {hint} ({type(exc).__name__})") from exc


def _torch_dtype(dtype, device):
    import torch

    if not isinstance(dtype, str):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)} or a torch.dtype, got {dtype!r}")
    if dtype == "auto":
        if str(device).startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]


def _head_tensors(folder: Path) -> dict:
    """All tensors of the heatmap head stored anywhere in the folder's safetensors files."""
    from safetensors import safe_open

    from .heatmap_head import HEAD_PREFIXES

    found = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            for key in sf.keys():
                if key.startswith(HEAD_PREFIXES):
                    found[key] = sf.get_tensor(key)
    return found


def _prompt_settings(config, format: str, folder: Path, report: LoadReport) -> tuple[str | None, Any]:
    """(prompt variant, image area) named in config.json (``imagedoctor_prompt_variant``,
    ``imagedoctor_image_area``), checked; a variant of another format than ``format`` is ignored."""
    variant = getattr(config, "imagedoctor_prompt_variant", None)
    if variant is not None:
        try:
            v = get_variant(variant)
        except ValueError as exc:
            raise ValueError(f"{folder}: config.json key 'imagedoctor_prompt_variant': {exc}") from None
        if v.format != format:
            report.notes.append(f"prompt variant {variant!r} of config.json is for format {v.format!r}; "
                                f"format {format!r} uses its default prompt")
            variant = None
    image_area = getattr(config, "imagedoctor_image_area", "auto")
    if image_area != "auto":
        try:
            ImagePolicy.from_area(image_area)
        except ValueError as exc:
            raise ValueError(f"{folder}: config.json key 'imagedoctor_image_area': {exc}") from None
    return variant, image_area


def save_diagnoser(out_dir: str | Path, model, processor, head=None) -> Path:
    """Write backbone + processor + head in the published layout, atomically.

    The head's tensors go into the checkpoint beside the backbone's, under their upstream names
    (``heatmap.*``, ``prompt_encoder.*``, ...), listed in ``model.safetensors.index.json``.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        if head is not None:
            tensors = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
            save_file(tensors, str(tmp / HEAD_FILE), metadata={"format": "pt"})
            index_path = tmp / "model.safetensors.index.json"
            if index_path.exists():
                index = json.loads(index_path.read_text())
            else:
                from safetensors import safe_open

                with safe_open(str(tmp / "model.safetensors"), framework="pt") as sf:
                    index = {"metadata": {}, "weight_map": {k: "model.safetensors" for k in sf.keys()}}
            index["weight_map"].update({k: HEAD_FILE for k in tensors})
            index_path.write_text(json.dumps(index, indent=2))
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            if old.exists():
                shutil.rmtree(old)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


class Diagnoser:
    """A loaded diagnosis model. Build with `from_pretrained`; call `diagnose`."""

    def __init__(self, model, processor, head=None, *, family: str, format: str, task_token_ids: dict[str, int | None],
                 load_report: LoadReport | None = None, source: str = "", prompt_variant: str | None = None,
                 image_area: int | None | str = "auto"):
        if format not in FORMATS:
            raise ValueError(f"unknown format {format!r}; use one of {list(FORMATS)}")
        if prompt_variant is not None:
            resolve_variant(format, True, prompt_variant)  # raises when unknown or of another format
        if image_area != "auto":
            ImagePolicy.from_area(image_area)  # raises on a bad value
        self.model = model
        self.processor = processor
        self.head = head
        self.family = family
        self.format = format
        self.task_token_ids = task_token_ids
        self.load_report = load_report or LoadReport(family=family, has_head=head is not None)
        self.source = source
        #: Prompt variant the checkpoint was trained on (None: its format's default), and the
        #: image area that overrides the variant's image policy ("auto": no override).
        self.prompt_variant = prompt_variant
        self.image_area = image_area

    # --- loading ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        dtype: Any = "auto",
        device: Any = None,
        attn_implementation: str | None = None,
        local_files_only: bool = True,
        trust_remote_code: bool = False,
        format: str | None = None,
        base_model: str | os.PathLike | None = None,
        quantization: str | None = None,
    ) -> "Diagnoser":
        """Load from a local folder or a hub id (hub cache only unless ``local_files_only=False``).

        Safetensors only. A checkpoint without heatmap head still gives scores and boxes. A peft
        LoRA adapter folder (``adapter_config.json``) loads its base (``base_model`` or the adapter's
        ``base_model_name_or_path``) and merges the adapter; head tensors beside it replace the base's.
        ``quantization="int8"`` stores the text decoder's Linear weights as int8 (torchao weight-only;
        CPU and CUDA; see `quantize.quantize_text_decoder`).
        """
        import torch
        import transformers
        from transformers import AutoConfig, AutoProcessor

        from .heatmap_head import HeatmapHead, HeatmapHeadConfig
        from .quantize import QUANTIZATIONS, quantize_text_decoder

        if quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {list(QUANTIZATIONS)}, got {quantization!r}")

        folder = _resolve_folder(path_or_id, local_files_only)
        if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
            dg = cls._from_adapter(folder, base_model, dtype=dtype, device=device, attn_implementation=attn_implementation,
                                   local_files_only=local_files_only, trust_remote_code=trust_remote_code, format=format)
            if quantization:  # after the merge: LoRA cannot merge into int8 weights
                quantize_text_decoder(dg.model, quantization)
                dg.load_report.notes.append(f"text decoder weights quantized ({quantization})")
            return dg
        if not any(folder.glob("*.safetensors")):
            raise FileNotFoundError(f"{folder} has no .safetensors weights (pickled .bin checkpoints are refused)")
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        family = config.model_type
        if family not in FAMILIES:
            raise ValueError(f"{folder}: model_type {family!r} is not supported; expected one of {sorted(FAMILIES)}")
        cls_name, default_format = FAMILIES[family]
        format = format or getattr(config, "imagedoctor_format", None) or default_format
        if format not in FORMATS:
            raise ValueError(f"unknown format {format!r}; use one of {list(FORMATS)}")
        device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        torch_dtype = _torch_dtype(dtype, device)
        report = LoadReport(family=family)
        variant, image_area = _prompt_settings(config, format, folder, report)
        kwargs = dict(dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code)
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        model_cls = getattr(transformers, cls_name)
        # The head's tensors live in the same checkpoint: transformers would list them as
        # unexpected keys; we load and report them ourselves below.
        tf_logger = transformers.utils.logging.get_logger("transformers.modeling_utils")
        level = tf_logger.level
        tf_logger.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = model_cls.from_pretrained(folder, **kwargs)
        finally:
            tf_logger.setLevel(level)
        model.to(device).eval()
        if quantization:
            quantize_text_decoder(model, quantization)
            report.notes.append(f"text decoder weights quantized ({quantization})")
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code)
        tok = processor.tokenizer

        def token_id(attr: str, text: str) -> int | None:
            value = getattr(config, attr, None)
            if value is not None:
                return int(value)
            tid = tok.convert_tokens_to_ids(text)
            return tid if isinstance(tid, int) and tid != tok.unk_token_id and text in tok.get_vocab() else None

        task_ids = {"misalignment": token_id("misalignment_token_id", "<MIS>"), "artifact": token_id("artifact_token_id", "<ART>")}

        head = None
        tensors = _head_tensors(folder)
        if tensors or getattr(config, "heatmap_head", None) is not None:
            text_cfg = getattr(config, "text_config", config)
            head_cfg = HeatmapHeadConfig.from_dict(
                getattr(config, "heatmap_head", None),
                text_dim=text_cfg.hidden_size,
                image_dim=config.vision_config.out_hidden_size,
            )
            head = HeatmapHead(head_cfg)
            expected = head.state_dict()
            report.missing_head_keys = sorted(set(expected) - set(tensors))
            report.unexpected_head_keys = sorted(set(tensors) - set(expected))
            wrong = sorted(k for k in set(expected) & set(tensors) if tuple(expected[k].shape) != tuple(tensors[k].shape))
            if report.missing_head_keys or report.unexpected_head_keys or wrong:
                raise ValueError(
                    f"{folder}: heatmap head weights do not match the head's shape: "
                    f"{len(report.missing_head_keys)} missing (e.g. {report.missing_head_keys[:3]}), "
                    f"{len(report.unexpected_head_keys)} unexpected (e.g. {report.unexpected_head_keys[:3]}), "
                    f"{len(wrong)} of another shape (e.g. {wrong[:3]}). "
                    "Check `heatmap_head` in config.json, or remove the head tensors to load without heatmaps."
                )
            head.load_state_dict(tensors, strict=True)
            head.to(device=device, dtype=torch_dtype).eval()
            report.has_head = True
            if None in task_ids.values():
                report.notes.append("the head is present but a task token (<MIS>/<ART>) is unknown: heatmaps are off")
        else:
            report.notes.append("checkpoint has no heatmap head: scores and boxes only, no heatmaps")
        for note in report.notes:
            logger.warning("%s: %s", folder, note)
        return cls(model, processor, head, family=family, format=format, task_token_ids=task_ids,
                   load_report=report, source=str(path_or_id), prompt_variant=variant, image_area=image_area)

    @classmethod
    def _from_adapter(cls, folder: Path, base_model, **kwargs) -> "Diagnoser":
        from peft import PeftModel
        from transformers import AutoProcessor

        adapter_cfg = json.loads((folder / "adapter_config.json").read_text())
        base = base_model or adapter_cfg.get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{folder}: adapter_config.json names no base model; pass base_model=...")
        if not any(folder.glob("*.safetensors")):
            raise FileNotFoundError(f"{folder} has no .safetensors adapter weights (pickled .bin adapters are refused)")
        dg = cls.from_pretrained(base, **kwargs)
        if (folder / "tokenizer_config.json").is_file():  # the adapter added tokens (e.g. <MIS>/<ART>)
            dg.processor = AutoProcessor.from_pretrained(folder, trust_remote_code=kwargs.get("trust_remote_code", False))
            n = len(dg.processor.tokenizer)
            if dg.model.get_input_embeddings().weight.shape[0] < n:
                dg.model.resize_token_embeddings(n)
        dg.model = PeftModel.from_pretrained(dg.model, folder).merge_and_unload().eval()
        tensors = _head_tensors(folder)
        if tensors:
            if dg.head is None:
                raise ValueError(f"{folder} has heatmap head tensors but the base model {base!r} has no head config")
            expected = dg.head.state_dict()
            bad = sorted(k for k in tensors if k not in expected or tuple(expected[k].shape) != tuple(tensors[k].shape))
            if bad:
                raise ValueError(f"{folder}: head tensors do not fit the base's head (e.g. {bad[:3]})")
            dg.head.load_state_dict({**expected, **tensors})
        dg.source = str(folder)
        dg.load_report.notes.append(f"LoRA adapter {folder} merged into base {base}")
        return dg

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write a folder that `from_pretrained` (and the published-layout loaders) read back."""
        if self.model is None:
            raise RuntimeError("this Diagnoser was unloaded; load it again")
        return save_diagnoser(out_dir, self.model, self.processor, self.head)

    @property
    def vision_token_ids(self) -> list[int]:
        """Ids of the vision placeholders (image/video pad, vision start/end): never to be generated."""
        cfg = self.model.config
        ids = [getattr(cfg, k, None) for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")]
        return sorted({int(i) for i in ids if isinstance(i, int)})

    # --- memory -----------------------------------------------------------------------
    @property
    def device(self):
        return self.model.device

    def to(self, device) -> "Diagnoser":
        self.model.to(device)
        if self.head is not None:
            self.head.to(device)
        return self

    def unload(self) -> None:
        """Drop the weights and free their memory (ComfyUI's keep_loaded=False)."""
        import gc

        import torch

        self.model = None
        self.head = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # --- inputs ------------------------------------------------------------------------
    def build_inputs(
        self,
        images: Sequence,
        prompts: Sequence[str],
        format: str | None = None,
        think: bool = True,
        image_area: int | None | str = "auto",
        assistant_texts: Sequence[str] | None = None,
        variant: str | PromptVariant | None = None,
    ):
        """Processor inputs for a batch (left-padded), plus the resized images.

        The prompt text, system turn, pre-fill and image policy come from `prompt_variant_for`;
        ``image_area`` (pixels, aspect kept; None = unchanged) overrides the variant's image policy.

        With ``assistant_texts`` (training), each sample's assistant turn is appended and the
        returned ``prefix_lengths`` say where each (unpadded) prompt ends, so a trainer can mask them.
        Returns (inputs: BatchFeature, resized: list[PIL.Image], prefix_lengths: list[int] | None).
        """
        format = format or self.format
        if format not in FORMATS:
            raise ValueError(f"unknown format {format!r}; use one of {list(FORMATS)}")
        v = self.prompt_variant_for(format, think, variant)
        policy = self.image_policy_for(v, image_area)
        pil = to_pil_images(images)
        if len(prompts) != len(pil):
            raise ValueError(f"{len(prompts)} prompts for {len(pil)} images; give one prompt per image (or one for all)")
        resized = [policy.apply(img) for img in pil]
        texts = []
        for p in prompts:
            texts.append(self.processor.apply_chat_template(build_messages(p, format, think, v), tokenize=False,
                                                            add_generation_prompt=True) + v.prefill)
        prefix_lengths = None
        if assistant_texts is not None:
            if len(assistant_texts) != len(texts):
                raise ValueError(f"{len(assistant_texts)} targets for {len(texts)} samples")
            eos = self.processor.tokenizer.eos_token or ""
            prefix_lengths = []
            for i, (t, img) in enumerate(zip(texts, resized)):
                enc = self.processor(text=[t], images=[img], return_tensors="pt")
                prefix_lengths.append(int(enc["input_ids"].shape[1]))
            texts = [t + a + eos for t, a in zip(texts, assistant_texts)]
        tok = self.processor.tokenizer
        inputs = self.processor(text=texts, images=resized, padding=True, padding_side="left", return_tensors="pt")
        if tok.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; batched diagnosis needs one")
        return inputs, resized, prefix_lengths

    def prompt_variant_for(self, format: str | None = None, think: bool = True,
                           variant: str | PromptVariant | None = None) -> PromptVariant:
        """The prompt variant a call uses: ``variant`` if given; else the checkpoint's own (when the
        format is the checkpoint's and ``think`` is on); else the format's default (score-only
        for ``think=False``)."""
        format = format or self.format
        if variant is None and think and format == self.format:
            variant = self.prompt_variant
        return resolve_variant(format, think, variant)

    def image_policy_for(self, variant: PromptVariant, image_area: int | None | str = "auto") -> ImagePolicy:
        """``image_area`` if given (None = unchanged), else the checkpoint's, else ``variant``'s policy."""
        return resolve_image_policy(variant, image_area, self.image_area)

    # --- heatmaps ----------------------------------------------------------------------
    def head_maps(self, task_states, visual_tokens: Sequence, grid_thw) -> list:
        """Differentiable head pass (training and inference share it).

        task_states [B, 2, D] (misalignment, artifact state per image), visual_tokens per image
        [h*w, Dv], grid_thw [B, 3] (the processor's patch grid). Returns per image a [2, 16h, 16w]
        tensor in [0, 1]. Images with the same grid decode together: one pass per distinct shape.
        """
        import torch

        merge = int(getattr(self.model.config.vision_config, "spatial_merge_size", 2))
        grids = [(int(g[1]) // merge, int(g[2]) // merge) for g in grid_thw.tolist()]
        out: list = [None] * len(grids)
        by_grid: dict[tuple[int, int], list[int]] = {}
        for i, g in enumerate(grids):
            by_grid.setdefault(g, []).append(i)
        for grid, idx in by_grid.items():
            states = task_states[idx].reshape(len(idx) * 2, -1)
            vis = torch.stack([visual_tokens[i] for i in idx]).repeat_interleave(2, dim=0)
            maps = self.head(states, vis, grid)  # [2n, 16h, 16w]
            for j, i in enumerate(idx):
                out[i] = maps[2 * j : 2 * j + 2]
        return out

    def decode_heatmaps(self, task_states, visual_tokens: Sequence, grid_thw, sizes: Sequence[tuple[int, int]]):
        """Inference: `head_maps`, resized to each original (width, height); numpy (mis, art) pairs."""
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            maps = self.head_maps(task_states, visual_tokens, grid_thw)
            result = []
            for pair, (w, h) in zip(maps, sizes):
                pair = F.interpolate(pair.float().unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False)
                pair = pair.squeeze(1).clamp(0, 1).cpu().numpy()
                result.append((pair[0], pair[1]))
        return result

    # --- diagnosis ---------------------------------------------------------------------
    def diagnose(
        self,
        images: Any,
        prompts: str | Sequence[str],
        format: str | None = None,
        max_new_tokens: int = 1024,
        min_new_tokens: int = 0,
        do_sample: bool = False,
        temperature: float = 0.7,
        top_p: float = 0.9,
        seed: int | None = None,
        batch_size: int = 8,
        heatmaps: bool = True,
        think: bool = True,
        image_area: int | None | str = "auto",
        progress: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        variant: str | PromptVariant | None = None,
        decoder: str = "auto",
    ) -> list[Diagnosis]:
        """Diagnose N images in batches of ``batch_size`` (one generate call + one head pass each).

        images: PIL images, HWC arrays or a [B,H,W,C] tensor in 0-1. prompts: one per image, or one
        string for all. ``format`` defaults to the checkpoint's. ``think=False`` asks ImageDoctor for
        scores without reasoning (its reward-scorer mode). ``progress(done, total)`` is called once
        per decode step (units: decode steps over all batches); ``should_cancel()`` is polled each step
        and raises `DiagnosisCancelled` when it returns True. Greedy unless ``do_sample``.
        ``min_new_tokens`` forces a minimum length (benchmarks). ``variant`` names a prompt variant
        (`imagedoctor.core.prompts.PROMPT_VARIANTS`; default: the checkpoint's, see `prompt_variant_for`).
        ``decoder``: "hf" (transformers'
        ``generate``), "static" (static KV cache, CUDA-graph decode steps on CUDA; same tokens) or
        "auto" (static on CUDA, the measured faster one on CPU; hf where static cannot reproduce the
        generation settings or has failed on this model; the environment variable IMAGEDOCTOR_DECODER
        pins it). With "static", progress and cancellation come every few steps.
        """
        if self.model is None:
            raise RuntimeError("this Diagnoser was unloaded; load it again")
        format = format or self.format
        if format not in FORMATS:
            raise ValueError(f"unknown format {format!r}; use one of {list(FORMATS)}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        resolve_decoder(decoder)  # a bad name (argument or IMAGEDOCTOR_DECODER) fails before any work
        pil = to_pil_images(images)
        if isinstance(prompts, str):
            prompts = [prompts] * len(pil)
        prompts = list(prompts)
        if len(prompts) != len(pil):
            raise ValueError(f"{len(prompts)} prompts for {len(pil)} images; give one prompt per image, or one string for all")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise ValueError(f"prompt {i} must be a string, got {type(p).__name__}")
        v = self.prompt_variant_for(format, think, variant)
        want_maps = heatmaps and self.head is not None and None not in self.task_token_ids.values()
        tok = self.processor.tokenizer
        eos_ids = sorted({i for i in [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>"),
                                      tok.convert_tokens_to_ids("<|endoftext|>")] if isinstance(i, int) and i >= 0})
        n_batches = (len(pil) + batch_size - 1) // batch_size
        total = n_batches * max_new_tokens
        results: list[Diagnosis] = []
        for b in range(n_batches):
            chunk = slice(b * batch_size, (b + 1) * batch_size)
            imgs, prs = pil[chunk], prompts[chunk]
            inputs, resized, _ = self.build_inputs(imgs, prs, format, think, image_area, variant=v)
            inputs = inputs.to(self.model.device)
            base = b * max_new_tokens
            step_cb = (lambda s, base=base: progress(base + s, total)) if progress else None
            out = decode(
                self.model, inputs, decoder=decoder, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                suppress_token_ids=self.vision_token_ids, eos_token_ids=eos_ids, pad_token_id=tok.pad_token_id,
                do_sample=do_sample, temperature=temperature, top_p=top_p,
                seed=None if seed is None else seed + b, capture_states=want_maps, capture_visual=want_maps,
                progress=step_cb, should_cancel=should_cancel,
            )
            prefill = v.prefill
            diags = []
            for i, img in enumerate(imgs):
                ids = out.sequences[i, : out.lengths[i]]
                text = prefill + tok.decode(ids, skip_special_tokens=True)
                frame = Frame.pixels(*resized[i].size) if format == "imagedoctor" and self.family == "qwen2_5_vl" else None
                diags.append(parse(text, format, img.width, img.height, frame=frame, prompt=prs[i]))
            if want_maps:
                self.attach_heatmaps(diags, out, inputs["image_grid_thw"], [im.size for im in imgs])
            results.extend(diags)
            if progress:
                progress(base + max_new_tokens, total)
        return results

    def best_of_n(
        self,
        images: Any,
        prompt: str | Sequence[str],
        top_k: int = 4,
        criterion: str = "overall",
        weights: dict[str, float] | None = None,
        penalty: float | None = None,
        fast_max_new_tokens: int = 256,
        max_new_tokens: int = 1024,
        heatmaps: bool = True,
        progress: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        **diagnose_kwargs,
    ):
        """Two-stage best-of-N: rank all images by ImageDoctor's score-only answer, diagnose the top K fully.

        Stage 1 runs `diagnose` with ``think=False`` (the fast prompt with the pre-filled empty
        ``<think>``: scores in a few dozen tokens, no heatmaps) on every image and ranks them with
        `select.best_of_n` (``criterion``, ``weights``, ``penalty`` as there). Stage 2 runs the full
        diagnosis on the first ``top_k`` of that order. Returns `select.BestOfN` (``order``, ``fast``,
        ``full``). Images whose fast answer has no score rank last (by index) and are fully diagnosed
        only when fewer than ``top_k`` images were scored. A format without a score-only prompt
        ("sdg") has one stage: every image gets the full diagnosis, ranked the same way, and ``full``
        holds the top K of them. ``heatmaps`` applies to the full diagnoses (the fast ones never have
        heatmaps). Other keyword arguments go to both `diagnose` calls.
        """
        from .select import DEFAULT_PENALTY, BestOfN, best_of_n

        if int(top_k) < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if "think" in diagnose_kwargs:
            raise ValueError("best_of_n sets 'think' itself (fast pass without, full pass with); do not pass it")
        pil = to_pil_images(images)
        prompts = [prompt] * len(pil) if isinstance(prompt, str) else list(prompt)
        fmt = diagnose_kwargs.get("format") or self.format
        two_stage = fmt == "imagedoctor"
        k = min(int(top_k), len(pil))
        batch_size = diagnose_kwargs.get("batch_size", 8)
        stage1 = -(-len(pil) // batch_size) * (fast_max_new_tokens if two_stage else max_new_tokens)
        total = stage1 + (-(-k // batch_size) * max_new_tokens if two_stage else 0)
        report = (lambda offset: (lambda done, _t: progress(offset + done, total))) if progress else (lambda offset: None)
        fast_kwargs = dict(diagnose_kwargs)
        if two_stage and "min_new_tokens" in fast_kwargs:  # a benchmark's forced length cannot exceed the fast budget
            fast_kwargs["min_new_tokens"] = min(fast_kwargs["min_new_tokens"], fast_max_new_tokens)
        fast = self.diagnose(pil, prompts, think=not two_stage, heatmaps=heatmaps and not two_stage,
                             max_new_tokens=fast_max_new_tokens if two_stage else max_new_tokens,
                             progress=report(0), should_cancel=should_cancel, **fast_kwargs)
        ranking = best_of_n(fast, criterion, weights, DEFAULT_PENALTY if penalty is None else penalty, top_k=k)
        top = ranking.top_k
        if two_stage:
            full_list = self.diagnose([pil[i] for i in top], [prompts[i] for i in top], max_new_tokens=max_new_tokens,
                                      heatmaps=heatmaps, progress=report(stage1), should_cancel=should_cancel,
                                      **diagnose_kwargs)
            full = dict(zip(top, full_list))
        else:
            full = {i: fast[i] for i in top}
        return BestOfN(order=ranking.order, fast=fast, full=full, ranking=ranking)

    def attach_heatmaps(self, diags: list[Diagnosis], out, grid_thw, sizes, fallback: bool = True) -> None:
        """Decode each diagnosis' heatmaps from the states that predicted its task tokens (in place).

        ``out`` is a `GenerationOutput` with states and visual tokens. A task token that was not
        emitted (truncated output, an untrained model): with ``fallback`` the state after the whole
        answer (where the token would have come next) is used and a problem is noted; without it the
        image gets no heatmaps (GRPO: the heatmap reward then scores it 0).
        """
        import torch

        rows, keep = [], []
        for i, d in enumerate(diags):
            pair = []
            for name in ("misalignment", "artifact"):
                hits = (out.sequences[i, : out.lengths[i]] == self.task_token_ids[name]).nonzero()
                if len(hits):
                    pair.append(out.states[i, int(hits[0])])
                elif fallback:
                    d.problems.append(f"{name} task token not generated; heatmap decoded from the final state")
                    pair.append(out.states[i, max(out.lengths[i] - 1, 0)])
            if len(pair) == 2:
                rows.append(torch.stack(pair))
                keep.append(i)
        if not rows:
            return
        maps = self.decode_heatmaps(torch.stack(rows), [out.visual[i] for i in keep], grid_thw[keep],
                                    [sizes[i] for i in keep])
        for i, (mis, art) in zip(keep, maps):
            diags[i].heatmaps = {"misalignment": mis, "artifact": art}

    def __repr__(self) -> str:
        return (f"Diagnoser(source={self.source!r}, family={self.family!r}, format={self.format!r}, "
                f"heatmaps={'yes' if self.head is not None else 'no'})")
