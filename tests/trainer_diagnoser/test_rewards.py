"""Hand-made cases for our diagnoser GRPO rewards (variant "ours"; conventions: docs/provenance.md;
the upstream variant has its own file)."""

from __future__ import annotations

import numpy as np
import pytest

from imagedoctor.core.diagnosis import Defect, Diagnosis
from imagedoctor.trainer.diagnoser.rewards import (
    compute_rewards,
    format_reward,
    grounding_reward,
    grounding_terms,
    heatmap_reward,
    score_reward,
    sdg_detector_reward,
)

W = H = 100


def diag(scores=None, defects=(), heatmaps=None, problems=()):
    return Diagnosis(width=W, height=H, scores=scores or {}, defects=list(defects), heatmaps=heatmaps or {},
                     problems=list(problems))


def square(x0, y0, x1, y1, value=1.0):
    m = np.zeros((H, W), np.float32)
    m[y0:y1, x0:x1] = value
    return m


# --- score ----------------------------------------------------------------------------------
def test_score_reward_exact_and_l1():
    gt = diag({"alignment": 0.5, "overall": 0.8})
    assert score_reward(diag({"alignment": 0.5, "overall": 0.8}), gt) == pytest.approx(1.0)
    # |0.1| -> 1 - 0.3 = 0.7 ; |0.0| -> 1 ; mean 0.85
    assert score_reward(diag({"alignment": 0.6, "overall": 0.8}), gt) == pytest.approx(0.85)
    # far off is clipped at 0, a missing score is 0
    assert score_reward(diag({"alignment": 1.0}), gt) == pytest.approx(0.0)
    assert score_reward(diag(), diag()) == 1.0


# --- heatmap --------------------------------------------------------------------------------
def test_heatmap_reward_identical_empty_and_missing():
    g = {"misalignment": square(10, 10, 30, 30), "artifact": np.zeros((H, W), np.float32)}
    assert heatmap_reward(diag(heatmaps=dict(g)), diag(heatmaps=g), size=100) == pytest.approx(1.0)
    # predicted nothing where the GT is empty: MSE 0 -> 1 for that map
    both_empty = {"misalignment": None, "artifact": np.zeros((H, W), np.float32)}
    assert heatmap_reward(diag(heatmaps={"artifact": np.zeros((H, W), np.float32)}), diag(heatmaps=both_empty)) == 1.0
    # a missing predicted map scores 0
    assert heatmap_reward(diag(), diag(heatmaps=g)) == 0.0
    # misalignment MSE 0.04 -> 1 - 80*0.04 = -> clipped 0; artifact exact -> 1; mean 0.5
    pred = {"misalignment": np.zeros((H, W), np.float32), "artifact": np.zeros((H, W), np.float32)}
    assert heatmap_reward(diag(heatmaps=pred), diag(heatmaps=g), size=100) == pytest.approx(0.5)


def test_heatmap_reward_scales():
    gt = {"artifact": np.zeros((H, W), np.float32)}
    pred = {"artifact": np.full((H, W), 0.1, np.float32)}  # MSE 0.01 -> 1 - 40*0.01 = 0.6
    assert heatmap_reward(diag(heatmaps=pred), diag(heatmaps=gt), size=100) == pytest.approx(0.6, abs=1e-5)


# --- grounding -----------------------------------------------------------------------------
def test_grounding_terms_hand_made():
    heat = square(0, 0, 50, 50)
    t = grounding_terms([(0, 0, 50, 50)], heat)
    assert t == pytest.approx({"completeness": 1.0, "compactness": 1.0, "uniqueness": 1.0})
    t = grounding_terms([(0, 0, 50, 25)], heat)  # half the heat, all inside
    assert t["completeness"] == pytest.approx(0.5) and t["compactness"] == pytest.approx(1.0)
    t = grounding_terms([(0, 0, 100, 100)], heat)  # all the heat, diluted 4x
    assert t["completeness"] == pytest.approx(1.0) and t["compactness"] == pytest.approx(0.25)
    t = grounding_terms([(0, 0, 50, 50), (0, 0, 50, 50)], heat)  # duplicate boxes: IoU 1
    assert t["uniqueness"] == pytest.approx(0.0)


def test_grounding_empty_conventions():
    empty = np.zeros((H, W), np.float32)
    assert grounding_terms([], empty) == {"completeness": 1.0, "compactness": 1.0, "uniqueness": 1.0}
    assert grounding_terms([(0, 0, 10, 10)], empty) == {"completeness": 0.0, "compactness": 0.0, "uniqueness": 0.0}
    assert grounding_terms([], square(0, 0, 5, 5))["completeness"] == 0.0


def test_grounding_reward_uses_gt_boxes_without_maps():
    gt = diag(defects=[Defect((0, 0, 50, 50), "artifact")])
    assert grounding_reward(diag(defects=[Defect((0, 0, 50, 50), "artifact")]), gt) == pytest.approx(1.0)
    assert grounding_reward(diag(defects=[Defect((60, 60, 90, 90), "artifact")]), gt) == pytest.approx(1 / 3)


# --- SDG detector ---------------------------------------------------------------------------
def test_sdg_format_failure_is_minus_one():
    assert sdg_detector_reward(diag(problems=["no <answer> block"]), diag()) == -1.0


def test_sdg_both_empty_and_perfect():
    assert sdg_detector_reward(diag(), diag()) == pytest.approx(0.6 * 0.3 + 0.25 + 0.15)
    d = [Defect((10, 10, 40, 40), "artifact", "melted hand", 80)]
    # perfect box (DIoU 1) and importance, no embedder: 0.6*1 + 0.15*1
    assert sdg_detector_reward(diag(defects=d), diag(defects=d)) == pytest.approx(0.75)
    emb = lambda texts: np.array([[1.0, 0.0] for _ in texts])
    assert sdg_detector_reward(diag(defects=d), diag(defects=d), embed=emb) == pytest.approx(1.0)


def test_sdg_miss_false_alarm_and_label_matching():
    gt = diag(defects=[Defect((10, 10, 40, 40), "artifact", importance=50)])
    # a miss: R_box = -0.8, no match -> R_imp 0
    assert sdg_detector_reward(diag(), gt) == pytest.approx(0.6 * -0.8)
    # right box but wrong label: one false alarm + one miss -> (-0.3 - 0.8)/2
    wrong = diag(defects=[Defect((10, 10, 40, 40), "misalignment", importance=50)])
    assert sdg_detector_reward(wrong, gt) == pytest.approx(0.6 * (-1.1 / 2))
    # match + extra false alarm: (1 - 0.3)/2 and R_imp = 1
    extra = diag(defects=[Defect((10, 10, 40, 40), "artifact", importance=50), Defect((60, 60, 90, 90), "artifact")])
    assert sdg_detector_reward(extra, gt) == pytest.approx(0.6 * 0.35 + 0.15)


def test_sdg_hungarian_beats_greedy_and_importance():
    g = [Defect((0, 0, 40, 40), "artifact", importance=90), Defect((30, 0, 70, 40), "artifact", importance=90)]
    p = [Defect((0, 0, 40, 40), "artifact", importance=40), Defect((30, 0, 70, 40), "artifact", importance=90)]
    r = sdg_detector_reward(diag(defects=list(reversed(p))), diag(defects=g))
    # optimal assignment matches both perfectly; importance terms 0 and 1 -> mean 0.5
    assert r == pytest.approx(0.6 * 1.0 + 0.15 * 0.5)


# --- format + combination -----------------------------------------------------------------
def test_format_reward_and_combination():
    gt = diag({"alignment": 0.5, "aesthetics": 0.5, "plausibility": 0.5, "overall": 0.5})
    half = diag({"alignment": 0.5, "overall": 0.5})
    assert format_reward(half, "imagedoctor", "scores") == 0.5
    assert format_reward(diag(problems=["x"]), "sdg") == 0.0
    total, parts = compute_rewards([gt, half], [gt, gt], {"score": 2.0, "format": 1.0}, "imagedoctor", "scores")
    assert parts["score"].tolist() == pytest.approx([1.0, 0.5])
    assert total.tolist() == pytest.approx([3.0, 1.5])
    with pytest.raises(ValueError, match="unknown reward"):
        compute_rewards([gt], [gt], {"nope": 1.0})
