"""score_correlations: PLCC / SRCC against hand-computed values."""

import math

import numpy as np
import pytest

from imagedoctor.core.diagnosis import Diagnosis, Scores
from imagedoctor.core.metrics import score_correlations, to_jsonable


def test_hand_computed_pearson_and_spearman():
    # alignment: x = [1, 2, 3]/10, y = [1, 3, 2]/10; deviations dx = [-1, 0, 1], dy = [-1, 1, 0] (x0.1)
    # sum(dx*dy) = 1, sum(dx^2) = sum(dy^2) = 2  ->  r = 1 / 2 = 0.5; ranks equal values -> rho = 0.5
    pred = [{"alignment": 0.1}, {"alignment": 0.2}, {"alignment": 0.3}]
    gt = [{"alignment": 0.1}, {"alignment": 0.3}, {"alignment": 0.2}]
    out = score_correlations(pred, gt)
    assert out["per_dim"]["alignment"]["plcc"] == pytest.approx(0.5)
    assert out["per_dim"]["alignment"]["srcc"] == pytest.approx(0.5)
    assert out["per_dim"]["alignment"]["n"] == 3
    # other dimensions were never predicted nor annotated: nan, and the average is over alignment only
    assert math.isnan(out["per_dim"]["overall"]["plcc"])
    assert out["average"]["plcc"] == pytest.approx(0.5)


def test_plcc_differs_from_srcc_on_monotone_nonlinear_data():
    # x = [.1, .2, .3, .4] (mean .25), y = [.1, .2, .3, .9] (mean .375)
    # dx = [-.15, -.05, .05, .15], dy = [-.275, -.175, -.075, .525]
    # sum dx*dy = .04125 + .00875 - .00375 + .07875 = .125
    # sum dx^2 = .05, sum dy^2 = .075625 + .030625 + .005625 + .275625 = .3875
    # PLCC = .125 / sqrt(.05 * .3875) = .125 / .1391941 = .898027; SRCC = 1 (same order)
    pred = np.array([[0.1, 0.1, 0.1, 0.1], [0.2, 0.2, 0.2, 0.2], [0.3, 0.3, 0.3, 0.3], [0.4, 0.4, 0.4, 0.4]])
    gt = np.array([[0.1] * 4, [0.2] * 4, [0.3] * 4, [0.9] * 4])
    out = score_correlations(pred, gt)
    for dim in ("alignment", "aesthetics", "plausibility", "overall"):
        assert out["per_dim"][dim]["plcc"] == pytest.approx(0.898027, abs=1e-6)
        assert out["per_dim"][dim]["srcc"] == pytest.approx(1.0)
    assert out["average"]["plcc"] == pytest.approx(0.898027, abs=1e-6)
    assert out["n_images"] == 4


def test_missing_predictions_are_ignored_but_counted():
    # the second image has no alignment prediction: correlation over the other three pairs
    # x = [.1, .3, .4], y = [.2, .6, .8] = 2x  ->  r = 1
    pred = [Scores(alignment=0.1), Scores(), Scores(alignment=0.3), Scores(alignment=0.4)]
    gt = [Scores(alignment=0.2), Scores(alignment=0.5), Scores(alignment=0.6), Scores(alignment=0.8)]
    out = score_correlations(pred, gt)
    d = out["per_dim"]["alignment"]
    assert d["n"] == 3 and d["n_missing"] == 1 and d["n_gt_missing"] == 0
    assert d["plcc"] == pytest.approx(1.0)


def test_accepts_diagnoses_and_mapping_of_columns():
    gt = {"overall": [0.1, 0.5, 0.9]}
    pred = [Diagnosis(width=4, height=4, scores=Scores(overall=v)) for v in (0.2, 0.4, 0.8)]
    out = score_correlations(pred, gt)
    assert out["per_dim"]["overall"]["srcc"] == pytest.approx(1.0)


def test_constant_prediction_gives_nan_not_a_crash():
    pred = [{"overall": 0.5}] * 4
    gt = [{"overall": v} for v in (0.1, 0.2, 0.3, 0.4)]
    out = score_correlations(pred, gt)
    assert math.isnan(out["per_dim"]["overall"]["plcc"]) and math.isnan(out["per_dim"]["overall"]["srcc"])
    assert to_jsonable(out)["per_dim"]["overall"]["plcc"] is None


def test_fewer_than_two_pairs_is_nan():
    out = score_correlations([{"overall": 0.5}], [{"overall": 0.4}])
    assert math.isnan(out["per_dim"]["overall"]["plcc"])


def test_validation_errors():
    with pytest.raises(ValueError, match="pred has 2 images but gt has 1"):
        score_correlations([{"overall": 0.1}, {"overall": 0.2}], [{"overall": 0.1}])
    with pytest.raises(ValueError, match="unknown score dimension"):
        score_correlations([{"sharpness": 0.1}], [{"overall": 0.1}])
    with pytest.raises(ValueError, match=r"\(N, 4\) array"):
        score_correlations(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="finite"):
        score_correlations(np.full((2, 4), np.inf), np.zeros((2, 4)))
