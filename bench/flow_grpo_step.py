"""Benchmark one Flow-GRPO training iteration (sampling + reward + update): time and peak memory.

Compares full-SDE Flow-GRPO (every step sampled with the SDE and trained) with windowed SDE
(Flow-GRPO-Fast / MixGRPO: a few SDE steps, ODE elsewhere), each with and without CFG. Every
variant runs in its own subprocess so peak memory is its own. Optionally trains each variant from
scratch on the tiny learning task (brightness reward) and reports the held-out reward gain, so
speed is compared at equal learning.

    python bench/flow_grpo_step.py                         # tiny SD3 on CPU, all variants
    python bench/flow_grpo_step.py --learn-iterations 30   # + reward gain per variant
    python bench/flow_grpo_step.py --model /path/to/sd3.5-medium --resolution 512 --batch-size 8 \
        --group-size 4 --micro-batch-size 1 --num-steps 10 --mixed-precision bf16 --gradient-checkpointing
    python bench/flow_grpo_step.py --sd35-medium-random    # full-size SD3.5-M transformer, random weights

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    # name: (sde_window_size or None for all steps, guidance_scale)
    "full_sde_cfg": (None, 4.5),
    "full_sde_nocfg": (None, 1.0),
    "window2_cfg": (2, 4.5),
    "window2_nocfg": (2, 1.0),
}
HELD_OUT_PROMPTS = ["a red cube", "a blue ball", "a purple hat", "a tall tower"] * 2
PROMPTS = ["a red cube", "a blue ball", "a green tree", "a yellow car", "a white cat", "a black dog"]


def brightness(images, prompts, **context):
    return images.mean(dim=(1, 2, 3))


def peak_memory_mib(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_variant(args, name: str) -> dict:
    """Time ``args.iterations`` iterations of one variant (after one warm-up) in this process."""
    import torch

    from imagedoctor.trainer.generator.flow_grpo import FlowGRPOTrainer
    from imagedoctor.trainer.generator.config import FlowGRPOConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    window, guidance = VARIANTS[name]
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.txt"
        prompts.write_text("\n".join(PROMPTS))
        cfg = FlowGRPOConfig(
            model=args.model, prompts_file=str(prompts), resolution=args.resolution,
            max_sequence_length=args.max_sequence_length, max_steps=max(1, args.learn_iterations),
            batch_size=args.batch_size, num_generations=args.group_size, sample_batch_size=args.sample_batch_size,
            micro_batch_size=args.micro_batch_size, num_steps=args.num_steps, sde_window_size=window,
            guidance_scale=guidance, lora_r=args.lora_rank, lora_alpha=args.lora_rank, learning_rate=args.lr,
            mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
            output_dir=str(Path(tmp) / "out"), report_to="none", progress_bar=False, reward="python:bench:brightness",
        )
        trainer = FlowGRPOTrainer(cfg, reward_fn=brightness)
        device = str(trainer.device)
        passes = {"sampling": 0, "training": 0}

        def count(module, args_, kwargs):  # images through the transformer, with and without grad
            passes["training" if torch.is_grad_enabled() else "sampling"] += kwargs["hidden_states"].shape[0]

        trainer.transformer.register_forward_pre_hook(count, with_kwargs=True)
        result = {"variant": name, "sde_steps": len(cfg.sde_steps), "guidance_scale": guidance, "device": device}
        if args.learn_iterations:
            seeds = list(range(1000, 1000 + len(HELD_OUT_PROMPTS)))
            before = trainer.evaluate(HELD_OUT_PROMPTS, seeds)
            start = time.perf_counter()
            history = trainer.train()["history"]
            train_s = time.perf_counter() - start
            after = trainer.evaluate(HELD_OUT_PROMPTS, seeds)
            result.update(learn_iterations=args.learn_iterations, reward_before=before, reward_after=after,
                          reward_gain=after - before, reward_gain_per_iteration=(after - before) / args.learn_iterations,
                          train_seconds=train_s)
            timings = history[1:] or history
        else:
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            trainer.iteration(0)  # warm-up
            passes.update(sampling=0, training=0)
            timings = [trainer.iteration(i + 1) for i in range(args.iterations)]
            # transformer image-passes per iteration: hardware-independent cost. With backward ~2x a
            # forward (3x with gradient checkpointing), a compute-bound GPU spends about
            # sampling + 3 * training (or + 4 *) forward-equivalents per iteration.
            result["transformer_passes_sampling"] = passes["sampling"] / args.iterations
            result["transformer_passes_training"] = passes["training"] / args.iterations
            result["forward_equivalents"] = (passes["sampling"] + 3 * passes["training"]) / args.iterations
        for key in ("time_iteration", "time_sample", "time_reward", "time_update"):
            values = sorted(m[key] for m in timings)
            result[f"{key}_s"] = values[len(values) // 2]  # median: robust to a busy CPU
        result["peak_memory_mib"] = peak_memory_mib(device)
    return result


def sd35_medium_random(args) -> dict:
    """One windowed training step's transformer share for a full-size SD3.5-medium (random weights).

    Measures forward (sampling, no grad) and forward+backward (training, LoRA r32, gradient
    checkpointing) of the transformer for one micro-batch at the given resolution.
    """
    import torch
    from diffusers import SD3Transformer2DModel

    from imagedoctor.trainer.generator.lora_export import add_lora

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.threads:
        torch.set_num_threads(args.threads)
    model = SD3Transformer2DModel(
        sample_size=128, patch_size=2, in_channels=16, num_layers=args.sd35_num_layers, attention_head_dim=64,
        num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
        out_channels=16, pos_embed_max_size=384, dual_attention_layers=tuple(range(min(13, args.sd35_num_layers))),
        qk_norm="rms_norm",
    ).to(device, dtype)
    add_lora(model, rank=32, alpha=32)
    model.enable_gradient_checkpointing()
    mb, h = args.micro_batch_size, args.resolution // 8
    x = torch.randn(mb, 16, h, h, device=device, dtype=dtype)
    ctx = torch.randn(mb, 333, 4096, device=device, dtype=dtype)
    pooled = torch.randn(mb, 2048, device=device, dtype=dtype)
    t = torch.full((mb,), 500.0, device=device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, pooled_projections=pooled)
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with torch.no_grad():
        model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, pooled_projections=pooled)
    sync()
    forward_s = time.perf_counter() - start
    start = time.perf_counter()
    out = model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, pooled_projections=pooled).sample
    out.float().square().mean().backward()
    sync()
    train_s = time.perf_counter() - start
    return {"variant": "sd35_medium_random_transformer", "device": device, "dtype": str(dtype),
            "layers": args.sd35_num_layers, "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "micro_batch": mb,
            "resolution": args.resolution, "forward_s": forward_s, "forward_backward_s": train_s,
            "peak_memory_mib": peak_memory_mib(device)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="diffusers SD3/FLUX folder (default: build the tiny SD3 pipeline)")
    p.add_argument("--family", default="sd3", choices=["sd3", "flux"], help="tiny pipeline family when --model is absent")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--num-steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--sample-batch-size", type=int, default=8)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--max-sequence-length", type=int, default=16)
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-2)
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--iterations", type=int, default=7, help="timed iterations after one warm-up (median reported)")
    p.add_argument("--learn-iterations", type=int, default=0, help="also train N iterations and report the reward gain")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny models run fastest on 1)")
    p.add_argument("--sd35-medium-random", action="store_true", help="time the full-size SD3.5-M transformer instead")
    p.add_argument("--sd35-num-layers", type=int, default=24, help="layers of the SD3.5-M transformer (24 = full size)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.sd35_medium_random:
        print(json.dumps(sd35_medium_random(args), indent=2))
        return 0
    if args.one:
        print("BENCH_RESULT " + json.dumps(run_variant(args, args.one)))
        return 0
    tmp = None
    if args.model is None:
        from imagedoctor.trainer.generator.tiny_pipelines import build_tiny_pipeline

        tmp = tempfile.TemporaryDirectory()
        args.model = str(build_tiny_pipeline(Path(tmp.name) / args.family, family=args.family, seed=0))
    results = []
    base = [a for a in (argv if argv is not None else sys.argv[1:])]
    for name in args.variants.split(","):
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; use {list(VARIANTS)}")
        cmd = [sys.executable, __file__, *base, "--model", args.model, "--one", name]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        line = next((l for l in proc.stdout.splitlines() if l.startswith("BENCH_RESULT ")), None)
        if proc.returncode or line is None:
            raise SystemExit(f"variant {name} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(line[len("BENCH_RESULT "):]))
    by = {r["variant"]: r for r in results}
    summary = {}
    if "full_sde_cfg" in by:
        ref = by["full_sde_cfg"]["time_iteration_s"]
        summary = {f"speedup_vs_full_sde_cfg_{k}": ref / v["time_iteration_s"] for k, v in by.items()}
        if "forward_equivalents" in by["full_sde_cfg"]:
            work = by["full_sde_cfg"]["forward_equivalents"]
            summary.update({f"work_ratio_vs_full_sde_cfg_{k}": work / v["forward_equivalents"] for k, v in by.items()})
    print(json.dumps({"model": "tiny-" + args.family if tmp else args.model, "resolution": args.resolution,
                      "num_steps": args.num_steps, "batch_size": args.batch_size, "group_size": args.group_size,
                      "micro_batch_size": args.micro_batch_size, "threads": args.threads, "results": results,
                      "summary": summary}, indent=2))
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
