import json

import numpy as np
import pytest

from imagedoctor.core import Defect, Diagnosis, DiagnosisSchemaError, Scores, importance_bucket


def make(with_maps=True):
    rng = np.random.default_rng(0)
    maps = {"misalignment": rng.random((30, 40)).astype(np.float32), "artifact": None} if with_maps else {}
    return Diagnosis(
        width=40, height=30, prompt="a cat", format="sdg",
        scores={"alignment": 0.25, "aesthetics": None, "plausibility": 1.0, "overall": 0.0},
        defects=[Defect(box=(30, 20, 5, 2), label="artifact", reason="warp", importance=77)],
        heatmaps=maps, reasoning="r", raw_text="raw", problems=["p"],
    )


def test_defect_box_is_ordered_and_validated():
    d = Defect(box=(30, 20, 5, 2), label="artifact")
    assert d.box == (5.0, 2.0, 30.0, 20.0)
    assert d.area == 25 * 18
    with pytest.raises(DiagnosisSchemaError, match="label"):
        Defect(box=(0, 0, 1, 1), label="blur")
    with pytest.raises(DiagnosisSchemaError, match="importance"):
        Defect(box=(0, 0, 1, 1), label="artifact", importance=101)
    with pytest.raises(DiagnosisSchemaError, match="non-finite"):
        Defect(box=(0, float("nan"), 1, 1), label="artifact")


@pytest.mark.parametrize("encoding,tol", [("png8", 0.5 / 255 + 1e-6), ("f16", 1e-3)])
def test_json_round_trip(encoding, tol):
    d = make()
    back = Diagnosis.from_json(d.to_json(heatmap_encoding=encoding))
    assert back.scores == d.scores and back.defects == d.defects
    assert (back.prompt, back.format, back.reasoning, back.raw_text, back.problems) == ("a cat", "sdg", "r", "raw", ["p"])
    assert back.heatmaps["artifact"] is None
    assert np.abs(back.heatmaps["misalignment"] - d.heatmaps["misalignment"]).max() <= tol
    assert json.loads(d.to_json())["schema"] == "imagedoctor.diagnosis/1"


def test_json_without_heatmaps_and_bad_inputs():
    d = make()
    assert json.loads(d.to_json(heatmap_encoding=None))["heatmaps"] == {"misalignment": None, "artifact": None}
    with pytest.raises(DiagnosisSchemaError, match="does not parse"):
        Diagnosis.from_json("{not json")
    with pytest.raises(DiagnosisSchemaError, match="schema"):
        Diagnosis.from_json(json.dumps({"schema": "other/1", "width": 1, "height": 1}))
    with pytest.raises(DiagnosisSchemaError, match="score 'overall' must be in"):
        Diagnosis.from_dict({"width": 2, "height": 2, "scores": {"overall": 1.5}})
    with pytest.raises(DiagnosisSchemaError, match="unknown score"):
        Scores.from_dict({"beauty": 0.1})
    with pytest.raises(DiagnosisSchemaError, match=r"expected \(height, width\)"):
        Diagnosis(width=4, height=3, heatmaps={"artifact": np.zeros((4, 3))})


def test_filters_and_buckets():
    d = make(with_maps=False)
    assert d.defects_of("misalignment") == [] and len(d.defects_of("artifact", min_importance=77)) == 1
    assert d.defects_of(min_importance=78) == []
    assert [importance_bucket(v) for v in (100, 90, 89, 70, 69, 40, 39, 15, 14, 1, None)] == [
        "critical", "critical", "major", "major", "moderate", "moderate", "minor", "minor", "negligible", "negligible", None]
