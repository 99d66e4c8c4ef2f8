"""The ImageDoctor output format (look-think-predict).

Shape of a model output (the upstream ImageDoctor prompt; sources: docs/provenance.md, docs/fidelity.md)::

    <think>... I need to focus on the bounding box area. Proposed regions (xyxy):
    1.[x1,y1,x2,y2];
    2.[x1,y1,x2,y2]; ...</think>
    <answer>Semantic Alignment score: 0.8;
    Misalignment Locations: <point>x,y</point> ... <MIS>
    Aesthetic score: 0.6;
    Plausibility score: 0.7;
    Artifact Locations: <point>x,y</point> ... <ART>
    Overall Impression score: 0.7
    Text Caption: [prompt]</answer>

Coordinates are pixels of the image the model saw (about 512x512, see
`core.prompts.resize_for_model`). Regions carry no label in the format: a region takes the
label of the located points inside it (nearest point otherwise); a point outside every region
becomes a small box of its own (radius 512/20 in the 512 frame, as upstream's mask maker).
Our renderer adds one optional line per region, ``Region N (label): reason``, which the parser
reads back so that labels and reasons survive a round trip.
"""

from __future__ import annotations

import re

from ..diagnosis import Defect, Diagnosis, Scores
from ..geometry import Frame
from .common import NUMBER_RE, split_think_answer, strip_task_tokens, to_float

SCORE_PATTERNS = {
    "alignment": r"semantic\s*alignment",
    "aesthetics": r"aesthetics?",
    "plausibility": r"plausibility",
    "overall": r"overall(?:\s*impression)?",
}
_SCORE_RES = {
    name: re.compile(rf"{pat}\s*score\s*[:：=]?\s*\**\s*({NUMBER_RE})", re.I) for name, pat in SCORE_PATTERNS.items()
}
_BOX_RE = re.compile(rf"\[\s*({NUMBER_RE})\s*,\s*({NUMBER_RE})\s*,\s*({NUMBER_RE})\s*,\s*({NUMBER_RE})\s*\]")
_POINT_RE = re.compile(rf"<point>\s*\(?\s*({NUMBER_RE})\s*,\s*({NUMBER_RE})\s*\)?\s*</point>", re.I)
_SECTION_RE = {
    "misalignment": re.compile(r"misalignment\s*locations?\s*[:：]?(.*?)(?=aesthetic|plausibility|artifact\s*locations?|overall|text\s*caption|\Z)", re.I | re.S),
    "artifact": re.compile(r"artifact\s*locations?\s*[:：]?(.*?)(?=overall|text\s*caption|semantic|aesthetic|plausibility|misalignment\s*locations?|\Z)", re.I | re.S),
}
_REGION_NOTE_RE = re.compile(r"region\s*(\d+)\s*\(\s*(artifact|misalignment)\s*(?:,\s*importance\s*(\d+)\s*)?\)\s*[:：]\s*([^\n]*)", re.I)
_CAPTION_RE = re.compile(r"text\s*caption\s*[:：]\s*\[(.*)\]", re.I | re.S)
#: Radius of the box made around a lone point, in the 512-pixel frame (upstream: 512/20).
POINT_RADIUS_512 = 512 / 20


def parse_imagedoctor(
    text: str,
    width: int,
    height: int,
    frame: Frame | None = None,
    prompt: str = "",
) -> Diagnosis:
    """Read an ImageDoctor output leniently; what could not be read is listed in ``problems``.

    ``frame`` is the coordinate system of the model's boxes (default: the image resized by
    `core.prompts.resize_for_model`, which is what the published checkpoint saw).
    """
    from ..prompts import resize_for_model

    problems: list[str] = []
    text = "" if text is None else str(text)
    if frame is None:
        frame = Frame.pixels(*resize_for_model(width, height))
    think, answer = split_think_answer(text, problems)
    answer_clean = strip_task_tokens(answer)

    scores = {}
    for name, rx in _SCORE_RES.items():
        m = rx.search(answer_clean) or rx.search(strip_task_tokens(text))
        if not m:
            problems.append(f"no {name} score")
            scores[name] = None
            continue
        value = to_float(m.group(1))
        if value is None:
            problems.append(f"{name} score {m.group(1)!r} is not a number")
        elif not 0.0 <= value <= 1.0:
            problems.append(f"{name} score {value} is outside [0, 1]; clamped")
            value = min(max(value, 0.0), 1.0)
        scores[name] = value

    # Located points per label (answer block).
    points: list[tuple[float, float, str]] = []
    for label, rx in _SECTION_RE.items():
        m = rx.search(answer_clean)
        if not m:
            continue
        for pm in _POINT_RE.finditer(m.group(1)):
            x, y = to_float(pm.group(1)), to_float(pm.group(2))
            if x is None or y is None:
                problems.append(f"unreadable point {pm.group(0)!r}")
                continue
            points.append((x, y, label))

    # Proposed regions (think block).
    regions: list[tuple[float, float, float, float]] = []
    region_text = think.split("Proposed regions", 1)[-1] if "Proposed regions" in think else think
    for bm in _BOX_RE.finditer(region_text):
        vals = [to_float(g) for g in bm.groups()]
        if any(v is None for v in vals):
            problems.append(f"unreadable region {bm.group(0)!r}")
            continue
        regions.append(tuple(vals))
    notes = {}
    for nm in _REGION_NOTE_RE.finditer(think):
        imp = int(nm.group(3)) if nm.group(3) else None
        notes[int(nm.group(1))] = (nm.group(2).lower(), nm.group(4).strip(), imp)

    defects: list[Defect] = []
    used_points: set[int] = set()
    for i, region in enumerate(regions, start=1):
        x0, y0, x1, y1 = min(region[0], region[2]), min(region[1], region[3]), max(region[0], region[2]), max(region[1], region[3])
        label, reason, importance = None, "", None
        inside = [k for k, (px, py, _) in enumerate(points) if x0 <= px <= x1 and y0 <= py <= y1]
        used_points.update(inside)
        if i in notes:
            label, reason, importance = notes[i]
        elif inside:
            labels = [points[k][2] for k in inside]
            label = max(sorted(set(labels)), key=labels.count)
        elif points:
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            label = min(points, key=lambda p: (p[0] - cx) ** 2 + (p[1] - cy) ** 2)[2]
        else:
            label = "artifact"
            problems.append(f"region {i} has no located point to take a label from; labelled artifact")
        try:
            box = frame.to_pixels((x0, y0, x1, y1), width, height)
        except ValueError as exc:
            problems.append(f"region {i}: {exc}")
            continue
        if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
            problems.append(f"region {i} {list(region)!r} is empty inside the image; dropped")
            continue
        if importance is not None and not 1 <= importance <= 100:
            problems.append(f"region {i} importance {importance} outside 1-100; dropped it")
            importance = None
        defects.append(Defect(box=box, label=label, reason=reason, importance=importance))

    radius = POINT_RADIUS_512 * max(frame.width, frame.height) / 512.0
    for k, (px, py, label) in enumerate(points):
        if k in used_points:
            continue
        try:
            box = frame.to_pixels((px - radius, py - radius, px + radius, py + radius), width, height)
        except ValueError as exc:
            problems.append(f"point {k}: {exc}")
            continue
        if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
            problems.append(f"point ({px}, {py}) lies outside the image; dropped")
            continue
        defects.append(Defect(box=box, label=label, reason=f"{label} location"))

    cap = _CAPTION_RE.search(answer)
    return Diagnosis(
        width=width,
        height=height,
        scores=Scores(**scores),
        defects=defects,
        reasoning=strip_task_tokens(think).strip(),
        raw_text=text,
        problems=problems,
        prompt=prompt or (cap.group(1).strip() if cap else ""),
        format="imagedoctor",
    )


def _fmt_score(v: float) -> str:
    return f"{v:.3f}".rstrip("0").rstrip(".") if v not in (0.0, 1.0) else f"{v:.1f}"


def render_imagedoctor(
    diagnosis: Diagnosis,
    frame: Frame | None = None,
    think: bool = True,
    task_tokens: bool = True,
    scores_only: bool = False,
) -> str:
    """The target text the model should produce for ``diagnosis`` (SFT targets, round trips).

    ``scores_only`` renders cold-start stage 1 targets (no regions, locations or task tokens).
    """
    from ..prompts import resize_for_model

    if frame is None:
        frame = Frame.pixels(*resize_for_model(diagnosis.width, diagnosis.height))
    s = diagnosis.scores

    def score(name: str) -> str:
        value = getattr(s, name)
        return "N/A" if value is None else _fmt_score(value)

    parts = []
    if think and not scores_only:
        lines = [diagnosis.reasoning.strip()] if diagnosis.reasoning.strip() else []
        boxes = []
        for i, d in enumerate(diagnosis.defects, start=1):
            fx0, fy0, fx1, fy1 = frame.from_pixels(d.box, diagnosis.width, diagnosis.height)
            boxes.append(f"{i}.[{round(fx0)},{round(fy0)},{round(fx1)},{round(fy1)}];")
            imp = f", importance {d.importance}" if d.importance is not None else ""
            lines.append(f"Region {i} ({d.label}{imp}): {d.reason.strip() or d.label}")
        if boxes:
            lines.append("I need to focus on the bounding box area. Proposed regions (xyxy): " + "\n".join(boxes))
        parts.append("<think>\n" + "\n".join(lines) + "\n</think>\n")

    def locations(label: str) -> str:
        pts = []
        for d in diagnosis.defects_of(label):
            fx0, fy0, fx1, fy1 = frame.from_pixels(d.box, diagnosis.width, diagnosis.height)
            pts.append(f"<point>{round((fx0 + fx1) / 2)},{round((fy0 + fy1) / 2)}</point>")
        return ", ".join(pts) if pts else "None"

    if scores_only:
        body = (
            f"Semantic Alignment score: {score('alignment')};\n"
            f"Aesthetic score: {score('aesthetics')};\n"
            f"Plausibility score: {score('plausibility')};\n"
            f"Overall Impression score: {score('overall')}"
        )
    else:
        mis_tok = " <MIS>" if task_tokens else ""
        art_tok = " <ART>" if task_tokens else ""
        body = (
            f"Semantic Alignment score: {score('alignment')};\n"
            f"Misalignment Locations: {locations('misalignment')}{mis_tok}\n"
            f"Aesthetic score: {score('aesthetics')};\n"
            f"Plausibility score: {score('plausibility')};\n"
            f"Artifact Locations: {locations('artifact')}{art_tok}\n"
            f"Overall Impression score: {score('overall')}\n"
            f"Text Caption: [{diagnosis.prompt}]"
        )
    parts.append(f"<answer>{body}</answer>")
    return "".join(parts)
