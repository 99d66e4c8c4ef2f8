"""The project's own data set format: ``data.jsonl`` + image files + 8-bit heatmap PNGs.

Layout of a data set folder (documented in ``docs/evaluation.md``)::

    DIR/
      data.jsonl            one JSON object per line, one line per sample
      images/<id>.png       the images (any PIL-readable format; paths are relative to DIR)
      hm/<id>_mis.png       8-bit grayscale misalignment heatmap at image size (0-255 -> 0-1)
      hm/<id>_art.png       8-bit grayscale artifact heatmap at image size

Each line::

    {"id": "synth-000001", "image": "images/synth-000001.png", "prompt": "two red circles ...",
     "width": 512, "height": 512,
     "scores": {"alignment": 0.8, "aesthetics": 0.7, "plausibility": 0.9, "overall": 0.8},
     "defects": [{"box": [x0, y0, x1, y1], "label": "artifact", "reason": "...", "importance": 60}],
     "heatmaps": {"misalignment": "hm/synth-000001_mis.png", "artifact": null},
     "reasoning": "", "meta": {...}}

``scores`` values may be null (not annotated); a heatmap ``null`` means "not annotated" (metrics
skip it), an all-black PNG means "annotated, no heat". ``meta`` is free-form (source, token
labels, ...). Boxes are pixels of the image, xyxy.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..diagnosis import HEATMAP_NAMES, LABELS, SCORE_NAMES, Defect, Diagnosis, DiagnosisSchemaError, Scores

DATA_FILE = "data.jsonl"
REQUIRED_FIELDS = ("id", "image", "prompt", "width", "height")
KNOWN_FIELDS = frozenset(REQUIRED_FIELDS + ("scores", "defects", "heatmaps", "reasoning", "meta"))
HEATMAP_SUFFIX = {"misalignment": "mis", "artifact": "art"}
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
#: Boxes may exceed the image by this many pixels (rounding) before the sample is rejected.
BOX_TOLERANCE = 1.0


class DatasetError(ValueError):
    """A data set file or sample is invalid (raised in strict mode; skipped otherwise)."""


@dataclass
class LoadReport:
    """What a reader kept and skipped: ``skipped`` counts by reason, ``messages`` the details."""

    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    ignored_fields: dict[str, int] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, reason: str, message: str, strict: bool) -> None:
        """Record a skipped sample, or raise `DatasetError` in strict mode."""
        if strict:
            raise DatasetError(message)
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.messages.append(message)

    def ignore_fields(self, names: Iterable[str], where: str, strict: bool) -> None:
        names = sorted(names)
        if not names:
            return
        if strict:
            raise DatasetError(f"{where}: unknown field(s) {names}")
        for n in names:
            self.ignored_fields[n] = self.ignored_fields.get(n, 0) + 1

    def warn(self, source: str) -> None:
        """Emit one summary `UserWarning` if anything was skipped or ignored."""
        parts = []
        if self.skipped:
            parts.append(f"skipped {self.n_skipped} sample(s) " + str(dict(sorted(self.skipped.items()))))
        if self.ignored_fields:
            parts.append(f"ignored unknown field(s) {dict(sorted(self.ignored_fields.items()))}")
        if parts:
            detail = "; first: " + self.messages[0] if self.messages else ""
            warnings.warn(f"{source}: kept {self.kept}, " + ", ".join(parts) + detail, stacklevel=3)


class Sample:
    """One data set sample: ``id``, ``image_path``, ``prompt`` and ground truth ``diagnosis``.

    ``diagnosis`` is a `Diagnosis` whose heatmaps are float32 (H, W) arrays in [0, 1]; when the
    sample was loaded from disk they are read from the PNGs on each access (not cached, so a
    large data set does not sit in memory). ``image`` may hold an in-memory PIL image instead of
    (or before) a file, for writers. ``meta`` carries reader-specific extras.
    """

    def __init__(self, id: str, image_path: str | Path | None, prompt: str, diagnosis: Diagnosis | None = None,
                 *, image: Any = None, meta: Mapping[str, Any] | None = None,
                 heatmap_paths: Mapping[str, Path | None] | None = None, _record: Mapping[str, Any] | None = None):
        self.id = str(id)
        self.image_path = Path(image_path) if image_path is not None else None
        self.prompt = str(prompt or "")
        self.image = image
        self.meta = dict(meta or {})
        self._diagnosis = diagnosis
        self._heatmap_paths = dict(heatmap_paths or {})
        self._record = _record
        if diagnosis is None and _record is None:
            raise ValueError(f"sample {id!r}: give a diagnosis (the ground truth)")

    def __repr__(self) -> str:
        return f"Sample(id={self.id!r}, image_path={str(self.image_path)!r}, prompt={self.prompt!r})"

    @property
    def diagnosis(self) -> Diagnosis:
        """Ground truth as a `Diagnosis` (heatmaps loaded from disk on each access when lazy)."""
        if self._diagnosis is not None:
            return self._diagnosis
        return self.load_diagnosis(heatmaps=True)

    @property
    def heatmap_paths(self) -> dict[str, Path | None]:
        return {n: self._heatmap_paths.get(n) for n in HEATMAP_NAMES}

    def load_diagnosis(self, heatmaps: bool = True) -> Diagnosis:
        """The ground truth; ``heatmaps=False`` skips reading the heatmap PNGs (faster)."""
        if self._diagnosis is not None:
            if heatmaps:
                return self._diagnosis
            d = self._diagnosis
            return Diagnosis(width=d.width, height=d.height, scores=d.scores, defects=list(d.defects),
                             reasoning=d.reasoning, prompt=d.prompt, format=d.format)
        rec = self._record
        maps = {}
        if heatmaps:
            for name, path in self._heatmap_paths.items():
                maps[name] = None if path is None else load_heatmap_png(path, rec["width"], rec["height"])
        return Diagnosis(width=rec["width"], height=rec["height"], scores=Scores.from_dict(rec.get("scores")),
                         defects=[Defect.from_dict(d) for d in rec.get("defects") or []],
                         reasoning=rec.get("reasoning", "") or "", heatmaps=maps, prompt=self.prompt,
                         format="ground_truth")

    def load_image(self):
        """The image as an RGB PIL image (from memory or from ``image_path``)."""
        from PIL import Image

        from ..images import to_rgb

        if self.image is not None:
            img = self.image if isinstance(self.image, Image.Image) else Image.fromarray(np.asarray(self.image))
            return to_rgb(img, f"sample {self.id!r}")
        if self.image_path is None:
            raise FileNotFoundError(f"sample {self.id!r} has no image")
        with Image.open(self.image_path) as img:
            return to_rgb(img, str(self.image_path))


class ProjectDataset(list):
    """A list of `Sample` with the `LoadReport` of the reader in ``.report`` and ``.root``."""

    def __init__(self, samples: Iterable[Sample] = (), report: LoadReport | None = None, root: Path | None = None):
        super().__init__(samples)
        self.report = report or LoadReport(kept=len(self))
        self.root = root


def load_heatmap_png(path: str | Path, width: int, height: int) -> np.ndarray:
    """Read an 8-bit grayscale heatmap PNG as float32 (height, width) in [0, 1]."""
    from PIL import Image

    with Image.open(path) as img:
        if img.size != (int(width), int(height)):
            raise DatasetError(f"heatmap {path} is {img.size[0]}x{img.size[1]}, expected the image size {width}x{height}")
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def save_heatmap_png(path: str | Path, heatmap: np.ndarray, compress_level: int = 1) -> None:
    """Write a float [0, 1] (H, W) heatmap as an 8-bit grayscale PNG."""
    from PIL import Image

    arr = np.round(np.clip(np.asarray(heatmap, dtype=np.float32), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(arr, mode="L").save(path, format="PNG", compress_level=compress_level)


# -- validation ---------------------------------------------------------------------------------
def _check_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DatasetError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise DatasetError(f"{what} must be finite, got {value!r}")
    return float(value)


def validate_record(rec: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check one ``data.jsonl`` object; returns a cleaned copy or raises `DatasetError`.

    Checks required fields, id syntax, positive integer size, scores in [0, 1], labels, boxes
    inside the image (``BOX_TOLERANCE`` px) with positive area, importance 1-100 and heatmap
    entries (null or a relative path string).
    """
    if not isinstance(rec, Mapping):
        raise DatasetError(f"{where}: a sample must be a JSON object, got {type(rec).__name__}")
    missing = [k for k in REQUIRED_FIELDS if k not in rec]
    if missing:
        raise DatasetError(f"{where}: missing field(s) {missing}")
    sid = rec["id"]
    if not isinstance(sid, str) or not _ID_RE.match(sid):
        raise DatasetError(f"{where}: id {sid!r} must be a string of letters, digits, '.', '_' or '-'")
    if not isinstance(rec["image"], str) or not rec["image"]:
        raise DatasetError(f"{where}: image must be a relative path string, got {rec['image']!r}")
    w, h = (_check_number(rec[k], f"{where}: {k}") for k in ("width", "height"))
    if w != int(w) or h != int(h) or w <= 0 or h <= 0:
        raise DatasetError(f"{where}: width/height must be positive integers, got {rec['width']}x{rec['height']}")
    w, h = int(w), int(h)
    scores = rec.get("scores") or {}
    if not isinstance(scores, Mapping):
        raise DatasetError(f"{where}: scores must be an object")
    unknown = set(scores) - set(SCORE_NAMES)
    if unknown:
        raise DatasetError(f"{where}: unknown score name(s) {sorted(unknown)}; expected {list(SCORE_NAMES)}")
    for name, value in scores.items():
        if value is not None:
            v = _check_number(value, f"{where}: score {name!r}")
            if not 0.0 <= v <= 1.0:
                raise DatasetError(f"{where}: score {name!r} = {v} is outside [0, 1]")
    defects = rec.get("defects") or []
    if not isinstance(defects, list):
        raise DatasetError(f"{where}: defects must be a list")
    for k, d in enumerate(defects):
        if not isinstance(d, Mapping) or "box" not in d or "label" not in d:
            raise DatasetError(f"{where}: defect {k} must be an object with 'box' and 'label'")
        if d["label"] not in LABELS:
            raise DatasetError(f"{where}: defect {k} label {d['label']!r} is not one of {list(LABELS)}")
        box = d["box"]
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            raise DatasetError(f"{where}: defect {k} box must be [x0, y0, x1, y1], got {box!r}")
        x0, y0, x1, y1 = (_check_number(v, f"{where}: defect {k} box") for v in box)
        tol = BOX_TOLERANCE
        if not (-tol <= x0 < x1 <= w + tol and -tol <= y0 < y1 <= h + tol):
            raise DatasetError(f"{where}: defect {k} box {list(box)} is empty, unordered or outside the {w}x{h} image")
        imp = d.get("importance")
        if imp is not None:
            v = _check_number(imp, f"{where}: defect {k} importance")
            if not 1 <= v <= 100:
                raise DatasetError(f"{where}: defect {k} importance {v} is outside 1-100")
        extra = set(d) - {"box", "label", "reason", "importance"}
        if extra:
            raise DatasetError(f"{where}: defect {k} has unknown field(s) {sorted(extra)}")
    heatmaps = rec.get("heatmaps") or {}
    if not isinstance(heatmaps, Mapping):
        raise DatasetError(f"{where}: heatmaps must be an object")
    unknown = set(heatmaps) - set(HEATMAP_NAMES)
    if unknown:
        raise DatasetError(f"{where}: unknown heatmap(s) {sorted(unknown)}; expected {list(HEATMAP_NAMES)}")
    for name, path in heatmaps.items():
        if path is not None and (not isinstance(path, str) or not path):
            raise DatasetError(f"{where}: heatmap {name!r} must be null or a relative path, got {path!r}")
    out = dict(rec)
    out.update(width=w, height=h)
    return out


def _check_files(rec: Mapping[str, Any], root: Path, where: str) -> tuple[Path, dict[str, Path | None]]:
    """Resolve and check the image and heatmap files of a record (header reads only)."""
    from PIL import Image, UnidentifiedImageError

    image_path = root / rec["image"]
    if not image_path.is_file():
        raise DatasetError(f"{where}: image file {image_path} is missing")
    try:
        with Image.open(image_path) as img:
            size = img.size
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{where}: image file {image_path} cannot be read: {exc}") from exc
    if size != (rec["width"], rec["height"]):
        raise DatasetError(f"{where}: image is {size[0]}x{size[1]} but the record says {rec['width']}x{rec['height']}")
    paths: dict[str, Path | None] = {}
    for name in HEATMAP_NAMES:
        rel = (rec.get("heatmaps") or {}).get(name)
        if rel is None:
            paths[name] = None
            continue
        p = root / rel
        if not p.is_file():
            raise DatasetError(f"{where}: heatmap file {p} is missing")
        try:
            with Image.open(p) as img:
                hsize = img.size
        except (UnidentifiedImageError, OSError) as exc:
            raise DatasetError(f"{where}: heatmap file {p} cannot be read: {exc}") from exc
        if hsize != size:
            raise DatasetError(f"{where}: heatmap {name!r} is {hsize[0]}x{hsize[1]}, image is {size[0]}x{size[1]}")
        paths[name] = p
    return image_path, paths


def load_project_dataset(root: str | Path, strict: bool = False, check_files: bool = True) -> ProjectDataset:
    """Read a project data set folder into a `ProjectDataset` (a list of `Sample`).

    Invalid lines (bad JSON, missing or out-of-range values, missing/unreadable/mis-sized files,
    duplicate ids) are skipped, counted in ``.report.skipped`` and summarised in one warning;
    unknown top-level fields are ignored and counted. ``strict=True`` raises `DatasetError` on
    the first of these instead. ``check_files=False`` skips opening image/heatmap headers.
    """
    root = Path(root)
    data_file = root / DATA_FILE if root.is_dir() else root
    if root.is_dir():
        base = root
    else:
        base = root.parent
    if not data_file.is_file():
        raise FileNotFoundError(f"no {DATA_FILE} in {root}; is this a project data set folder?")
    report = LoadReport()
    samples: list[Sample] = []
    seen: set[str] = set()
    with open(data_file, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{data_file}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                report.skip("bad_json", f"{where}: not valid JSON ({exc})", strict)
                continue
            try:
                rec = validate_record(rec, where)
                if rec["id"] in seen:
                    raise DatasetError(f"{where}: duplicate id {rec['id']!r}")
                if check_files:
                    image_path, hm_paths = _check_files(rec, base, where)
                else:
                    image_path = base / rec["image"]
                    hm_paths = {n: (None if p is None else base / p) for n, p in (rec.get("heatmaps") or {}).items()}
                # build the Diagnosis once without heatmaps to catch schema errors now
                Diagnosis(width=rec["width"], height=rec["height"], scores=Scores.from_dict(rec.get("scores")),
                          defects=[Defect.from_dict(d) for d in rec.get("defects") or []])
            except (DatasetError, DiagnosisSchemaError) as exc:
                if strict:
                    raise DatasetError(str(exc)) from exc
                reason = "missing_file" if "missing" in str(exc) and "file" in str(exc) else "invalid"
                report.skip(reason, str(exc), strict)
                continue
            report.ignore_fields(set(rec) - KNOWN_FIELDS, where, strict)
            seen.add(rec["id"])
            samples.append(Sample(rec["id"], image_path, rec["prompt"], meta=rec.get("meta"),
                                  heatmap_paths=hm_paths, _record=rec))
    report.kept = len(samples)
    report.warn(str(data_file))
    return ProjectDataset(samples, report, base)


# -- writing ------------------------------------------------------------------------------------
def sample_record(sample: Sample, root: Path, compress_level: int = 1) -> dict[str, Any]:
    """Write a sample's image and heatmap files under ``root``; return its ``data.jsonl`` object."""
    from PIL import Image

    if not _ID_RE.match(sample.id):
        raise ValueError(f"sample id {sample.id!r} is not file-name safe; use letters, digits, '.', '_', '-'")
    d = sample.diagnosis
    (root / "images").mkdir(parents=True, exist_ok=True)
    if sample.image is not None:
        img = sample.image if isinstance(sample.image, Image.Image) else Image.fromarray(np.asarray(sample.image))
        rel_image = f"images/{sample.id}.png"
        if img.size != (d.width, d.height):
            raise ValueError(f"sample {sample.id!r}: image is {img.size}, diagnosis says {d.width}x{d.height}")
        img.save(root / rel_image, format="PNG", compress_level=compress_level)
    elif sample.image_path is not None:
        if not sample.image_path.is_file():
            raise FileNotFoundError(f"sample {sample.id!r}: image {sample.image_path} does not exist")
        rel_image = f"images/{sample.id}{sample.image_path.suffix.lower() or '.png'}"
        shutil.copyfile(sample.image_path, root / rel_image)
    else:
        raise ValueError(f"sample {sample.id!r} has neither an image nor an image_path")
    heatmaps: dict[str, str | None] = {}
    for name in HEATMAP_NAMES:
        hm = d.heatmaps.get(name)
        if hm is None:
            heatmaps[name] = None
            continue
        (root / "hm").mkdir(exist_ok=True)
        rel = f"hm/{sample.id}_{HEATMAP_SUFFIX[name]}.png"
        save_heatmap_png(root / rel, hm, compress_level)
        heatmaps[name] = rel
    rec = {
        "id": sample.id,
        "image": rel_image,
        "prompt": sample.prompt,
        "width": d.width,
        "height": d.height,
        "scores": d.scores.as_dict(),
        "defects": [df.to_dict() for df in d.defects],
        "heatmaps": heatmaps,
        "reasoning": d.reasoning,
    }
    if sample.meta:
        rec["meta"] = sample.meta
    return rec


class DatasetWriter:
    """Write a data set atomically: files go to a temporary sibling folder renamed at the end.

    >>> with DatasetWriter(out_dir, overwrite=True) as w:
    ...     w.add(sample)          # or w.add_record(sample_record(sample, w.root))
    """

    def __init__(self, root: str | Path, overwrite: bool = False, compress_level: int = 1):
        self.final = Path(root)
        if self.final.exists() and not self.final.is_dir():
            raise ValueError(f"{self.final} exists and is not a folder")
        if self.final.is_dir() and any(self.final.iterdir()) and not overwrite:
            raise ValueError(f"{self.final} is not empty; pass overwrite=True (--overwrite) to replace it")
        self.overwrite = overwrite
        self.compress_level = compress_level
        self.records: list[dict[str, Any]] = []
        self._ids: set[str] = set()
        self.root: Path | None = None

    def __enter__(self) -> "DatasetWriter":
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.tmp-", dir=self.final.parent))
        return self

    def add(self, sample: Sample) -> None:
        self.add_record(sample_record(sample, self.root, self.compress_level))

    def add_record(self, rec: dict[str, Any]) -> None:
        if rec["id"] in self._ids:
            raise ValueError(f"duplicate sample id {rec['id']!r}")
        self._ids.add(rec["id"])
        self.records.append(rec)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            return
        with open(self.root / DATA_FILE, "w", encoding="utf-8") as fh:
            for rec in self.records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        old = None
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            os.replace(self.final, old)
        os.replace(self.root, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_project_dataset(root: str | Path, samples: Iterable[Sample], overwrite: bool = False,
                          compress_level: int = 1) -> Path:
    """Write ``samples`` as a project data set folder at ``root`` (atomically); returns ``root``.

    Images given in memory (``sample.image``) are saved as PNG; files (``sample.image_path``)
    are copied. Heatmaps that are not None are written as 8-bit PNGs.
    """
    with DatasetWriter(root, overwrite=overwrite, compress_level=compress_level) as w:
        for s in samples:
            w.add(s)
    return Path(root)
