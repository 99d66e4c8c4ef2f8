"""RichHF-18K reader: the published TFRecords (no TensorFlow) joined to Pick-a-Pic images.

Each ``tf.train.Example`` has (google-research-datasets/richhf-18k):

- ``filename`` (bytes): the Pick-a-Pic v1 image file name;
- ``aesthetics_score``, ``artifact_score``, ``misalignment_score``, ``overall_score`` (float);
- ``artifact_map``, ``misalignment_map`` (bytes): encoded single-channel 8-bit images (512x512);
- ``prompt_misalignment_label`` (bytes): space-separated 0/1 per prompt token (0 = misaligned).

Score mapping to `Scores`: aesthetics_score -> aesthetics, artifact_score -> plausibility,
misalignment_score -> alignment, overall_score -> overall (higher = better everywhere). Scores
are expected in ``score_range`` (default [0, 1]); pass ``score_range=(1, 5)`` for Likert-scaled
files, which are rescaled linearly to [0, 1]. A value outside the range skips the sample.

The prompt is not part of every release: it is taken from a ``prompt`` / ``caption`` feature if
present, else from ``prompts`` (a mapping or a JSON / JSONL / TSV file filename -> prompt), else
from a ``<image stem>.txt`` file beside the image.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from ..diagnosis import Diagnosis, Scores
from .project import DatasetError, LoadReport, Sample, write_project_dataset
from .tfrecord import TFRecordError, parse_example, read_records

SCORE_FIELDS = {
    "misalignment_score": "alignment",
    "aesthetics_score": "aesthetics",
    "artifact_score": "plausibility",
    "overall_score": "overall",
}
MAP_FIELDS = {"misalignment_map": "misalignment", "artifact_map": "artifact"}
PROMPT_FIELDS = ("prompt", "caption")
KNOWN_FIELDS = frozenset(("filename", "prompt_misalignment_label") + tuple(SCORE_FIELDS) + tuple(MAP_FIELDS)
                         + PROMPT_FIELDS)
_TOKEN_SPLIT = re.compile(r'[,.?!":; ]')


def tokenize_prompt(prompt: str) -> list[str]:
    """RichHF prompt tokens: split on any of ``,.?!":;`` and space, empty pieces dropped."""
    return [t for t in _TOKEN_SPLIT.split(prompt) if t]


@dataclass
class RichHFRecord:
    """One RichHF-18K example. Heatmaps are float32 (H, W) in [0, 1] at the file's resolution."""

    filename: str
    image_path: Path | None
    prompt: str
    scores: Scores
    heatmaps: dict[str, np.ndarray]
    token_labels: list[int]
    tokens: list[str] = field(default_factory=list)


def _load_prompts(prompts: Any) -> dict[str, str]:
    if prompts is None:
        return {}
    if isinstance(prompts, Mapping):
        return {str(k): str(v) for k, v in prompts.items()}
    path = Path(prompts)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: a prompts JSON file must be an object filename -> prompt")
        return {str(k): str(v) for k, v in data.items()}
    out = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            obj = json.loads(line)
            name = obj.get("filename") or obj.get("file_name") or obj.get("image")
            prompt = obj.get("prompt") or obj.get("caption")
            if name is None or prompt is None:
                raise ValueError(f"{path}:{lineno}: need 'filename' and 'prompt' (or 'caption')")
            out[str(name)] = str(prompt)
        else:
            if "\t" not in line:
                raise ValueError(f"{path}:{lineno}: expected 'filename<TAB>prompt'")
            name, prompt = line.split("\t", 1)
            out[name] = prompt
    return out


def _one(features: Mapping[str, list], name: str, where: str) -> Any:
    values = features.get(name)
    if not values:
        raise DatasetError(f"{where}: missing feature {name!r}")
    if len(values) != 1:
        raise DatasetError(f"{where}: feature {name!r} has {len(values)} values, expected 1")
    return values[0]


def _decode_map(raw: Any, name: str, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not isinstance(raw, bytes):
        raise DatasetError(f"{where}: {name} must be an encoded image (bytes)")
    try:
        with Image.open(io.BytesIO(raw)) as img:
            if img.mode not in ("L", "P", "I", "I;16", "1", "LA"):
                raise DatasetError(f"{where}: {name} is a {img.mode} image, expected single-channel")
            arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{where}: {name} does not decode as an image: {exc}") from exc
    return arr


def _decode_example(features: Mapping[str, list], where: str, score_range: tuple[float, float]) -> dict[str, Any]:
    raw_name = _one(features, "filename", where)
    if not isinstance(raw_name, bytes):
        raise DatasetError(f"{where}: filename must be bytes")
    filename = raw_name.decode("utf-8", errors="strict")
    lo, hi = score_range
    scores = {}
    for fname, dim in SCORE_FIELDS.items():
        value = _one(features, fname, where)
        if not isinstance(value, float) or not np.isfinite(value):
            raise DatasetError(f"{where}: {fname} must be a finite float, got {value!r}")
        if not lo - 1e-6 <= value <= hi + 1e-6:
            raise DatasetError(f"{where}: {fname} = {value} is outside the score range [{lo}, {hi}]")
        scores[dim] = float(min(max((value - lo) / (hi - lo), 0.0), 1.0))
    maps = {dim: _decode_map(_one(features, fname, where), fname, where) for fname, dim in MAP_FIELDS.items()}
    raw_labels = _one(features, "prompt_misalignment_label", where)
    try:
        text = raw_labels.decode("ascii") if isinstance(raw_labels, bytes) else str(raw_labels)
        labels = [int(t) for t in text.split()]
    except (UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"{where}: prompt_misalignment_label must be space-separated 0/1 values") from exc
    if any(v not in (0, 1) for v in labels):
        raise DatasetError(f"{where}: prompt_misalignment_label has values other than 0/1: {sorted(set(labels))}")
    prompt = None
    for pf in PROMPT_FIELDS:
        if features.get(pf):
            prompt = features[pf][0].decode("utf-8") if isinstance(features[pf][0], bytes) else str(features[pf][0])
            break
    return {"filename": filename, "scores": scores, "maps": maps, "labels": labels, "prompt": prompt}


def read_richhf(tfrecord: str | Path, images_dir: str | Path | None = None, prompts: Any = None,
                strict: bool = False, score_range: tuple[float, float] = (0.0, 1.0), verify_crc: bool = True,
                require_image: bool | None = None, report: LoadReport | None = None) -> Iterator[RichHFRecord]:
    """Yield `RichHFRecord` s from one TFRecord file (or every ``*.tfrecord*`` in a folder).

    ``images_dir`` is the Pick-a-Pic image folder joined by file name; examples whose image is
    missing are skipped (``require_image`` defaults to True when ``images_dir`` is given).
    Examples that fail validation (missing feature, undecodable map, score out of range, token
    label count that does not match the prompt) are skipped, counted in ``report`` and warned
    about at the end, or raise `DatasetError` when ``strict``. Unknown features are ignored and
    counted. A corrupt TFRecord frame ends that file (counted, or raised when strict).
    """
    lo, hi = (float(v) for v in score_range)
    if not hi > lo:
        raise ValueError(f"score_range must be (low, high) with high > low, got {score_range}")
    src = Path(tfrecord)
    files = sorted(p for p in src.iterdir() if ".tfrecord" in p.name) if src.is_dir() else [src]
    if not files:
        raise FileNotFoundError(f"no *.tfrecord* files in {src}")
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"TFRecord file {f} does not exist")
    images_dir = Path(images_dir) if images_dir is not None else None
    if require_image is None:
        require_image = images_dir is not None
    prompt_map = _load_prompts(prompts)
    report = report if report is not None else LoadReport()
    for f in files:
        records = read_records(f, verify_crc=verify_crc)
        index = 0
        while True:
            where = f"{f.name}#{index}"
            try:
                data = next(records)
            except StopIteration:
                break
            except TFRecordError as exc:
                report.skip("corrupt_file", f"{exc}; the rest of {f.name} is unreadable", strict)
                break
            index += 1
            try:
                features = parse_example(data)
                ex = _decode_example(features, where, (lo, hi))
                image_path = images_dir / ex["filename"] if images_dir is not None else None
                if require_image and (image_path is None or not image_path.is_file()):
                    raise DatasetError(f"{where}: image {ex['filename']} not found in {images_dir}")
                prompt = ex["prompt"] or prompt_map.get(ex["filename"])
                if prompt is None and image_path is not None and image_path.with_suffix(".txt").is_file():
                    prompt = image_path.with_suffix(".txt").read_text(encoding="utf-8").strip()
                if prompt is None:
                    raise DatasetError(f"{where}: no prompt for {ex['filename']} (pass prompts= or add a .txt file)")
                tokens = tokenize_prompt(prompt)
                if len(ex["labels"]) != len(tokens):
                    raise DatasetError(f"{where}: {len(ex['labels'])} token labels for {len(tokens)} prompt tokens")
            except (DatasetError, TFRecordError, UnicodeDecodeError) as exc:
                reason = "missing_image" if "not found" in str(exc) else "invalid"
                report.skip(reason, str(exc), strict)
                continue
            report.ignore_fields(set(features) - KNOWN_FIELDS, where, strict)
            report.kept += 1
            yield RichHFRecord(filename=ex["filename"], image_path=image_path, prompt=prompt,
                               scores=Scores(**ex["scores"]), heatmaps=ex["maps"], token_labels=ex["labels"],
                               tokens=tokens)
    report.warn(str(src))


def _resize(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    from ..metrics import resize_map

    return np.clip(resize_map(arr, (height, width)), 0.0, 1.0)


def richhf_to_samples(records: Iterator[RichHFRecord]) -> Iterator[Sample]:
    """Convert records to project `Sample` s; heatmaps are resized (bilinear) to the image size."""
    from PIL import Image

    for r in records:
        if r.image_path is not None:
            with Image.open(r.image_path) as img:
                width, height = img.size
        else:
            height, width = next(iter(r.heatmaps.values())).shape
        maps = {k: _resize(v, width, height) for k, v in r.heatmaps.items()}
        diag = Diagnosis(width=width, height=height, scores=r.scores, heatmaps=maps, prompt=r.prompt,
                         format="ground_truth")
        sid = re.sub(r"[^A-Za-z0-9._-]", "_", Path(r.filename).stem) or "sample"
        yield Sample(sid, r.image_path, r.prompt, diag,
                     meta={"source": "richhf-18k", "filename": r.filename, "token_labels": r.token_labels})


def convert_richhf(tfrecord: str | Path, images_dir: str | Path, out_dir: str | Path, prompts: Any = None,
                   strict: bool = False, overwrite: bool = False, **kwargs) -> Path:
    """RichHF-18K TFRecord(s) + Pick-a-Pic images -> a project data set folder."""
    return write_project_dataset(out_dir, richhf_to_samples(read_richhf(tfrecord, images_dir, prompts, strict,
                                                                        **kwargs)), overwrite=overwrite)
