"""``imagedoctor demo``: an offline end-to-end diagnosis with the tiny model, written as an HTML page."""

from __future__ import annotations

import argparse
import html
import time
from pathlib import Path

DEMO_SCENES = [
    ("a red circle left of a blue square", [("circle", (220, 40, 40), 0.28), ("square", (40, 70, 220), 0.70)]),
    ("two yellow triangles on a green field", [("triangle", (240, 210, 40), 0.3), ("triangle", (240, 210, 40), 0.7)]),
    ("a purple square above an orange circle", [("square", (140, 60, 190), 0.5), ("circle", (250, 140, 30), 0.5)]),
]


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


def run_demo(out: Path, model: str | None = None, max_new_tokens: int = 64) -> Path:
    from .commands import save_png, write_outputs
    from .diagnoser import Diagnoser
    from .render import diagnosis_panel
    from .tiny import build_tiny_diagnoser

    out.mkdir(parents=True, exist_ok=True)
    if model is None:
        model_dir = out / "tiny-model"
        if not (model_dir / "config.json").is_file():
            print(f"building the tiny model in {model_dir} (offline, a few seconds)")
            build_tiny_diagnoser(model_dir)
        model = str(model_dir)
        print("NOTE: the demo model is tiny and UNTRAINED: its scores, boxes and heatmaps are random. "
              "Point --model at GYX97/ImageDoctor (or a local copy) for real diagnoses.")
    dg = Diagnoser.from_pretrained(model)
    images = [sample_image(scene, seed=i) for i, (_, scene) in enumerate(DEMO_SCENES)]
    prompts = [p for p, _ in DEMO_SCENES]
    t0 = time.perf_counter()
    diags = dg.diagnose(images, prompts, max_new_tokens=max_new_tokens)
    elapsed = time.perf_counter() - t0
    rows = []
    for i, (img, d) in enumerate(zip(images, diags)):
        stem = f"sample{i}"
        save_png(img, out / f"{stem}.png")
        files = write_outputs(out, stem, img, d)
        save_png(diagnosis_panel(img, d), out / f"{stem}_panel.png")
        scores = ", ".join(f"{k}={'-' if v is None else f'{v:.2f}'}" for k, v in d.scores.as_dict().items())
        rows.append(
            f"<h2>{html.escape(d.prompt)}</h2><img src='{stem}_panel.png'><p>{scores}; {len(d.defects)} defects; "
            f"<a href='{files['json']}'>JSON</a></p><details><summary>raw output and parse problems</summary><pre>"
            f"{html.escape(d.raw_text[:2000])}</pre><ul>{''.join(f'<li>{html.escape(p)}</li>' for p in d.problems)}</ul></details>"
        )
    page = out / "index.html"
    page.write_text(
        "<!doctype html><meta charset='utf-8'><title>ImageDoctor demo</title>"
        f"<h1>ImageDoctor demo</h1><p>Model: {html.escape(str(model))}. {len(images)} images diagnosed in one batch "
        f"in {elapsed:.2f} s.</p>" + "".join(rows),
        encoding="utf-8",
    )
    print(f"diagnosed {len(images)} images in {elapsed:.2f} s; open {page}")
    return page


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="offline demo: tiny model, sample images, JSON + overlays + HTML page")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--model", default=None, help="use this model instead of the tiny untrained one")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.set_defaults(func=lambda a: run_demo(Path(a.out), a.model, a.max_new_tokens) and 0)
