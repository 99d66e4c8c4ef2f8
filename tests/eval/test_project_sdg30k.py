"""The project data set format (round trip, validation, atomic writes) and the SDG-30K reader."""

import json

import numpy as np
import pytest
from PIL import Image

from imagedoctor.core.data import (
    DatasetError,
    LoadReport,
    Sample,
    load_project_dataset,
    read_sdg30k,
    write_project_dataset,
)
from imagedoctor.core.diagnosis import Defect, Diagnosis, Scores


def make_sample(sid="s1", w=20, h=10):
    mis = np.zeros((h, w), np.float32)
    mis[2:5, 3:9] = 0.6
    diag = Diagnosis(width=w, height=h, scores=Scores(alignment=0.4, overall=0.7),
                     defects=[Defect((3, 2, 9, 5), "misalignment", "cube is blue", 60)],
                     heatmaps={"misalignment": mis, "artifact": None})
    img = Image.new("RGB", (w, h), (200, 10, 10))
    return Sample(sid, None, "a red cube", diag, image=img, meta={"source": "test"})


def test_roundtrip(tmp_path):
    root = write_project_dataset(tmp_path / "ds", [make_sample("s1"), make_sample("s2", 8, 8)])
    ds = load_project_dataset(root)
    assert [s.id for s in ds] == ["s1", "s2"] and ds.report.n_skipped == 0
    s = ds[0]
    assert s.prompt == "a red cube" and s.image_path == root / "images" / "s1.png"
    d = s.diagnosis
    assert d.scores.alignment == 0.4 and d.scores.aesthetics is None
    assert d.defects[0].box == (3, 2, 9, 5) and d.defects[0].importance == 60
    # 8-bit storage: 0.6 -> round(153) / 255 = 0.6
    assert d.heatmaps["misalignment"][3, 4] == pytest.approx(0.6, abs=1 / 255)
    assert d.heatmaps["artifact"] is None
    assert s.load_image().getpixel((0, 0)) == (200, 10, 10)
    assert s.meta == {"source": "test"}
    rec = json.loads((root / "data.jsonl").read_text().splitlines()[0])
    assert rec["heatmaps"] == {"misalignment": "hm/s1_mis.png", "artifact": None}


def test_copies_image_files_and_refuses_to_overwrite(tmp_path):
    src = tmp_path / "src.jpg"
    Image.new("RGB", (20, 10)).save(src)
    s = make_sample()
    s2 = Sample("copy", src, "p", s.diagnosis)
    write_project_dataset(tmp_path / "ds", [s2])
    assert (tmp_path / "ds" / "images" / "copy.jpg").is_file()
    with pytest.raises(ValueError, match="not empty; pass overwrite=True"):
        write_project_dataset(tmp_path / "ds", [s2])
    write_project_dataset(tmp_path / "ds", [make_sample("other")], overwrite=True)
    assert [x.id for x in load_project_dataset(tmp_path / "ds")] == ["other"]
    # a failing write leaves the old data set untouched and no temporary folder behind
    with pytest.raises(ValueError, match="not file-name safe"):
        write_project_dataset(tmp_path / "ds", [make_sample("bad id/..")], overwrite=True)
    assert [x.id for x in load_project_dataset(tmp_path / "ds")] == ["other"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "src.jpg"]


def _write_lines(root, lines):
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")


def test_invalid_lines_are_skipped_counted_and_warned(tmp_path):
    root = write_project_dataset(tmp_path / "ds", [make_sample("good")])
    good = json.loads((root / "data.jsonl").read_text())
    bad_score = dict(good, id="score", scores={"alignment": 1.5})
    bad_box = dict(good, id="box", defects=[{"box": [0, 0, 50, 5], "label": "artifact"}])
    bad_imp = dict(good, id="imp", defects=[{"box": [0, 0, 5, 5], "label": "artifact", "importance": 0}])
    missing_img = dict(good, id="noimg", image="images/none.png")
    missing_hm = dict(good, id="nohm", heatmaps={"misalignment": "hm/none.png"})
    extra = dict(good, id="extra", rating=5)
    lines = [json.dumps(good), "{not json", json.dumps(bad_score), json.dumps(bad_box), json.dumps(bad_imp),
             json.dumps(missing_img), json.dumps(missing_hm), json.dumps(extra), json.dumps(good)]
    _write_lines(root, lines)
    with pytest.warns(UserWarning, match="skipped 7 sample"):
        ds = load_project_dataset(root)
    assert [s.id for s in ds] == ["good", "extra"]
    rep = ds.report
    assert rep.skipped == {"bad_json": 1, "invalid": 4, "missing_file": 2}  # duplicate "good" is invalid
    assert rep.ignored_fields == {"rating": 1}
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_project_dataset(root, strict=True)


def test_strict_mode_names_the_problem(tmp_path):
    root = write_project_dataset(tmp_path / "ds", [make_sample("good")])
    good = json.loads((root / "data.jsonl").read_text())
    _write_lines(root, [json.dumps(dict(good, scores={"alignment": 1.5}))])
    with pytest.raises(DatasetError, match=r"score 'alignment' = 1.5 is outside \[0, 1\]"):
        load_project_dataset(root, strict=True)
    _write_lines(root, [json.dumps(dict(good, width=99))])
    with pytest.raises(DatasetError, match="image is 20x10 but the record says 99x10"):
        load_project_dataset(root, strict=True)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no data.jsonl"):
        load_project_dataset(tmp_path)


# -- SDG-30K -----------------------------------------------------------------------------------
def test_sdg30k_yxyx_norm1000_to_pixels(tmp_path):
    rec = {"id": "x1", "image": "a.png", "prompt": "a dog", "width": 1000, "height": 500,
           "defects": [{"box_2d": [100, 200, 300, 400], "label": "artifact", "description": "extra leg",
                        "importance": 80}]}
    path = tmp_path / "sdg.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    (s,) = read_sdg30k(path)
    d = s.diagnosis
    # [y0, x0, y1, x1] = [100, 200, 300, 400] on 1000x500 -> x: 200, 400 (x1); y: 100/2, 300/2
    assert d.defects[0].box == (200.0, 50.0, 400.0, 150.0)
    assert d.defects[0].reason == "extra leg" and d.defects[0].importance == 80
    assert s.id == "x1" and s.prompt == "a dog"


def test_sdg30k_released_field_is_xyxy_and_order_can_be_forced(tmp_path):
    rec = {"filepath": "a.png", "caption": "a dog", "width": 1000, "height": 500,
           "ann_translated_bboxes": [{"box_2d": [100, 200, 300, 400], "label": "artifact", "description": "leg"}]}
    path = tmp_path / "released.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    (s,) = read_sdg30k(path)
    assert s.diagnosis.defects[0].box == (100.0, 100.0, 300.0, 200.0)  # [x0, y0, x1, y1] as the evaluator reads it
    (s,) = read_sdg30k(path, box_order="yxyx")
    assert s.diagnosis.defects[0].box == (200.0, 50.0, 400.0, 150.0)
    with pytest.raises(ValueError, match="box_order"):
        list(read_sdg30k(path, box_order="xywh"))


def test_sdg30k_answer_text_size_from_image_and_clean_samples(tmp_path):
    Image.new("RGB", (200, 100)).save(tmp_path / "b.png")
    lines = [
        {"image": "b.png", "prompt": "p", "answer": '<answer>[{"box_2d": [0, 0, 500, 500], "label": "misalignment", '
                                                    '"description": "d", "importance": 40}]</answer>'},
        {"image": "b.png", "prompt": "p", "defects": []},
    ]
    path = tmp_path / "sdg.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    a, b = read_sdg30k(path, images_dir=tmp_path)
    assert a.diagnosis.defects[0].box == (0.0, 0.0, 100.0, 50.0)
    assert a.id == "sdg-000001" and b.diagnosis.defects == []


def test_sdg30k_invalid_records_are_skipped_never_half_read(tmp_path):
    ok = {"image": "a.png", "prompt": "p", "width": 100, "height": 100, "defects": []}
    lines = [
        json.dumps(ok),
        json.dumps(dict(ok, defects=[{"box_2d": [0, 0, 10, 10], "label": "artifact", "importance": 150}])),
        json.dumps(dict(ok, defects=[{"box_2d": [0, 0, 10, 10], "label": "artifact"},
                                     {"box_2d": [0, 0, 10, 10], "label": "blurry"}])),  # one bad item
        json.dumps({"image": "a.png", "defects": []}),  # no prompt
        json.dumps(dict(ok, defects=[], score=3)),  # unknown field: kept and counted
        "[1, 2",
    ]
    path = tmp_path / "sdg.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = LoadReport()
    with pytest.warns(UserWarning, match="skipped 4 sample"):
        samples = list(read_sdg30k(path, report=report, default_size=(1000, 1000)))
    assert len(samples) == 2 and report.ignored_fields == {"score": 1}
    with pytest.raises(DatasetError, match="importance 150 is outside 1-100"):
        list(read_sdg30k(path, strict=True))


def test_sdg30k_unknown_size_is_skipped(tmp_path):
    path = tmp_path / "sdg.jsonl"
    path.write_text(json.dumps({"image": "a.png", "prompt": "p", "defects": []}) + "\n")
    with pytest.raises(DatasetError, match="image size unknown"):
        list(read_sdg30k(path, strict=True))


def test_corrupt_image_file_is_skipped(tmp_path):
    root = write_project_dataset(tmp_path / "ds", [make_sample("a"), make_sample("b")])
    (root / "images" / "b.png").write_bytes(b"not a png at all")
    with pytest.warns(UserWarning, match="skipped 1 sample"):
        ds = load_project_dataset(root)
    assert [s.id for s in ds] == ["a"] and ds.report.skipped == {"invalid": 1}
    assert "cannot be read" in ds.report.messages[0]
    with pytest.raises(DatasetError, match="cannot be read"):
        load_project_dataset(root, strict=True)
