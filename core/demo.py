"""``imagedoctor demo``: an offline end-to-end diagnosis, written as an HTML page.

Running the model (`run_demo`) and drawing the page (`write_demo_page`, `render_page`) are
separate, so the page can be built from any list of `Diagnosis` (tests use hand-made ones).
The page fits a 1280 px window without horizontal scrolling: a one-line description of the
model at the top, a summary table of all images, then per image its scores, the four views
(image, defect boxes, misalignment heatmap, artifact heatmap) side by side scaled to the page
width, its defects, and the raw model output as wrapped text.
"""

from __future__ import annotations

import argparse
import html
import time
from pathlib import Path
from typing import Sequence

from .diagnosis import LABELS, SCORE_NAMES, Diagnosis

DEMO_SCENES = [
    ("a red circle left of a blue square", [("circle", (220, 40, 40), 0.28), ("square", (40, 70, 220), 0.70)]),
    ("two yellow triangles on a green field", [("triangle", (240, 210, 40), 0.3), ("triangle", (240, 210, 40), 0.7)]),
    ("a purple square above an orange circle", [("square", (140, 60, 190), 0.5), ("circle", (250, 140, 30), 0.5)]),
]
HEATMAP_VIEWS = ("misalignment", "artifact")

_CSS = """
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; padding: 12px 20px;
       max-width: 1600px; color: #1d1d1f; background: #fff; }
h1 { font-size: 24px; margin: 4px 0; }
h2 { font-size: 18px; margin: 26px 0 6px; padding-top: 10px; border-top: 1px solid #ddd; overflow-wrap: anywhere; }
.model { margin: 4px 0 10px; padding: 6px 10px; border-radius: 4px; background: #eef3fb; overflow-wrap: anywhere; }
.model.warn { background: #fff3cd; border: 1px solid #e0b100; }
.meta { color: #555; margin: 2px 0 12px; }
table { border-collapse: collapse; width: 100%; table-layout: auto; }
th, td { border-bottom: 1px solid #e3e3e3; padding: 3px 6px; text-align: left; vertical-align: top;
         overflow-wrap: break-word; }
td.prompt { min-width: 16em; }
th { background: #f5f5f7; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.summary td.thumb { width: 72px; } .summary img { width: 64px; height: auto; display: block; }
.scores { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 6px 16px; margin: 6px 0 10px; }
.score .bar { height: 6px; background: #e6e6e6; border-radius: 3px; overflow: hidden; }
.score .bar span { display: block; height: 100%; background: #2e7d32; }
.views { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 8px; margin: 0; }
.views figure { margin: 0; min-width: 0; }
.views img { width: 100%; height: auto; display: block; border: 1px solid #ccc; }
.views figcaption { font-size: 13px; color: #333; margin-bottom: 2px; overflow-wrap: anywhere; }
.missing { display: flex; align-items: center; justify-content: center; aspect-ratio: var(--ar, 4 / 3);
           border: 1px dashed #aaa; color: #777; font-size: 13px; text-align: center; padding: 6px; }
.label-artifact { color: #c62828; font-weight: 600; } .label-misalignment { color: #1565c0; font-weight: 600; }
pre.raw { white-space: pre-wrap; overflow-wrap: anywhere; word-break: break-word; max-height: 18em; overflow-y: auto;
          background: #f7f7f9; border: 1px solid #e3e3e3; padding: 6px 8px; margin: 4px 0; font-size: 13px; }
.problems { color: #8a4b00; margin: 4px 0; }
.note { color: #555; font-size: 13px; }
"""


def sample_image(scene: list, size: tuple[int, int] = (512, 384), seed: int = 0):
    """A simple procedurally drawn scene (shapes on a gradient) for the demo."""
    import numpy as np
    from PIL import Image, ImageDraw

    w, h = size
    rng = np.random.default_rng(seed)
    ys = np.linspace(0, 1, h)[:, None, None]
    bg = (np.array([200, 225, 240]) * (1 - ys) + np.array([120, 170, 110]) * ys).repeat(w, axis=1)
    img = Image.fromarray(np.clip(bg + rng.normal(0, 4, bg.shape), 0, 255).astype("uint8"), "RGB")
    draw = ImageDraw.Draw(img)
    for i, (shape, colour, cx) in enumerate(scene):
        cy = 0.35 + 0.3 * (i % 2)
        r = min(w, h) * 0.16
        x, y = cx * w, cy * h
        if shape == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        elif shape == "square":
            draw.rectangle([x - r, y - r, x + r, y + r], fill=colour)
        else:
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)
    return img


# -- model description --------------------------------------------------------------------------
def _readme_summary(model: str) -> str:
    """The first sentence of a local model folder's README.md ('' if none), at most 120 characters."""
    readme = Path(model) / "README.md"
    if not readme.is_file():
        return ""
    for line in readme.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "---", "<", "!", "|", "```")):
            first = line.split(". ", 1)[0].rstrip(".") + "."
            return first if len(first) <= 120 else first[:117] + "..."
    return ""


def _n_params(diagnoser) -> int | None:
    try:
        return sum(p.numel() for p in diagnoser.model.parameters()) + (
            sum(p.numel() for p in diagnoser.head.parameters()) if diagnoser.head is not None else 0)
    except AttributeError:
        return None


def _count(n: int) -> str:
    return f"{n / 1e9:.1f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


def describe_model(model: str, diagnoser=None, untrained: bool = False) -> tuple[str, bool]:
    """One line saying what model made the page, and whether to flag it (untrained = random output).

    ``untrained`` is also inferred from a README that says the weights are untrained."""
    summary = _readme_summary(model)
    untrained = untrained or "untrained" in summary.lower()
    facts = []
    if diagnoser is not None:
        facts.append(getattr(diagnoser, "family", "") or "")
        n = _n_params(diagnoser)
        if n:
            facts.append(f"{_count(n)} params")
        facts.append("heatmap head" if getattr(diagnoser, "head", None) is not None else "no heatmap head")
    facts = ", ".join(f for f in facts if f)
    name = Path(model).name if Path(model).is_dir() else model
    if untrained:
        return (f"Model: {name}" + (f" ({facts})" if facts else "")
                + " — UNTRAINED, random weights: every score, box, heatmap and word below is random.", True)
    return f"Model: {name}" + (f" ({facts})" if facts else "") + (f". {summary}" if summary else ""), False


# -- page ---------------------------------------------------------------------------------------
def _fmt_score(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def _visible_text(text: str) -> str:
    """Raw model output for HTML: escaped, control characters shown as \\xNN (newlines and tabs kept)."""
    out = []
    for ch in text:
        o = ord(ch)
        out.append(ch if ch in "\n\t" or (o >= 32 and o != 127 and not 0x80 <= o < 0xA0) else f"\\x{o:02x}")
    return html.escape("".join(out))


def _view(files: dict, key: str, caption: str, width: int, height: int, missing: str) -> str:
    if key in files:
        return (f"<figure><figcaption>{html.escape(caption)}</figcaption>"
                f"<img src='{html.escape(files[key])}' width='{width}' height='{height}' alt='{html.escape(caption)}'>"
                "</figure>")
    return (f"<figure><figcaption>{html.escape(caption)}</figcaption><div class='missing' "
            f"style='--ar: {width} / {height}'>{html.escape(missing)}</div></figure>")


def render_page(entries: Sequence[dict], model_line: str, warn: bool = False, meta: str = "",
                title: str = "ImageDoctor demo") -> str:
    """The demo page as an HTML string. Each entry: ``{"stem", "diagnosis", "files"}`` where
    ``files`` maps ``image``, ``boxes``, ``misalignment``, ``artifact``, ``json`` to relative paths
    (a missing heatmap key shows a placeholder)."""
    e = html.escape
    rows, sections = [], []
    for k, entry in enumerate(entries):
        d: Diagnosis = entry["diagnosis"]
        files, stem = entry["files"], entry["stem"]
        scores = d.scores.as_dict()
        n_lab = {lab: sum(1 for x in d.defects if x.label == lab) for lab in LABELS}
        heat = {n: (None if d.heatmaps.get(n) is None else float(d.heatmaps[n].max())) for n in HEATMAP_VIEWS}
        rows.append(
            f"<tr><td class='num'>{k + 1}</td><td class='thumb'><a href='#{e(stem)}'><img src='{e(files['image'])}' "
            f"alt=''></a></td><td class='prompt'><a href='#{e(stem)}'>{e(d.prompt or stem)}</a></td>"
            + "".join(f"<td class='num'>{_fmt_score(scores[s])}</td>" for s in SCORE_NAMES)
            + f"<td class='num'>{' / '.join(str(n_lab[lab]) for lab in HEATMAP_VIEWS)}</td>"
            + f"<td class='num'>{' / '.join(_fmt_score(heat[n]) for n in HEATMAP_VIEWS)}</td>"
            + f"<td class='num'>{len(d.problems)}</td></tr>")
        bars = "".join(
            f"<div class='score'><b>{s}</b> {_fmt_score(v)}<div class='bar'><span style='width:"
            f"{0 if v is None else round(100 * min(max(v, 0.0), 1.0))}%'></span></div></div>"
            for s, v in scores.items())
        no_head = "no heatmap in this diagnosis (the model has no heatmap head, or did not predict this map)"
        views = "".join([
            _view(files, "image", "image", d.width, d.height, ""),
            _view(files, "boxes", f"defect boxes ({len(d.defects)})", d.width, d.height, ""),
            *(_view(files, n, f"{n} heatmap" + ("" if heat[n] is None else f" (max {heat[n]:.2f})"),
                    d.width, d.height, no_head) for n in HEATMAP_VIEWS)])
        if d.defects:
            defects = ("<table class='defects'><tr><th>label</th><th class='num'>importance</th><th>box (x0, y0, x1, y1)"
                       "</th><th>reason</th></tr>" + "".join(
                           f"<tr><td class='label-{e(x.label)}'>{e(x.label)}</td><td class='num'>"
                           f"{'–' if x.importance is None else x.importance}</td><td class='num'>"
                           f"{', '.join(str(round(v)) for v in x.box)}</td><td>{e(x.reason or '')}</td></tr>"
                           for x in d.defects) + "</table>")
        else:
            defects = "<p class='note'>No defects reported.</p>"
        problems = ("<ul class='problems'>" + "".join(f"<li>{e(p)}</li>" for p in d.problems) + "</ul>"
                    if d.problems else "")
        raw = d.raw_text or ""
        bad = raw.count("\ufffd")
        raw_note = (f" <span class='note'>({bad} × &#xFFFD;: bytes that are not valid UTF-8, as a model emits when "
                    "its token choice is random)</span>" if bad else "")
        sections.append(
            f"<section id='{e(stem)}'><h2>{k + 1}. {e(d.prompt or stem)}</h2><div class='scores'>{bars}</div>"
            f"<div class='views'>{views}</div>{defects}"
            f"<p><b>Raw model output</b> ({len(raw)} characters){raw_note} · <a href='{e(files['json'])}'>"
            f"Diagnosis JSON</a></p><pre class='raw'>{_visible_text(raw) or '(empty)'}</pre>{problems}</section>")
    head = ("<tr><th class='num'>#</th><th>image</th><th>prompt</th>"
            + "".join(f"<th class='num'>{s}</th>" for s in SCORE_NAMES)
            + f"<th class='num'>defects<br>{' / '.join(HEATMAP_VIEWS)}</th>"
            + f"<th class='num'>max heat<br>{' / '.join(HEATMAP_VIEWS)}</th>"
            + "<th class='num'>parse<br>problems</th></tr>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{e(title)}</h1><p class='model{' warn' if warn else ''}'>{e(model_line)}</p>"
            + (f"<p class='meta'>{e(meta)}</p>" if meta else "")
            + f"<table class='summary'>{head}{''.join(rows)}</table>{''.join(sections)}</body></html>")


def write_demo_page(out: Path, images: Sequence, diagnoses: Sequence[Diagnosis], model_line: str,
                    warn: bool = False, meta: str = "", title: str = "ImageDoctor demo") -> Path:
    """Write each image's views (PNG), its Diagnosis JSON, overlay and heatmaps, and ``index.html``.

    Independent of running a model: any images + diagnoses (same order) will do."""
    from .commands import atomic_write, save_png, write_outputs
    from .images import to_rgb
    from .render import draw_defects, heatmap_overlay

    if len(images) != len(diagnoses):
        raise ValueError(f"{len(images)} images for {len(diagnoses)} diagnoses")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (img, d) in enumerate(zip(images, diagnoses)):
        stem = f"sample{i}"
        img = to_rgb(img)
        files = write_outputs(out, stem, img, d)
        page_files = {"json": files["json"], "image": f"{stem}.png", "boxes": f"{stem}_boxes.png"}
        save_png(img, out / page_files["image"])
        # shown at about a quarter of the page width: thicker lines and larger captions than the overlay's
        save_png(draw_defects(img, d, width=max(2, round(min(img.size) / 120)), font_size=max(12, round(min(img.size) / 18))),
                 out / page_files["boxes"])
        for name in HEATMAP_VIEWS:
            hm = d.heatmaps.get(name)
            if hm is not None:
                page_files[name] = f"{stem}_{name}_view.png"
                save_png(heatmap_overlay(img, hm, alpha=0.6), out / page_files[name])
        entries.append({"stem": stem, "diagnosis": d, "files": page_files})
    page = out / "index.html"
    atomic_write(page, render_page(entries, model_line, warn=warn, meta=meta, title=title))
    return page


def run_demo(out: Path, model: str | None = None, max_new_tokens: int = 64) -> Path:
    from .commands import check_output_dir
    from .diagnoser import Diagnoser
    from .tiny import build_tiny_diagnoser

    out = check_output_dir(out)
    untrained = False
    if model is None:
        model_dir = out / "tiny-model"
        if not (model_dir / "config.json").is_file():
            print(f"building the tiny model in {model_dir} (offline, a few seconds)")
            build_tiny_diagnoser(model_dir)
        model, untrained = str(model_dir), True
        print("NOTE: the demo model is tiny and UNTRAINED: its scores, boxes and heatmaps are random. "
              "Point --model at GYX97/ImageDoctor (or a local copy) for real diagnoses.")
    dg = Diagnoser.from_pretrained(model)
    model_line, warn = describe_model(model, dg, untrained)
    images = [sample_image(scene, seed=i) for i, (_, scene) in enumerate(DEMO_SCENES)]
    prompts = [p for p, _ in DEMO_SCENES]
    t0 = time.perf_counter()
    diags = dg.diagnose(images, prompts, max_new_tokens=max_new_tokens)
    elapsed = time.perf_counter() - t0
    meta = (f"{len(images)} images diagnosed in one batch in {elapsed:.2f} s (max {max_new_tokens} new tokens)."
            + (" For real diagnoses run `python -m imagedoctor demo --model` with a trained diagnoser"
               " (e.g. GYX97/ImageDoctor)." if warn else ""))
    page = write_demo_page(out, images, diags, model_line, warn=warn, meta=meta)
    print(f"diagnosed {len(images)} images in {elapsed:.2f} s; open {page}")
    return page


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="offline demo: tiny model, sample images, JSON + overlays + HTML page")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--model", default=None, help="use this model instead of the tiny untrained one")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.set_defaults(func=lambda a: run_demo(Path(a.out), a.model, a.max_new_tokens) and 0)
