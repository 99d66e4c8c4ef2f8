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
    # the page itself says the model is untrained, in the line at the top
    model_line = page.split("<p class='model warn'>", 1)[1].split("</p>", 1)[0]
    assert "UNTRAINED" in model_line and "random" in model_line
    assert page.count("<section") == 3 and page.count("<tr>") >= 4  # a section per image + the summary table
    for i in range(3):
        d = Diagnosis.from_json((tmp_path / "demo" / f"sample{i}.json").read_text())
        assert d.heatmaps["artifact"] is not None
        for view in ("", "_boxes", "_misalignment_view", "_artifact_view"):
            assert f"src='sample{i}{view}.png'" in page and (tmp_path / "demo" / f"sample{i}{view}.png").is_file()


# -- bad input: each fails early, with a message naming the thing and what to do ----------------
def write_png(path, arr, mode=None):
    Image.fromarray(arr, mode=mode).save(path)
    return path


def test_16bit_png_is_scaled_not_clipped_to_white(tmp_path):
    from imagedoctor.core.commands import load_image
    from imagedoctor.core.diagnoser import to_pil_images

    ramp = np.linspace(0, 65535, 256).astype(np.uint16)[None].repeat(4, axis=0)
    path = write_png(tmp_path / "deep.png", ramp)
    assert Image.open(path).mode.startswith("I;16")
    expected = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    got = np.asarray(load_image(path))
    assert got.shape == (4, 256, 3) and (got[..., 0] == expected).all() and (got[..., 2] == expected).all()
    assert (np.asarray(Image.open(path).convert("RGB"))[..., 0] == 255).mean() > 0.95  # what PIL alone does
    with Image.open(path) as im:
        assert (np.asarray(to_pil_images(im)[0])[..., 1] == expected).all()
    assert (np.asarray(to_pil_images(ramp)[0])[..., 1] == expected).all()  # uint16 arrays too


def test_parse_rejects_binary_stdin(monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")))
    rc = main(["parse", "--format", "sdg", "--width", "10", "--height", "10", "-"])
    out, err = capsys.readouterr()
    assert rc != 0 and out == ""
    assert "standard input is not UTF-8 text (byte 0x89 at offset 0)" in err


def test_diagnose_checks_out_before_loading_the_model(tmp_path, capsys):
    img = write_png(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    a_file = tmp_path / "taken.txt"
    a_file.write_text("x")
    # the model does not exist: an error about the model would mean it was loaded first
    for out, words in ((a_file, "is a file, not a folder"), (a_file / "sub", "is not a writable folder")):
        rc = main(["diagnose", "--model", str(tmp_path / "no-model"), "--prompt", "x", str(img), "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and words in err and "no-model" not in err


def test_failed_atomic_write_leaves_no_temporary_file(tmp_path):
    import pytest

    from imagedoctor.core.commands import atomic_write

    target = tmp_path / "result.json"
    target.mkdir()  # a folder in the way: the rename fails
    with pytest.raises(OSError):
        atomic_write(target, "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    atomic_write(tmp_path / "ok.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.json", "result.json"]


def test_truncated_image_and_folder_are_named(tmp_path, capsys):
    good = write_png(tmp_path / "good.png", (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    folder = tmp_path / "pictures"
    folder.mkdir()
    args = ["diagnose", "--model", str(tmp_path / "no-model"), "--prompt", "x", "--out", str(tmp_path / "out")]
    assert main(args + [str(cut)]) == 2
    err = capsys.readouterr().err
    assert "cut.png" in err and "truncated or damaged" in err
    assert main(args + [str(folder)]) == 2
    err = capsys.readouterr().err
    assert "pictures' is a folder, not an image" in err and "does not exist" not in err
