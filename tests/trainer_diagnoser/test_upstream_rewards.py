"""``variant="upstream"`` rewards against values worked out by hand from the authors' definitions
(ImageDoctor's VLM-R1 reward functions, SDG's SDG_combined_v3; rules listed in docs/fidelity.md)."""

from __future__ import annotations

import numpy as np
import pytest

from imagedoctor.core.diagnosis import Defect, Diagnosis
from imagedoctor.trainer.diagnoser import rewards_upstream as up
from imagedoctor.trainer.diagnoser.rewards import (
    compute_rewards,
    grounding_reward,
    heatmap_reward,
    score_reward,
    sdg_detector_reward,
)

S = up.HEATMAP_SIZE  # 288


def gt_diag(scores=None, heatmaps=None, defects=(), w=100, h=100):
    return Diagnosis(width=w, height=h, scores=scores or {}, heatmaps=heatmaps or {}, defects=list(defects),
                     format="ground_truth")


def pred_diag(text, heatmaps=None, size=100):
    return Diagnosis(width=size, height=size, raw_text=text, heatmaps=heatmaps or {})


# --- score ------------------------------------------------------------------------------------
ANSWER = ("<think>looks fine [1,2,3,4]</think><answer>Semantic Alignment score: 0.5;\nMisalignment Locations: "
          "<point>1,2</point>\nAesthetic score: 0.9;\nPlausibility score: 0.2;\nArtifact Locations: \n"
          "Overall Impression score: 0.7</answer>")
GT_SCORES = {"alignment": 0.6, "aesthetics": 0.5, "plausibility": 0.2, "overall": 1.0}


def test_score_terms_are_unclipped_and_summed():
    # 1-3*0.1=0.7, 1-3*0.4=-0.2 (not clipped at 0), 1-0=1, 1-3*0.3=0.1
    terms = up.score_terms(ANSWER, GT_SCORES)
    assert terms == pytest.approx({"alignment": 0.7, "aesthetics": -0.2, "plausibility": 1.0, "overall": 0.1})
    assert score_reward(pred_diag(ANSWER), gt_diag(GT_SCORES), variant="upstream") == pytest.approx(1.6)
    assert score_reward(ANSWER, gt_diag(GT_SCORES), variant="upstream") == pytest.approx(1.6)  # raw text works too


def test_score_regexes_need_the_semicolon_and_missing_reads_zero():
    no_semicolon = ANSWER.replace("score: 0.5;", "score: 0.5")
    # alignment read as 0: 1 - 3*0.6 = -0.8; the others as before: -0.8 - 0.2 + 1 + 0.1
    assert score_reward(no_semicolon, gt_diag(GT_SCORES), variant="upstream") == pytest.approx(0.1)
    garbled = ANSWER.replace("score: 0.9;", "score: 0.9.1;")  # unparsable -> 0 -> 1 - 3*0.5
    assert up.score_terms(garbled, GT_SCORES)["aesthetics"] == pytest.approx(-0.5)
    # a missing ground-truth score reads as 0 too: overall 1 - 3*0.7
    assert up.score_terms(ANSWER, {**GT_SCORES, "overall": None})["overall"] == pytest.approx(-1.1)


def test_score_uses_the_first_closed_answer_block_only():
    assert score_reward(ANSWER.replace("</answer>", ""), gt_diag(GT_SCORES), variant="upstream") == 0.0
    first = "<answer>Overall Impression score: 1.0</answer>"
    terms = up.score_terms(first + ANSWER, GT_SCORES)
    assert terms["overall"] == pytest.approx(1.0) and terms["alignment"] == pytest.approx(1 - 3 * 0.6)


# --- heatmap ----------------------------------------------------------------------------------
def test_resize_linear_has_half_pixel_centres_without_antialiasing():
    out = up.resize_linear(np.array([[0.0, 1.0], [0.0, 1.0]]), size=4)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0, 0.25, 0.75, 1]] * 4, atol=1e-7)


def test_heatmap_missing_task_token_gives_two_zero_maps():
    gt = gt_diag(heatmaps={"misalignment": np.full((100, 100), 0.1, np.float32),
                           "artifact": np.zeros((100, 100), np.float32)})
    # zero maps: misalignment MSE 0.01 -> 1 - 80*0.01 = 0.2; artifact exact -> 1
    assert heatmap_reward(pred_diag(""), gt, variant="upstream") == pytest.approx(1.2)
    one_map = pred_diag("", heatmaps={"misalignment": np.full((100, 100), 0.1, np.float32)})
    assert heatmap_reward(one_map, gt, variant="upstream") == pytest.approx(1.2)  # both zero, not one
    # ours scores a rollout without maps 0 instead
    assert heatmap_reward(pred_diag(""), gt) == 0.0


def test_heatmap_scales_and_clip():
    gt = gt_diag(heatmaps={"misalignment": np.full((100, 100), 0.1, np.float32),
                           "artifact": np.zeros((100, 100), np.float32)})
    pred = {"misalignment": np.full((S, S), 0.2, np.float32), "artifact": np.full((64, 64), 0.2, np.float32)}
    # misalignment (0.1)^2 * 80 = 0.8 -> 0.2; artifact (0.2)^2 * 40 = 1.6 -> clipped -> 0
    assert up.heatmap_terms(pred, gt.heatmaps) == pytest.approx({"misalignment": 0.2, "artifact": 0.0})
    # GT maps None read as all zero: misalignment (0.05)^2 * 80 = 0.2 -> 0.8; artifact exact -> 1
    half = pred_diag("", heatmaps={"misalignment": np.full((100, 100), 0.05, np.float32),
                                   "artifact": np.zeros((100, 100), np.float32)})
    assert heatmap_reward(half, gt_diag(), variant="upstream") == pytest.approx(1.8)


# --- grounding --------------------------------------------------------------------------------
def heat(*windows):
    m = np.zeros((S, S), np.float32)
    for y0, y1, x0, x1 in windows:
        m[y0:y1, x0:x1] = 1.0
    return m


def test_boxes_come_from_the_whole_completion_scaled_to_288():
    boxes = up.completion_boxes("<think>1.[0,0,256,256];\n2.[ 10 , 20 , 30.5 , 40 ]</think><answer>[1,2,3] "
                                "<point>1,2</point></answer>")
    np.testing.assert_allclose(boxes, [[0, 0, 144, 144], [5.625, 11.25, 17.15625, 22.5]])
    assert boxes.dtype == np.float32


def test_grounding_one_box_on_its_map_and_nothing_on_the_empty_map():
    gt = gt_diag(heatmaps={"misalignment": heat((0, 144, 0, 144)), "artifact": np.zeros((S, S), np.float32)}, w=S, h=S)
    text = "<think>Proposed regions (xyxy): 1.[0,0,256,256];</think><answer>...</answer>"
    # misalignment: uniqueness 1 (one box), compactness 1, completeness 1; artifact map empty with a box: 0, 0, 0
    assert grounding_reward(text, gt, variant="upstream") == pytest.approx(3.0)
    assert grounding_reward("no boxes", gt_diag(), variant="upstream") == 6.0  # no box, empty maps: 1 x 6


def test_grounding_two_overlapping_boxes():
    gt = gt_diag(heatmaps={"misalignment": heat((0, 144, 0, 144)), "artifact": heat((0, 144, 0, 144))}, w=S, h=S)
    text = "[0,0,256,256] [128,0,384,256]"  # -> [0,0,144,144] and [72,0,216,144]
    # IoU = 72*144 / (2*144^2 - 72*144) = 1/3 -> uniqueness 2/3; compactness (1 + 0.5)/2; completeness 1
    per_map = 2 / 3 + 0.75 + 1.0
    assert grounding_reward(text, gt, variant="upstream") == pytest.approx(2 * per_map, rel=1e-6)


def test_grounding_windows_truncate_and_clamp():
    single = np.zeros((S, S), np.float32)
    single[56, 56] = 1.0
    # [1,1,101,101] * 0.5625 = [0.5625, .., 56.8125]: int() -> window [0, 56) misses pixel 56 (rounding would not)
    assert up.grounding_terms(up.completion_boxes("[1,1,101,101]"), single) == pytest.approx(
        {"uniqueness": 1.0, "compactness": 0.0, "completeness": 0.0})
    # negative corner: [-56.25, .., 28.125] -> int -> [-56, 28] -> low corner raised to 0
    assert up.grounding_terms(up.completion_boxes("[-100,-100,50,50]"), heat((0, 28, 0, 28))) == pytest.approx(
        {"uniqueness": 1.0, "compactness": 1.0, "completeness": 1.0})
    # a box beyond the map leaves an empty window: skipped, none left -> compactness 0
    assert up.grounding_terms(up.completion_boxes("[600,600,700,700]"), heat((0, 28, 0, 28))) == pytest.approx(
        {"uniqueness": 1.0, "compactness": 0.0, "completeness": 0.0})


# --- SDG detector -----------------------------------------------------------------------------
def sdg_text(items_json: str, think: str = "<think>ok</think>") -> str:
    return f"{think}<answer>{items_json}</answer>"


GT1 = [{"box_2d": [0, 0, 10, 10], "label": "misalignment", "description": "missing dog", "importance": 80}]


@pytest.mark.parametrize("text", [
    "<answer>[]</answer>",                                                     # no <think>
    "<think>x</think> []",                                                      # no answer block
    sdg_text('[{"box_2d": [0,0,10,10], "label": "artifact", "description": "a"},]'),  # trailing comma
    sdg_text("[{'box_2d': [0,0,10,10], 'label': 'artifact', 'description': 'a'}]"),   # single quotes
    sdg_text('{"box_2d": [0,0,10,10], "label": "artifact", "description": "a"}'),     # not a list
    sdg_text('[{"box_2d": ["0",0,10,10], "label": "artifact", "description": "a"}]'), # string coordinate
    sdg_text('[{"box_2d": [10,0,0,10], "label": "artifact", "description": "a"}]'),   # reversed
    sdg_text('[{"box_2d": [0,0,0,10], "label": "artifact", "description": "a"}]'),    # zero width
    sdg_text('[{"box_2d": [0,0,10], "label": "artifact", "description": "a"}]'),      # 3 numbers
    sdg_text('[{"box_2d": [0,0,10,10], "label": "artifact", "importance": 5}]'),      # no description/desc
])
def test_sdg_format_gate(text):
    assert not up.sdg_format_ok(text)
    assert up.sdg_combined_v3(text, GT1)["total"] == -1.0


def test_sdg_gate_passes_and_drops_items_without_box_or_label():
    text = sdg_text('```json\n[{"label": "artifact"}, {"box_2d": [1,2,3,4]}]\n```', think="<think>unclosed")
    assert up.sdg_format_ok(text) and up.sdg_answer_items(text) == []
    assert up.sdg_combined_v3(text, [])["total"] == pytest.approx(0.6 * 0.3)   # both empty: 0.18


def test_sdg_empty_cases():
    empty, one = sdg_text("[]"), sdg_text('[{"box_2d": [0,0,10,10], "label": "artifact", "desc": "x"}]')
    assert up.sdg_combined_v3(empty, GT1)["total"] == pytest.approx(-0.48)
    assert up.sdg_combined_v3(one, [])["total"] == pytest.approx(-0.18)


def toy_embed(texts):
    table = {"missing dog": [1.0, 0.0], "no dog here": [0.8, 0.6], "blur": [0.0, 1.0]}
    return np.array([table.get(t, [0.6, 0.8]) for t in texts]) * 3.0  # not unit length: the reward normalises


def test_sdg_exact_match_with_description_and_importance():
    text = sdg_text('[{"box_2d": [0,0,10,10], "label": "misalignment", "description": "no dog here", "importance": 60}]')
    # R_box = DIoU 1; R_imp = 1 - 20/50 = 0.6; cos = 0.8 -> (0.8-0.5)/0.4 = 0.75
    out = up.sdg_combined_v3(text, GT1, toy_embed)
    assert out["box"] == pytest.approx(1.0) and out["imp"] == pytest.approx(0.6) and out["desc"] == pytest.approx(0.75)
    assert out["total"] == pytest.approx(0.6 + 0.25 * 0.75 + 0.15 * 0.6)
    assert up.sdg_combined_v3(text, GT1)["total"] == pytest.approx(0.6 + 0.15 * 0.6)  # no embed: R_desc 0


def test_sdg_diou_normaliser_and_penalties():
    # DIoU([0,0,10,10],[5,0,15,10]) = 50/150 - 25/325
    d = 1 / 3 - 25 / 325
    assert up.sdg_diou([5, 0, 15, 10], [0, 0, 10, 10]) == pytest.approx(d)
    text = sdg_text('[{"box_2d": [5,0,15,10], "label": "misalignment", "desc": "x", "importance": 60},'
                    ' {"box_2d": [50,50,60,60], "label": "foo", "desc": "y"}]')
    # N = max(1, 2) = 2; one unmatched prediction (unknown label): R_box = (d - 0.5) / 2; R_imp = 0.6 / 2
    out = up.sdg_combined_v3(text, GT1)
    assert out["box"] == pytest.approx((d - 0.5) / 2) and out["imp"] == pytest.approx(0.3)
    assert out["total"] == pytest.approx(0.6 * (d - 0.5) / 2 + 0.15 * 0.3)


def test_sdg_labels_incompatible_both_and_case():
    art = sdg_text('[{"box_2d": [0,0,10,10], "label": "artifact", "desc": "x"}]')
    # no compatible pair: both unmatched, (0 - 0.5*2)/1 clipped at -1
    assert up.sdg_combined_v3(art, GT1)["total"] == pytest.approx(-0.6)
    both = sdg_text('[{"box_2d": [0,0,10,10], "label": "Both", "desc": "x"}]')
    assert up.sdg_combined_v3(both, GT1)["total"] == pytest.approx(0.6)  # lower-cased "both" matches anything
    bad_label = sdg_text('[{"box_2d": [0,0,10,10], "label": null, "desc": "x"}]')
    assert up.sdg_combined_v3(bad_label, GT1)["total"] == -1.0  # the authors' .lower() raises -> -1


def test_sdg_one_hungarian_over_all_pairs():
    gt = [{"box_2d": [0, 0, 10, 10], "label": "misalignment", "description": "", "importance": 50},
          {"box_2d": [20, 0, 30, 10], "label": "artifact", "description": "", "importance": 50}]
    # the "both" prediction sits on the artifact box; the assignment pairs each prediction with its own box
    text = sdg_text('[{"box_2d": [20,0,30,10], "label": "both", "desc": ""},'
                    ' {"box_2d": [0,0,10,10], "label": "misalignment", "desc": ""}]')
    assert up.sdg_match(gt, up.sdg_answer_items(text)) == [(0, 1, 1.0), (1, 0, 1.0)]
    assert up.sdg_combined_v3(text, gt)["box"] == pytest.approx(1.0)


def test_sdg_importance_is_raw():
    def imp(value, gt_value=100):
        text = sdg_text('[{"box_2d": [0,0,10,10], "label": "misalignment", "desc": "", "importance": %s}]' % value)
        return up.sdg_combined_v3(text, [{**GT1[0], "importance": gt_value}])["imp"]

    assert imp(130) == pytest.approx(0.4)  # no 1-100 clamp: 1 - 30/50
    assert imp(150) == 0.0
    assert imp('"80"') == 0.0  # a string is skipped
    assert imp("true", 50) == pytest.approx(1 - 49 / 50)  # bools are numbers to the authors
    assert up.sdg_combined_v3(sdg_text('[{"box_2d": [0,0,10,10], "label": "misalignment", "desc": "", "importance": 9}]'),
                              [{**GT1[0], "importance": None}])["total"] == -1.0


def test_sdg_gt_fields_are_swapped_from_yxyx():
    items = up.sdg_gt_from_fields([{"box_2d": [1, 2, 3, 4], "desc": "d"}], [[5, 6, 7, 8]])
    assert items == [{"box_2d": [2, 1, 4, 3], "label": "misalignment", "description": "d", "importance": 50},
                     {"box_2d": [6, 5, 8, 7], "label": "artifact", "description": "", "importance": 50}]


def test_sdg_on_diagnoses_uses_raw_text_and_0_1000_ground_truth():
    gt = gt_diag(defects=[Defect((20, 10, 40, 30), "misalignment", "missing dog", 80),
                          Defect((0, 0, 10, 10), "artifact", "blur", None)], w=200, h=100)
    assert up.diagnosis_gt_items(gt) == [
        {"box_2d": [100.0, 100.0, 200.0, 300.0], "label": "misalignment", "description": "missing dog", "importance": 80},
        {"box_2d": [0.0, 0.0, 50.0, 100.0], "label": "artifact", "description": "blur", "importance": 50}]
    text = sdg_text('[{"box_2d": [100,100,200,300], "label": "misalignment", "desc": "x", "importance": 80},'
                    ' {"box_2d": [0,0,50,100], "label": "artifact", "desc": "y", "importance": 50}]')
    assert sdg_detector_reward(pred_diag(text), gt, variant="upstream") == pytest.approx(0.6 + 0.15)


def test_compute_rewards_upstream_sums_the_terms():
    gt = gt_diag(GT_SCORES, heatmaps={"misalignment": np.zeros((100, 100), np.float32),
                                      "artifact": np.zeros((100, 100), np.float32)})
    total, parts = compute_rewards([pred_diag(ANSWER)], [gt], {"score": 1.0, "heatmap": 1.0, "grounding": 1.0},
                                   variant="upstream")
    # score 1.6; heatmap: zero maps vs empty GT 2.0; grounding: the [1,2,3,4] box against empty maps 0
    assert parts["score"][0] == pytest.approx(1.6) and parts["heatmap"][0] == 2.0 and parts["grounding"][0] == 0.0
    assert total[0] == pytest.approx(3.6)
    with pytest.raises(ValueError, match="unknown reward variant"):
        compute_rewards([pred_diag(ANSWER)], [gt], {"score": 1.0}, variant="paper")
