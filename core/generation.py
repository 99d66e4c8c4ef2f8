"""The decode loop seam.

The diagnoser asks one thing of generation: for a left-padded batch, the generated token ids,
and (when the heatmap head needs them) the final hidden state that *predicted* each generated
token plus the merged visual tokens of each image. Today this is transformers' ``generate``
with two forward hooks (`generate_batch`, decoder "hf"), or the static-cache decoder of
`static_decoder` (decoder "static": same tokens, preallocated buffers, CUDA graphs). `decode`
picks one; any other decoder can join as long as it returns a `GenerationOutput`.

Why hooks instead of ``output_hidden_states=True`` (what upstream does): that keeps every
layer's states for every step (37 x T x D per image) only to read one position of the last
layer. The hook on the final norm keeps [B, T, D] of the last layer alone, and the hook on the
vision tower keeps the visual tokens the prefill already computed, so the head needs no second
pass through either network.
"""

from __future__ import annotations

import logging
import os
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

logger = logging.getLogger("imagedoctor")


class DiagnosisCancelled(RuntimeError):
    """Generation was stopped by the caller's ``should_cancel`` hook (ComfyUI's interrupt)."""


@dataclass
class GenerationOutput:
    """What one batched decode returns.

    sequences: [B, T] generated ids (prompt excluded), padded after each row's end.
    lengths:   generated tokens per row, the end-of-sequence token included.
    states:    [B, T, D] with states[b, t] = final hidden state that predicted sequences[b, t]; or None.
    visual:    per image, [h*w, D_vis] merged visual tokens in raster order; or None.
    """

    sequences: torch.Tensor
    lengths: list[int]
    states: torch.Tensor | None = None
    visual: list[torch.Tensor] | None = None


#: decoder names accepted by `decode` (and `Diagnoser.diagnose`).
DECODERS = ("auto", "hf", "static")


def text_model(model) -> torch.nn.Module:
    """The language model (embeddings, decoder layers, final norm) of a Qwen-VL model."""
    return model.model.language_model if hasattr(model.model, "language_model") else model.model


def _text_norm(model) -> torch.nn.Module:
    return text_model(model).norm


def _visual(model) -> torch.nn.Module:
    return model.model.visual if hasattr(model.model, "visual") else model.visual


@contextmanager
def keep_visual_tokens(model, into: list, enabled: bool = True):
    """While active, append the vision tower's merged tokens [sum h*w, D_vis] of each forward to ``into``."""
    if not enabled:
        yield
        return

    def keep_visual(_module, _args, output):
        merged = getattr(output, "pooler_output", None)
        if merged is None:
            # transformers 4.57 returns the merged tokens as a tensor (Qwen2.5-VL) or as the first
            # item of (merged, deepstack features) (Qwen3-VL); 5.x returns an output with pooler_output
            merged = output[0] if isinstance(output, (tuple, list)) else output
        into.append(merged.detach())

    handle = _visual(model).register_forward_hook(keep_visual)
    try:
        yield
    finally:
        handle.remove()


def split_visual(model, inputs: dict, merged: torch.Tensor) -> list[torch.Tensor]:
    """Split the batch's merged visual tokens into one [h*w, D_vis] tensor per image."""
    grid = inputs["image_grid_thw"]
    merge = _visual(model).spatial_merge_size
    sizes = (grid.prod(-1) // merge**2).tolist()
    return list(torch.split(merged, sizes))


class _StepHook:
    """Stopping criterion that reports progress and honours cancellation once per step."""

    def __init__(self, progress: Callable[[int], None] | None, should_cancel: Callable[[], bool] | None):
        self.progress, self.should_cancel, self.step, self.cancelled = progress, should_cancel, 0, False

    def __call__(self, input_ids, scores, **kwargs):
        self.step += 1
        if self.progress is not None:
            self.progress(self.step)
        if self.should_cancel is not None and self.should_cancel():
            self.cancelled = True
        return torch.full((input_ids.shape[0],), self.cancelled, dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def generate_batch(
    model,
    inputs: dict,
    *,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    suppress_token_ids: list[int] | None = None,
    eos_token_ids: list[int],
    pad_token_id: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    capture_states: bool = False,
    capture_visual: bool = False,
    progress: Callable[[int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> GenerationOutput:
    """Decode a left-padded batch; see `GenerationOutput`. Raises `DiagnosisCancelled`.

    ``suppress_token_ids`` can never be generated (the vision placeholders: sampled, they would
    be read back as extra image slots by any later forward pass over the completion).
    """
    from transformers import StoppingCriteriaList

    states: list[torch.Tensor] = []
    visual: list[torch.Tensor] = []
    handles = []
    if capture_states:

        def keep_state(_module, _args, output):
            # Prefill: only the last position predicts a generated token. Decode: one position.
            states.append(output[:, -1:, :].detach())

        handles.append(_text_norm(model).register_forward_hook(keep_state))
    hook = _StepHook(progress, should_cancel)
    gen_kwargs = dict(
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens or None,
        suppress_tokens=list(suppress_token_ids) if suppress_token_ids else None,
        do_sample=do_sample,
        eos_token_id=eos_token_ids,
        pad_token_id=pad_token_id,
        stopping_criteria=StoppingCriteriaList([hook]),
        use_cache=True,
    )
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    try:
        devices = [model.device] if model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None), \
                keep_visual_tokens(model, visual, capture_visual):
            if seed is not None:
                torch.manual_seed(seed)
            out = model.generate(**inputs, **gen_kwargs)
    finally:
        for h in handles:
            h.remove()
    if hook.cancelled:
        raise DiagnosisCancelled("diagnosis cancelled")
    prompt_len = inputs["input_ids"].shape[1]
    seqs = out[:, prompt_len:]
    lengths = []
    eos = torch.tensor(eos_token_ids, device=seqs.device)
    for row in seqs:
        hits = torch.isin(row, eos).nonzero()
        lengths.append(int(hits[0]) + 1 if len(hits) else int(row.shape[0]))
    st = torch.cat(states, dim=1)[:, : seqs.shape[1]] if capture_states else None
    vis = None
    if capture_visual and visual:
        vis = split_visual(model, inputs, visual[0])
    return GenerationOutput(sequences=seqs, lengths=lengths, states=st, visual=vis)


def static_preferred(model) -> bool:
    """What ``decoder="auto"`` picks when both decoders can run: the static decoder on CUDA (captured
    decode steps); on CPU the measured faster one (see docs/performance.md)."""
    return model.device.type == "cuda" or STATIC_ON_CPU


#: Whether "auto" picks static on the CPU. Measured (docs/performance.md): no gain once the model is
#: compute-bound (the tiny test model is the exception), while static pads batches to a power of two.
STATIC_ON_CPU = False

#: Environment variable that pins what ``decoder="auto"`` (the default) means, for callers that cannot
#: pass arguments (ComfyUI): "hf", "static" (exactly as if passed: its errors raise) or "auto".
DECODER_ENV = "IMAGEDOCTOR_DECODER"

#: Models on which the static decoder raised under "auto": the reason; "auto" uses hf for them from then on.
_STATIC_FAILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def resolve_decoder(decoder: str) -> str:
    """``decoder`` with "auto" replaced by `DECODER_ENV` when that is set. Raises ValueError for unknown names."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; use one of {list(DECODERS)}")
    pinned = os.environ.get(DECODER_ENV, "").strip()
    if decoder != "auto" or not pinned:
        return decoder
    if pinned not in DECODERS:
        raise ValueError(f"environment variable {DECODER_ENV}={pinned!r} is not a decoder; set it to one of "
                         f"{list(DECODERS)} or unset it")
    return pinned


class _CallerErrors:
    """Wraps the caller's callbacks and remembers what they raised (ComfyUI's interrupt, say), so that
    their exceptions are never mistaken for a failure of the decoder."""

    def __init__(self):
        self.raised: list[BaseException] = []

    def wrap(self, fn):
        if fn is None:
            return None

        def call(*args):
            try:
                return fn(*args)
            except BaseException as exc:
                self.raised.append(exc)
                raise

        return call

    def __contains__(self, exc) -> bool:
        return any(exc is e for e in self.raised)


def decode(model, inputs: dict, *, decoder: str = "auto", **kwargs) -> GenerationOutput:
    """Decode with ``decoder`` ("hf", "static", or "auto": static where it is faster and can
    reproduce ``generate``'s settings, else hf; `DECODER_ENV` can pin it). Same keyword arguments
    as `generate_batch`.

    Under "auto", a static decoder that fails (anything but cancellation or an exception from the
    caller's ``progress``/``should_cancel``) is logged once, this call is decoded again with hf, and
    so are later calls on this model. An explicit "static" raises instead.
    """
    decoder = resolve_decoder(decoder)
    if decoder == "hf" or (decoder == "auto" and (not static_preferred(model) or model in _STATIC_FAILED)):
        return generate_batch(model, inputs, **kwargs)
    from .static_decoder import StaticDecoderUnsupported, plan_for, static_decoder_for

    plan_args = {k: kwargs[k] for k in ("max_new_tokens", "min_new_tokens", "suppress_token_ids", "eos_token_ids",
                                        "pad_token_id", "do_sample", "temperature", "top_p") if k in kwargs}
    try:
        plan_for(model, **plan_args)
    except StaticDecoderUnsupported as exc:
        if decoder == "static":
            raise StaticDecoderUnsupported(f"decoder='static' cannot reproduce this generation: {exc}; "
                                           "use decoder='hf' (or 'auto')") from exc
        return generate_batch(model, inputs, **kwargs)
    if decoder == "static":
        return static_decoder_for(model).generate(model, inputs, **kwargs)
    caller = _CallerErrors()
    hooks = {name: caller.wrap(kwargs.get(name)) for name in ("progress", "should_cancel")}
    try:
        return static_decoder_for(model).generate(model, inputs, **{**kwargs, **hooks})
    except DiagnosisCancelled:
        raise
    except Exception as exc:
        if exc in caller:
            raise
        _STATIC_FAILED[model] = f"{type(exc).__name__}: {exc}"
        static_decoder_for(model).reset()  # its buffers are no use to hf; free them
        logger.warning("static decoder failed (%s); decoding with hf from now on for this model (decoder='auto'). "
                       "Please report this; decoder='static' raises the error instead.", _STATIC_FAILED[model])
        return generate_batch(model, inputs, **kwargs)
