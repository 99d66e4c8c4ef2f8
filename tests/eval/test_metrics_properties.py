"""Property tests: metric ranges and invariances on random inputs."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from imagedoctor.core.diagnosis import Defect, Diagnosis
from imagedoctor.core.metrics import (
    heatmap_metrics,
    map_auc_judd,
    map_cc,
    map_nss,
    match_boxes,
    sdg_eval,
)

maps = st.integers(0, 2**32 - 1).map(lambda s: np.random.default_rng(s).random((6, 5)))
box = st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(1, 30), st.integers(1, 30)).map(
    lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3]))


@settings(max_examples=40, deadline=None)
@given(maps, maps, st.floats(0.1, 1.0))
def test_heatmap_metric_ranges_and_scale_invariance(p, g, scale):
    g = (g > 0.6) * g  # sparse GT with some zeros
    if not (g > 0).any():
        g[0, 0] = 1.0
    out = heatmap_metrics([p], [g])
    assert -1 - 1e-9 <= out["cc"] <= 1 + 1e-9
    assert 0 <= out["sim"] <= 1 + 1e-6 and out["kld"] >= -1e-5
    assert 0 <= out["auc_judd"] <= 1 and out["mse"] >= 0
    # CC, NSS and AUC-Judd do not depend on the prediction's scale
    assert np.isclose(map_cc(p * scale, g), map_cc(p, g))
    assert np.isclose(map_nss(p * scale, g), map_nss(p, g))
    assert np.isclose(map_auc_judd(p * scale, g), map_auc_judd(p, g))


@settings(max_examples=40, deadline=None)
@given(st.lists(box, max_size=5), st.lists(box, max_size=5), st.sampled_from(["hungarian", "greedy"]))
def test_matching_is_one_to_one_and_f1_bounded(pred, gt, matching):
    matches = match_boxes(pred, gt, matching)
    assert len({i for i, _, _ in matches}) == len(matches) == len({j for _, j, _ in matches})
    assert all(0 < v <= 1 for _, _, v in matches)
    out = sdg_eval([Diagnosis(width=80, height=80, defects=[Defect(b, "artifact") for b in pred])],
                   [Diagnosis(width=80, height=80, defects=[Defect(b, "artifact") for b in gt])], matching=matching)
    f1_lo, f1_hi = out["box_f1"]["0.5"]["overall"]["f1"], out["box_f1"]["0.1"]["overall"]["f1"]
    if pred or gt:
        assert 0 <= f1_lo <= f1_hi <= 1  # a looser threshold never scores lower


@settings(max_examples=20, deadline=None)
@given(st.lists(box, min_size=1, max_size=5))
def test_identical_boxes_score_one(boxes):
    d = Diagnosis(width=80, height=80, defects=[Defect(b, "misalignment") for b in boxes])
    for matching in ("hungarian", "greedy"):
        assert sdg_eval([d], [d], matching=matching)["box_f1"]["0.5"]["overall"]["f1"] == 1.0
