"""The static-cache decoder against transformers' generate (the "hf" decoder), on tiny fp32 models."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from imagedoctor.core.diagnoser import Diagnoser, DiagnosisCancelled
from imagedoctor.core.generation import decode, generate_batch
from imagedoctor.core.static_decoder import CHECK_EVERY, StaticDecoder, StaticDecoderUnsupported, plan_for

PROMPTS = ["a red cube", "two blue balls on a long wooden table", "a cat"]
AREA = 112 * 112


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    # Three aspect ratios and three prompt lengths: a left-padded batch of 3 (bucket of 4: one dummy row).
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")) for h, w in [(120, 200), (200, 120), (160, 160)]]


@pytest.fixture(scope="module")
def qwen3(tiny_qwen3_dir):
    return Diagnoser.from_pretrained(tiny_qwen3_dir, dtype="fp32", device="cpu")


def _gen_kwargs(dg, **kw):
    tok = dg.processor.tokenizer
    base = dict(max_new_tokens=24, suppress_token_ids=dg.vision_token_ids, eos_token_ids=[tok.eos_token_id],
                pad_token_id=tok.pad_token_id)
    return {**base, **kw}


def _assert_same(a, b, states=True):
    assert torch.equal(a.sequences, b.sequences)
    assert a.lengths == b.lengths
    if states:
        torch.testing.assert_close(a.states, b.states, atol=1e-5, rtol=0)
        assert all(torch.equal(x, y) for x, y in zip(a.visual, b.visual))


def test_greedy_diagnoses_equal_hf(tiny_diagnoser, images):
    """Qwen2.5-VL with head: same text and heatmaps within 1e-5 through `Diagnoser.diagnose`."""
    kw = dict(max_new_tokens=16, image_area=AREA)
    hf = tiny_diagnoser.diagnose(images, PROMPTS, decoder="hf", **kw)
    st = tiny_diagnoser.diagnose(images, PROMPTS, decoder="static", **kw)
    for a, b in zip(hf, st):
        assert a.raw_text == b.raw_text
        for name in ("misalignment", "artifact"):
            np.testing.assert_allclose(a.heatmaps[name], b.heatmaps[name], atol=1e-5)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_rows_ending_at_different_steps_equal_hf(family, tiny_diagnoser, qwen3, images):
    """Ids, lengths, states and visual tokens equal generate's when rows stop at different steps.

    Four rows (a full bucket, so the seeded draws are generate's own), mixed aspect ratios and
    prompt lengths (left padding, M-RoPE positions). The end token is one that row 0 samples
    mid-answer, so rows end at different steps, later tokens are padding, and the output is cut
    where the last row ended.
    """
    dg = tiny_diagnoser if family == "qwen2_5_vl" else qwen3
    imgs = images + [images[0].resize((90, 150))]
    inputs, _, _ = dg.build_inputs(imgs, PROMPTS + ["a dog"], image_area=AREA if family == "qwen2_5_vl" else None)
    kw = _gen_kwargs(dg, max_new_tokens=16, capture_states=True, capture_visual=True, do_sample=True, temperature=2.0,
                     seed=5)
    free = generate_batch(dg.model, inputs, **{**kw, "max_new_tokens": 6})
    kw["eos_token_ids"] = [int(free.sequences[0, 5])]
    hf = generate_batch(dg.model, inputs, **kw)
    st = StaticDecoder().generate(dg.model, inputs, **kw)
    assert hf.lengths[0] <= 6 and min(hf.lengths) < max(hf.lengths)
    _assert_same(hf, st)


def test_sampling_matches_hf_and_repeats(tiny_diagnoser, images):
    """Full batch bucket (2 rows): the seeded draw is generate's own (temperature, top-k 50, top-p)."""
    dg = tiny_diagnoser
    inputs, _, _ = dg.build_inputs(images[:2], PROMPTS[:2], image_area=AREA)
    kw = _gen_kwargs(dg, do_sample=True, temperature=1.5, top_p=0.9, seed=7)
    decoder = StaticDecoder()
    a, b = decoder.generate(dg.model, inputs, **kw), decoder.generate(dg.model, inputs, **kw)
    assert torch.equal(a.sequences, b.sequences)
    assert torch.equal(a.sequences, generate_batch(dg.model, inputs, **kw).sequences)
    assert not torch.equal(a.sequences, decoder.generate(dg.model, inputs, **{**kw, "seed": 8}).sequences)
    # With a dummy row the draw differs from generate's, but a seed still fixes the text.
    texts = [[d.raw_text for d in dg.diagnose(images, PROMPTS, max_new_tokens=12, do_sample=True, seed=3,
                                               image_area=AREA, heatmaps=False, decoder="static")] for _ in range(2)]
    assert texts[0] == texts[1]


def test_generation_config_is_honoured_or_refused(tiny_diagnoser, images):
    """A repetition penalty from the model's generation config applies as in generate; what the
    static decoder cannot reproduce is refused by name ('auto' then uses hf)."""
    dg = tiny_diagnoser
    inputs, _, _ = dg.build_inputs(images, PROMPTS, image_area=AREA)
    cfg = dg.model.generation_config
    try:
        cfg.repetition_penalty = 1.5
        kw = _gen_kwargs(dg, min_new_tokens=20)
        _assert_same(generate_batch(dg.model, inputs, **kw), StaticDecoder().generate(dg.model, inputs, **kw), states=False)
        cfg.no_repeat_ngram_size = 3
        with pytest.raises(StaticDecoderUnsupported, match="no_repeat_ngram_size=3"):
            plan_for(dg.model, **_gen_kwargs(dg))
        with pytest.raises(StaticDecoderUnsupported, match="use decoder='hf'"):
            decode(dg.model, inputs, decoder="static", **_gen_kwargs(dg))
        assert decode(dg.model, inputs, decoder="auto", **_gen_kwargs(dg, max_new_tokens=2)).sequences.shape[0] == 3
    finally:
        cfg.repetition_penalty = None
        cfg.no_repeat_ngram_size = None
    with pytest.raises(ValueError, match="unknown decoder 'fast'"):
        dg.diagnose(images[:1], "x", decoder="fast")


def test_cache_is_reused_across_calls(tiny_diagnoser, images, caplog):
    dg = tiny_diagnoser
    decoder = StaticDecoder()
    inputs, _, _ = dg.build_inputs(images, PROMPTS, image_area=AREA)
    with caplog.at_level("INFO", logger="imagedoctor"):
        first = decoder.generate(dg.model, inputs, **_gen_kwargs(dg, max_new_tokens=8))
    assert re.search(r"prepared a bucket for 4 rows x \d+ tokens", caplog.text)
    [bucket] = decoder.buckets.values()
    keys = bucket.cache.layers[0].keys.data_ptr()
    # Another batch of 3 with a shorter prompt fits the same bucket: nothing is allocated again.
    other, _, _ = dg.build_inputs(images[::-1], ["x", "y", "z"], image_area=AREA)
    decoder.generate(dg.model, other, **_gen_kwargs(dg, max_new_tokens=8))
    again = decoder.generate(dg.model, inputs, **_gen_kwargs(dg, max_new_tokens=8))
    assert decoder.allocations == 1 and list(decoder.buckets.values()) == [bucket]
    assert bucket.cache.layers[0].keys.data_ptr() == keys
    assert torch.equal(first.sequences, again.sequences)
    # A batch of 1 needs another bucket; the oldest goes once more than max_buckets are live.
    one, _, _ = dg.build_inputs(images[:1], PROMPTS[:1], image_area=AREA)
    decoder.generate(dg.model, one, **_gen_kwargs(dg, max_new_tokens=4))
    assert decoder.allocations == 2 and len(decoder.buckets) == 2


def test_progress_and_cancel(tiny_diagnoser, images):
    """Every step on the CPU (through `diagnose`); every ``check_every`` steps when set (CUDA's default)."""
    seen = []
    tiny_diagnoser.diagnose(images[:2], PROMPTS[:2], max_new_tokens=6, image_area=AREA, decoder="static", heatmaps=False,
                            progress=lambda done, total: seen.append((done, total)))
    assert seen == [(s, 6) for s in range(2, 7)] + [(6, 6)]
    polls = []
    with pytest.raises(DiagnosisCancelled):
        tiny_diagnoser.diagnose(images[:2], PROMPTS[:2], max_new_tokens=60, image_area=AREA, decoder="static",
                                should_cancel=lambda: polls.append(1) or len(polls) >= 3)
    assert len(polls) == 3
    dg = tiny_diagnoser
    inputs, _, _ = dg.build_inputs(images[:2], PROMPTS[:2], image_area=AREA)
    steps, polls = [], []
    with pytest.raises(DiagnosisCancelled):
        StaticDecoder(check_every=CHECK_EVERY).generate(
            dg.model, inputs, **_gen_kwargs(dg, max_new_tokens=60), progress=steps.append,
            should_cancel=lambda: polls.append(1) or len(polls) >= 2)
    assert steps == [1 + CHECK_EVERY, 1 + 2 * CHECK_EVERY] and len(polls) == 2  # stopped long before 60
