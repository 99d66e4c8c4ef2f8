"""The `Diagnosis` type: the one language every part of ImageDoctor speaks.

The model produces it, parsers fill it, ComfyUI nodes carry it (socket ``DIAGNOSIS``),
selection ranks by it, masks read its defects and heatmaps, metrics compare two of them,
trainers turn it into rewards and data sets store ground truth in the same shape.

Coordinates are always pixels of the *caller's original image* (``width`` x ``height``),
boxes are ``[x0, y0, x1, y1]`` with ``x0 <= x1`` and ``y0 <= y1``. Heatmaps are float32
arrays in [0, 1] of shape ``(height, width)``.

JSON schema (``SCHEMA_VERSION`` 1)::

    {
      "schema": "imagedoctor.diagnosis/1",
      "width": 1024, "height": 768,
      "prompt": "a red cube left of a blue ball",
      "format": "imagedoctor" | "sdg" | "ground_truth" | ...,
      "scores": {"alignment": 0.8, "aesthetics": 0.6, "plausibility": null, "overall": 0.7},
      "defects": [{"box": [x0, y0, x1, y1], "label": "artifact" | "misalignment",
                   "reason": "...", "importance": 1..100 | null}],
      "reasoning": "...",
      "heatmaps": {"misalignment": HEATMAP | null, "artifact": HEATMAP | null},
      "raw_text": "...",
      "problems": ["..."]
    }

    HEATMAP = {"encoding": "png8", "width": W, "height": H, "data": "<base64 PNG, 8-bit gray>"}
            | {"encoding": "f16", "width": W, "height": H, "data": "<base64 little-endian float16>"}
"""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

SCHEMA_VERSION = 1
SCHEMA_ID = f"imagedoctor.diagnosis/{SCHEMA_VERSION}"
SCORE_NAMES = ("alignment", "aesthetics", "plausibility", "overall")
LABELS = ("artifact", "misalignment")
HEATMAP_NAMES = ("misalignment", "artifact")
HEATMAP_ENCODINGS = ("png8", "f16")

#: Importance buckets of the SDG paper (integer 1-100), highest first.
IMPORTANCE_BUCKETS = (
    ("critical", 90, 100),
    ("major", 70, 89),
    ("moderate", 40, 69),
    ("minor", 15, 39),
    ("negligible", 1, 14),
)
#: Importance assumed for a defect whose format carries none (ImageDoctor regions).
DEFAULT_IMPORTANCE = 50


class DiagnosisSchemaError(ValueError):
    """A Diagnosis (or its JSON) does not follow the schema; the message says which field."""


def importance_bucket(importance: int | float | None) -> str | None:
    """Name of the SDG importance bucket (critical/major/moderate/minor/negligible)."""
    if importance is None:
        return None
    value = int(round(float(importance)))
    for name, low, high in IMPORTANCE_BUCKETS:
        if low <= value <= high:
            return name
    return "critical" if value > 100 else "negligible"


@dataclass
class Scores:
    """The four ImageDoctor scores, each in [0, 1] or None when not predicted."""

    alignment: float | None = None
    aesthetics: float | None = None
    plausibility: float | None = None
    overall: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in SCORE_NAMES}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Scores":
        data = dict(data or {})
        unknown = set(data) - set(SCORE_NAMES)
        if unknown:
            raise DiagnosisSchemaError(
                f"unknown score name(s) {sorted(unknown)}; expected a subset of {list(SCORE_NAMES)}"
            )
        values = {}
        for name in SCORE_NAMES:
            value = data.get(name)
            if value is not None:
                value = float(value)
                if not math.isfinite(value) or not 0.0 <= value <= 1.0:
                    raise DiagnosisSchemaError(f"score {name!r} must be in [0, 1], got {value}")
            values[name] = value
        return cls(**values)

    def __getitem__(self, name: str) -> float | None:
        if name not in SCORE_NAMES:
            raise KeyError(f"unknown score {name!r}; expected one of {list(SCORE_NAMES)}")
        return getattr(self, name)

    def present(self) -> dict[str, float]:
        """Only the scores that were predicted."""
        return {k: v for k, v in self.as_dict().items() if v is not None}


@dataclass
class Defect:
    """One defect: where (``box``), what (``label``), why (``reason``), how much (``importance``)."""

    box: tuple[float, float, float, float]
    label: str
    reason: str = ""
    importance: int | None = None

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise DiagnosisSchemaError(f"defect label must be one of {list(LABELS)}, got {self.label!r}")
        if len(self.box) != 4:
            raise DiagnosisSchemaError(f"defect box must have 4 numbers [x0, y0, x1, y1], got {self.box!r}")
        box = tuple(float(v) for v in self.box)
        if not all(math.isfinite(v) for v in box):
            raise DiagnosisSchemaError(f"defect box has a non-finite coordinate: {self.box!r}")
        x0, y0, x1, y1 = box
        self.box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        if self.importance is not None:
            imp = int(round(float(self.importance)))
            if not 1 <= imp <= 100:
                raise DiagnosisSchemaError(f"defect importance must be an integer 1-100, got {self.importance!r}")
            self.importance = imp
        self.reason = str(self.reason or "")

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)

    def importance_or(self, default: int = DEFAULT_IMPORTANCE) -> int:
        return self.importance if self.importance is not None else default

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": [round(v, 3) for v in self.box],
            "label": self.label,
            "reason": self.reason,
            "importance": self.importance,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Defect":
        if not isinstance(data, Mapping):
            raise DiagnosisSchemaError(f"a defect must be an object, got {type(data).__name__}")
        missing = {"box", "label"} - set(data)
        if missing:
            raise DiagnosisSchemaError(f"defect is missing field(s) {sorted(missing)}: {dict(data)!r}")
        return cls(
            box=tuple(data["box"]),
            label=data["label"],
            reason=data.get("reason", "") or "",
            importance=data.get("importance"),
        )


def _encode_heatmap(hm: np.ndarray, encoding: str) -> dict[str, Any]:
    h, w = hm.shape
    if encoding == "png8":
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.round(np.clip(hm, 0, 1) * 255).astype(np.uint8), mode="L").save(buf, format="PNG")
        data = buf.getvalue()
    elif encoding == "f16":
        data = np.ascontiguousarray(hm, dtype="<f2").tobytes()
    else:
        raise DiagnosisSchemaError(f"unknown heatmap encoding {encoding!r}; use one of {list(HEATMAP_ENCODINGS)}")
    return {"encoding": encoding, "width": w, "height": h, "data": base64.b64encode(data).decode("ascii")}


def _decode_heatmap(obj: Any, name: str) -> np.ndarray | None:
    if obj is None:
        return None
    if not isinstance(obj, Mapping) or "encoding" not in obj or "data" not in obj:
        raise DiagnosisSchemaError(f"heatmap {name!r} must be null or an object with 'encoding' and 'data'")
    w, h = int(obj.get("width", 0)), int(obj.get("height", 0))
    raw = base64.b64decode(obj["data"])
    if obj["encoding"] == "png8":
        from PIL import Image

        arr = np.asarray(Image.open(io.BytesIO(raw)).convert("L"), dtype=np.float32) / 255.0
    elif obj["encoding"] == "f16":
        arr = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        if arr.size != w * h:
            raise DiagnosisSchemaError(f"heatmap {name!r}: {arr.size} values for {w}x{h}")
        arr = arr.reshape(h, w)
    else:
        raise DiagnosisSchemaError(f"heatmap {name!r}: unknown encoding {obj['encoding']!r}")
    if arr.shape != (h, w):
        raise DiagnosisSchemaError(f"heatmap {name!r}: data is {arr.shape[1]}x{arr.shape[0]}, header says {w}x{h}")
    return arr


@dataclass
class Diagnosis:
    """What the diagnoser says about one image (or what a data set says is true of it)."""

    width: int
    height: int
    scores: Scores = field(default_factory=Scores)
    defects: list[Defect] = field(default_factory=list)
    reasoning: str = ""
    heatmaps: dict[str, np.ndarray | None] = field(default_factory=lambda: {n: None for n in HEATMAP_NAMES})
    raw_text: str = ""
    problems: list[str] = field(default_factory=list)
    prompt: str = ""
    format: str = ""

    def __post_init__(self) -> None:
        self.width, self.height = int(self.width), int(self.height)
        if self.width <= 0 or self.height <= 0:
            raise DiagnosisSchemaError(f"image size must be positive, got {self.width}x{self.height}")
        if isinstance(self.scores, Mapping):
            self.scores = Scores.from_dict(self.scores)
        self.defects = [d if isinstance(d, Defect) else Defect.from_dict(d) for d in self.defects]
        heatmaps = {n: None for n in HEATMAP_NAMES}
        for name, hm in dict(self.heatmaps or {}).items():
            if name not in HEATMAP_NAMES:
                raise DiagnosisSchemaError(f"unknown heatmap {name!r}; expected {list(HEATMAP_NAMES)}")
            if hm is not None:
                hm = np.asarray(hm, dtype=np.float32)
                if hm.shape != (self.height, self.width):
                    raise DiagnosisSchemaError(
                        f"heatmap {name!r} has shape {hm.shape}, expected (height, width) = "
                        f"({self.height}, {self.width}); resize it first (imagedoctor.core.masks.resize_map)"
                    )
            heatmaps[name] = hm
        self.heatmaps = heatmaps
        self.problems = list(self.problems)

    # -- convenience -----------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the original image."""
        return self.width, self.height

    def defects_of(self, label: str | None = None, min_importance: int = 0) -> list[Defect]:
        """Defects filtered by label (None = both) and minimum importance."""
        return [
            d
            for d in self.defects
            if (label is None or d.label == label) and d.importance_or() >= min_importance
        ]

    @property
    def ok(self) -> bool:
        """True when the output was read without problems."""
        return not self.problems

    # -- JSON ------------------------------------------------------------------------
    def to_dict(self, heatmap_encoding: str | None = "png8") -> dict[str, Any]:
        """Plain-JSON dict. ``heatmap_encoding=None`` drops the heatmaps (null)."""
        return {
            "schema": SCHEMA_ID,
            "width": self.width,
            "height": self.height,
            "prompt": self.prompt,
            "format": self.format,
            "scores": self.scores.as_dict(),
            "defects": [d.to_dict() for d in self.defects],
            "reasoning": self.reasoning,
            "heatmaps": {
                name: (None if hm is None or heatmap_encoding is None else _encode_heatmap(hm, heatmap_encoding))
                for name, hm in self.heatmaps.items()
            },
            "raw_text": self.raw_text,
            "problems": list(self.problems),
        }

    def to_json(self, heatmap_encoding: str | None = "png8", indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(heatmap_encoding), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Diagnosis":
        if not isinstance(data, Mapping):
            raise DiagnosisSchemaError(f"a diagnosis must be a JSON object, got {type(data).__name__}")
        schema = data.get("schema", SCHEMA_ID)
        if not str(schema).startswith("imagedoctor.diagnosis/"):
            raise DiagnosisSchemaError(f"not a diagnosis: schema is {schema!r}, expected {SCHEMA_ID!r}")
        if str(schema) != SCHEMA_ID:
            raise DiagnosisSchemaError(f"unsupported schema version {schema!r}; this build reads {SCHEMA_ID!r}")
        for key in ("width", "height"):
            if key not in data:
                raise DiagnosisSchemaError(f"diagnosis is missing {key!r}")
        heatmaps = {n: _decode_heatmap(v, n) for n, v in (data.get("heatmaps") or {}).items()}
        return cls(
            width=data["width"],
            height=data["height"],
            scores=Scores.from_dict(data.get("scores")),
            defects=[Defect.from_dict(d) for d in data.get("defects") or []],
            reasoning=data.get("reasoning", "") or "",
            heatmaps=heatmaps,
            raw_text=data.get("raw_text", "") or "",
            problems=list(data.get("problems") or []),
            prompt=data.get("prompt", "") or "",
            format=data.get("format", "") or "",
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "Diagnosis":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DiagnosisSchemaError(f"diagnosis JSON does not parse: {exc}") from exc
        return cls.from_dict(data)


def diagnoses_to_json(diagnoses: Iterable[Diagnosis], heatmap_encoding: str | None = "png8") -> str:
    """A JSON list of diagnoses (what the CLI and the Save node write for a batch)."""
    return json.dumps([d.to_dict(heatmap_encoding) for d in diagnoses], indent=2, ensure_ascii=False)
