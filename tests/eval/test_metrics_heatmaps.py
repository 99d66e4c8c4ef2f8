"""heatmap_metrics: MSE, CC, KLD, SIM, NSS, AUC-Judd against hand-computed values."""

import math

import numpy as np
import pytest

from imagedoctor.core.metrics import (
    heatmap_metrics,
    map_auc_judd,
    map_cc,
    map_kld,
    map_nss,
    map_sim,
)

GT = np.array([[1.0, 0.0], [0.0, 0.0]])
PRED = np.array([[0.5, 0.0], [0.0, 0.5]])


def test_single_image_hand_computed():
    out = heatmap_metrics([PRED], [GT])
    # MSE = (0.5^2 + 0 + 0 + 0.5^2) / 4 = 0.125
    assert out["mse"] == pytest.approx(0.125)
    # CC: dp = [.25, -.25, -.25, .25], dg = [.75, -.25, -.25, -.25]
    # sum dp*dg = .1875 + .0625 + .0625 - .0625 = .25; sum dp^2 = .25; sum dg^2 = .75
    # CC = .25 / sqrt(.25 * .75) = 1 / sqrt(3)
    assert out["cc"] == pytest.approx(1 / math.sqrt(3))
    # KLD: p^ = [.5, 0, 0, .5], g^ = [1, 0, 0, 0] -> 1 * log(1 / .5) = log 2 (up to eps)
    assert out["kld"] == pytest.approx(math.log(2), abs=1e-5)
    # SIM = sum min(p^, g^) = min(.5, 1) = .5
    assert out["sim"] == pytest.approx(0.5, abs=1e-6)
    # NSS: mean .25, population std .25 -> z at the GT pixel = (.5 - .25) / .25 = 1
    assert out["nss"] == pytest.approx(1.0)
    # AUC-Judd: threshold .5 (pred at the GT pixel): 2 pixels >= .5, 1 of them GT
    # TPR = 1, FPR = 1/3 -> curve (0,0) (1/3,1) (1,1): area = 1/6 + 2/3 = 5/6
    assert out["auc_judd"] == pytest.approx(5 / 6)
    assert out["n"] == 1 and out["n_gt_nonempty"] == 1 and out["n_gt_empty"] == 0
    assert math.isnan(out["mse_gt_empty"])


def test_empty_gt_images_only_count_towards_mse():
    empty_gt = np.zeros((2, 2))
    pred2 = np.array([[0.2, 0.0], [0.0, 0.0]])  # MSE = .04 / 4 = .01
    out = heatmap_metrics([PRED, pred2], [GT, empty_gt])
    assert out["mse"] == pytest.approx((0.125 + 0.01) / 2)
    assert out["mse_gt_empty"] == pytest.approx(0.01)
    assert out["cc"] == pytest.approx(1 / math.sqrt(3))  # only the non-empty image
    assert out["n_gt_empty"] == 1 and out["n_gt_nonempty"] == 1


def test_all_zero_prediction_on_nonempty_gt():
    zero = np.zeros((2, 2))
    assert map_cc(zero, GT) == 0.0  # constant map: no information
    assert map_nss(zero, GT) == 0.0
    assert map_auc_judd(zero, GT) == pytest.approx(0.5)  # all pixels tie: chance
    assert map_sim(zero, GT) == 0.0
    # KLD with p^ = 0: log(1 / eps + eps) = log(1e7)
    assert map_kld(zero, GT) == pytest.approx(math.log(1e7), rel=1e-6)


def test_constant_prediction():
    const = np.full((2, 2), 0.3)
    assert map_cc(const, GT) == 0.0 and map_nss(const, GT) == 0.0
    assert map_auc_judd(const, GT) == pytest.approx(0.5)
    # SIM: p^ = .25 everywhere, g^ = [1,0,0,0] -> .25
    assert map_sim(const, GT) == pytest.approx(0.25, abs=1e-6)


def test_all_zero_gt_and_prediction():
    z = np.zeros((3, 3))
    out = heatmap_metrics([z, z], [z, z])
    assert out["mse"] == 0.0 and out["mse_gt_empty"] == 0.0
    assert math.isnan(out["cc"]) and out["n_gt_nonempty"] == 0


def test_perfect_prediction():
    gt = np.array([[0.0, 0.2], [0.8, 1.0]])
    out = heatmap_metrics([gt.copy()], [gt])
    assert out["mse"] == 0.0 and out["cc"] == pytest.approx(1.0) and out["auc_judd"] == pytest.approx(1.0)
    assert out["sim"] == pytest.approx(1.0, abs=1e-6) and abs(out["kld"]) < 1e-5


def test_prediction_is_resized_to_gt_size():
    # a constant 4x4 map resizes to a constant 2x2 map: MSE vs GT = (.25 + 3 * .25) / 4 = .25
    out = heatmap_metrics([np.full((4, 4), 0.5)], [GT])
    assert out["mse"] == pytest.approx(0.25, abs=1e-6)


def test_missing_predictions_and_missing_gt_are_counted():
    out = heatmap_metrics([None, PRED, PRED], [GT, None, GT])
    assert out["n_missing"] == 1 and out["n_gt_missing"] == 1 and out["n"] == 1


def test_validation_errors():
    with pytest.raises(ValueError, match="divide 8-bit maps by 255"):
        heatmap_metrics([PRED * 255], [GT])
    with pytest.raises(ValueError, match=r"2-D \(H, W\)"):
        heatmap_metrics([np.zeros((2, 2, 3))], [GT])
    with pytest.raises(ValueError, match="nan or inf"):
        heatmap_metrics([np.full((2, 2), np.nan)], [GT])
    with pytest.raises(ValueError, match="pred has 1 heatmaps but gt has 2"):
        heatmap_metrics([PRED], [GT, GT])
