"""sdg_eval and box matching against hand-computed values."""

import math

import numpy as np
import pytest

from imagedoctor.core.diagnosis import Defect, Diagnosis
from imagedoctor.core.metrics import IMPACC_BUCKETS, impacc_bucket, match_boxes, sdg_eval

VOCAB = ["blurry", "hand", "red", "blue", "cube"]


def toy_embed(texts):
    """Deterministic bag-of-words embedding over VOCAB."""
    return np.array([[t.split().count(w) for w in VOCAB] for t in texts], dtype=float)


def diag(*defects):
    return Diagnosis(width=200, height=200, defects=[Defect(*d) for d in defects])


def dataset():
    gt = [
        diag(((0, 0, 10, 10), "artifact", "blurry hand", 80), ((50, 50, 70, 70), "misalignment", "blue cube", 50)),
        diag(),
        diag(),
    ]
    pred = [
        # artifact (0,0,10,4): IoU = 40 / 100 = 0.4 with the GT artifact; plus a false alarm far away
        diag(((0, 0, 10, 4), "artifact", "blurry hand", 92), ((100, 100, 110, 110), "artifact", "", 50),
             ((50, 50, 70, 70), "misalignment", "red cube", 35)),
        diag(),  # clean, predicted clean
        diag(((5, 5, 20, 20), "misalignment", "", 60)),  # clean, predicted defective
    ]
    return pred, gt


def test_box_f1_per_label_and_overall():
    pred, gt = dataset()
    out = sdg_eval(pred, gt)
    f01, f05 = out["box_f1"]["0.1"], out["box_f1"]["0.5"]
    # artifact: 2 predicted, 1 GT; the match has IoU .4 -> TP@.1 = 1, TP@.5 = 0
    # F1@.1 = 2*1/(2+1) = 2/3; F1@.5 = 0
    assert f01["per_label"]["artifact"]["f1"] == pytest.approx(2 / 3)
    assert f05["per_label"]["artifact"]["f1"] == 0.0
    assert f01["per_label"]["artifact"]["precision"] == pytest.approx(0.5)
    # misalignment: 2 predicted (one on a clean image), 1 GT, exact match -> 2/3 at both thresholds
    assert f01["per_label"]["misalignment"]["f1"] == pytest.approx(2 / 3)
    assert f05["per_label"]["misalignment"]["f1"] == pytest.approx(2 / 3)
    # overall: TP 2 (@.1) / 1 (@.5), 4 predicted, 2 GT -> 4/6 and 2/6
    assert f01["overall"]["f1"] == pytest.approx(4 / 6)
    assert f05["overall"]["f1"] == pytest.approx(2 / 6)
    assert out["matching"] == "hungarian"


def test_dettype_clnacc_impacc_desccos():
    pred, gt = dataset()
    out = sdg_eval(pred, gt, embed=toy_embed)
    # DetTypeF1 artifact: image 0 has one on both sides -> F1 1
    # misalignment: images with pred = {0, 2}, with GT = {0} -> 2*1/(2+1) = 2/3; macro mean 5/6
    assert out["det_type_f1"]["per_label"]["artifact"]["f1"] == pytest.approx(1.0)
    assert out["det_type_f1"]["per_label"]["misalignment"]["f1"] == pytest.approx(2 / 3)
    assert out["det_type_f1"]["overall"] == pytest.approx(5 / 6)
    # ClnAcc: images 1 and 2 are clean; only image 1 is predicted clean -> 1/2
    assert out["cln_acc"] == pytest.approx(0.5) and out["n_clean"] == 2
    # ImpAcc over the 2 matches with IoU >= .1 (three buckets):
    # artifact 92 vs 80 -> critical / critical (hit); misalignment 35 vs 50 -> negligible / moderate (miss)
    assert out["imp_acc"] == pytest.approx(0.5) and out["imp_pairs"] == 2
    # DescCos: "blurry hand" vs "blurry hand" = 1; "red cube" vs "blue cube" = 1 / (sqrt2 * sqrt2) = .5
    assert out["desc_cos"] == pytest.approx(0.75)


def test_impacc_with_five_sdg_buckets():
    pred, gt = dataset()
    # 92 critical vs 80 major (miss); 35 minor vs 50 moderate (miss) -> 0
    assert sdg_eval(pred, gt, buckets="sdg5")["imp_acc"] == 0.0


def test_impacc_bucket_boundaries():
    assert IMPACC_BUCKETS == (("negligible", 1, 39), ("moderate", 40, 69), ("critical", 70, 100))
    assert [impacc_bucket(v) for v in (1, 39, 40, 69, 70, 100)] == [
        "negligible", "negligible", "moderate", "moderate", "critical", "critical"]
    assert impacc_bucket(None) is None
    assert impacc_bucket(14, "sdg5") == "negligible" and impacc_bucket(15, "sdg5") == "minor"


# Greedy vs Hungarian. G1 = (0,0,10,10), G2 = (10,0,20,10), P1 = (3,0,13,10), P2 = (0,0,5,10).
# IoU(P1,G1) = 70/130 = .5385, IoU(P1,G2) = 30/170 = .1765, IoU(P2,G1) = 50/100 = .5, IoU(P2,G2) = 0.
# Greedy takes P1-G1 first, then nothing is left for P2 with IoU > 0: one match.
# Hungarian on 1 - DIoU: {P1-G1, P2-G2}: DIoU = (.5385 - 9/269) + (0 - 156.25/500) = .1925
#                        {P1-G2, P2-G1}: DIoU = (.1765 - 49/389) + (.5 - 6.25/200) = .5193  -> chosen.
G = [(0, 0, 10, 10), (10, 0, 20, 10)]
P = [(3, 0, 13, 10), (0, 0, 5, 10)]


def test_match_boxes_greedy_vs_hungarian():
    greedy = match_boxes(P, G, "greedy")
    assert [(i, j) for i, j, _ in greedy] == [(0, 0)]
    assert greedy[0][2] == pytest.approx(70 / 130)
    hung = sorted(match_boxes(P, G, "hungarian"))
    assert [(i, j) for i, j, _ in hung] == [(0, 1), (1, 0)]
    assert [v for _, _, v in hung] == pytest.approx([30 / 170, 0.5])


def test_sdg_eval_reports_the_matching_and_its_effect():
    gt = [diag(*[(b, "artifact") for b in G])]
    pred = [diag(*[(b, "artifact") for b in P])]
    h = sdg_eval(pred, gt, matching="hungarian")
    g = sdg_eval(pred, gt, matching="greedy")
    # Hungarian: TP@.1 = 2 -> F1 = 4/4 = 1; TP@.5 = 1 (IoU exactly .5) -> 2/4
    assert h["box_f1"]["0.1"]["overall"]["f1"] == pytest.approx(1.0)
    assert h["box_f1"]["0.5"]["overall"]["f1"] == pytest.approx(0.5)
    # Greedy: TP = 1 at both thresholds -> 2/4
    assert g["box_f1"]["0.1"]["overall"]["f1"] == pytest.approx(0.5)
    assert g["matching"] == "greedy" and h["matching"] == "hungarian"


def test_matches_only_within_the_same_label():
    gt = [diag(((0, 0, 10, 10), "artifact"))]
    pred = [diag(((0, 0, 10, 10), "misalignment"))]
    out = sdg_eval(pred, gt)
    assert out["box_f1"]["0.1"]["overall"]["tp"] == 0 and out["box_f1"]["0.1"]["overall"]["f1"] == 0.0


def test_no_defects_on_either_side():
    out = sdg_eval([diag(), diag()], [diag(), diag()])
    assert math.isnan(out["box_f1"]["0.5"]["overall"]["f1"])  # nothing to find, nothing found: undefined
    assert out["cln_acc"] == 1.0
    assert math.isnan(out["det_type_f1"]["overall"]) and math.isnan(out["imp_acc"])


def test_missing_prediction_counts_as_no_defect():
    gt = [diag(((0, 0, 10, 10), "artifact"))]
    out = sdg_eval([None], gt)
    assert out["n_missing"] == 1 and out["box_f1"]["0.1"]["overall"]["f1"] == 0.0


def test_missing_importance_is_skipped_and_counted():
    gt = [diag(((0, 0, 10, 10), "artifact", "", 80))]
    pred = [diag(((0, 0, 10, 10), "artifact", "", None))]
    out = sdg_eval(pred, gt)
    assert out["imp_skipped"] == 1 and out["imp_pairs"] == 0 and math.isnan(out["imp_acc"])


def test_validation_errors():
    with pytest.raises(ValueError, match="unknown matching 'optimal'"):
        sdg_eval([diag()], [diag()], matching="optimal")
    with pytest.raises(ValueError, match="pred has 1 images but gt has 2"):
        sdg_eval([diag()], [diag(), diag()])
    with pytest.raises(ValueError, match=r"IoU thresholds must be in \(0, 1\]"):
        sdg_eval([diag()], [diag()], thresholds=(0.0,))
    with pytest.raises(ValueError, match="gt\\[0\\] is None"):
        sdg_eval([diag()], [None])
    with pytest.raises(ValueError, match="expected a Diagnosis or a list of defects"):
        sdg_eval(["oops"], [diag()])
    with pytest.raises(ValueError, match=r"\(n, d\) array"):
        sdg_eval(*dataset()[::-1], embed=lambda texts: np.zeros(3))
