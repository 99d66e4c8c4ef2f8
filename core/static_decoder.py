"""A static-cache decoder: the same tokens as transformers' ``generate``, without its per-step overhead.

Why: a diagnosis is a few hundred decode steps of a 3B model. ``generate`` with a dynamic cache
spends most of each step in Python (cache growth, mask building, logits processors) and
launching kernels one by one; the GPU mostly waits. This decoder keeps everything a decode step
touches in buffers whose shapes and addresses never change, so on CUDA one step is captured once
as a CUDA graph and then replayed (one launch per token); on CPU the very same step runs eagerly.
Each captured graph is checked once against eager steps (`replay_mismatch`) before it is used.

What it keeps from ``generate`` (the contract, tested against it):
- the prefill is transformers' own forward over the left-padded batch (SDPA or whatever attention
  the model was loaded with), with the 3D M-RoPE positions from the model's ``get_rope_index``;
  decode step t feeds the previous token at position ``last prefill position + 1 + t`` of its row,
  which is what ``generate`` does (it extends each row's positions by one per step);
- the logits pipeline `generate` would build from the model's generation config plus our
  arguments, in its order: repetition penalty, min length / min new tokens, suppressed tokens,
  then (sampling) temperature, top-k, top-p and a multinomial draw. A configuration that needs a
  processor this decoder does not implement is refused (`plan_for` says which), never approximated;
- rows that finished emit the pad token; the output stops where the last row ended.

Per (batch bucket, length bucket) it allocates, once: a transformers `StaticCache`, a boolean
attention mask, output buffers for tokens and for the final-norm hidden state of every step (the
state that *predicted* each token, which the heatmap head reads). Batches are padded up to a power
of two with dummy rows that attend only to their own tokens; lengths round up to
`LENGTH_BUCKET`. Buckets live while the model does (at most ``max_buckets``, least recently used
dropped first). On CUDA the host reads the "all rows ended" flag, reports progress and polls
cancellation every `CHECK_EVERY` steps, not every step (each read waits for the GPU).
"""

from __future__ import annotations

import inspect

import logging
import math
import threading
import weakref
from dataclasses import dataclass
from typing import Callable

import torch

from .generation import DiagnosisCancelled, GenerationOutput, keep_visual_tokens, text_model

logger = logging.getLogger("imagedoctor")

#: cache lengths are multiples of this (prompt + new tokens, rounded up): few buckets, little waste.
LENGTH_BUCKET = 256
#: steps between host reads of the stop flag, progress reports and cancellation polls on CUDA (on the
#: CPU reading the flag costs nothing, so it is read every step and cancellation is as prompt as hf's).
CHECK_EVERY = 8
#: buckets kept alive per model (each holds a KV cache and, on CUDA, its captured graphs).
MAX_BUCKETS = 2
_ATTENTION = ("sdpa", "eager")


class StaticDecoderUnsupported(ValueError):
    """The static decoder cannot reproduce ``generate`` for this model or these settings (the message says why)."""


@dataclass(frozen=True)
class LogitsPlan:
    """The logits pipeline of one generation, as `generate` would apply it (its order, its parameters)."""

    do_sample: bool
    eos: tuple[int, ...]
    pad: int
    suppress: tuple[int, ...] = ()
    min_new_tokens: int = 0
    min_length: int = 0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


def _generation_defaults() -> dict:
    from transformers import GenerationConfig

    defaults = getattr(GenerationConfig, "_get_default_generation_params", None)
    if defaults is not None:
        try:
            return dict(defaults(GenerationConfig()))
        except TypeError:
            return dict(defaults())
    return {"top_k": 50, "temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0, "min_length": 0}


def plan_for(model, *, max_new_tokens: int, min_new_tokens: int = 0, suppress_token_ids=None, eos_token_ids,
             pad_token_id: int, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0) -> LogitsPlan:
    """The `LogitsPlan` that `generate_batch` (hence ``generate``) would use; raises `StaticDecoderUnsupported`.

    Precedence is transformers': arguments given to ``generate`` > ``model.generation_config`` >
    transformers' global defaults (e.g. ``top_k=50`` when sampling and nothing sets it).
    """
    attn = getattr(model.config, "_attn_implementation", None) or "eager"
    if attn not in _ATTENTION:
        raise StaticDecoderUnsupported(f"attention implementation {attn!r} (the static decoder runs {list(_ATTENTION)})")
    if len(set(map(str, (getattr(model, "hf_device_map", None) or {}).values()))) > 1:
        raise StaticDecoderUnsupported("a model split across devices (its buffers live on one device)")
    given = dict(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens or None,
                 suppress_tokens=list(suppress_token_ids) if suppress_token_ids else None, do_sample=do_sample)
    if do_sample:
        given.update(temperature=temperature, top_p=top_p)
    else:
        given.update(temperature=None, top_p=None, top_k=None)
    model_cfg = model.generation_config
    defaults = _generation_defaults()

    def value(name):
        if name in given:
            return given[name]
        v = getattr(model_cfg, name, None)
        return v if v is not None else defaults.get(name)

    unsupported = []
    checks = {
        "num_beams": lambda v: v not in (None, 1), "guidance_scale": lambda v: v not in (None, 1, 1.0),
        "sequence_bias": lambda v: v is not None, "no_repeat_ngram_size": lambda v: bool(v),
        "bad_words_ids": lambda v: v is not None, "begin_suppress_tokens": lambda v: v is not None,
        "forced_bos_token_id": lambda v: v is not None, "forced_eos_token_id": lambda v: v is not None,
        "exponential_decay_length_penalty": lambda v: v is not None, "watermarking_config": lambda v: v is not None,
        "max_time": lambda v: v is not None, "stop_strings": lambda v: v is not None,
    }
    if do_sample:
        checks.update({
            "top_h": lambda v: v is not None, "min_p": lambda v: v is not None,
            "typical_p": lambda v: v is not None and v < 1.0, "epsilon_cutoff": lambda v: v is not None and 0 < v < 1,
            "eta_cutoff": lambda v: v is not None and 0 < v < 1, "renormalize_logits": lambda v: bool(v),
        })
    for name, bad in checks.items():
        if bad(value(name)):
            unsupported.append(f"{name}={value(name)!r}")
    if unsupported:
        raise StaticDecoderUnsupported("generation settings it does not implement: " + ", ".join(unsupported))
    penalty = value("repetition_penalty")
    plan = dict(do_sample=bool(do_sample), eos=tuple(int(i) for i in eos_token_ids), pad=int(pad_token_id),
                suppress=tuple(sorted({int(i) for i in (value("suppress_tokens") or [])})),
                min_new_tokens=int(value("min_new_tokens") or 0), min_length=int(value("min_length") or 0),
                repetition_penalty=float(penalty) if penalty is not None else 1.0)
    if do_sample:
        t, k, p = value("temperature"), value("top_k"), value("top_p")
        plan.update(temperature=float(t) if t is not None else 1.0, top_k=int(k or 0), top_p=float(p) if p is not None else 1.0)
    return LogitsPlan(**plan)


def _rope_positions(model, inputs) -> torch.Tensor:
    """[3, B, L] M-RoPE positions of the prompt, as ``generate`` computes them (padding included)."""
    ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    inner = model.model
    extra = {}
    if "mm_token_type_ids" in inspect.signature(inner.get_rope_index).parameters:  # transformers >= 5
        types = inputs.get("mm_token_type_ids")
        extra["mm_token_type_ids"] = types if types is not None else (ids == model.config.image_token_id).int()
    pos, _deltas = inner.get_rope_index(ids, image_grid_thw=inputs.get("image_grid_thw"),
                                        video_grid_thw=inputs.get("video_grid_thw"), attention_mask=mask, **extra)
    return pos


def _cache_kwargs(module, cache, write_at: torch.Tensor | None = None) -> dict:
    """The cache arguments of ``module.forward`` for this transformers version: 5.x takes ``cache`` (a
    static cache counts its own writes); 4.57 takes ``past_key_values`` and writes at ``cache_position``."""
    params = inspect.signature(module.forward).parameters
    if "cache" in params:
        return {"cache": cache}
    out = {"past_key_values": cache}
    if write_at is not None:
        out["cache_position"] = write_at
    return out


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class _Bucket:
    """Buffers of one (batch, length) bucket; every decode step reads and writes them in place.

    cache [batch, kv_heads, length, head_dim] per layer (transformers' StaticCache); mask
    [batch, 1, 1, length] (True = attend); tokens [batch, length]; states [batch, length, D];
    cur [batch] (token fed next); step () (index of the token being predicted); write () (cache slot
    of the fed token); pos [3, batch] (its RoPE position); done [batch]; seen [batch, V+1] (tokens
    already in the row, for the repetition penalty; column V collects the ignored padding).
    """

    def __init__(self, model, batch: int, length: int):
        from transformers import StaticCache

        param = model.lm_head.weight
        self.device, self.dtype = param.device, _compute_dtype(model)
        cfg = model.config.get_text_config(decoder=True)
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.batch, self.length, self.vocab = batch, length, int(model.lm_head.out_features)
        self.cache = StaticCache(config=model.config, max_cache_len=length)
        self.cache.early_initialization(batch, kv_heads, head_dim, self.dtype, self.device)
        dev = self.device
        self.mask = torch.zeros(batch, 1, 1, length, dtype=torch.bool, device=dev)
        self.tokens = torch.zeros(batch, length, dtype=torch.long, device=dev)
        self.states = torch.zeros(batch, length, cfg.hidden_size, dtype=self.dtype, device=dev)
        self.cur = torch.zeros(batch, dtype=torch.long, device=dev)
        self.step = torch.zeros((), dtype=torch.long, device=dev)
        self.write = torch.zeros((), dtype=torch.long, device=dev)
        self.prompt_len = torch.zeros((), dtype=torch.long, device=dev)
        self.pos = torch.zeros(3, batch, dtype=torch.long, device=dev)
        self.done = torch.zeros(batch, dtype=torch.bool, device=dev)
        self.seen = torch.zeros(batch, self.vocab + 1, dtype=torch.bool, device=dev)
        self.graphs: dict[LogitsPlan, object] = {}
        self.constants: dict[LogitsPlan, dict] = {}
        self.pool = None

    @property
    def nbytes(self) -> int:
        layers = sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in self.cache.layers)
        return layers + self.states.numel() * self.states.element_size() + self.seen.numel()

    def constants_for(self, plan: LogitsPlan) -> dict:
        if plan not in self.constants:
            eos = torch.zeros(self.vocab, dtype=torch.bool, device=self.device)
            eos[[i for i in plan.eos if i < self.vocab]] = True
            sup = torch.zeros(self.vocab, dtype=torch.bool, device=self.device)
            sup[[i for i in plan.suppress if i < self.vocab]] = True
            self.constants[plan] = {"eos_mask": eos, "suppress_mask": sup,
                                    "eos_ids": torch.tensor(plan.eos, dtype=torch.long, device=self.device)}
        return self.constants[plan]


def _compute_dtype(model) -> torch.dtype:
    emb = text_model(model).embed_tokens.weight
    return emb.dtype if emb.is_floating_point() else torch.float32


def _select(b: _Bucket, plan: LogitsPlan, const: dict, logits: torch.Tensor, hidden: torch.Tensor) -> None:
    """Choose token ``b.step`` for every row from its logits (the `generate` pipeline), record it and its state."""
    scores = logits.float()
    if plan.repetition_penalty != 1.0:
        p = plan.repetition_penalty
        scores = torch.where(b.seen[:, : b.vocab], torch.where(scores < 0, scores * p, scores / p), scores)
    if plan.min_length > 0 or plan.min_new_tokens > 0:
        block = (b.step < plan.min_new_tokens) | (b.prompt_len + b.step < plan.min_length)
        scores = scores.masked_fill(const["eos_mask"] & block, -math.inf)
    if plan.suppress:
        scores = scores.masked_fill(const["suppress_mask"], -math.inf)
    if plan.do_sample:
        if plan.temperature != 1.0:
            scores = scores / plan.temperature
        if plan.top_k:
            k = min(plan.top_k, scores.shape[-1])
            scores = scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1, None], -math.inf)
        if plan.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=False)
            cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
            remove = cumulative <= (1 - plan.top_p)
            remove[..., -1:] = False
            scores = scores.masked_fill(remove.scatter(1, order, remove), -math.inf)
        probs = scores.softmax(dim=-1)
        # torch.multinomial(probs, 1) draws exactly this way (exponential race), but checks its
        # input on the host; this form is the same draw without the sync, so it can be captured.
        race = torch.empty_like(probs).exponential_(1)
        nxt = (probs / race).argmax(dim=-1)
    else:
        nxt = scores.argmax(dim=-1)
    nxt = torch.where(b.done, plan.pad, nxt)
    at = b.step.view(1)
    b.tokens.index_copy_(1, at, nxt[:, None])
    b.states.index_copy_(1, at, hidden[:, None].to(b.states.dtype))
    b.done |= (nxt[:, None] == const["eos_ids"][None, :]).any(-1)
    if plan.repetition_penalty != 1.0:
        b.seen.scatter_(1, nxt[:, None], True)
    b.cur.copy_(nxt)
    b.step += 1


def _decode_step(model, b: _Bucket, plan: LogitsPlan, const: dict, eager_mask: bool) -> None:
    """Feed ``b.cur`` at cache slot ``b.write`` (RoPE position ``b.pos``) and choose the next token. Static shapes only."""
    b.mask.index_fill_(3, b.write.view(1), True)
    lm = text_model(model)
    mask = b.mask
    if eager_mask:
        mask = torch.where(b.mask, 0.0, torch.finfo(b.dtype).min).to(b.dtype)
    out = lm(inputs_embeds=lm.embed_tokens(b.cur[:, None]), position_ids=b.pos[:, :, None], attention_mask=mask,
             use_cache=True, **_cache_kwargs(lm, b.cache, b.write.view(1)))
    hidden = out.last_hidden_state[:, -1]
    _select(b, plan, const, model.lm_head(hidden), hidden)
    b.write += 1
    b.pos += 1


def _reset_steps(b: _Bucket) -> None:
    """Rewind the bucket to an empty cache: step, write slot, positions, ended rows, mask, seen tokens."""
    for buffer in (b.step, b.write, b.pos, b.done, b.mask, b.seen):
        buffer.zero_()
    for layer in b.cache.layers:
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length.zero_()


def _capture_graph(model, b: _Bucket, plan: LogitsPlan, const: dict, eager_mask: bool):
    """One decode step of ``b`` captured as a ``torch.cuda.CUDAGraph`` (after two warm-up steps on a side stream)."""
    _reset_steps(b)
    stream = torch.cuda.Stream(device=b.device)
    stream.wait_stream(torch.cuda.current_stream(b.device))
    with torch.cuda.stream(stream):
        for _ in range(2):  # allocator, cuBLAS and kernel selection settle before capture
            _decode_step(model, b, plan, const, eager_mask)
    torch.cuda.current_stream(b.device).wait_stream(stream)
    if b.pool is None:
        b.pool = torch.cuda.graph_pool_handle()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=b.pool, capture_error_mode="thread_local"):
        _decode_step(model, b, plan, const, eager_mask)
    return graph


#: relative L2 distance allowed between replayed and eager vectors (kernels may round differently).
_RTOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def replay_mismatch(model, b: _Bucket, plan: LogitsPlan, const: dict, eager_mask: bool, replay: Callable[[], None],
                    steps: int = 3) -> str | None:
    """What differs between ``replay()`` (a captured decode step) and `_decode_step`, or None when nothing does.

    Both run ``steps`` steps from an empty cache, fed the same tokens, their outputs cleared first.
    Compared: the attention mask and, when greedy, the chosen tokens exactly (sampled ones use fresh
    random numbers by design); the hidden states written into ``b.states`` and the keys and values
    written into the cache within `_RTOL` (relative L2 per vector). Keys carry their RoPE position and
    the mask the write slot, so a replay that reuses a position or slot baked in at capture differs
    even where the hidden states barely do. It cannot see rounding differences between kernels.
    Leaves the step buffers dirty: `StaticDecoder._generate` resets them all before each prefill.
    """
    rows = torch.arange(b.batch, device=b.device)
    fed = [(rows * 31 + 17 * i + 1) % b.vocab for i in range(steps)]  # distinct per row and step

    def run(step: Callable[[], None]) -> dict:
        _reset_steps(b)
        b.tokens[:, :steps] = -1
        b.states[:, :steps] = float("nan")
        for layer in b.cache.layers:  # zeros, not NaN: masked slots are read too (with weight 0)
            layer.keys[:, :, :steps] = 0
            layer.values[:, :, :steps] = 0
        for token in fed:
            b.cur.copy_(token)
            step()
        return {"hidden states": b.states[:, :steps].to(torch.float32, copy=True),
                "cached keys": torch.stack([layer.keys[:, :, :steps].float() for layer in b.cache.layers]),
                "cached values": torch.stack([layer.values[:, :, :steps].float() for layer in b.cache.layers]),
                "attention mask": b.mask.clone(), "chosen tokens": b.tokens[:, :steps].clone()}

    eager = run(lambda: _decode_step(model, b, plan, const, eager_mask))
    replayed = run(replay)
    rtol = _RTOL.get(b.dtype, 2e-2)
    for name, want in eager.items():
        got = replayed[name]
        if not want.is_floating_point():
            if (name != "chosen tokens" or not plan.do_sample) and not torch.equal(got, want):
                return f"{name}: not equal"
            continue
        distance = (got - want).norm(dim=-1) / want.norm(dim=-1).clamp_min(1e-12)
        if not bool((distance <= rtol).all()):  # NaN (nothing written) fails too
            return f"{name}: relative distance {distance.max().item():.3g} > {rtol:g}"
    return None


def _fingerprint(model) -> tuple:
    """Where the weights live: graphs replay raw addresses, so a moved or replaced model invalidates them."""
    ptrs = []
    for p in model.parameters():
        try:
            ptrs.append(p.data_ptr())
        except (RuntimeError, NotImplementedError):  # tensor subclasses (quantized weights)
            ptrs.append(id(p))
    return (str(model.lm_head.weight.device), tuple(ptrs))


class StaticDecoder:
    """Static-cache decoding for one loaded model; get it with `static_decoder_for(model)`.

    ``use_graphs``: capture each bucket's decode step as a CUDA graph (CUDA only; default: on CUDA).
    ``check_every``: steps between stop-flag reads, progress and cancellation polls (default:
    `CHECK_EVERY` on CUDA, every step on the CPU).
    """

    def __init__(self, max_buckets: int = MAX_BUCKETS, check_every: int | None = None, use_graphs: bool | None = None):
        if max_buckets < 1 or (check_every is not None and check_every < 1):
            raise ValueError("max_buckets and check_every must be at least 1")
        self.max_buckets, self.check_every, self.use_graphs = max_buckets, check_every, use_graphs
        self.buckets: dict[tuple[int, int], _Bucket] = {}
        self.allocations = 0  # buckets created so far (tests: a second call must not allocate)
        self.captures = 0  # CUDA graphs captured (and checked) so far
        self.graph_fallbacks = 0  # buckets decoding eagerly on CUDA: capture failed or its check rejected the graph
        self._fingerprint = None
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Free every bucket (cache, buffers, graphs)."""
        self.buckets.clear()
        self._fingerprint = None

    def _bucket(self, model, batch: int, need: int) -> _Bucket:
        bb = _next_pow2(batch)
        length = -(-need // LENGTH_BUCKET) * LENGTH_BUCKET
        # A live bucket up to twice as long serves too: fewer allocations for a little more attention.
        fits = sorted(key for key in self.buckets if key[0] == bb and length <= key[1] <= 2 * length)
        if fits:
            key = min(fits, key=lambda k: k[1])
            self.buckets[key] = self.buckets.pop(key)  # most recently used last
            return self.buckets[key]
        while len(self.buckets) >= self.max_buckets:
            self.buckets.pop(next(iter(self.buckets)))
        bucket = _Bucket(model, bb, length)
        self.buckets[(bb, length)] = bucket
        self.allocations += 1
        logger.info("static decoder: prepared a bucket for %d rows x %d tokens (%.0f MiB%s)", bb, length,
                    bucket.nbytes / 2**20, "; its decode step is captured as a CUDA graph on first use"
                    if self._graphs_on(bucket) else "")
        return bucket

    def _graphs_on(self, b: _Bucket) -> bool:
        return b.device.type == "cuda" and (self.use_graphs is None or self.use_graphs)

    def _graph(self, model, b: _Bucket, plan: LogitsPlan, const: dict, eager_mask: bool):
        """The bucket's decode step for ``plan`` as a CUDA graph, captured and checked on first use; None
        (eager steps) when capture fails or its replay does not compute what an eager step does."""
        if plan in b.graphs:
            return b.graphs[plan]
        where = f"{b.batch} rows x {b.length} tokens"
        logger.info("static decoder: capturing the decode step for %s as a CUDA graph", where)
        # Warm-up and check steps draw random numbers (sampling plans): not from the caller's seeded stream.
        with torch.random.fork_rng(devices=[b.device] if b.device.type == "cuda" else []):
            try:
                graph = _capture_graph(model, b, plan, const, eager_mask)
            except RuntimeError as exc:  # an op that cannot be captured: same tokens, eager steps
                logger.warning("static decoder: CUDA graph capture failed for %s (%s); decoding this bucket "
                               "without graphs", where, exc)
                graph = None
            mismatch = None if graph is None else replay_mismatch(model, b, plan, const, eager_mask, graph.replay)
        if mismatch:
            logger.warning("static decoder: the CUDA graph for %s does not replay what an eager decode step "
                           "computes (%s); decoding this bucket without graphs", where, mismatch)
            graph = None
        b.graphs[plan] = graph
        self.captures += graph is not None
        self.graph_fallbacks += graph is None
        return graph

    @torch.inference_mode()
    def generate(
        self,
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
        """Same arguments and result as `generation.generate_batch`. Raises `DiagnosisCancelled`,
        `StaticDecoderUnsupported`."""
        plan = plan_for(model, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                        suppress_token_ids=suppress_token_ids, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id,
                        do_sample=do_sample, temperature=temperature, top_p=top_p)
        with self._lock:
            fingerprint = _fingerprint(model)
            if fingerprint != self._fingerprint:
                self.reset()
                self._fingerprint = fingerprint
            devices = [model.lm_head.weight.device] if model.lm_head.weight.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices, enabled=seed is not None):
                if seed is not None:
                    torch.manual_seed(seed)
                return self._generate(model, inputs, plan, max_new_tokens, capture_states, capture_visual,
                                      progress, should_cancel)

    def _generate(self, model, inputs, plan, max_new_tokens, capture_states, capture_visual, progress, should_cancel):
        from transformers import DynamicCache

        ids, attn = inputs["input_ids"], inputs["attention_mask"]
        batch, prompt = ids.shape
        b = self._bucket(model, batch, prompt + max_new_tokens)
        const = b.constants_for(plan)
        eager_mask = getattr(model.config, "_attn_implementation", "eager") == "eager"
        graph = self._graph(model, b, plan, const, eager_mask) if self._graphs_on(b) else None

        # Prefill: transformers' forward over the real rows, into a dynamic cache copied into the bucket.
        positions = _rope_positions(model, inputs)
        prefill_kwargs = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        visual: list[torch.Tensor] = []
        with keep_visual_tokens(model, visual, capture_visual):
            cache = DynamicCache(config=model.config)
            out = model.model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=True,
                              **_cache_kwargs(model.model, cache), **prefill_kwargs)
        hidden = out.last_hidden_state[:, -1]
        for layer, static in zip(cache.layers, b.cache.layers):
            static.keys[:batch, :, :prompt].copy_(layer.keys)
            static.values[:batch, :, :prompt].copy_(layer.values)
            if hasattr(static, "cumulative_length"):  # transformers >= 5 counts; 4.57 writes at cache_position
                static.cumulative_length.fill_(prompt)
        del cache, out
        b.mask.zero_()
        b.mask[:batch, 0, 0, :prompt] = attn.bool()
        b.done.zero_()
        b.step.zero_()
        b.prompt_len.fill_(prompt)
        b.write.fill_(prompt)
        b.pos.zero_()
        b.pos[:, :batch] = positions[:, :, -1] + 1
        b.cur.zero_()
        if plan.repetition_penalty != 1.0:
            b.seen.zero_()
            real = ids.masked_fill(attn == 0, b.vocab).clamp(max=b.vocab)
            b.seen[:batch].scatter_(1, real, True)
        logits = torch.zeros(b.batch, b.vocab, dtype=hidden.dtype, device=hidden.device)
        states0 = torch.zeros(b.batch, hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
        logits[:batch] = model.lm_head(hidden)
        states0[:batch] = hidden
        _select(b, plan, const, logits, states0)

        every = self.check_every or (CHECK_EVERY if b.device.type == "cuda" else 1)
        steps = 1
        while steps < max_new_tokens:
            chunk = min(every, max_new_tokens - steps)
            for _ in range(chunk):
                if graph is not None:
                    graph.replay()
                else:
                    _decode_step(model, b, plan, const, eager_mask)
            steps += chunk
            if progress is not None:
                progress(steps)
            if should_cancel is not None and should_cancel():
                raise DiagnosisCancelled("diagnosis cancelled")
            if bool(b.done[:batch].all()):
                break
        if steps == 1:
            if progress is not None:
                progress(1)
            if should_cancel is not None and should_cancel():
                raise DiagnosisCancelled("diagnosis cancelled")

        tokens = b.tokens[:batch, :steps]
        eos = const["eos_ids"]
        hit = (tokens[:, :, None] == eos).any(-1)
        first = torch.where(hit.any(1), hit.float().argmax(1) + 1, torch.full_like(hit[:, 0], steps, dtype=torch.long))
        lengths = [int(n) for n in first.tolist()]
        end = max(lengths)
        seqs = tokens[:, :end].clone()
        states = b.states[:batch, :end].clone() if capture_states else None
        vis = None
        if capture_visual and visual:
            from .generation import split_visual

            vis = split_visual(model, inputs, visual[0])
        return GenerationOutput(sequences=seqs, lengths=lengths, states=states, visual=vis)


_DECODERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def static_decoder_for(model) -> StaticDecoder:
    """The `StaticDecoder` of a loaded model (created on first use; freed with the model)."""
    decoder = _DECODERS.get(model)
    if decoder is None:
        decoder = _DECODERS[model] = StaticDecoder()
    return decoder
