"""``imagedoctor demo``: an offline end-to-end diagnosis, written as an HTML page.

Running the model (`run_demo`) and drawing the page (`write_demo_page`, `render_page`) are
separate, so the page can be built from any list of `Diagnosis` (tests use hand-made ones). By
default the shipped mini diagnoser (trained on synthetic shapes only) diagnoses four synthetic
benchmark images whose ground truth is known, and each section shows that ground truth too.
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

#: Seed of the demo's synthetic images. The shipped mini never saw it: it was trained on seed 0,
#: validated on 2000 and evaluated on 1000 (docs/mini-model.md).
DEMO_SEED = 3000
DEMO_MODEL = "imagedoctor-mini"
HEATMAP_VIEWS = ("misalignment", "artifact")

_CSS = """
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; padding: 12px 20px;
       max-width: 1600px; color: #1d1d1f; background: #fff; }
h1 { font-size: 24px; margin: 4px 0; }
h2 { font-size: 18px; margin: 26px 0 6px; padding-top: 10px; border-top: 1px solid #ddd; overflow-wrap: anywhere; }
.model { margin: 4px 0 10px; padding: 6px 10px; font-size: 14px; border-radius: 4px; background: #eef3fb; overflow-wrap: anywhere; }
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
.truth { margin: 2px 0 6px; color: #333; font-size: 14px; }
"""


def demo_samples(seed: int = DEMO_SEED, size: int = 512) -> list:
    """Four synthetic benchmark samples (image, prompt, ground truth; `core.synth.render_sample`):
    the first of ``seed`` without defects, with misalignments only, with artifacts only, and with both."""
    from .synth import render_sample

    kinds = [(False, False), (True, False), (False, True), (True, True)]
    found: dict = {}
    for index in range(2000):
        s = render_sample(seed, index, size=size)
        labels = {d.label for d in s.diagnosis.defects}
        found.setdefault(("misalignment" in labels, "artifact" in labels), s)
        if all(k in found for k in kinds):
            return [found[k] for k in kinds]
    raise RuntimeError(f"synthetic seed {seed}: not every kind of sample among the first 2000")


def ground_truth_line(truth: Diagnosis) -> str:
    """What the synthetic generator injected into an image, in one sentence for the page."""
    if not truth.defects:
        return "Ground truth: no defects (a clean image)."
    return "Ground truth (injected by the generator): " + "; ".join(
        f"{d.label}: {d.reason}" for d in truth.defects) + "."


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

    ``untrained`` is also inferred from a README that says the weights are untrained. A built-in
    model (``imagedoctor-mini``) is described by `diagnoser.BUILTIN_DESCRIPTIONS`."""
    from .diagnoser import BUILTIN_DESCRIPTIONS

    builtin = BUILTIN_DESCRIPTIONS.get(model) if not Path(model).is_dir() else None
    summary = (builtin[0].upper() + builtin[1:] + ".") if builtin else _readme_summary(model)
    untrained = untrained or "untrained" in summary.lower()
    facts = []
    if diagnoser is not None:
        facts.append(getattr(diagnoser, "family", "") or "")
        n = _n_params(diagnoser)
        if n:
            facts.append(f"{_count(n)} params")
        facts.append("heatmap head" if getattr(diagnoser, "head", None) is not None else "no heatmap head")
    facts = ", ".join(f for f in facts if f) if not builtin else ""  # one line at 1280 px: what it is first
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
    (a missing heatmap key shows a placeholder); an optional ``truth`` (text) says what the image
    really contains."""
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
        truth = f"<p class='truth'>{e(entry['truth'])}</p>" if entry.get("truth") else ""
        problems = ("<ul class='problems'>" + "".join(f"<li>{e(p)}</li>" for p in d.problems) + "</ul>"
                    if d.problems else "")
        raw = d.raw_text or ""
        bad = raw.count("\ufffd")
        raw_note = (f" <span class='note'>({bad} × &#xFFFD;: bytes that are not valid UTF-8, as a model emits when "
                    "its token choice is random)</span>" if bad else "")
        sections.append(
            f"<section id='{e(stem)}'><h2>{k + 1}. {e(d.prompt or stem)}</h2>{truth}<div class='scores'>{bars}</div>"
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
                    warn: bool = False, meta: str = "", title: str = "ImageDoctor demo",
                    truths: Sequence[str] | None = None) -> Path:
    """Write each image's views (PNG), its Diagnosis JSON, overlay and heatmaps, and ``index.html``.

    Independent of running a model: any images + diagnoses (same order) will do; ``truths`` (one
    line per image) say what each image really contains, where that is known."""
    from .commands import atomic_write, save_png, write_outputs
    from .images import to_rgb
    from .render import draw_defects, heatmap_overlay

    if len(images) != len(diagnoses):
        raise ValueError(f"{len(images)} images for {len(diagnoses)} diagnoses")
    if truths is not None and len(truths) != len(images):
        raise ValueError(f"{len(truths)} ground-truth lines for {len(images)} images")
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
        entries.append({"stem": stem, "diagnosis": d, "files": page_files, "truth": truths[i] if truths else None})
    page = out / "index.html"
    atomic_write(page, render_page(entries, model_line, warn=warn, meta=meta, title=title))
    return page


def run_demo(out: Path, model: str = DEMO_MODEL, max_new_tokens: int = 512) -> Path:
    """Diagnose the four `demo_samples` with ``model`` (default: the shipped mini) and write the page."""
    from .commands import check_output_dir
    from .diagnoser import BUILTIN_DESCRIPTIONS, Diagnoser

    out = check_output_dir(out)
    if model in BUILTIN_DESCRIPTIONS and not Path(model).is_dir():
        print(f"NOTE: {model} is {BUILTIN_DESCRIPTIONS[model]} (python -m imagedoctor demo --model M).")
    dg = Diagnoser.from_pretrained(model)
    model_line, warn = describe_model(model, dg)
    samples = demo_samples()
    images, prompts = [s.load_image() for s in samples], [s.prompt for s in samples]
    t0 = time.perf_counter()
    diags = dg.diagnose(images, prompts, max_new_tokens=max_new_tokens)
    elapsed = time.perf_counter() - t0
    meta = (f"{len(images)} synthetic benchmark images (seed {DEMO_SEED}: never used in training), diagnosed in one "
            f"batch in {elapsed:.2f} s (at most {max_new_tokens} new tokens). Each section lists what was really "
            "injected (ground truth) above the model's diagnosis."
            + (" For real diagnoses run `python -m imagedoctor demo --model` with a trained diagnoser"
               " (e.g. GYX97/ImageDoctor)." if warn else ""))
    page = write_demo_page(out, images, diags, model_line, warn=warn, meta=meta,
                           truths=[ground_truth_line(s.diagnosis) for s in samples])
    print(f"diagnosed {len(images)} images in {elapsed:.2f} s; open {page}")
    return page


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="offline demo: the shipped mini diagnoser on synthetic images; JSON, overlays, "
                                    "HTML page")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--model", default=DEMO_MODEL,
                   help=f"model folder, hub id or built-in name (default: {DEMO_MODEL}, trained on synthetic shapes "
                        "only; real images need e.g. GYX97/ImageDoctor)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.set_defaults(func=lambda a: run_demo(Path(a.out), a.model, a.max_new_tokens) and 0)
