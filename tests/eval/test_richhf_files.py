"""RichHF-18K files as users get them: compressed, LFS pointers, extra features, RGB maps, no prompts."""

import io
import json
import struct

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from imagedoctor.cli import main as cli_main
from imagedoctor.core.data import DatasetError, LoadReport, export_pickapic, read_richhf
from imagedoctor.core.data import tfrecord as tfr
from imagedoctor.core.data.richhf import decode_map_like_tf
from imagedoctor.core.data.tfrecord import (
    LFSPointerError,
    TFRecordError,
    crc32c,
    crc32c_python,
    encode_example,
    read_records,
    sniff_tfrecord,
    write_records,
)

LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:6819ef72631de3af32904f2af3c990b8be0c9597ef3917b9cf0a799161156049\nsize 10112337\n")


def png(arr, mode=None, pnginfo=None):
    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, np.uint8), mode=mode).save(buf, format="PNG", pnginfo=pnginfo)
    return buf.getvalue()


def example(name, i=0, mis=None, **extra):
    mis = png(np.full((8, 8), 40 * i, np.uint8)) if mis is None else mis
    feats = {"filename": name, "aesthetics_score": 0.1 * i, "artifact_score": 0.5, "misalignment_score": 0.2 * i,
             "overall_score": 0.3, "artifact_map": png(np.zeros((8, 8))), "misalignment_map": mis,
             "prompt_misalignment_label": "1 1"}
    feats.update(extra)
    return encode_example(feats)


# -- CRC-32C --------------------------------------------------------------------------------------
def test_fast_and_python_crc32c_agree():
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 64, 1000, 4099):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(data) == crc32c_python(data)
    assert crc32c_python(b"123456789") == 0xE3069283


def test_pure_python_fallback_still_verifies(tmp_path, monkeypatch):
    monkeypatch.setattr(tfr, "_crc32c_impl", crc32c_python)
    path = tmp_path / "x.tfrecord"
    write_records(path, [b"abc", b"hello"])
    assert list(read_records(path)) == [b"abc", b"hello"]
    raw = bytearray(path.read_bytes())
    raw[13] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(TFRecordError, match="data CRC mismatch"):
        list(read_records(path))


# -- compression and pointers ---------------------------------------------------------------------
@pytest.mark.parametrize("compression", ["gzip", "zlib"])
def test_compressed_files_read_by_magic_bytes_whatever_the_name(tmp_path, compression):
    records = [example(f"img{i}.png", i) for i in range(1, 4)]
    for name in (f"test.tfrecord.{'gz' if compression == 'gzip' else 'zz'}", "test.tfrecord"):
        path = tmp_path / name
        write_records(path, records, compression=compression)
        assert sniff_tfrecord(path) == compression
        assert list(read_records(path)) == records
        got = list(read_richhf(path))
        assert [r.filename for r in got] == ["img1.png", "img2.png", "img3.png"]
        assert got[2].scores.alignment == pytest.approx(0.6) and got[2].prompt is None
    # a folder scan picks up the compressed file and reads it
    assert len(list(read_richhf(tmp_path))) == 6


@pytest.mark.parametrize("compression", ["gzip", "zlib"])
def test_damaged_compressed_stream_is_reported_as_such(tmp_path, compression):
    path = tmp_path / "t.tfrecord.gz"
    write_records(path, [example(f"img{i}.png", i) for i in range(1, 4)], compression=compression)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # cut in the middle
    with pytest.raises(TFRecordError, match=f"{compression}-compressed.*(damaged|truncated)"):
        list(read_records(path))
    report = LoadReport()
    with pytest.warns(UserWarning, match="corrupt_file"):
        list(read_richhf(path, report=report))
    assert report.skipped == {"corrupt_file": 1}


def test_plain_file_whose_length_looks_like_a_zlib_header(tmp_path):
    # a record of 0x9C78 bytes starts with 78 9C, a valid zlib header: the length CRC decides
    path = tmp_path / "t.tfrecord"
    write_records(path, [b"x" * 0x9C78])
    assert path.read_bytes()[:2] == b"\x78\x9c" and sniff_tfrecord(path) == "none"
    assert [len(r) for r in read_records(path)] == [0x9C78]


def test_lfs_pointer_says_what_it_is_and_how_to_fetch(tmp_path, capsys):
    path = tmp_path / "test.tfrecord"
    path.write_bytes(LFS_POINTER)
    assert sniff_tfrecord(path) == "lfs-pointer"
    with pytest.raises(LFSPointerError, match=r"Git LFS pointer file .*10112337-byte file.*not the data.*git lfs pull"):
        list(read_records(path))
    with pytest.raises(LFSPointerError, match="hf download"):  # not skipped as damage, even when not strict
        list(read_richhf(tmp_path))
    (tmp_path / "p.json").write_text("[]")
    assert cli_main(["eval", "--pred", str(tmp_path / "p.json"), "--gt", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Git LFS pointer" in err and "git lfs pull" in err and "Traceback" not in err


def test_not_a_tfrecord_says_so(tmp_path):
    path = tmp_path / "notes.tfrecord"
    path.write_bytes(b"just some text, certainly not a TFRecord file")
    with pytest.raises(TFRecordError, match="neither a TFRecord frame nor a GZIP/ZLIB header"):
        list(read_records(path))


# -- schema tolerance -----------------------------------------------------------------------------
def test_strict_keeps_extra_features(tmp_path):
    path = tmp_path / "t.tfrecord"
    write_records(path, [example("a.png", 1, rating=3, worker_ids=[b"w1", b"w2"]), example("b.png", 2)])
    report = LoadReport()
    with pytest.warns(UserWarning, match="ignored unknown field"):
        got = list(read_richhf(path, strict=True, report=report))
    assert [r.filename for r in got] == ["a.png", "b.png"]
    assert report.ignored_fields == {"rating": 1, "worker_ids": 1}
    # strict still stops at real damage
    write_records(path, [example("a.png", 1, aesthetics_score=2.0)])
    with pytest.raises(DatasetError, match="outside the score range"):
        list(read_richhf(path, strict=True))


# The values below were produced by libpng 1.6.39 called exactly as TensorFlow's
# tensorflow/core/lib/png/png_io.cc CommonInitDecode calls it for tf.image.decode_image(x, channels=1)
# (strip alpha, palette -> RGB, png_set_rgb_to_gray(png, 1, 0.299, 0.587)). PIL's convert("L")
# rounds instead and gives [124, 76, 150, 29, 124, 93, 128, 2] for the same pixels.
RGB_PIXELS = [[200, 100, 50], [255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 200, 30], [37, 91, 250], [128, 128, 128],
              [1, 2, 3]]
TF_GRAY = [124, 76, 149, 29, 123, 92, 128, 1]
TF_GRAY_GAMMA_045455 = [137, 147, 200, 95, 157, 115, 128, 0]  # file with a gAMA chunk of 0.45455


def test_rgb_maps_are_converted_like_tensorflow():
    rgb = np.array([RGB_PIXELS], np.uint8)
    assert decode_map_like_tf(png(rgb)).ravel().tolist() == TF_GRAY
    rgba = np.concatenate([rgb, np.zeros((1, 8, 1), np.uint8)], axis=2)  # alpha dropped, not composited
    assert decode_map_like_tf(png(rgba, "RGBA")).ravel().tolist() == TF_GRAY
    pal = Image.fromarray(rgb).quantize(colors=8, method=Image.Quantize.MAXCOVERAGE)
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    expected = np.asarray(pal.convert("RGB"), np.int64)
    assert decode_map_like_tf(buf.getvalue()).ravel().tolist() == (
        (9797 * expected[..., 0] + 19234 * expected[..., 1] + 3737 * expected[..., 2]) >> 15).ravel().tolist()
    info = PngImagePlugin.PngInfo()
    info.add(b"gAMA", struct.pack(">I", 45455))
    assert decode_map_like_tf(png(rgb, pnginfo=info)).ravel().tolist() == TF_GRAY_GAMMA_045455
    # 16-bit gray keeps the high byte (libpng's strip_16), not a clip to 255
    deep = Image.fromarray(np.array([[0, 255, 256, 40000, 65535]], np.uint16))
    buf = io.BytesIO()
    deep.save(buf, format="PNG")
    assert decode_map_like_tf(buf.getvalue()).ravel().tolist() == [0, 0, 1, 156, 255]


def test_reader_accepts_rgb_maps(tmp_path):
    path = tmp_path / "t.tfrecord"
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[2:4, 2:4] = (255, 255, 255)
    rgb[5, 5] = RGB_PIXELS[0]
    write_records(path, [example("a.png", 1, mis=png(rgb))])
    (r,) = read_richhf(path, strict=True)
    m = r.heatmaps["misalignment"]
    assert m.shape == (8, 8) and m[2, 2] == 1.0 and m[5, 5] == pytest.approx(124 / 255) and m[0, 0] == 0.0


# -- prompts and the eval command -----------------------------------------------------------------
def write_preds(path, n=3):
    from imagedoctor.core.diagnosis import Diagnosis

    preds = [{"id": f"img{i}", **Diagnosis(width=8, height=8, scores={"alignment": 0.2 * i, "overall": 0.1 * i}).to_dict()}
             for i in range(1, n + 1)]
    path.write_text(json.dumps(preds))


def test_eval_without_prompts_and_with_score_range(tmp_path, capsys):
    gt = tmp_path / "test.tfrecord.gz"
    # Likert 1-5 scores: out of the default [0, 1] for i >= 2
    write_records(gt, [example(f"sub/img{i}.png", i, misalignment_score=1.0 + i, aesthetics_score=3.0,
                               artifact_score=2.0, overall_score=1.0 + 0.5 * i) for i in range(1, 4)],
                  compression="gzip")
    write_preds(tmp_path / "p.json")
    argv = ["eval", "--pred", str(tmp_path / "p.json"), "--gt", str(gt), "--json"]
    with pytest.warns(UserWarning, match="outside the score range"):
        assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "no ground-truth samples" in err and "--score-range" in err
    assert cli_main(argv + ["--score-range", "1", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ground_truth"]["format"] == "richhf" and out["n_images"] == 3 and out["n_missing"] == 0
    # alignment (i+1-1)/4 vs predicted 0.2 i: perfectly correlated
    assert out["scores"]["per_dim"]["alignment"]["plcc"] == pytest.approx(1.0)
    assert out["heatmaps"]["misalignment"]["n"] == 0 and out["heatmaps"]["misalignment"]["n_missing"] == 3
    assert cli_main(["eval", "--pred", str(tmp_path / "p.json"), "--gt", str(tmp_path / "p.json"),
                     "--format", "sdg", "--score-range", "1", "5"]) == 2
    assert "RichHF ground truth only" in capsys.readouterr().err


def test_eval_model_over_richhf_needs_prompts_then_runs(tiny_model_dir, tmp_path, capsys):
    gt = tmp_path / "test.tfrecord"
    write_records(gt, [example(f"train/uid{i}.png", i) for i in range(1, 3)])
    images = tmp_path / "pickapic"
    images.mkdir()
    for i in range(1, 3):
        Image.new("RGB", (40, 32), (30 * i, 90, 200)).save(images / f"uid{i}.jpg")  # found by uid
    base = ["eval", "--model", str(tiny_model_dir), "--data", str(gt), "--max-new-tokens", "4", "--device", "cpu",
            "--dtype", "fp32", "--no-progress", "--json"]
    assert cli_main(base) == 2
    assert "needs --images" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="missing_prompt"):
        assert cli_main(base + ["--images", str(images)]) == 2
    err = capsys.readouterr().err
    assert "no example has a prompt" in err and "--prompts" in err and '"filename"' in err
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"filename": f"uid{i}.png", "prompt": "a cat"}) + "\n" for i in range(1, 3)))
    assert cli_main(base + ["--images", str(images), "--prompts", str(prompts)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_images"] == 2 and out["n_missing"] == 0 and "sdg" not in out
    bad = tmp_path / "prompts.tsv"
    bad.write_text("uid1.png a cat without a tab\n")
    assert cli_main(base + ["--images", str(images), "--prompts", str(bad)]) == 2
    assert "filename<TAB>prompt" in capsys.readouterr().err


def test_export_pickapic_writes_prompts_and_images_the_reader_joins(tmp_path):
    gt = tmp_path / "test.tfrecord"
    write_records(gt, [encode_example({"filename": "u1.png", "aesthetics_score": 0.5, "artifact_score": 0.5,
                                       "misalignment_score": 0.5, "overall_score": 0.5,
                                       "artifact_map": png(np.zeros((4, 4))), "misalignment_map": png(np.zeros((4, 4))),
                                       "prompt_misalignment_label": "1 1 0"}),
                       example("u2.png", 1)])
    jpg = io.BytesIO()
    Image.new("RGB", (20, 10), (1, 2, 3)).save(jpg, format="JPEG")
    rows = [{"caption": "other", "image_0_uid": "x", "image_1_uid": "y", "jpg_0": b"", "jpg_1": b""},
            {"caption": "a red, cube.", "image_0_uid": "z", "image_1_uid": "u1", "jpg_0": b"", "jpg_1": jpg.getvalue()}]
    result = export_pickapic(rows, gt, tmp_path / "out")
    assert result["found"] == 1 and result["missing"] == ["u2.png"]
    assert (tmp_path / "out" / "images" / "u1.jpg").is_file()
    line = json.loads((tmp_path / "out" / "prompts.jsonl").read_text().splitlines()[0])
    assert line == {"filename": "u1.png", "uid": "u1", "prompt": "a red, cube."}
    report = LoadReport()
    with pytest.warns(UserWarning, match="missing_image"):  # u2 was not in the rows
        (r,) = read_richhf(gt, tmp_path / "out" / "images", result["prompts"], require_prompt=True, report=report)
    assert r.prompt == "a red, cube." and r.tokens == ["a", "red", "cube"] and r.image_path.name == "u1.jpg"
    assert report.skipped == {"missing_image": 1}
