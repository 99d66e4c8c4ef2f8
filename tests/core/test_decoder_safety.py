"""Safety nets of the default decoder, proved on the CPU: the CUDA-graph self-check, auto's fallback
to hf when the static decoder fails, and the IMAGEDOCTOR_DECODER override."""

import re
import types
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

from imagedoctor.core import generation, static_decoder
from imagedoctor.core.generation import DiagnosisCancelled, decode, generate_batch, resolve_decoder
from imagedoctor.core.static_decoder import StaticDecoder, _Bucket, _decode_step, plan_for, replay_mismatch

AREA = 112 * 112


@pytest.fixture(scope="module")
def batch(tiny_diagnoser):
    """Two images with different aspect ratios and prompt lengths (left padding): a full bucket of 2 rows."""
    rng = np.random.default_rng(2)
    images = [Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")) for h, w in [(120, 200), (160, 160)]]
    inputs, _, _ = tiny_diagnoser.build_inputs(images, ["a red cube on a table", "a cat"], image_area=AREA)
    return inputs


def _kwargs(dg, **kw):
    tok = dg.processor.tokenizer
    return {**dict(max_new_tokens=8, suppress_token_ids=dg.vision_token_ids, eos_token_ids=[tok.eos_token_id],
                   pad_token_id=tok.pad_token_id), **kw}


@pytest.fixture
def no_failures(monkeypatch):
    """A fresh record of models on which static failed (the session's tiny model is shared by other tests)."""
    monkeypatch.setattr(generation, "_STATIC_FAILED", weakref.WeakKeyDictionary())
    monkeypatch.delenv(generation.DECODER_ENV, raising=False)


def test_replay_check_accepts_an_eager_step_and_rejects_stale_replays(tiny_diagnoser):
    model = tiny_diagnoser.model
    b = _Bucket(model, 2, 256)
    eager_mask = model.config._attn_implementation == "eager"
    greedy = plan_for(model, **_kwargs(tiny_diagnoser))
    const = b.constants_for(greedy)

    def step():
        _decode_step(model, b, greedy, const, eager_mask)

    def frozen_position():  # what a graph that baked its capture-time position would do
        b.pos.zero_()
        step()

    def frozen_slot_and_position():
        b.write.zero_()
        frozen_position()

    def wrong_token():  # right states, but a different chosen token
        step()
        b.tokens[:, int(b.step) - 1] += 1

    with torch.inference_mode():
        assert replay_mismatch(model, b, greedy, const, eager_mask, step) is None
        assert replay_mismatch(model, b, greedy, const, eager_mask, lambda: None).startswith("hidden states: ")
        for frozen in (frozen_position, frozen_slot_and_position):
            assert replay_mismatch(model, b, greedy, const, eager_mask, frozen).startswith("hidden states: ")
        assert replay_mismatch(model, b, greedy, const, eager_mask, wrong_token) == "chosen tokens: not equal"
        # Sampling: the two runs draw different random numbers, yet the same fed tokens give the same states.
        sampling = plan_for(model, **_kwargs(tiny_diagnoser, do_sample=True, temperature=5.0))
        const_s = b.constants_for(sampling)
        assert replay_mismatch(model, b, sampling, const_s, eager_mask,
                               lambda: _decode_step(model, b, sampling, const_s, eager_mask)) is None


def test_graph_self_check_decides_whether_the_graph_is_used(tiny_diagnoser, batch, monkeypatch, caplog):
    """`StaticDecoder` with 'graphs' on the CPU: the capture returns a replay callable. An honest one is
    used and, after the check ran on its buffers, decoding still equals generate's, seeded draws included;
    a replay that writes nothing is rejected once, with a warning naming the bucket, and eager steps
    give the same tokens."""
    dg, model = tiny_diagnoser, tiny_diagnoser.model
    monkeypatch.setattr(StaticDecoder, "_graphs_on", lambda self, b: True)
    captured = []

    def capture_with(replay_of):
        def capture(model, b, plan, const, eager_mask):
            captured.append(plan)
            return types.SimpleNamespace(replay=replay_of(model, b, plan, const, eager_mask))
        return capture

    kw = _kwargs(dg, do_sample=True, temperature=1.5, seed=11, capture_states=True)
    hf = generate_batch(model, batch, **kw)

    monkeypatch.setattr(static_decoder, "_capture_graph", capture_with(
        lambda m, b, p, c, e: lambda: _decode_step(m, b, p, c, e)))
    honest = StaticDecoder()
    out = honest.generate(model, batch, **kw)
    assert honest.captures == 1 and honest.graph_fallbacks == 0 and len(captured) == 1
    assert torch.equal(out.sequences, hf.sequences) and out.lengths == hf.lengths
    torch.testing.assert_close(out.states, hf.states, atol=1e-5, rtol=0)

    monkeypatch.setattr(static_decoder, "_capture_graph", capture_with(lambda *args: lambda: None))
    broken = StaticDecoder()
    with caplog.at_level("WARNING", logger="imagedoctor"):
        out = broken.generate(model, batch, **kw)
        again = broken.generate(model, batch, **kw)
    warnings = [r.getMessage() for r in caplog.records if "does not replay" in r.getMessage()]
    assert len(warnings) == 1 and re.search(r"for 2 rows x \d+ tokens", warnings[0])
    assert broken.captures == 0 and broken.graph_fallbacks == 1 and len(captured) == 2  # rejected once, not again
    [bucket] = broken.buckets.values()
    assert list(bucket.graphs.values()) == [None]
    for o in (out, again):
        assert torch.equal(o.sequences, hf.sequences)
        torch.testing.assert_close(o.states, hf.states, atol=1e-5, rtol=0)


def test_auto_falls_back_to_hf_when_static_fails(tiny_diagnoser, batch, monkeypatch, caplog, no_failures):
    dg, model = tiny_diagnoser, tiny_diagnoser.model
    monkeypatch.setattr(generation, "STATIC_ON_CPU", True)  # auto picks static here, as it does on CUDA
    kw = _kwargs(dg, capture_states=True, capture_visual=True)
    hf = generate_batch(model, batch, **kw)
    calls = []

    def failing_step(*args):
        calls.append(1)
        raise RuntimeError("injected kernel failure")

    monkeypatch.setattr(static_decoder, "_decode_step", failing_step)
    steps = []
    with caplog.at_level("WARNING", logger="imagedoctor"):
        out = decode(model, batch, decoder="auto", progress=steps.append, **kw)
        later = decode(model, batch, decoder="auto", **kw)
    assert len(calls) == 1  # the later call went straight to hf
    warnings = [r.getMessage() for r in caplog.records if "static decoder failed" in r.getMessage()]
    assert len(warnings) == 1 and "RuntimeError: injected kernel failure" in warnings[0]
    for o in (out, later):
        assert torch.equal(o.sequences, hf.sequences) and o.lengths == hf.lengths
        torch.testing.assert_close(o.states, hf.states, atol=0, rtol=0)
        assert all(torch.equal(x, y) for x, y in zip(o.visual, hf.visual))
    assert steps[-1] == hf.sequences.shape[1]  # hf's run reported its own progress
    with pytest.raises(RuntimeError, match="injected kernel failure"):
        decode(model, batch, decoder="static", **kw)


def test_auto_does_not_swallow_cancellation_or_the_callers_errors(tiny_diagnoser, batch, monkeypatch, no_failures):
    """ComfyUI's interrupt raises from inside ``should_cancel``: that is the caller's, not a static failure."""
    model = tiny_diagnoser.model
    monkeypatch.setattr(generation, "STATIC_ON_CPU", True)

    class Interrupted(Exception):
        pass

    def interrupt():
        raise Interrupted()

    with pytest.raises(Interrupted):
        decode(model, batch, decoder="auto", should_cancel=interrupt, **_kwargs(tiny_diagnoser))
    with pytest.raises(DiagnosisCancelled):
        decode(model, batch, decoder="auto", should_cancel=lambda: True, **_kwargs(tiny_diagnoser))
    assert model not in generation._STATIC_FAILED


def test_decoder_environment_variable(tiny_diagnoser, batch, monkeypatch, no_failures):
    env = generation.DECODER_ENV
    assert env == "IMAGEDOCTOR_DECODER"
    for pinned, auto in [("", "auto"), ("hf", "hf"), ("static", "static"), (" auto ", "auto")]:
        monkeypatch.setenv(env, pinned)
        assert resolve_decoder("auto") == auto
        assert resolve_decoder("hf") == "hf" and resolve_decoder("static") == "static"  # an argument wins
    monkeypatch.setenv(env, "fast")
    with pytest.raises(ValueError, match="IMAGEDOCTOR_DECODER='fast' is not a decoder.*'hf', 'static'"):
        tiny_diagnoser.diagnose([Image.new("RGB", (64, 64))], "x")
    # Pinned static is an explicit static on the CPU too: it runs (auto alone would pick hf) and its errors raise.
    monkeypatch.setenv(env, "static")

    def failing_positions(*args):
        raise RuntimeError("injected prefill failure")

    monkeypatch.setattr(static_decoder, "_rope_positions", failing_positions)
    with pytest.raises(RuntimeError, match="injected prefill failure"):
        decode(tiny_diagnoser.model, batch, **_kwargs(tiny_diagnoser))
    monkeypatch.setenv(env, "hf")
    monkeypatch.setattr(generation, "STATIC_ON_CPU", True)
    assert decode(tiny_diagnoser.model, batch, **_kwargs(tiny_diagnoser, max_new_tokens=2)).sequences.shape[0] == 2
