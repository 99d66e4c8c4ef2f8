"""The CLI end to end, run as users run it (python -m imagedoctor ...)."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from imagedoctor.core import Diagnosis
from imagedoctor.cli import main


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "imagedoctor", *map(str, args)], capture_output=True, text=True,
                          input=stdin, timeout=300)


def test_diagnose_writes_json_overlay_and_heatmaps(tiny_model_dir, tmp_path):
    paths = []
    for i, size in enumerate([(96, 64), (64, 96)]):
        p = tmp_path / f"img{i}.png"
        Image.fromarray((np.random.default_rng(i).random((size[1], size[0], 3)) * 255).astype("uint8")).save(p)
        paths.append(p)
    out = tmp_path / "out"
    rc = main(["diagnose", "--model", str(tiny_model_dir), "--prompt", "a red cube", *map(str, paths), "--out", str(out),
               "--max-new-tokens", "8", "--quiet", "--device", "cpu"])
    assert rc == 0
    for i, size in enumerate([(96, 64), (64, 96)]):
        d = Diagnosis.from_json((out / f"img{i}.json").read_text())
        assert (d.width, d.height) == size and d.prompt == "a red cube"
        assert Image.open(out / f"img{i}_overlay.png").size == size
        assert Image.open(out / f"img{i}_artifact.png").size == size


def test_diagnose_missing_image_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    rc = main(["diagnose", "--model", str(tiny_model_dir), "--prompt", "x", str(tmp_path / "missing.png"), "--out", str(tmp_path)])
    assert rc == 2 and "missing.png' does not exist" in capsys.readouterr().err


def test_parse_stdin_and_strict():
    text = '<answer>[{"box_2d": [0, 0, 500, 500], "label": "artifact", "description": "x", "importance": 60}]</answer>'
    r = run("parse", "--format", "sdg", "--width", 200, "--height", 100, "-", stdin=text)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["defects"][0]["box"] == [0.0, 0.0, 100.0, 50.0]
    r = run("parse", "--format", "sdg", "--width", 200, "--height", 100, "--strict", "-", stdin="<answer>[{oops")
    assert r.returncode == 1 and "does not follow the format" in r.stderr


def test_tiny_model_and_demo(tmp_path):
    r = run("tiny-model", tmp_path / "m", "--family", "qwen3_vl", "--no-head")
    assert r.returncode == 0 and "UNTRAINED" in r.stdout
    assert (tmp_path / "m" / "config.json").is_file()
    r = run("demo", "--out", tmp_path / "demo", "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr
    assert "UNTRAINED" in r.stdout
    page = (tmp_path / "demo" / "index.html").read_text()
    assert page.count("<img") == 3
    for i in range(3):
        d = Diagnosis.from_json((tmp_path / "demo" / f"sample{i}.json").read_text())
        assert d.heatmaps["artifact"] is not None
