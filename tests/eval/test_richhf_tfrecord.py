"""TFRecord framing, tf.train.Example decoding and the RichHF-18K reader (no TensorFlow)."""

import io

import numpy as np
import pytest
from PIL import Image

from imagedoctor.core.data import DatasetError, LoadReport, load_project_dataset, read_richhf, tokenize_prompt
from imagedoctor.core.data.richhf import convert_richhf
from imagedoctor.core.data.tfrecord import (
    TFRecordError,
    crc32c,
    encode_example,
    parse_example,
    read_records,
    write_records,
)


def png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def richhf_example(filename, prompt=None, labels=None, art=0.75, **extra):
    """An Example with RichHF-18K's field names and encodings (8x8 maps instead of 512x512)."""
    mis_map = np.zeros((8, 8), np.uint8)
    mis_map[2:4, 2:4] = 255
    art_map = np.zeros((8, 8), np.uint8)
    feats = {
        "filename": filename.encode(),
        "aesthetics_score": 0.5,
        "artifact_score": art,
        "misalignment_score": 0.25,
        "overall_score": 1.0,
        "artifact_map": png(art_map),
        "misalignment_map": png(mis_map),
        "prompt_misalignment_label": (labels if labels is not None else "1 0 1 1").encode(),
    }
    if prompt is not None:
        feats["prompt"] = prompt.encode()
    feats.update(extra)
    return encode_example(feats)


def write_images(folder, names, size=(16, 12)):
    folder.mkdir(exist_ok=True)
    for n in names:
        Image.new("RGB", size, (10, 20, 30)).save(folder / n)


def test_crc32c_known_vector():
    # the standard CRC-32C check value of "123456789"
    assert crc32c(b"123456789") == 0xE3069283


def test_example_roundtrip_types():
    data = encode_example({"b": [b"x", b"yz"], "f": [0.5, -1.25], "i": [3, -7, 2**40], "s": "hé"})
    out = parse_example(data)
    assert out["b"] == [b"x", b"yz"]
    assert out["f"] == [0.5, -1.25]
    assert out["i"] == [3, -7, 2**40]
    assert out["s"] == ["hé".encode()]


def test_records_roundtrip_and_corruption(tmp_path):
    path = tmp_path / "x.tfrecord"
    write_records(path, [b"abc", b"", b"hello world"])
    assert list(read_records(path)) == [b"abc", b"", b"hello world"]
    raw = bytearray(path.read_bytes())
    raw[12] ^= 0xFF  # first data byte
    path.write_bytes(bytes(raw))
    with pytest.raises(TFRecordError, match="data CRC mismatch"):
        list(read_records(path))
    assert next(read_records(path, verify_crc=False)) != b"abc"
    path.write_bytes(bytes(raw[:5]))
    with pytest.raises(TFRecordError, match="truncated header"):
        list(read_records(path))


def test_tokenize_prompt():
    # split on , . ? ! " : ; and space, empty pieces dropped
    assert tokenize_prompt('a cat, on "a" mat.') == ["a", "cat", "on", "a", "mat"]


def test_read_richhf_joined_to_images(tmp_path):
    tf = tmp_path / "test.tfrecord"
    write_records(tf, [richhf_example("a.png", prompt="a red cube there"),
                       richhf_example("b.png", labels="1 1 0")])
    write_images(tmp_path / "img", ["a.png", "b.png"])
    records = list(read_richhf(tf, tmp_path / "img", prompts={"b.png": "two blue balls"}))
    assert [r.filename for r in records] == ["a.png", "b.png"]
    r = records[0]
    assert r.prompt == "a red cube there" and r.image_path == tmp_path / "img" / "a.png"
    # misalignment_score -> alignment, artifact_score -> plausibility
    assert r.scores.as_dict() == {"alignment": 0.25, "aesthetics": 0.5, "plausibility": 0.75, "overall": 1.0}
    assert r.heatmaps["misalignment"].shape == (8, 8) and r.heatmaps["misalignment"][2, 2] == 1.0
    assert r.heatmaps["artifact"].max() == 0.0
    assert r.token_labels == [1, 0, 1, 1] and r.tokens == ["a", "red", "cube", "there"]
    assert records[1].prompt == "two blue balls"


def test_invalid_examples_are_skipped_with_counts_and_a_warning(tmp_path):
    tf = tmp_path / "test.tfrecord"
    write_records(tf, [
        richhf_example("ok.png", prompt="a b c d"),
        richhf_example("range.png", prompt="a b c d", art=1.5),           # score out of [0, 1]
        richhf_example("tokens.png", prompt="a b c"),                      # 4 labels for 3 tokens
        richhf_example("noimage.png", prompt="a b c d"),                   # image not in the folder
        richhf_example("extra.png", prompt="a b c d", rating=3),          # unknown field: kept, counted
        encode_example({"filename": b"nomaps.png"}),                       # missing features
        b"\x0a\x05garbage",                                                # not a protobuf Example
    ])
    write_images(tmp_path / "img", ["ok.png", "range.png", "tokens.png", "extra.png", "nomaps.png"])
    report = LoadReport()
    with pytest.warns(UserWarning, match="skipped 5 sample"):
        records = list(read_richhf(tf, tmp_path / "img", report=report))
    assert [r.filename for r in records] == ["ok.png", "extra.png"]
    assert report.kept == 2 and report.n_skipped == 5
    assert report.skipped["missing_image"] == 1 and report.ignored_fields == {"rating": 1}
    with pytest.raises(DatasetError, match="outside the score range"):
        list(read_richhf(tf, tmp_path / "img", strict=True))


def test_likert_scores_are_rescaled(tmp_path):
    tf = tmp_path / "t.tfrecord"
    write_records(tf, [richhf_example("a.png", prompt="a b c d", art=3.0)])
    # with score_range (1, 5) the example's aesthetics 0.5 lies below 1: out of range, skipped
    with pytest.warns(UserWarning):
        assert list(read_richhf(tf, score_range=(1, 5))) == []
    write_records(tf, [encode_example({
        "filename": b"a.png", "aesthetics_score": 5.0, "artifact_score": 3.0, "misalignment_score": 1.0,
        "overall_score": 2.0, "artifact_map": png(np.zeros((4, 4))), "misalignment_map": png(np.zeros((4, 4))),
        "prompt_misalignment_label": b"1", "prompt": b"cat"})])
    (r,) = read_richhf(tf, score_range=(1, 5))
    # (v - 1) / 4: alignment (1 -> 0), aesthetics (5 -> 1), plausibility (3 -> .5), overall (2 -> .25)
    assert r.scores.as_dict() == {"alignment": 0.0, "aesthetics": 1.0, "plausibility": 0.5, "overall": 0.25}


def test_corrupt_frame_ends_the_file_with_a_count(tmp_path):
    tf = tmp_path / "t.tfrecord"
    write_records(tf, [richhf_example("a.png", prompt="a b c d"), richhf_example("b.png", prompt="a b c d")])
    raw = tf.read_bytes()
    tf.write_bytes(raw[:-10])  # truncate the second record
    report = LoadReport()
    with pytest.warns(UserWarning):
        records = list(read_richhf(tf, report=report))
    assert len(records) == 1 and report.skipped == {"corrupt_file": 1}


def test_convert_to_project_dataset_resizes_maps_to_image(tmp_path):
    tf = tmp_path / "t.tfrecord"
    write_records(tf, [richhf_example("a.png", prompt="a b c d")])
    write_images(tmp_path / "img", ["a.png"], size=(16, 12))
    out = convert_richhf(tf, tmp_path / "img", tmp_path / "ds")
    (s,) = load_project_dataset(out)
    d = s.diagnosis
    assert (d.width, d.height) == (16, 12) and d.heatmaps["misalignment"].shape == (12, 16)
    assert d.scores.alignment == 0.25 and s.meta["token_labels"] == [1, 0, 1, 1]
    assert s.load_image().size == (16, 12)
