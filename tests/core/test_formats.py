import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagedoctor.core import Defect, Diagnosis, DiagnosisParseError, parse, render
from imagedoctor.core.geometry import Frame, diou, iou
from imagedoctor.core.prompts import build_prompt, resize_for_model

IMAGEDOCTOR_OUTPUT = (
    "<think>The cube is blue, not red. I need to focus on the bounding box area. Proposed regions (xyxy): "
    "1.[100,50,200,150];\n2.[300,300,400,420];</think>\n"
    "<answer>Semantic Alignment score: 0.4;\nMisalignment Locations: <point>150,100</point><MIS>\n"
    "Aesthetic score: 0.75;\nPlausibility score: 0.9;\nArtifact Locations: <point>350,350</point><ART>\n"
    "Overall Impression score: 0.55\nText Caption: [a red cube]</answer>"
)


def test_imagedoctor_scores_labels_and_coordinates():
    # Original 1024x768 -> the model saw resize_for_model = (591, 443); boxes scale back by 1024/591, 768/443.
    w, h = 1024, 768
    fw, fh = resize_for_model(w, h)
    assert (fw, fh) == (591, 443)
    d = parse(IMAGEDOCTOR_OUTPUT, "imagedoctor", w, h, strict=True)
    assert d.scores.as_dict() == {"alignment": 0.4, "aesthetics": 0.75, "plausibility": 0.9, "overall": 0.55}
    assert [x.label for x in d.defects] == ["misalignment", "artifact"]
    x0, y0, x1, y1 = d.defects[0].box
    assert math.isclose(x0, 100 * w / fw) and math.isclose(y1, 150 * h / fh)
    assert d.prompt == "a red cube" and "cube is blue" in d.reasoning and "<MIS>" not in d.reasoning


def test_imagedoctor_lone_point_becomes_box_and_upstream_semicolons_optional():
    text = "<answer>Semantic Alignment score: 0.5\nMisalignment Locations: <point>256,256</point>\n" \
           "Aesthetic score: .5\nPlausibility score: 0.5\nArtifact Locations: None\nOverall Impression score: 1</answer>"
    d = parse(text, "imagedoctor", 512, 512, frame=Frame.pixels(512, 512), strict=True)
    [defect] = d.defects
    assert defect.label == "misalignment"
    assert defect.box == pytest.approx((256 - 25.6, 256 - 25.6, 256 + 25.6, 256 + 25.6))
    assert d.scores.aesthetics == 0.5 and d.scores.overall == 1.0


def test_sdg_norm1000_and_gemini_order():
    text = '<think>t</think><answer>[{"box_2d": [100, 200, 500, 1000], "label": "Artifact", "description": "d", "importance": 95}]</answer>'
    d = parse(text, "sdg", 2000, 500, strict=True)
    assert d.defects[0].box == (200.0, 100.0, 1000.0, 500.0)
    assert d.defects[0].label == "artifact" and d.defects[0].importance == 95
    gt = parse(text, "sdg", 2000, 500, frame=Frame.norm1000("yxyx"))
    assert gt.defects[0].box == (400.0, 50.0, 2000.0, 250.0)


def test_sdg_repairs_and_problems():
    text = "<answer>[{'box_2d': [0, 0, 10, 10], 'label': 'misalignment', 'description': 'x',},  {\"box_2d\": [1,2], \"label\": \"artifact\"}"
    d = parse(text, "sdg", 100, 100)
    assert [x.label for x in d.defects] == ["misalignment"]
    assert any("4-number" in p for p in d.problems) and any("unterminated" in p for p in d.problems)
    with pytest.raises(DiagnosisParseError, match="4-number"):
        parse(text, "sdg", 100, 100, strict=True)
    assert parse("<think>x</think><answer>[]</answer>", "sdg", 10, 10, strict=True).defects == []


def test_out_of_range_values_are_clamped_with_problems():
    d = parse("<answer>Semantic Alignment score: 7;</answer>", "imagedoctor", 64, 64)
    assert d.scores.alignment == 1.0 and any("outside [0, 1]" in p for p in d.problems)
    d = parse('<answer>[{"box_2d": [-50, -50, 2000, 500], "label": "artifact", "importance": 300}]</answer>', "sdg", 100, 100)
    assert d.defects[0].box == (0.0, 0.0, 100.0, 50.0) and d.defects[0].importance == 100


def test_parse_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown format"):
        parse("", "json", 10, 10)
    with pytest.raises(ValueError, match="positive"):
        parse("", "sdg", 0, 10)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list("<>/[]{}(),;:.\"' 0123456789-eE") + ["<think>", "</think>", "<answer>",
       "</answer>", "box_2d", "label", "artifact", "misalignment", "<point>", "</point>", "score", "Overall Impression",
       "Proposed regions", "importance", "Region 1 (artifact): ", "nan", "1e999"]), max_size=120).map("".join),
       st.sampled_from(["imagedoctor", "sdg"]), st.integers(1, 3000), st.integers(1, 3000))
def test_lenient_parser_never_raises(text, fmt, w, h):
    d = parse(text, fmt, w, h)
    # `parse` catches everything as a last line of defence; the readers themselves must not need it
    assert not any(p.startswith("parser failed") for p in d.problems), d.problems
    for defect in d.defects:
        x0, y0, x1, y1 = defect.box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    for v in d.scores.present().values():
        assert 0 <= v <= 1


@st.composite
def diagnoses(draw):
    w, h = draw(st.integers(64, 2048)), draw(st.integers(64, 2048))
    defects = []
    for _ in range(draw(st.integers(0, 4))):
        x0, y0 = draw(st.integers(0, w - 40)), draw(st.integers(0, h - 40))
        x1, y1 = draw(st.integers(x0 + 30, w)), draw(st.integers(y0 + 30, h))
        defects.append(Defect(box=(x0, y0, x1, y1), label=draw(st.sampled_from(["artifact", "misalignment"])),
                              reason=draw(st.sampled_from(["warped hand", "cube is blue", "garbled text"])),
                              importance=draw(st.integers(1, 100))))
    scores = {k: draw(st.sampled_from([0.0, 0.25, 0.5, 0.875, 1.0])) for k in ("alignment", "aesthetics", "plausibility", "overall")}
    return Diagnosis(width=w, height=h, scores=scores, defects=defects, prompt="a red cube", reasoning="thinking")


@settings(max_examples=60, deadline=None)
@given(diagnoses(), st.sampled_from(["imagedoctor", "sdg"]))
def test_render_parse_round_trip(d, fmt):
    back = parse(render(d, fmt), fmt, d.width, d.height, strict=True)
    assert len(back.defects) == len(d.defects)
    for a, b in zip(d.defects, back.defects):
        assert (a.label, a.reason, a.importance) == (b.label, b.reason, b.importance)
        # Quantisation of the model's frame (integers in ~512 px or 0-1000) bounds the error.
        tol = max(d.width, d.height) / 250
        assert max(abs(p - q) for p, q in zip(a.box, b.box)) <= tol
        assert iou(a.box, b.box) > 0.8 and diou(a.box, b.box) > 0.8
    if fmt == "imagedoctor":
        assert back.scores == d.scores


def test_prompt_builders_keep_published_text():
    p = build_prompt("  a cat ", "imagedoctor")  # upstream inserts the caption as given
    assert p.endswith("Text Caption: [  a cat ]") and "Proposed regions (xyxy)" in p
    s = build_prompt("a cat", "sdg")
    assert "Text Caption: a cat\n" in s and '"importance": N' in s and "{caption}" not in s
    with pytest.raises(ValueError, match="unknown format"):
        build_prompt("a", "xml")
