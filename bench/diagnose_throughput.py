"""Diagnosis throughput: the upstream way (one image at a time, generate(output_hidden_states=True))
vs ours (batched generate with hook-captured states, one head pass). Prints JSON.

    python bench/diagnose_throughput.py                       # tiny model on CPU
    python bench/diagnose_throughput.py --full-3b --device cuda  # Qwen2.5-VL-3B architecture, random weights

Both paths generate exactly --tokens new tokens per image (min_new_tokens) so the work is equal.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def build_full_3b(out: Path) -> Path:
    """The published ImageDoctor architecture (Qwen2.5-VL-3B + 768-d head) with random weights."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from imagedoctor.core.diagnoser import save_diagnoser
    from imagedoctor.core.heatmap_head import HeatmapHead, HeatmapHeadConfig
    from imagedoctor.core.tiny import build_tiny_diagnoser

    tiny = build_tiny_diagnoser(out / "tiny")  # for its tokenizer/processor
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny)
    tok = processor.tokenizer
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                         num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31]),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"), video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2_5_VLForConditionalGeneration(cfg).to(torch.bfloat16)
    model.config.misalignment_token_id = tok.convert_tokens_to_ids("<MIS>")
    model.config.artifact_token_id = tok.convert_tokens_to_ids("<ART>")
    model.config.heatmap_head = HeatmapHeadConfig().to_dict()
    head = HeatmapHead(HeatmapHeadConfig()).to(torch.bfloat16)
    return save_diagnoser(out / "full3b", model, processor, head)


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
    if model.device.type == "cuda":
        torch.cuda.synchronize()


def ours(dg, images, prompts, tokens, batch_size):
    dg.diagnose(images, prompts, max_new_tokens=tokens, min_new_tokens=tokens, batch_size=batch_size)
    if dg.model.device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: build the tiny model, or --full-3b)")
    ap.add_argument("--full-3b", action="store_true", help="Qwen2.5-VL-3B architecture with random weights")
    ap.add_argument("--device", default=None)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    from imagedoctor.core.diagnoser import Diagnoser
    from imagedoctor.core.tiny import build_tiny_diagnoser

    tmp = Path(tempfile.mkdtemp())
    model = args.model or (build_full_3b(tmp) if args.full_3b else build_tiny_diagnoser(tmp / "tiny"))
    dg = Diagnoser.from_pretrained(model, device=args.device)
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((args.size, args.size, 3)) * 255).astype("uint8")) for _ in range(args.images)]
    prompts = [f"a photo number {i} of a red cube" for i in range(args.images)]
    ours(dg, images[:2], prompts[:2], 4, 2)  # warm-up (kernels, allocator)
    t_up, t_ours = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        upstream_way(dg, images, prompts, args.tokens)
        t_up.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ours(dg, images, prompts, args.tokens, args.batch_size)
        t_ours.append(time.perf_counter() - t0)
    dev = dg.model.device
    result = {
        "model": "qwen2.5-vl-3b-arch-random" if args.full_3b else str(model),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": str(dg.model.dtype),
        "images": args.images, "image_size": args.size, "generated_tokens": args.tokens, "batch_size": args.batch_size,
        "upstream_s": round(min(t_up), 3), "ours_s": round(min(t_ours), 3),
        "upstream_s_per_image": round(min(t_up) / args.images, 4), "ours_s_per_image": round(min(t_ours) / args.images, 4),
        "speedup": round(min(t_up) / min(t_ours), 2),
    }
    if dev.type == "cuda":
        result["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
