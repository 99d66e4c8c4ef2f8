"""Time per SFT step and per GRPO iteration of the diagnoser trainers, with peak memory.

    python bench/diagnoser_train_step.py --arch tiny   [--steps 5] [--out bench/results/x.json]
    python bench/diagnoser_train_step.py --arch 3b --dtype bf16 --finetuning lora   # on a GPU

``--arch tiny`` uses the offline tiny model (CPU-friendly); ``--arch 3b`` builds a randomly
initialised model with the Qwen2.5-VL-3B architecture and ImageDoctor's head sizes (no weights
are downloaded; ~7.5 GB in bf16). Data: a synthetic set from `imagedoctor.core.synth` at
``--size`` pixels. Reports the median step time after one warm-up step, and the peak memory:
``torch.cuda.max_memory_allocated`` on GPU, the process's peak RSS on CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path


def build_3b(out: Path) -> Path:
    """Random weights, Qwen2.5-VL-3B shapes, ImageDoctor head (embed 768), tiny tokenizer."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl import Qwen2VLVideoProcessor

    from imagedoctor.core.diagnoser import save_diagnoser
    from imagedoctor.core.heatmap_head import HeatmapHead, HeatmapHeadConfig
    from imagedoctor.core.tiny import CHAT_TEMPLATE, build_tokenizer

    tok = build_tokenizer(0)
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>", "<|image_pad|>", "<|video_pad|>",
                                                       "<|vision_start|>", "<|vision_end|>", "<MIS>", "<ART>")}
    text = dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000, tie_word_embeddings=True,
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.set_default_dtype(torch.bfloat16)
    model = Qwen2_5_VLForConditionalGeneration(config)
    torch.set_default_dtype(torch.float32)
    model.config.misalignment_token_id, model.config.artifact_token_id = ids["<MIS>"], ids["<ART>"]
    head_cfg = HeatmapHeadConfig(text_dim=2048, image_dim=2048)
    model.config.heatmap_head = head_cfg.to_dict()
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tok,
                                    video_processor=Qwen2VLVideoProcessor(),
                                    chat_template=CHAT_TEMPLATE.replace("default_system", "true"))
    return save_diagnoser(out, model, processor, HeatmapHead(head_cfg).to(torch.bfloat16))


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    scale = 1 if platform.system() == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def timed(fn, steps: int) -> list[float]:
    import torch

    times = []
    for _ in range(steps + 1):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times[1:]  # drop the warm-up


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("tiny", "3b"), default="tiny")
    ap.add_argument("--model", default=None, help="use this diagnoser folder instead of building one")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--size", type=int, default=112, help="synthetic image side (px)")
    ap.add_argument("--image-area", type=int, default=112 * 112)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--finetuning", choices=("lora", "full"), default="full")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--out", default=None, help="write the JSON result here too")
    args = ap.parse_args(argv)

    import torch

    from imagedoctor.core.synth import generate
    from imagedoctor.core.tiny import build_tiny_diagnoser
    from imagedoctor.trainer.diagnoser.config import GRPOConfig, SFTConfig
    from imagedoctor.trainer.diagnoser.grpo import GRPOTrainer
    from imagedoctor.trainer.diagnoser.sft import SFTTrainer, collate, to_device

    tmp = Path(tempfile.mkdtemp(prefix="diag-bench-"))
    model = args.model or str(build_3b(tmp / "model") if args.arch == "3b" else build_tiny_diagnoser(tmp / "model"))
    generate(tmp / "data", n=max(8, args.batch_size * 2), seed=0, size=args.size, workers=1)
    common = dict(model=model, data=str(tmp / "data"), output_dir=str(tmp / "out"), image_area=args.image_area,
                  dtype=args.dtype, finetuning=args.finetuning, batch_size=args.batch_size, report_to="none",
                  progress_bar=False, gradient_checkpointing=args.gradient_checkpointing, learning_rate=1e-5)
    result = {"arch": args.arch, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "threads": torch.get_num_threads(), "args": vars(args)}

    sft = SFTTrainer(SFTConfig(**common, stage="full", heatmap_weight=1.0))
    sft._setup()
    batch = to_device(collate(sft.dg, sft.train_examples[: args.batch_size], sft.cfg, sft.cfg.heatmap_size, True),
                      sft.accelerator.device)

    def sft_step():
        out = sft.module(**batch)
        sft.accelerator.backward(out["loss"])
        sft.optimizer.step()
        sft.optimizer.zero_grad(set_to_none=True)

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = timed(sft_step, args.steps)
    result["sft"] = {"seq_len": int(batch["input_ids"].shape[1]), "step_s_median": statistics.median(t),
                     "step_s": t, "peak_mem_mb": peak_memory_mb()}
    del sft, batch
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    grpo = GRPOTrainer(GRPOConfig(**common, stage="full", num_generations=args.generations,
                                  max_new_tokens=args.max_new_tokens, beta=0.0,
                                  rewards={"score": 1.0, "heatmap": 1.0, "grounding": 1.0}))
    grpo._setup()
    counter = iter(range(10**6))
    t = timed(lambda: grpo.step(next(counter)), args.steps)
    result["grpo"] = {"iteration_s_median": statistics.median(t), "iteration_s": t, "peak_mem_mb": peak_memory_mb(),
                      "completions_per_iteration": args.batch_size * args.generations}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
