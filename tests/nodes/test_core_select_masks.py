"""core.select and core.masks (the logic behind Best of N, Defect Mask, Defects to SEGS)."""

import math

import numpy as np
import pytest

from imagedoctor.core.diagnosis import Defect, Diagnosis
from imagedoctor.core.masks import defect_mask, feather, grow_shrink, resize_map
from imagedoctor.core.select import best_of_n, defect_load, score_value

from idoc_helpers import make_diag


def D(**kw):
    return Diagnosis(32, 32, **kw)


def test_overall_ranking_and_ties_by_load_then_index():
    ds = [D(scores={"overall": 0.5}), D(scores={"overall": 0.9}, defects=[Defect((0, 0, 4, 4), "artifact", importance=50)]),
          D(scores={"overall": 0.9}), D(scores={"overall": 0.9})]
    r = best_of_n(ds, "overall", top_k=3)
    assert r.order == [2, 3, 1, 0]  # equal 0.9: no defects first, then index; defect-laden 0.9 after
    assert r.best == 2 and r.top_k == [2, 3, 1]
    assert r.rank_of(0) == 4
    assert r.table.splitlines()[1].split()[:2] == ["1", "2"]


def test_weighted_formula_and_missing_scores():
    d = D(scores={"alignment": 1.0, "aesthetics": 0.0, "overall": 0.5})
    v, _ = score_value(d, "weighted", {"alignment": 2, "aesthetics": 1, "plausibility": 1, "overall": 1})
    assert v == pytest.approx((2 * 1.0 + 0 + 0.5) / 4)  # plausibility missing -> weights renormalised
    with pytest.raises(ValueError, match="unknown score"):
        score_value(d, "weighted", {"sharpness": 1})
    with pytest.raises(ValueError, match=">= 0"):
        score_value(d, "weighted", {"overall": -1})


def test_defect_penalty_formula():
    d = D(scores={"overall": 0.8}, defects=[Defect((0, 0, 4, 4), "artifact", importance=100),
                                           Defect((0, 0, 4, 4), "misalignment")])  # default importance 50
    assert defect_load(d) == pytest.approx(1.5)
    v, _ = score_value(d, "defect_penalty", penalty=0.1)
    assert v == pytest.approx(0.8 - 0.15)
    ds = [d, D(scores={"overall": 0.7})]
    assert best_of_n(ds, "defect_penalty", penalty=0.1).best == 1
    assert best_of_n(ds, "overall").best == 0


def test_unscored_ranks_last_and_fallback_mean():
    ds = [D(), D(scores={"alignment": 0.2, "aesthetics": 0.4})]
    r = best_of_n(ds)
    assert r.order == [1, 0] and r.values[0] == -math.inf and r.values[1] == pytest.approx(0.3)
    assert "unscored" in r.table


@pytest.mark.parametrize("kwargs,msg", [({"criterion": "best"}, "criterion"), ({"top_k": 0}, "top_k")])
def test_best_of_n_errors(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        best_of_n([D()], **kwargs)
    with pytest.raises(ValueError, match="empty"):
        best_of_n([])


def test_defect_mask_boxes_binary_importance_and_filters():
    d = make_diag(64, 48, defects=[((0, 0, 10, 10), "artifact", "", 80), ((20, 20, 30, 30), "misalignment", "", 30)])
    m = defect_mask(d, "boxes")
    assert m.shape == (48, 64) and m.dtype == np.float32
    assert m[5, 5] == 1 and m[25, 25] == 1 and m[40, 40] == 0
    assert m.sum() == 200
    mi = defect_mask(d, "boxes", weighting="importance")
    assert mi[5, 5] == pytest.approx(0.8) and mi[25, 25] == pytest.approx(0.3)
    assert defect_mask(d, "boxes", min_importance=50)[25, 25] == 0
    assert defect_mask(d, "boxes", labels="misalignment")[5, 5] == 0


def test_defect_mask_heatmaps_and_both():
    hm = np.zeros((48, 64), np.float32)
    hm[40:, 50:] = 0.7
    d = Diagnosis(64, 48, defects=[Defect((0, 0, 10, 10), "artifact")], heatmaps={"artifact": hm})
    h = defect_mask(d, "heatmaps", threshold=0.5)
    assert h[45, 55] == 1 and h[5, 5] == 0
    assert defect_mask(d, "heatmaps", threshold=0.8).sum() == 0
    assert defect_mask(d, "heatmaps", weighting="importance")[45, 55] == pytest.approx(0.7)
    b = defect_mask(d, "both")
    assert b[45, 55] == 1 and b[5, 5] == 1
    # no heatmaps at all -> empty heatmap mask, no error
    assert defect_mask(Diagnosis(8, 8), "heatmaps").sum() == 0


def test_grow_shrink_feather_resize():
    m = np.zeros((40, 40), np.float32)
    m[15:25, 15:25] = 1
    g = grow_shrink(m, 3)
    assert g.sum() > m.sum() and g[12, 20] == 1 and g[5, 5] == 0
    s = grow_shrink(m, -3)
    assert s.sum() < m.sum() and s[16, 16] == 0 and s[20, 20] == 1
    f = feather(m, 6)
    assert 0 < f[15, 20] < 1 and f[20, 20] > 0.9 and f.max() <= 1
    r = resize_map(m, 80, 20)
    assert r.shape == (20, 80) and r.dtype == np.float32
    with pytest.raises(ValueError, match="2-D"):
        grow_shrink(np.zeros((2, 2, 2)), 1)
    with pytest.raises(ValueError, match="NaN"):
        feather(np.full((4, 4), np.nan), 1)
    with pytest.raises(ValueError, match="source"):
        defect_mask(Diagnosis(8, 8), "pixels")
    d = defect_mask(make_diag(defects=[((10, 10, 20, 20), "artifact", "", 50)]), "boxes", grow=2, feather=3)
    assert d.max() <= 1 and d[15, 15] > 0.9 and 0 < d[8, 15] < 1
