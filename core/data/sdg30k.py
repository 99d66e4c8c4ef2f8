"""SDG-30K reader: the released annotation JSONL converted to pixel ground truth.

One JSON object per line. Field names vary between releases, so the reader accepts:

- image: ``image`` | ``image_path`` | ``file_name`` | ``filename`` | ``filepath`` (relative to
  ``images_dir``);
- prompt: ``prompt`` | ``caption`` | ``text``;
- defects: ``ann_translated_bboxes`` (the released evaluator's ground truth, ``box_2d`` in
  ``[x0, y0, x1, y1]`` order) or ``defects`` | ``annotations`` | ``annotation`` | ``answer`` |
  ``gt`` (``box_2d`` in Gemini's ``[y0, x0, y1, x1]`` order) -- a list of ``{"box_2d", "label",
  "description", "importance"}`` with 0-1000 coordinates, or the SDG answer text
  (``<answer>[...]</answer>``) holding that list. ``box_order`` overrides the order;
- size: ``width`` / ``height`` if present, else read from the image file header, else
  ``default_size`` (e.g. ``(1000, 1000)`` to keep the normalised frame) or the sample is skipped.

Why two orders: the SDG authors' evaluator (which produced the published SDG-Eval numbers) reads
``ann_translated_bboxes`` as ``[x0, y0, x1, y1]``, as their annotation scripts write it, while their
GRPO reward and inference scripts treat the Gemini-distilled fields as ``[y0, x0, y1, x1]``
(docs/fidelity.md). Boxes are converted to xyxy pixels. A sample with any unreadable
defect (bad box, unknown label, importance outside 1-100, empty box) is skipped as a whole
(never half-read), counted, and warned about; ``strict`` raises instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ..diagnosis import Diagnosis, DiagnosisSchemaError
from ..formats.sdg import _load_list, defects_from_items
from ..geometry import Frame
from .project import DatasetError, LoadReport, Sample

IMAGE_KEYS = ("image", "image_path", "file_name", "filename", "filepath")
PROMPT_KEYS = ("prompt", "caption", "text")
DEFECT_KEYS = ("ann_translated_bboxes", "defects", "annotations", "annotation", "answer", "gt")
#: Box order of each defect field (``auto``); other fields hold Gemini's yxyx.
FIELD_BOX_ORDER = {"ann_translated_bboxes": "xyxy"}
BOX_ORDERS = ("auto", "xyxy", "yxyx")
KNOWN_FIELDS = frozenset(IMAGE_KEYS + PROMPT_KEYS + DEFECT_KEYS + ("id", "width", "height", "model", "source",
                                                                   "generator", "split"))


def _first(rec: dict, keys: tuple[str, ...]):
    for k in keys:
        if k in rec:
            return k, rec[k]
    return None, None


def _image_size(path: Path) -> tuple[int, int] | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.size
    except (FileNotFoundError, UnidentifiedImageError, OSError):
        return None


def read_sdg30k(jsonl: str | Path, images_dir: str | Path | None = None, strict: bool = False,
                default_size: tuple[int, int] | None = None, require_image: bool | None = None,
                report: LoadReport | None = None, box_order: str = "auto") -> Iterator[Sample]:
    """Yield `Sample` s with `Diagnosis` ground truth in pixels from an SDG-30K JSONL file.

    ``require_image`` (default: True when ``images_dir`` is given) skips samples whose image
    file is missing. ``box_order``: ``auto`` (by field, see the module docstring), ``xyxy`` or
    ``yxyx``. Sample ids are the record's ``id`` or ``sdg-<line number>``.
    """
    if box_order not in BOX_ORDERS:
        raise ValueError(f"box_order must be one of {list(BOX_ORDERS)}, got {box_order!r}")
    jsonl = Path(jsonl)
    if not jsonl.is_file():
        raise FileNotFoundError(f"SDG-30K annotation file {jsonl} does not exist")
    images_dir = Path(images_dir) if images_dir is not None else None
    if require_image is None:
        require_image = images_dir is not None
    report = report if report is not None else LoadReport()
    with open(jsonl, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{jsonl.name}:{lineno}"
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise DatasetError(f"{where}: a record must be a JSON object")
                _, image_rel = _first(rec, IMAGE_KEYS)
                _, prompt = _first(rec, PROMPT_KEYS)
                dkey, raw = _first(rec, DEFECT_KEYS)
                if image_rel is None or prompt is None or dkey is None:
                    raise DatasetError(f"{where}: need an image ({'/'.join(IMAGE_KEYS)}), a prompt "
                                       f"({'/'.join(PROMPT_KEYS)}) and defects ({'/'.join(DEFECT_KEYS)})")
                image_path = (images_dir / str(image_rel)) if images_dir is not None else Path(str(image_rel))
                if require_image and not image_path.is_file():
                    raise DatasetError(f"{where}: image file {image_path} is missing")
                if "width" in rec and "height" in rec:
                    size = (int(rec["width"]), int(rec["height"]))
                else:
                    size = _image_size(image_path) if images_dir is not None else None
                    size = size or default_size
                if size is None:
                    raise DatasetError(f"{where}: image size unknown (no width/height, no readable image); "
                                       "pass images_dir= or default_size=")
                problems: list[str] = []
                items = _load_list(raw, problems) if isinstance(raw, str) else raw
                if not isinstance(items, list):
                    raise DatasetError(f"{where}: defects must be a list, got {type(items).__name__}")
                for k, item in enumerate(items):
                    imp = item.get("importance") if isinstance(item, dict) else None
                    if imp is not None and (isinstance(imp, bool) or not isinstance(imp, (int, float))
                                            or not 1 <= imp <= 100):
                        raise DatasetError(f"{where}: defect {k} importance {imp!r} is outside 1-100")
                order = FIELD_BOX_ORDER.get(dkey, "yxyx") if box_order == "auto" else box_order
                defects = defects_from_items(items, size[0], size[1], Frame.norm1000(order), problems)
                if problems:
                    raise DatasetError(f"{where}: " + "; ".join(problems))
                diag = Diagnosis(width=size[0], height=size[1], defects=defects, prompt=str(prompt),
                                 format="ground_truth")
            except (json.JSONDecodeError, DatasetError, DiagnosisSchemaError, ValueError, TypeError) as exc:
                reason = "missing_file" if "missing" in str(exc) and "file" in str(exc) else "invalid"
                report.skip(reason, str(exc) if str(exc).startswith(where) else f"{where}: {exc}", strict)
                continue
            report.ignore_fields(set(rec) - KNOWN_FIELDS, where, strict)
            report.kept += 1
            sid = str(rec.get("id", f"sdg-{lineno:06d}"))
            yield Sample(sid, image_path, str(prompt), diag, meta={"source": "sdg-30k"})
    report.warn(str(jsonl))
