"""Two-stage best-of-N (`Diagnoser.best_of_n`) and int8 weight-only loading, on the tiny model."""

import numpy as np
import pytest
import torch
from PIL import Image

from imagedoctor.core.diagnoser import Diagnoser
from imagedoctor.core.formats import parse
from imagedoctor.core.prompts import IMAGEDOCTOR_FAST_PREFILL
from imagedoctor.core.select import BestOfN

AREA = 112 * 112


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(2)
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")) for h, w in [(96, 160), (150, 100), (128, 128)]]


def test_two_stage_on_the_tiny_model(tiny_diagnoser, images):
    """The untrained model's fast answers carry no score: all rank by index, the first K get full diagnoses
    equal to diagnosing them directly."""
    seen = []
    res = tiny_diagnoser.best_of_n(images, "a red cube", top_k=2, fast_max_new_tokens=6, max_new_tokens=8,
                                   image_area=AREA, progress=lambda done, total: seen.append((done, total)))
    assert isinstance(res, BestOfN) and len(res.fast) == 3
    assert all(d.raw_text.startswith(IMAGEDOCTOR_FAST_PREFILL) for d in res.fast)
    assert all(d.heatmaps["artifact"] is None for d in res.fast)
    assert res.unscored == [0, 1, 2] and res.order == [0, 1, 2] and res.top_k == [0, 1]
    direct = tiny_diagnoser.diagnose(images[:2], "a red cube", max_new_tokens=8, image_area=AREA)
    for i in (0, 1):
        assert res.full[i].raw_text == direct[i].raw_text and not res.full[i].raw_text.startswith("<think>\n...")
        np.testing.assert_allclose(res.full[i].heatmaps["artifact"], direct[i].heatmaps["artifact"], atol=1e-5)
    assert [d is res.full.get(i, res.fast[i]) for i, d in enumerate(res.diagnoses())] == [True] * 3
    assert seen[-1][0] == seen[-1][1] and seen == sorted(seen)
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        tiny_diagnoser.best_of_n(images, "x", top_k=0)
    with pytest.raises(ValueError, match="sets 'think' itself"):
        tiny_diagnoser.best_of_n(images, "x", think=True)


class _ScriptedAnswers(Diagnoser):
    """The real `best_of_n` over answers written in ImageDoctor's format (the parser is the real one);
    only the model's text is scripted, to test ranking and bookkeeping with known scores."""

    def __init__(self, overall):
        self.format, self.overall, self.calls = "imagedoctor", overall, []

    def diagnose(self, images, prompts, think=True, heatmaps=True, max_new_tokens=1024, **kwargs):
        self.calls.append((think, [im.info["idx"] for im in images]))
        out = []
        for im in images:
            score = self.overall[im.info["idx"]]
            body = "garbled" if score is None else f"Semantic Alignment score: 0.5\nOverall Impression score: {score}"
            text = ("" if think else IMAGEDOCTOR_FAST_PREFILL) + f"{body}</answer>"
            out.append(parse(text, "imagedoctor", im.width, im.height))
        return out


def test_ranking_ties_and_missing_scores():
    overall = [0.2, 0.9, None, 0.9, 0.5]
    imgs = []
    for i in range(len(overall)):
        im = Image.new("RGB", (32, 32))
        im.info["idx"] = i
        imgs.append(im)
    dg = _ScriptedAnswers(overall)
    res = dg.best_of_n(imgs, "p", top_k=3)
    # Ties: lower index first. Unscored: last. Stage 2 diagnoses exactly the top 3, best first.
    assert res.order == [1, 3, 4, 0, 2] and res.unscored == [2]
    assert dg.calls == [(False, [0, 1, 2, 3, 4]), (True, [1, 3, 4])]
    assert sorted(res.full) == [1, 3, 4] and res.full[3].scores.overall == 0.9 and res.best == 1
    # Fewer scored images than K: unscored ones fill the top K in index order.
    dg = _ScriptedAnswers([None, 0.1, None])
    res = dg.best_of_n(imgs[:3], "p", top_k=2)
    assert res.order == [1, 0, 2] and res.top_k == [1, 0]


def test_int8_weights_follow_the_fp32_model(tiny_model_dir, tiny_diagnoser, images):
    from torchao.quantization import Int8Tensor

    q = Diagnoser.from_pretrained(tiny_model_dir, dtype="fp32", device="cpu", quantization="int8")
    assert isinstance(q.model.model.language_model.layers[0].mlp.up_proj.weight, Int8Tensor)
    assert "quantized (int8)" in q.load_report.notes[-1]
    inputs, _, _ = q.build_inputs(images, ["a red cube"] * 3, image_area=AREA)
    with torch.inference_mode():
        ref = tiny_diagnoser.model(**inputs).logits[:, -1]
        got = q.model(**inputs).logits[:, -1]
    assert torch.nn.functional.cosine_similarity(ref, got, dim=-1).min() > 0.999
    assert torch.equal(ref.argmax(-1), got.argmax(-1))
    b = q.diagnose(images, "a red cube", max_new_tokens=6, image_area=AREA, decoder="static")
    assert all(d.heatmaps["artifact"] is not None for d in b)
    with pytest.raises(ValueError, match="quantization must be one of"):
        Diagnoser.from_pretrained(tiny_model_dir, device="cpu", quantization="int4")
