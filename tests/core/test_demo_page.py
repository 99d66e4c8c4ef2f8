"""The demo page, built from hand-made diagnoses (drawing is separate from running a model).

Where Chromium is installed, the page is also laid out at 1280 px and measured."""

import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from imagedoctor.core.demo import DEMO_SCENES, describe_model, sample_image, write_demo_page
from imagedoctor.core.diagnosis import Defect, Diagnosis

MODEL_LINE = "Hand-made diagnoses (no model): a check of the demo page"


def blob(w, h, cx, cy, r):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)).astype(np.float32)


def handmade():
    """Three images: a full diagnosis, a partial one (a score and a heatmap missing), an empty one."""
    images = [sample_image(scene, seed=i) for i, (_, scene) in enumerate(DEMO_SCENES)]
    w, h = images[0].size
    return images, [
        Diagnosis(width=w, height=h, prompt=DEMO_SCENES[0][0],
                  scores={"alignment": 0.91, "aesthetics": 0.62, "plausibility": 0.35, "overall": 0.64},
                  defects=[Defect((330, 120, 420, 210), "artifact", "warped edge <b>&", 72),
                           Defect((60, 60, 170, 170), "misalignment", "the circle should be red", 40)],
                  heatmaps={"misalignment": blob(w, h, 115, 115, 30), "artifact": 0.9 * blob(w, h, 375, 165, 25)},
                  raw_text="<think>warped; café ✓</think>\n<answer>" + "x" * 400 + "</answer>",
                  problems=["one box was clipped"]),
        Diagnosis(width=w, height=h, prompt=DEMO_SCENES[1][0],
                  scores={"alignment": 0.2, "plausibility": 0.8, "overall": 0.5},
                  heatmaps={"misalignment": np.zeros((h, w), np.float32), "artifact": None},
                  raw_text="\ufffd\ufffd33\x1b[0m"),
        Diagnosis(width=w, height=h, prompt=DEMO_SCENES[2][0]),
    ]


class Page(HTMLParser):
    """Collects the model line, summary rows, and per section its figures and raw text."""

    def __init__(self):
        super().__init__()
        self.model_line, self.rows, self.sections = None, [], []
        self._in, self._cell, self._row = None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "p" and "model" in (a.get("class") or "").split():
            self._in = "model"
            self.model_line = ""
        elif tag == "tr" and self._in != "defects" and not self.sections:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = ""
        elif tag == "section":
            self.sections.append({"imgs": [], "missing": 0, "raw": None})
        elif tag == "img" and self.sections:
            self.sections[-1]["imgs"].append(a["src"])
        elif tag == "div" and a.get("class") == "missing":
            self.sections[-1]["missing"] += 1
        elif tag == "pre":
            self._in = "raw"
            self.sections[-1]["raw"] = ""

    def handle_endtag(self, tag):
        if tag in ("p", "pre"):
            self._in = None
        elif tag == "td" and self._row is not None and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._in == "model":
            self.model_line += data
        elif self._in == "raw":
            self.sections[-1]["raw"] += data
        if self._cell is not None:
            self._cell += data


@pytest.fixture(scope="module")
def page_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-page")
    images, diags = handmade()
    write_demo_page(out, images, diags, MODEL_LINE, meta="3 images")
    return out


def test_page_shows_everything_of_every_diagnosis(page_dir):
    text = (page_dir / "index.html").read_text(encoding="utf-8")
    p = Page()
    p.feed(text)
    assert p.model_line == MODEL_LINE
    # summary: one row per image with the four scores, defect counts and heat maxima
    assert [r[2] for r in p.rows] == [s for s, _ in DEMO_SCENES]
    assert p.rows[0][3:] == ["0.91", "0.62", "0.35", "0.64", "1 / 1", "1.00 / 0.90", "1"]
    assert p.rows[1][3:] == ["0.20", "–", "0.80", "0.50", "0 / 0", "0.00 / –", "0"]
    assert p.rows[2][3:] == ["–", "–", "–", "–", "0 / 0", "– / –", "0"]
    # four views per image; a heatmap the diagnosis lacks is a placeholder, not a broken image
    assert [len(s["imgs"]) + s["missing"] for s in p.sections] == [4, 4, 4]
    assert [s["missing"] for s in p.sections] == [0, 1, 2]
    for s in p.sections:
        for src in s["imgs"]:
            assert (page_dir / src).is_file()
    # raw output readable: escaped markup, non-ASCII intact, control characters made visible
    assert p.sections[0]["raw"].startswith("<think>warped; café ✓</think>\n<answer>xxx")
    assert "&lt;think&gt;" in text and "warped edge &lt;b&gt;&amp;" in text
    assert p.sections[1]["raw"] == "\ufffd\ufffd33\\x1b[0m" and "2 × &#xFFFD;" in text
    assert p.sections[2]["raw"] == "(empty)"
    assert "one box was clipped" in text
    d = Diagnosis.from_json((page_dir / "sample0.json").read_text())
    assert d.scores.overall == 0.64 and len(d.defects) == 2


def test_views_draw_the_boxes_and_heat_where_they_are(page_dir):
    image = np.asarray(Image.open(page_dir / "sample0.png").convert("RGB")).astype(int)
    boxes = np.asarray(Image.open(page_dir / "sample0_boxes.png").convert("RGB")).astype(int)
    heat = np.asarray(Image.open(page_dir / "sample0_artifact_view.png").convert("RGB")).astype(int)
    assert tuple(boxes[180, 331]) == (255, 50, 50)  # left edge of the artifact box, in the artifact colour
    assert tuple(boxes[300, 250]) == tuple(image[300, 250])  # away from every box: untouched
    assert np.abs(heat[165, 375] - image[165, 375]).sum() > 100  # the artifact blob's centre is coloured
    assert np.abs(heat[350, 30] - image[350, 30]).sum() <= 3  # no heat there, no colour


def test_model_line_says_what_the_model_is(tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    (tiny / "README.md").write_text("# Tiny\n\nRandomly initialised and UNTRAINED: its outputs are random. More.\n")
    line, warn = describe_model(str(tiny))
    assert warn and "UNTRAINED" in line and line.startswith("Model: tiny")
    mini = tmp_path / "imagedoctor-mini"
    mini.mkdir()
    (mini / "README.md").write_text("# mini\n\nTrained on synthetic shapes only, for trying the pack. Details.\n")
    line, warn = describe_model(str(mini))
    assert not warn and line == "Model: imagedoctor-mini. Trained on synthetic shapes only, for trying the pack."
    assert describe_model("GYX97/ImageDoctor") == ("Model: GYX97/ImageDoctor", False)
    assert describe_model("x", untrained=True)[1]


CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const W = window.innerWidth, r = e => e.getBoundingClientRect();
  const views = [...document.querySelectorAll('.views img, .views .missing')];
  const model = document.querySelector('p.model'), lh = parseFloat(getComputedStyle(model).lineHeight);
  document.body.setAttribute('data-check', JSON.stringify({
    innerWidth: W, scrollWidth: document.documentElement.scrollWidth,
    views: views.map(e => [r(e).left, r(e).right, r(e).width]),
    broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src),
    modelLines: (model.clientHeight - parseFloat(getComputedStyle(model).paddingTop)
                 - parseFloat(getComputedStyle(model).paddingBottom)) / lh}));
});
</script></body>"""


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Chromium (apt-get install chromium)")
def test_page_fits_1280px_in_chromium(page_dir):
    check = page_dir / "index_check.html"
    check.write_text((page_dir / "index.html").read_text(encoding="utf-8").replace("</body>", CHECK_SCRIPT),
                     encoding="utf-8")
    r = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,2000",
                        "--virtual-time-budget=5000", "--dump-dom", check.as_uri()],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r'data-check="([^"]*)"', r.stdout)
    assert m, r.stderr[-2000:]
    got = json.loads(html.unescape(m.group(1)))
    assert got["innerWidth"] == 1280 and got["scrollWidth"] <= 1280  # no horizontal scrolling
    assert got["broken"] == []
    assert len(got["views"]) == 12
    for left, right, width in got["views"]:
        assert 0 <= left and right <= 1280 and width >= 250  # four panels side by side, scaled to the page
    assert got["modelLines"] < 1.5  # the model description is one line
