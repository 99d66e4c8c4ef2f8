"""SDG-Eval protocol "sdg-release" against values worked out by hand from the released evaluator's
definitions (nianbai006/SDG eval/code/evaluate.py; rules listed in docs/fidelity.md)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from imagedoctor.core.diagnosis import Defect, Diagnosis
from imagedoctor.core.metrics import (
    desc_token_f1,
    diagnosis_to_sdg_items,
    release_iou,
    release_labels_match,
    release_match,
    sdg_eval,
    sdg_eval_release,
    sdg_release_parse,
)


def answer(*items) -> str:
    return "<think>...</think><answer>" + json.dumps(list(items)) + "</answer>"


def item(box, label, desc="", key="description"):
    return {"box_2d": box, "label": label, key: desc}


def toy_embed(texts):
    table = {"blur": [1.0, 0.0], "second": [0.6, 0.8], "hand": [0.0, 2.0]}
    return np.array([table.get(t, [1.0, 1.0]) for t in texts])


# Five images: a tie between two predictions, a "both" GT label with a reversed prediction, a clean
# image with a parse failure, a clean image with a false alarm, a defect missed by a parse failure.
GT = [
    [item([0, 0, 10, 10], "artifact", "blur")],
    [item([0, 0, 100, 100], "both", "hand")],
    [],
    [],
    [item([0, 0, 10, 10], "misalignment", "dog")],
]
PRED = [
    answer(item([0, 0, 10, 20], "artifact", "first"), item([0, 0, 20, 10], "artifact", "second")),  # IoU 0.5 each
    answer(item([0, 0, 100, 100], "misalignment", "hand"), item([50, 50, 10, 10], "artifact", "")),
    "I see nothing wrong.",
    answer(item([0, 0, 5, 5], "artifact", "x")),
    "<answer>not json</answer>",
]


def test_release_protocol_by_hand():
    out = sdg_eval(PRED, GT, protocol="sdg-release", embed=toy_embed)
    assert out["protocol"] == "sdg-release" and out["n_parse_failures"] == 2 and out["n_images"] == 5
    for t in ("0.1", "0.5"):  # every IoU is 0, 0.5 or 1: both thresholds agree (0.5 >= 0.5 is kept)
        b = out["box_f1"][t]
        # TP: image 1 (the higher prediction index wins the tie) and image 2 (under the GT label "both");
        # FP: image 1's other box, the reversed box, image 4's box; FN: image 5's box
        assert (b["overall"]["tp"], b["overall"]["fp"], b["overall"]["fn"]) == (2, 3, 1)
        assert b["overall"]["precision"] == pytest.approx(0.4) and b["overall"]["recall"] == pytest.approx(2 / 3)
        assert b["overall"]["f1"] == pytest.approx(0.5)
        art, mis = b["per_label"]["artifact"], b["per_label"]["misalignment"]
        assert (art["tp"], art["fp"], art["fn"]) == (1, 3, 0) and art["f1"] == pytest.approx(0.4)
        assert (mis["tp"], mis["fp"], mis["fn"]) == (0, 0, 1) and mis["f1"] == 0.0  # undefined P -> 0
    il = out["image_level"]
    assert (il["tp"], il["fp"], il["fn"], il["tn"]) == (2, 1, 1, 1) and il["f1"] == pytest.approx(2 / 3)
    assert out["cln_acc"] == pytest.approx(0.5) and out["n_clean"] == 2 and il["accuracy"] == pytest.approx(0.6)
    det = out["det_type_f1"]["per_label"]
    # "both" counts for both types; the reversed artifact box counts for the artifact type
    assert (det["artifact"]["tp"], det["artifact"]["fp"], det["artifact"]["fn"]) == (2, 1, 0)
    assert det["artifact"]["f1"] == pytest.approx(0.8) and det["misalignment"]["f1"] == pytest.approx(2 / 3)
    assert out["det_type_f1"]["overall"] == pytest.approx(2 / 3)
    # DescCos@0.5 over all matched pairs: cos(blur, second) = 0.6, cos(hand, hand) = 1
    assert out["desc_pairs"] == 2 and out["desc_cos"] == pytest.approx(0.8)
    assert out["desc_token_f1"] == pytest.approx(0.5) and math.isnan(out["imp_acc"])


def test_release_differs_from_the_pixel_protocol_on_ties():
    gt = [Diagnosis(width=1000, height=1000, defects=[Defect((0, 0, 10, 10), "artifact", "blur")])]
    pred = [Diagnosis(width=1000, height=1000, format="sdg", raw_text=PRED[0])]
    release = sdg_eval(pred, gt, protocol="sdg-release", embed=toy_embed)
    assert release["desc_cos"] == pytest.approx(0.6)  # matched the second prediction
    assert release["box_f1"]["0.5"]["overall"]["f1"] == pytest.approx(2 / 3)


def test_parser_rules():
    box = {"box_2d": [1, 2, 3, 4], "label": "artifact"}
    assert sdg_release_parse('<answer>```json\n[{"box_2d":[1,2,3,4],"label":"artifact"}]\n```</answer>') == [box]
    assert sdg_release_parse("<answer>[{'box_2d': (1, 2, 3, 4), 'label': 'artifact'}]</answer>") == [
        {"box_2d": (1, 2, 3, 4), "label": "artifact"}]                              # Python literal
    assert sdg_release_parse('<answer>{"box_2d": [1,2,3,4], "label": "artifact"}</answer>') == []  # not a list
    assert sdg_release_parse('<answer>[{"box_2d": [1,2,3,4]}, {"label": "x"}, 5]</answer>') == []  # needs both keys
    assert sdg_release_parse('thinking\n```json\n[{"box_2d":[1,2,3,4],"label":"artifact"}]\n```') == [box]
    assert sdg_release_parse(' [{"box_2d":[1,2,3,4],"label":"artifact"}]') == [box]
    assert sdg_release_parse('<answer>[broken</answer> [{"box_2d":[1,2,3,4],"label":"artifact"}]') is None
    assert sdg_release_parse("<answer></answer>") == [] and sdg_release_parse("") is None
    assert sdg_release_parse(None) is None
    # kept as written: reversed, zero-area, out-of-range boxes, raw labels and importance
    raw = [{"box_2d": [9, 9, 1, 1], "label": "Artifact", "importance": 500}, {"box_2d": [0, 0, 0, 5], "label": "both"}]
    assert sdg_release_parse(answer(*raw)) == raw


def test_iou_labels_and_greedy_ties():
    assert release_iou([10, 10, 0, 0], [0, 0, 10, 10]) == 0.0       # reversed: no intersection
    assert release_iou([0, 10, 10, 0], [0, 10, 10, 0]) == 0.0       # signed area -100 each: union <= 0
    assert release_iou([0, 0, 0, 10], [0, 0, 10, 10]) == 0.0
    assert release_iou([0, 0, 10, 10], [5, 5, 15, 15]) == pytest.approx(25 / 175)
    assert release_labels_match("both", "artifact") and release_labels_match("misalignment", "both")
    assert release_labels_match("foo", "foo") and not release_labels_match("Artifact", "artifact")
    assert not release_labels_match("both", "foo")
    g = [item([0, 0, 10, 10], "artifact")]
    p = [item([0, 0, 10, 20], "artifact"), item([0, 0, 20, 10], "artifact")]
    assert release_match(g, p, 0.5) == ([(1, 0, 0.5)], [0], [])     # equal IoU: higher prediction index
    g2 = [item([0, 0, 10, 20], "artifact"), item([0, 0, 20, 10], "artifact")]
    assert release_match(g2, [item([0, 0, 10, 10], "artifact")], 0.1)[0] == [(0, 1, 0.5)]  # then higher GT index
    # a label mismatch skips the best pair and leaves both boxes free
    p3 = [item([0, 0, 10, 10], "misalignment"), item([0, 0, 10, 20], "artifact")]
    assert release_match(g, p3, 0.1) == ([(1, 0, 0.5)], [0], [])
    assert release_match(g, p3, 0.6) == ([], [0, 1], [0])           # below the threshold nothing pairs


def test_desc_cos_edges_and_token_f1():
    gt = [[item([0, 0, 10, 10], "artifact", "blur", key="desc")]]
    pred = [answer(item([0, 0, 10, 10], "artifact", "blur", key="desc"))]
    assert sdg_eval_release(pred, gt, embed=toy_embed)["desc_cos"] == pytest.approx(1.0)  # "desc" fallback
    assert math.isnan(sdg_eval_release(pred, gt)["desc_cos"])            # no embed: not computed
    assert sdg_eval_release([answer()], gt, embed=toy_embed)["desc_cos"] == 0.0  # no pairs
    assert desc_token_f1("A <b>red</b> Dog!", "the red dog") == pytest.approx(2 / 3)  # {a,red,dog} vs {the,red,dog}
    assert desc_token_f1("", None) == 1.0 and desc_token_f1("x", "") == 0.0


def test_diagnosis_inputs_and_malformed_boxes():
    gt = Diagnosis(width=200, height=100, defects=[Defect((20, 10, 40, 30), "misalignment", "m")], format="ground_truth")
    assert diagnosis_to_sdg_items(gt) == [{"box_2d": [100.0, 100.0, 200.0, 300.0], "label": "misalignment",
                                           "description": "m", "importance": None}]
    parsed_only = Diagnosis(width=400, height=200, defects=[Defect((40, 20, 80, 60), "misalignment", "m")])
    out = sdg_eval_release([parsed_only], [gt])  # not an SDG text: its defects, in its own 0-1000 frame
    assert out["box_f1"]["0.5"]["overall"]["f1"] == 1.0
    bad = sdg_eval_release(['<answer>[{"box_2d": "1,2,3,4", "label": "misalignment"}]</answer>'], [gt])
    assert bad["n_malformed_boxes"] == 1 and bad["box_f1"]["0.1"]["overall"]["fp"] == 1
    with pytest.raises(ValueError, match="unknown SDG-Eval protocol"):
        sdg_eval([gt], [gt], protocol="paper")
    with pytest.raises(ValueError, match="sdg-release protocol takes"):
        sdg_eval_release([3], [gt])


def test_mean_pool_embedder_on_a_tiny_local_encoder(tmp_path):
    """The released evaluator's DescCos encoder: masked mean of the last hidden states, L2-normalised."""
    import torch
    from transformers import Qwen3Config, Qwen3Model

    from imagedoctor.core.metrics import mean_pool_embedder
    from imagedoctor.core.tiny import build_tokenizer

    tok = build_tokenizer(0)
    tok.save_pretrained(tmp_path)
    torch.manual_seed(0)
    model = Qwen3Model(Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, head_dim=16)).eval()
    model.save_pretrained(tmp_path)
    texts = ["a red circle", "two", "left of a blue square above"]
    vecs = mean_pool_embedder(str(tmp_path), device="cpu", batch_size=1)(texts)
    assert vecs.shape == (3, 32) and np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        for text, row in zip(texts, vecs):
            mean = model(**tok([text], return_tensors="pt")).last_hidden_state[0].mean(0)
            assert np.allclose(row, (mean / mean.norm()).numpy(), atol=1e-5)
