"""Synthetic defect benchmark: procedurally rendered scenes with exactly known defects.

``python -m imagedoctor synth --n 1000 --out data/synth --seed 0 [--size 512] [--workers 2]``

Each sample is a flat scene of coloured shapes described by a small, regular prompt
("two red circles left of a blue square"), then damaged on purpose:

- misalignments (the image contradicts the prompt): ``missing_object``, ``wrong_count``
  (one fewer or one extra object), ``wrong_colour``, ``wrong_position`` (relation swapped);
- artifacts (the image is damaged): ``blur``, ``noise``, ``warp``, ``duplicated_part``,
  ``cut_part``, ``blotch`` (local, inside a patch that overlaps an object).

Ground truth is exact: each defect has a box (pixels, xyxy), label, reason and importance; the
heatmaps are the defects' pixel masks valued importance/100 (max where they overlap); the four
scores follow from the defects (formula in `scores_from_defects`). Sample ``i`` of seed ``s``
depends only on ``(s, i)``, so any worker count gives identical files. Output is a project
data set folder (`imagedoctor.core.data.project`).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .diagnosis import Defect, Diagnosis, Scores

COLORS = {
    "red": (215, 38, 38),
    "green": (34, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (235, 200, 25),
    "purple": (140, 55, 175),
    "orange": (240, 125, 25),
}
SHAPES = ("circle", "square", "triangle")
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
RELATIONS = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
BACKGROUNDS = ((238, 236, 230), (225, 232, 240), (236, 240, 228), (242, 234, 238))

MISALIGNMENT_KINDS = ("missing_object", "wrong_count", "wrong_colour", "wrong_position")
ARTIFACT_KINDS = ("blur", "noise", "warp", "duplicated_part", "cut_part", "blotch")
#: Base importance of each defect kind at full severity and size (see `importance_of`).
BASE_IMPORTANCE = {
    "missing_object": 95, "wrong_count": 85, "wrong_position": 80, "wrong_colour": 75,
    "duplicated_part": 75, "cut_part": 70, "warp": 65, "blotch": 55, "noise": 45, "blur": 40,
}


@dataclass
class Obj:
    """One drawn shape: ``box`` is its xyxy bounding box in pixels, ``group`` 0 (subject) or 1."""

    shape: str
    color: str
    box: tuple[float, float, float, float]
    group: int


@dataclass
class Group:
    count: int
    color: str
    shape: str

    def phrase(self, count: int | None = None) -> str:
        n = self.count if count is None else count
        word = ("an" if self.color[0] in "aeiou" else "a") if n == 1 else COUNT_WORDS.get(n, str(n))
        return f"{word} {self.color} {self.shape}{'' if n == 1 else 's'}"


@dataclass
class Scene:
    groups: list[Group]
    relation: str | None
    objects: list[Obj] = field(default_factory=list)

    @property
    def prompt(self) -> str:
        text = self.groups[0].phrase()
        if self.relation:
            text += f" {self.relation} {self.groups[1].phrase()}"
        return text


@dataclass
class Injected:
    kind: str
    label: str
    box: tuple[float, float, float, float]
    reason: str
    severity: float
    mask: np.ndarray  # bool (H, W)


# ----------------------------------------------------------------------------------------------
# scene layout and drawing
# ----------------------------------------------------------------------------------------------
def _regions(relation: str | None, size: int) -> list[tuple[float, float, float, float]]:
    """Placement regions of the groups for a relation (group 0 first), with a margin."""
    m = size * 0.04
    full = (m, m, size - m, size - m)
    half = size / 2
    if relation is None:
        return [full]
    left, right = (m, m, half - m / 2, size - m), (half + m / 2, m, size - m, size - m)
    top, bottom = (m, m, size - m, half - m / 2), (m, half + m / 2, size - m, size - m)
    return {"left of": [left, right], "right of": [right, left], "above": [top, bottom],
            "below": [bottom, top]}[relation]


def _place(rng: np.random.Generator, region, count: int, size: int) -> list[tuple[float, float, float, float]]:
    """``count`` non-overlapping square boxes in cells along the region's long axis."""
    x0, y0, x1, y1 = region
    w, h = x1 - x0, y1 - y0
    horizontal = w >= h
    cell = (w / count if horizontal else h / count), (h if horizontal else w)
    side_max = min(cell) * 0.8
    boxes = []
    for k in range(count):
        side = side_max * rng.uniform(0.55, 0.95)
        side = min(side, size * 0.3)
        if horizontal:
            cx0, cy0, cw, ch = x0 + k * w / count, y0, w / count, h
        else:
            cx0, cy0, cw, ch = x0, y0 + k * h / count, w, h / count
        bx = cx0 + rng.uniform(0, max(cw - side, 0))
        by = cy0 + rng.uniform(0, max(ch - side, 0))
        boxes.append((bx, by, bx + side, by + side))
    return boxes


def _draw_shape(draw, shape: str, box, fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _shape_mask(shape: str, box, size: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("L", (size, size), 0)
    _draw_shape(ImageDraw.Draw(img), shape, box, 255)
    return np.asarray(img) > 0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Light background with a gentle vertical gradient, uint8 (size, size, 3)."""
    base = np.array(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], dtype=np.float32)
    ramp = np.linspace(-10, 10, size, dtype=np.float32)[:, None, None] * rng.choice([-1.0, 1.0])
    column = np.clip(base[None, None, :] + ramp, 0, 255).astype(np.uint8)  # (size, 1, 3)
    return np.ascontiguousarray(np.broadcast_to(column, (size, size, 3)))


def make_scene(rng: np.random.Generator, size: int) -> Scene:
    """A random scene: one group, or two groups in a spatial relation."""
    n_groups = 1 if rng.random() < 0.3 else 2
    colors = rng.choice(list(COLORS), size=n_groups, replace=False)
    groups = [Group(int(rng.integers(1, 4)), str(colors[g]), str(rng.choice(SHAPES))) for g in range(n_groups)]
    relation = str(rng.choice(list(RELATIONS))) if n_groups == 2 else None
    scene = Scene(groups, relation)
    for g, (group, region) in enumerate(zip(groups, _regions(relation, size))):
        for box in _place(rng, region, group.count, size):
            scene.objects.append(Obj(group.shape, group.color, box, g))
    return scene


# ----------------------------------------------------------------------------------------------
# defects
# ----------------------------------------------------------------------------------------------
def _pad(box, pad: float, size: int):
    x0, y0, x1, y1 = box
    return (max(0.0, x0 - pad), max(0.0, y0 - pad), min(float(size), x1 + pad), min(float(size), y1 + pad))


def _rect_mask(box, size: int) -> np.ndarray:
    from .geometry import box_mask

    return box_mask(box, size, size)


def _overlaps(box, boxes, margin: float = 0.0) -> bool:
    return any(box[0] < b[2] + margin and b[0] < box[2] + margin and box[1] < b[3] + margin and b[1] < box[3] + margin
               for b in boxes)


def _misalign(rng: np.random.Generator, scene: Scene, kind: str, size: int, touched: set) -> Injected | None:
    """Apply one misalignment to ``scene`` (before drawing); None if it does not apply."""
    groups = scene.groups
    if kind == "wrong_position":
        if scene.relation is None or touched:
            return None
        actual = RELATIONS[scene.relation]
        regions = _regions(actual, size)
        # move every object of both groups into the swapped regions (same offsets)
        old = _regions(scene.relation, size)
        for o in scene.objects:
            dx, dy = regions[o.group][0] - old[o.group][0], regions[o.group][1] - old[o.group][1]
            o.box = (o.box[0] + dx, o.box[1] + dy, o.box[2] + dx, o.box[3] + dy)
        subject = [o for o in scene.objects if o.group == 0]
        box = (min(o.box[0] for o in subject), min(o.box[1] for o in subject),
               max(o.box[2] for o in subject), max(o.box[3] for o in subject))
        mask = np.zeros((size, size), bool)
        for o in subject:
            mask |= _shape_mask(o.shape, o.box, size)
        touched.update(id(o) for o in scene.objects)
        touched.add("layout")
        g0, g1 = groups
        verb = "is" if g0.count == 1 else "are"
        reason = (f"the {g0.color} {g0.shape}{'' if g0.count == 1 else 's'} {verb} {actual} the {g1.color} "
                  f"{g1.shape}{'' if g1.count == 1 else 's'} instead of {scene.relation} "
                  f"{'it' if g1.count == 1 else 'them'}")
        return Injected(kind, "misalignment", box, reason, 1.0, mask)
    free = [o for o in scene.objects if id(o) not in touched]
    if not free:
        return None
    if kind == "missing_object":
        candidates = [o for o in free if groups[o.group].count == 1]
        if not candidates:
            return None
        o = candidates[int(rng.integers(len(candidates)))]
        scene.objects.remove(o)
        touched.add(id(o))
        box = _pad(o.box, 2, size)
        return Injected(kind, "misalignment", box, f"the {o.color} {o.shape} is missing", 1.0, _rect_mask(box, size))
    if kind == "wrong_count":
        o = free[int(rng.integers(len(free)))]
        g = groups[o.group]
        if g.count >= 2 and rng.random() < 0.5:
            scene.objects.remove(o)
            touched.add(id(o))
            box = _pad(o.box, 2, size)
            reason = f"{g.phrase(g.count - 1)} instead of {COUNT_WORDS[g.count]}"
            return Injected(kind, "misalignment", box, reason, 1.0, _rect_mask(box, size))
        # one extra object of the group somewhere free in its region
        region = _regions(scene.relation, size)[o.group]
        side = o.box[2] - o.box[0]
        others = [p.box for p in scene.objects]
        for _ in range(20):
            x = rng.uniform(region[0], max(region[0], region[2] - side))
            y = rng.uniform(region[1], max(region[1], region[3] - side))
            box = (x, y, x + side, y + side)
            if not _overlaps(box, others, margin=size * 0.01):
                new = Obj(g.shape, g.color, box, o.group)
                scene.objects.append(new)
                touched.add(id(new))
                reason = f"an extra {g.color} {g.shape}: {COUNT_WORDS.get(g.count + 1, g.count + 1)} instead of {COUNT_WORDS[g.count]}"
                return Injected(kind, "misalignment", box, reason, 1.0, _shape_mask(g.shape, box, size))
        return None
    if kind == "wrong_colour":
        o = free[int(rng.integers(len(free)))]
        used = {g.color for g in groups}
        options = [c for c in COLORS if c not in used]
        new_color = options[int(rng.integers(len(options)))]
        reason = f"a {o.shape} is {new_color} instead of {o.color}"
        o.color = new_color
        touched.add(id(o))
        return Injected(kind, "misalignment", o.box, reason, 1.0, _shape_mask(o.shape, o.box, size))
    raise ValueError(f"unknown misalignment kind {kind!r}")


def _ellipse_mask(box, size: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 0.5), max((y1 - y0) / 2, 0.5)
    ys = np.arange(size)[:, None] + 0.5
    xs = np.arange(size)[None, :] + 0.5
    return ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0


def _patch_box(rng: np.random.Generator, obj: Obj, size: int, frac: tuple[float, float]) -> tuple[int, int, int, int]:
    """An integer patch box centred near the edge of ``obj``, inside the image."""
    side = int(round(size * rng.uniform(*frac)))
    side = max(side, 6)
    x0, y0, x1, y1 = obj.box
    angle = rng.uniform(0, 2 * math.pi)
    cx = (x0 + x1) / 2 + math.cos(angle) * (x1 - x0) / 2 * rng.uniform(0.3, 1.0)
    cy = (y0 + y1) / 2 + math.sin(angle) * (y1 - y0) / 2 * rng.uniform(0.3, 1.0)
    bx = int(min(max(round(cx - side / 2), 0), size - side))
    by = int(min(max(round(cy - side / 2), 0), size - side))
    return bx, by, bx + side, by + side


def _apply_artifact(rng: np.random.Generator, img: np.ndarray, obj: Obj, kind: str, box, sev: float,
                    background: np.ndarray, size: int):
    """Return ``(box, new_patch, mask, reason)`` for one artifact without touching ``img``."""
    from PIL import Image, ImageFilter

    x0, y0, x1, y1 = box
    what = f"the {obj.color} {obj.shape}"
    region = img[y0:y1, x0:x1].astype(np.float32)
    mask = np.zeros((size, size), bool)
    if kind == "blur":
        radius = max(1.0, sev * size / 64)
        patch = np.asarray(Image.fromarray(img[y0:y1, x0:x1]).filter(ImageFilter.GaussianBlur(radius)))
        mask[y0:y1, x0:x1] = True
        return box, patch, mask, f"blurred patch on the edge of {what}"
    if kind == "noise":
        ell = _ellipse_mask(box, size)
        noise = rng.normal(0, 30 + 40 * sev, size=(y1 - y0, x1 - x0, 3))
        patch = np.clip(region + noise * ell[y0:y1, x0:x1, None], 0, 255).astype(np.uint8)
        return box, patch, ell, f"grainy noise on {what}"
    if kind == "warp":
        h, w = y1 - y0, x1 - x0
        yy, xx = np.mgrid[0:h, 0:w]
        amp = sev * w / 5
        window = np.sin(np.pi * (yy + 0.5) / h) * np.sin(np.pi * (xx + 0.5) / w)
        sx = np.clip(xx + amp * window * np.sin(2 * np.pi * yy / h * 1.5), 0, w - 1).astype(np.intp)
        sy = np.clip(yy + amp * window * np.cos(2 * np.pi * xx / w * 1.5), 0, h - 1).astype(np.intp)
        mask[y0:y1, x0:x1] = True
        return box, img[y0:y1, x0:x1][sy, sx], mask, f"warped, wavy outline of {what}"
    if kind == "duplicated_part":
        # copy the patch (which straddles the object's edge) and paste it further out from the object
        side = x1 - x0
        ocx, ocy = (obj.box[0] + obj.box[2]) / 2, (obj.box[1] + obj.box[3]) / 2
        vx, vy = (x0 + x1) / 2 - ocx, (y0 + y1) / 2 - ocy
        norm = math.hypot(vx, vy) or 1.0
        dist = side * rng.uniform(0.8, 1.3)
        tx0 = int(min(max(round(x0 + vx / norm * dist), 0), size - side))
        ty0 = int(min(max(round(y0 + vy / norm * dist), 0), size - side))
        target = (tx0, ty0, tx0 + side, ty0 + side)
        mask[ty0:ty0 + side, tx0:tx0 + side] = True
        return target, img[y0:y1, x0:x1].copy(), mask, f"a duplicated piece of {what} next to it"
    if kind == "cut_part":
        mask[y0:y1, x0:x1] = True
        return box, background[y0:y1, x0:x1].copy(), mask, f"a piece of {what} is cut away"
    if kind == "blotch":
        ell = _ellipse_mask(box, size)
        color = rng.integers(0, 256, size=3).astype(np.float32)
        alpha = 0.5 + 0.4 * sev
        local = ell[y0:y1, x0:x1, None]
        patch = np.clip(region * (1 - alpha * local) + color * alpha * local, 0, 255).astype(np.uint8)
        return box, patch, ell, f"a discoloured blotch on {what}"
    raise ValueError(f"unknown artifact kind {kind!r}")


#: An artifact must change at least this fraction of its patch's pixels noticeably (else retried).
MIN_VISIBLE_FRACTION = 0.08


def _artifact(rng: np.random.Generator, img: np.ndarray, scene: Scene, kind: str, size: int,
              taken: list, background: np.ndarray) -> Injected | None:
    """Damage ``img`` (uint8 HxWx3, in place) with one visible artifact; None if no place works.

    The patch straddles an object's edge, must not overlap earlier defects, and must change at
    least `MIN_VISIBLE_FRACTION` of its pixels by more than 24 grey levels, so the ground truth
    never marks an invisible defect.
    """
    if not scene.objects:
        return None
    for _ in range(12):
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        src = _patch_box(rng, obj, size, (0.08, 0.2))
        sev = float(rng.uniform(0.6, 1.0))
        box, patch, mask, reason = _apply_artifact(rng, img, obj, kind, src, sev, background, size)
        if _overlaps(box, taken):
            continue
        x0, y0, x1, y1 = box
        before = img[y0:y1, x0:x1].astype(np.int16)
        changed = np.abs(before - patch.astype(np.int16)).max(axis=-1) > 24
        if changed.mean() < MIN_VISIBLE_FRACTION:
            continue
        img[y0:y1, x0:x1] = patch
        return Injected(kind, "artifact", tuple(float(v) for v in box), reason, sev, mask)
    return None


def importance_of(kind: str, severity: float, box, size: int) -> int:
    """Importance 1-100 from the kind, severity in [0, 1] and relative box area.

    importance = round(BASE_IMPORTANCE[kind] * severity * size_factor), clipped to 1-100, with
    size_factor = min(1, 0.6 + 0.4 * sqrt(area_fraction / 0.04)) (full weight from 4 % of the image).
    """
    x0, y0, x1, y1 = box
    frac = max(0.0, x1 - x0) * max(0.0, y1 - y0) / float(size * size)
    size_factor = min(1.0, 0.6 + 0.4 * math.sqrt(frac / 0.04))
    return int(min(max(round(BASE_IMPORTANCE[kind] * severity * size_factor), 1), 100))


def scores_from_defects(defects: list[Defect], n_objects: int) -> Scores:
    """The four scores, derived deterministically from the defects.

    With M = sum of importance/100 over misalignments and A = the same over artifacts:
    alignment = 1 - 0.45 M; plausibility = 1 - 0.45 A;
    aesthetics = 0.9 - 0.25 A - 0.03 (n_objects - 1);
    overall = 0.4 alignment + 0.35 plausibility + 0.25 aesthetics; each clipped to [0, 1], 3 decimals.
    """
    m = sum(d.importance_or() / 100 for d in defects if d.label == "misalignment")
    a = sum(d.importance_or() / 100 for d in defects if d.label == "artifact")
    clip = lambda v: round(min(max(v, 0.0), 1.0), 3)  # noqa: E731
    alignment = clip(1 - 0.45 * m)
    plausibility = clip(1 - 0.45 * a)
    aesthetics = clip(0.9 - 0.25 * a - 0.03 * max(n_objects - 1, 0))
    overall = clip(0.4 * alignment + 0.35 * plausibility + 0.25 * aesthetics)
    return Scores(alignment=alignment, aesthetics=aesthetics, plausibility=plausibility, overall=overall)


# ----------------------------------------------------------------------------------------------
# one sample
# ----------------------------------------------------------------------------------------------
def render_sample(seed: int, index: int, size: int = 512, p_clean: float = 0.2, artifacts: bool = True):
    """Sample ``index`` of ``seed``: returns a `imagedoctor.core.data.Sample` with the image in memory.

    ``artifacts=False`` stops before the artifacts are painted: the same scene (misalignments
    included) with the pixels the artifacts replaced intact, i.e. the clean source of every
    artifact region (its ground truth lists the misalignments only).
    """
    from PIL import Image, ImageDraw

    from .data.project import Sample

    if size < 32:
        raise ValueError(f"--size must be at least 32 pixels, got {size}")
    rng = np.random.default_rng([int(seed), int(index)])
    scene = make_scene(rng, size)
    prompt = scene.prompt
    injected: list[Injected] = []
    clean = rng.random() < p_clean
    n_mis = 0 if clean else int(rng.choice([0, 1, 1, 2]))
    n_art = 0 if clean else int(rng.choice([0, 1, 1, 2]))
    if not clean and n_mis == 0 and n_art == 0:
        n_art = 1
    touched: set = set()
    for kind in rng.permutation(MISALIGNMENT_KINDS):
        if len(injected) >= n_mis:
            break
        inj = _misalign(rng, scene, str(kind), size, touched)
        if inj is not None:
            injected.append(inj)
    background = _background(rng, size)
    canvas = Image.fromarray(background.copy())
    draw = ImageDraw.Draw(canvas)
    for o in scene.objects:
        _draw_shape(draw, o.shape, o.box, COLORS[o.color])
    img = np.array(canvas)
    taken = [inj.box for inj in injected]
    n_done = 0
    for kind in rng.choice(ARTIFACT_KINDS, size=len(ARTIFACT_KINDS), replace=False) if artifacts else ():
        if n_done >= n_art:
            break
        inj = _artifact(rng, img, scene, str(kind), size, taken, background)
        if inj is not None:
            injected.append(inj)
            taken.append(inj.box)
            n_done += 1
    defects, heat = [], {"misalignment": np.zeros((size, size), np.float32),
                         "artifact": np.zeros((size, size), np.float32)}
    for inj in injected:
        imp = importance_of(inj.kind, inj.severity, inj.box, size)
        defects.append(Defect(box=inj.box, label=inj.label, reason=inj.reason, importance=imp))
        np.maximum(heat[inj.label], inj.mask * (imp / 100.0), out=heat[inj.label])
    diag = Diagnosis(width=size, height=size, scores=scores_from_defects(defects, len(scene.objects)),
                     defects=defects, heatmaps=heat, prompt=prompt, format="ground_truth")
    meta = {"source": "synth", "seed": int(seed), "index": int(index), "kinds": [i.kind for i in injected],
            "objects": [{"shape": o.shape, "color": o.color, "box": [round(v, 1) for v in o.box], "group": o.group}
                        for o in scene.objects]}
    return Sample(f"synth-{int(seed)}-{int(index):06d}", None, prompt, diag, image=Image.fromarray(img), meta=meta)


def _write_chunk(args) -> list[dict]:
    """Worker: render and write samples ``indices`` into ``root``; returns their records."""
    root, seed, indices, size, p_clean, compress_level = args
    from .data.project import sample_record

    return [sample_record(render_sample(seed, i, size, p_clean), Path(root), compress_level) for i in indices]


def generate(out: str | Path, n: int, seed: int = 0, size: int = 512, workers: int | None = None,
             p_clean: float = 0.2, overwrite: bool = False, compress_level: int = 1,
             progress=None) -> dict:
    """Write ``n`` synthetic samples as a project data set at ``out``; returns timing stats.

    ``workers`` processes (default: up to 2, or 1 for small ``n``) render disjoint chunks; the
    output does not depend on ``workers``. ``progress(done, total)`` is called after each chunk.
    """
    from .data.project import DatasetWriter

    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    if not 0.0 <= p_clean <= 1.0:
        raise ValueError(f"--p-clean must be in [0, 1], got {p_clean}")
    if workers is None:
        workers = 1 if n < 64 else min(2, os.cpu_count() or 1)
    workers = max(1, int(workers))
    start = time.perf_counter()
    chunk = max(1, min(64, math.ceil(n / (workers * 4))))
    with DatasetWriter(out, overwrite=overwrite, compress_level=compress_level) as writer:
        jobs = [(str(writer.root), seed, list(range(s, min(n, s + chunk))), size, p_clean, compress_level)
                for s in range(0, n, chunk)]
        done = 0
        if workers == 1:
            results = map(_write_chunk, jobs)
            pool = None
        else:
            from concurrent.futures import ProcessPoolExecutor

            pool = ProcessPoolExecutor(max_workers=workers)
            results = pool.map(_write_chunk, jobs)
        try:
            for recs in results:
                for rec in recs:
                    writer.add_record(rec)
                done += len(recs)
                if progress is not None:
                    progress(done, n)
        finally:
            if pool is not None:
                pool.shutdown()
    elapsed = time.perf_counter() - start
    return {"n": n, "seconds": elapsed, "samples_per_second": n / elapsed if elapsed > 0 else float("inf"),
            "workers": workers, "size": size, "out": str(out)}


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def add_parser(subparsers) -> None:
    p = subparsers.add_parser("synth", help="write a synthetic defect benchmark (project data set format)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, required=True, help="number of samples")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--seed", type=int, default=0, help="random seed (sample i depends only on seed and i)")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (e.g. 128 for fast tests)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: up to 2)")
    p.add_argument("--p-clean", type=float, default=0.2, help="fraction of defect-free samples")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args) -> int:
    def progress(done: int, total: int) -> None:
        if not args.quiet:
            print(f"\rsynth: {done}/{total}", end="", file=sys.stderr, flush=True)

    stats = generate(args.out, args.n, seed=args.seed, size=args.size, workers=args.workers,
                     p_clean=args.p_clean, overwrite=args.overwrite, progress=progress)
    if not args.quiet:
        print(file=sys.stderr)
    print(f"wrote {stats['n']} samples ({stats['size']}x{stats['size']}) to {stats['out']} in "
          f"{stats['seconds']:.2f} s ({stats['samples_per_second']:.1f} samples/s, {stats['workers']} worker(s))")
    return 0
