"""The Structured Defect Grounding (SDG) output format.

    <think>...</think><answer>[{"box_2d": [x0, y0, x1, y1], "label": "artifact" | "misalignment",
                                "description": "...", "importance": N}, ...]</answer>

Boxes are normalised to 0-1000 in ``[x0, y0, x1, y1]`` order (Qwen3-VL convention); SDG-30K
ground-truth files use Gemini's ``[y0, x0, y1, x1]`` (pass ``Frame.norm1000("yxyx")``).
An empty list means "no defect". Real outputs vary: the parser repairs trailing commas,
single quotes and truncated lists, and reads what it can object by object.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..diagnosis import Defect, Diagnosis
from ..geometry import Frame
from .common import split_think_answer, to_float

_BOX_KEYS = ("box_2d", "bbox_2d", "box", "bbox")
_DESC_KEYS = ("description", "desc", "reason")
_OBJECT_RE = re.compile(r"\{[^{}]*\}", re.S)


def _normalise_label(raw: Any) -> str | None:
    label = str(raw or "").strip().lower()
    if label.startswith("artifact") or label.startswith("artefact"):
        return "artifact"
    if label.startswith("misalign"):
        return "misalignment"
    return None


def _load_list(answer: str, problems: list[str]) -> list[Any]:
    start = answer.find("[")
    if start < 0:
        stripped = answer.strip()
        if stripped.lower() in ("", "none", "no issues", "no defects"):
            return []
        problems.append("no JSON list in the answer")
        return []
    end = answer.rfind("]")
    candidate = answer[start : end + 1] if end > start else answer[start:]
    attempts = [candidate, re.sub(r",\s*([\]}])", r"\1", candidate)]
    attempts.append(attempts[-1].replace("'", '"'))
    for attempt in attempts:
        try:
            data = json.loads(attempt)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(data, list):
            return data
        if isinstance(data, dict):
            return [data]
    problems.append("answer is not valid JSON; read the objects one by one")
    items = []
    for m in _OBJECT_RE.finditer(answer[start:]):  # the whole tail: a truncated list has no final ']'
        obj = m.group(0)
        no_comma = re.sub(r",\s*}", "}", obj)
        for attempt in (obj, obj.replace("'", '"'), no_comma, no_comma.replace("'", '"')):
            try:
                items.append(json.loads(attempt))
                break
            except (json.JSONDecodeError, RecursionError):
                continue
        else:
            problems.append(f"unreadable defect object {m.group(0)[:80]!r}")
    return items


def defects_from_items(
    items: list[Any], width: int, height: int, frame: Frame, problems: list[str]
) -> list[Defect]:
    """Turn SDG-style dicts into pixel-space defects; bad items are skipped with a problem."""
    defects = []
    for idx, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(f"defect {idx} is not an object: {str(item)[:60]!r}")
            continue
        box_raw = next((item[k] for k in _BOX_KEYS if k in item), None)
        if not isinstance(box_raw, (list, tuple)) or len(box_raw) != 4:
            problems.append(f"defect {idx} has no 4-number box_2d")
            continue
        box_vals = [to_float(v) if isinstance(v, (int, float, str)) and not isinstance(v, bool) else None for v in box_raw]
        if any(v is None for v in box_vals):
            problems.append(f"defect {idx} box {box_raw!r} has a non-number")
            continue
        label = _normalise_label(item.get("label"))
        if label is None:
            problems.append(f"defect {idx} label {item.get('label')!r} is neither artifact nor misalignment")
            continue
        try:
            box = frame.to_pixels(box_vals, width, height)
        except ValueError as exc:
            problems.append(f"defect {idx}: {exc}")
            continue
        if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
            problems.append(f"defect {idx} box {box_raw!r} is empty inside the image; dropped")
            continue
        importance = item.get("importance")
        if importance is not None:
            value = to_float(importance) if isinstance(importance, (int, float, str)) and not isinstance(importance, bool) else None
            if value is None:
                problems.append(f"defect {idx} importance {importance!r} is not a number; dropped it")
                importance = None
            else:
                clamped = min(max(int(round(value)), 1), 100)
                if clamped != round(value):
                    problems.append(f"defect {idx} importance {value} outside 1-100; clamped")
                importance = clamped
        reason = next((item[k] for k in _DESC_KEYS if k in item), "")
        defects.append(Defect(box=box, label=label, reason=str(reason or ""), importance=importance))
    return defects


def parse_sdg(text: str, width: int, height: int, frame: Frame | None = None, prompt: str = "") -> Diagnosis:
    """Read an SDG detector output leniently; problems are listed, never raised."""
    problems: list[str] = []
    text = "" if text is None else str(text)
    frame = frame or Frame.norm1000()
    think, answer = split_think_answer(text, problems)
    items = _load_list(answer, problems)
    defects = defects_from_items(items, width, height, frame, problems)
    return Diagnosis(
        width=width,
        height=height,
        defects=defects,
        reasoning=think,
        raw_text=text,
        problems=problems,
        prompt=prompt,
        format="sdg",
    )


def render_sdg(diagnosis: Diagnosis, frame: Frame | None = None, think: bool = True) -> str:
    """The SDG target text for ``diagnosis`` (SFT targets, round trips)."""
    frame = frame or Frame.norm1000()
    items = []
    for d in diagnosis.defects:
        box = [int(round(v)) for v in frame.from_pixels(d.box, diagnosis.width, diagnosis.height)]
        item = {"box_2d": box, "label": d.label, "description": d.reason}
        if d.importance is not None:
            item["importance"] = d.importance
        items.append(item)
    body = json.dumps(items, ensure_ascii=False)
    head = f"<think>\n{diagnosis.reasoning.strip()}\n</think>\n" if think else ""
    return f"{head}<answer>\n{body}\n</answer>"
