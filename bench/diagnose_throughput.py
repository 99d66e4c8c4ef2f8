"""Diagnosis throughput: the upstream way, our `hf` and `static` decoders, and two-stage best-of-N. Prints JSON.

    python bench/diagnose_throughput.py --images 8 --tokens 64        # tiny model on CPU
    python bench/diagnose_throughput.py --mid --images 8 --tokens 64  # mid-size random model on CPU
    python bench/diagnose_throughput.py --full-3b --device cuda          # Qwen2.5-VL-3B architecture, random weights

Ways (all on the same images, prompts and model):
- ``upstream``: one image per ``generate(output_hidden_states=True)`` call, then the vision tower
  and the head again (how the authors' inference script works);
- ``hf`` / ``static``: `Diagnoser.diagnose` in batches with ``decoder="hf"`` / ``"static"``;
- ``two_stage``: `Diagnoser.best_of_n` (score-only pass over all images with ``--fast-tokens``,
  full diagnoses of the top ``--top-k``).
Every way generates exactly the requested number of tokens (``min_new_tokens``) so the work is equal.

Per way: ``steady_s`` (best of ``--repeats`` after a warm-up; ``*_cpu_s``: CPU seconds of the
process, steadier than wall time on a shared machine), ``first_call_s`` (first call in a
fresh process, model already loaded; ``--no-first-call`` skips it), ``ratio_to_upstream``
(upstream steady / this steady), and for the decoders ``prefill_s`` (one batch, one token) and
``ms_per_step`` (decode step of one batch: (t(T) - t(1)) / (T - 1), generation only). Peak memory:
``peak_gpu_gib`` per way on CUDA; on CPU the process' peak RSS (one number for the whole run).
``--int8`` adds the int8 weight-only model: token agreement with the unquantized model and memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

WAYS = ("upstream", "hf", "static", "two_stage")


#: Random-weight Qwen2.5-VL sizes: the published 3B architecture, and a mid-size one for CPU runs.
PRESETS = {
    "full-3b": dict(text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                              num_key_value_heads=2, mrope_section=[16, 24, 24]),
                    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16),
                    fullatt=[7, 15, 23, 31]),
    "mid": dict(text=dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                          num_key_value_heads=2, mrope_section=[8, 12, 12]),
                vision=dict(depth=4, hidden_size=256, intermediate_size=512, num_heads=4), fullatt=[3]),
}


def build_random(out: Path, preset: str = "full-3b") -> Path:
    """A Qwen2.5-VL diagnoser (+ heatmap head) of the ``preset`` size with random bf16 (CUDA) / fp32 weights."""
    from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from imagedoctor.core.diagnoser import save_diagnoser
    from imagedoctor.core.heatmap_head import HeatmapHead, HeatmapHeadConfig
    from imagedoctor.core.tiny import build_tiny_diagnoser

    tiny = build_tiny_diagnoser(out / "tiny")  # for its tokenizer/processor
    processor = AutoProcessor.from_pretrained(tiny)
    tok = processor.tokenizer
    size = PRESETS[preset]
    text = dict(size["text"])
    mrope = text.pop("mrope_section")
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), max_position_embeddings=32768, **text,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope},
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None),
        vision_config=dict(**size["vision"], out_hidden_size=text["hidden_size"], patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=112, fullatt_block_indexes=size["fullatt"]),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"), video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2_5_VLForConditionalGeneration(cfg).to(dtype)
    model.config.misalignment_token_id = tok.convert_tokens_to_ids("<MIS>")
    model.config.artifact_token_id = tok.convert_tokens_to_ids("<ART>")
    # The published head for the 3B; a small one for "mid" (the full head's 16x upsampling convs would
    # dominate a CPU run and they cost the same whichever decoder runs).
    small = {} if preset == "full-3b" else dict(embed_dim=64, depth=2, mlp_dim=128, num_heads=2, mask_in_chans=16)
    head_cfg = HeatmapHeadConfig(text_dim=text["hidden_size"], image_dim=text["hidden_size"], **small)
    model.config.heatmap_head = head_cfg.to_dict()
    head = HeatmapHead(head_cfg).to(dtype)
    return save_diagnoser(out / preset, model, processor, head)


def upstream_way(dg, images, prompts, tokens):
    """One image per generate call with output_hidden_states=True, then the visual tower and the head again."""
    from imagedoctor.core.prompts import build_messages, resize_for_model

    model, proc = dg.model, dg.processor
    for img, prompt in zip(images, prompts):
        img = img.resize(resize_for_model(*img.size), Image.BICUBIC)
        text = proc.apply_chat_template(build_messages(prompt), tokenize=False, add_generation_prompt=True)
        inputs = proc(text=[text], images=[img], return_tensors="pt").to(model.device)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                 output_hidden_states=True, return_dict_in_generate=True,
                                 pad_token_id=proc.tokenizer.pad_token_id)
            states = torch.cat([step[-1][:, -1:] for step in out.hidden_states], dim=1)
            visual = model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
            if dg.head is not None:
                pair = states[:, [-2, -1]]  # positions as if the task tokens came last
                dg.head_maps(pair, [visual], inputs["image_grid_thw"])


def run_way(dg, way, images, prompts, args):
    if way == "upstream":
        upstream_way(dg, images, prompts, args.tokens)
    elif way in ("hf", "static"):
        dg.diagnose(images, prompts, max_new_tokens=args.tokens, min_new_tokens=args.tokens, batch_size=args.batch_size,
                    decoder=way)
    else:
        dg.best_of_n(images, prompts, top_k=args.top_k, fast_max_new_tokens=args.fast_tokens, max_new_tokens=args.tokens,
                     min_new_tokens=args.tokens, batch_size=args.batch_size, decoder=args.two_stage_decoder)
    _sync(dg)


def _sync(dg):
    if dg.model.device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared CPU the second is the steadier one."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _best(fn, repeats: int) -> tuple[float, float]:
    runs = [_timed(fn) for _ in range(repeats)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


def decode_timings(dg, way, images, prompts, args) -> dict:
    """Prefill seconds and ms per decode step for one batch, generation only (no head)."""
    from imagedoctor.core.generation import decode

    batch = images[: args.batch_size]
    inputs, _, _ = dg.build_inputs(batch, prompts[: len(batch)])
    inputs = inputs.to(dg.model.device)
    tok = dg.processor.tokenizer
    kw = dict(suppress_token_ids=dg.vision_token_ids, eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id,
              decoder=way)

    def gen(n):
        decode(dg.model, inputs, max_new_tokens=n, min_new_tokens=n, **kw)
        _sync(dg)

    gen(args.tokens)  # warm (and, for static, the bucket of this length)
    one, one_cpu = _best(lambda: gen(1), args.repeats)
    full, full_cpu = _best(lambda: gen(args.tokens), args.repeats)
    steps = max(args.tokens - 1, 1)
    return {"prefill_s": round(one, 4), "prefill_cpu_s": round(one_cpu, 4),
            "ms_per_step": round(1000 * (full - one) / steps, 3), "cpu_ms_per_step": round(1000 * (full_cpu - one_cpu) / steps, 3),
            "prompt_tokens": int(inputs["input_ids"].shape[1]), "batch": len(batch)}


def workload(args):
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((args.size, args.size, 3)) * 255).astype("uint8")) for _ in range(args.images)]
    prompts = [f"a photo number {i} of a red cube" for i in range(args.images)]
    return images, prompts


def first_call(args, model_dir: Path, way: str) -> dict | None:
    """Seconds of the first call of ``way`` in a fresh process (after loading the model)."""
    cmd = [sys.executable, __file__, "--model", str(model_dir), "--measure-first", way, "--images", str(args.images),
           "--size", str(args.size), "--tokens", str(args.tokens), "--batch-size", str(args.batch_size),
           "--top-k", str(args.top_k), "--fast-tokens", str(args.fast_tokens),
           "--two-stage-decoder", args.two_stage_decoder]
    if args.device:
        cmd += ["--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def int8_report(model_dir: Path, args, images, prompts) -> dict:
    """Token agreement of the int8 weight-only model with the unquantized one (greedy), and memory."""
    from imagedoctor.core.diagnoser import Diagnoser
    from imagedoctor.core.generation import decode, text_model

    report = {}
    seqs = {}
    for quant in (None, "int8"):
        dg = Diagnoser.from_pretrained(model_dir, device=args.device, dtype=args.dtype, quantization=quant)
        layers = text_model(dg.model).layers
        nbytes = 0
        for t in list(layers.parameters()) + list(layers.buffers()):
            inner = [getattr(t, name) for name in getattr(t, "__tensor_flatten__", lambda: ([], None))()[0]] or [t]
            nbytes += sum(x.numel() * x.element_size() for x in inner)
        inputs, _, _ = dg.build_inputs(images[: args.batch_size], prompts[: args.batch_size])
        inputs = inputs.to(dg.model.device)
        tok = dg.processor.tokenizer
        if dg.model.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        out = decode(dg.model, inputs, decoder="hf", max_new_tokens=args.tokens, suppress_token_ids=dg.vision_token_ids,
                     eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
        seqs[quant] = out.sequences.cpu()
        key = quant or "unquantized"
        report[f"{key}_text_decoder_weights_mib"] = round(nbytes / 2**20, 2)
        if dg.model.device.type == "cuda":
            report[f"{key}_peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        report[f"{key}_dtype"] = str(dg.model.dtype)
        del dg
    a, b = seqs[None], seqs["int8"]
    n = min(a.shape[1], b.shape[1])
    same = (a[:, :n] == b[:, :n])
    prefix = [int(row.cumprod(0).sum()) for row in same.int()]
    report.update(token_agreement=round(float(same.float().mean()), 4),
                  identical_rows=int(sum(bool(r.all()) and a.shape[1] == b.shape[1] for r in same)),
                  rows=int(a.shape[0]), mean_identical_prefix_tokens=round(float(np.mean(prefix)), 1), tokens=n)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: build the tiny model, or --full-3b)")
    ap.add_argument("--full-3b", action="store_true", help="Qwen2.5-VL-3B architecture with random weights")
    ap.add_argument("--mid", action="store_true", help="a mid-size random Qwen2.5-VL (512-d, 8 layers) for CPU runs")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=384)
    ap.add_argument("--fast-tokens", type=int, default=48, help="tokens of the score-only pass (two_stage)")
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--ways", default=",".join(WAYS))
    ap.add_argument("--two-stage-decoder", default="auto")
    ap.add_argument("--no-first-call", action="store_true")
    ap.add_argument("--int8", action="store_true", help="also report the int8 weight-only model")
    ap.add_argument("--measure-first", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    from imagedoctor.core.diagnoser import Diagnoser
    from imagedoctor.core.tiny import build_tiny_diagnoser

    images, prompts = workload(args)
    if args.measure_first:
        dg = Diagnoser.from_pretrained(args.model, device=args.device, dtype=args.dtype)
        wall, cpu = _timed(lambda: run_way(dg, args.measure_first, images, prompts, args))
        print(json.dumps({"first_call_s": round(wall, 3), "first_call_cpu_s": round(cpu, 3)}))
        return
    tmp = Path(tempfile.mkdtemp())
    preset = "full-3b" if args.full_3b else ("mid" if args.mid else None)
    model_dir = Path(args.model or (build_random(tmp, preset) if preset else build_tiny_diagnoser(tmp / "tiny")))
    dg = Diagnoser.from_pretrained(model_dir, device=args.device, dtype=args.dtype)
    dev = dg.model.device
    ways = [w for w in args.ways.split(",") if w]
    result = {
        "model": args.model or (f"qwen2.5-vl-{preset}-random" if preset else "tiny"),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": str(dg.model.dtype), "images": args.images, "image_size": args.size, "generated_tokens": args.tokens,
        "fast_tokens": args.fast_tokens, "top_k": args.top_k, "batch_size": args.batch_size, "ways": {},
    }
    run_way(dg, "hf", images[:2], prompts[:2], argparse.Namespace(**{**vars(args), "tokens": 4}))  # kernels, allocator
    for way in ways:
        entry = {}
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        run_way(dg, way, images, prompts, args) if way != "upstream" else None  # warm (buckets, graphs)
        wall, cpu = _best(lambda: run_way(dg, way, images, prompts, args), args.repeats)
        entry.update(steady_s=round(wall, 3), steady_cpu_s=round(cpu, 3))
        if dev.type == "cuda":
            entry["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 3)
        if way in ("hf", "static"):
            entry.update(decode_timings(dg, way, images, prompts, args))
        if not args.no_first_call and way != "upstream":
            entry.update(first_call(args, model_dir, way) or {"first_call_s": None})
        result["ways"][way] = entry
    up = result["ways"].get("upstream", {})
    for way, entry in result["ways"].items():
        if up:
            entry["ratio_to_upstream"] = round(up["steady_s"] / entry["steady_s"], 2)
            entry["cpu_ratio_to_upstream"] = round(up["steady_cpu_s"] / entry["steady_cpu_s"], 2)
    if dev.type == "cpu":
        result["process_peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    from imagedoctor.core.static_decoder import static_decoder_for

    static = static_decoder_for(dg.model)
    result["static_buckets_mib"] = {f"{b}x{n}": round(bk.nbytes / 2**20, 1) for (b, n), bk in static.buckets.items()}
    if dev.type == "cuda":  # graphs that passed the self-check, and buckets that fell back to eager steps
        result["static_cuda_graphs"] = {"used": static.captures, "fell_back": static.graph_fallbacks}
    if args.int8:
        del dg
        result["int8"] = int8_report(model_dir, args, images, prompts)
    if dev.type != "cuda":
        result["note"] = "no GPU in this run: CUDA graphs, GPU timings and GPU memory were not measured"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
