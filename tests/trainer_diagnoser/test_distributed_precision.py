"""The diagnoser trainers under the settings real runs use: two-process DDP (gloo on CPU) and
bf16 autocast with gradient checkpointing, on the tiny model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from imagedoctor.trainer.diagnoser.config import GRPOConfig
from imagedoctor.trainer.diagnoser.grpo import GRPOTrainer
from imagedoctor.trainer.diagnoser.sft import SFTTrainer


def _torchrun():
    path = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if path is None:
        pytest.skip("torchrun not installed")
    return path


def _launch(args, tmp_path, timeout=300):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)}
    return subprocess.run([_torchrun(), "--nproc_per_node", "2", "-m", "imagedoctor.trainer", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_two_process_ddp_sft_equals_gradient_accumulation(tiny_model_dir, synth_train, tmp_path):
    """`torchrun` with 2 CPU processes (DDP over gloo, what `accelerate launch` does), batch 2 per
    process: every step each process takes its own 2 images and DDP averages the gradients. That is
    exactly one process with batch 2 and 2 accumulation steps (same images per micro-batch), so the
    weights after 3 steps must agree; one model folder and one summary are written."""
    common = dict(model=str(tiny_model_dir), data=str(synth_train), stage="scores", heatmap_weight=0.0,
                  image_area=112 * 112, finetuning="full", learning_rate=1e-3, max_steps=3, batch_size=2,
                  max_grad_norm=0.0, report_to="none", progress_bar=False, save_steps=0, seed=0)
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump({**common, "output_dir": str(tmp_path / "ddp")}))
    proc = _launch(["sft", "--config", str(tmp_path / "ddp.yaml")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count('"model_dir"') == 1  # only the main process saves and reports
    assert (tmp_path / "ddp" / "model" / "config.json").is_file()
    ddp_ckpt = tmp_path / "ddp" / "checkpoints" / "checkpoint-3"
    assert (ddp_ckpt / "rng-0.pt").is_file() and (ddp_ckpt / "rng-1.pt").is_file()
    assert json.loads((ddp_ckpt / "state.json").read_text())["world_size"] == 2

    torch.set_num_threads(1)
    from imagedoctor.trainer.diagnoser.config import SFTConfig

    SFTTrainer(SFTConfig(**common, output_dir=str(tmp_path / "single"), gradient_accumulation_steps=2)).train()
    a = load_file(str(ddp_ckpt / "trainable.safetensors"))
    b = load_file(str(tmp_path / "single" / "checkpoints" / "checkpoint-3" / "trainable.safetensors"))
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    moved = [k for k in a if k.startswith("model.") and k[len("model."):] in base
             and not torch.equal(a[k], base[k[len("model."):]])]
    assert moved, "training changed no weight"
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, f"DDP and accumulation differ by {worst}"


def test_two_process_ddp_grpo_saves_one_model(tiny_model_dir, synth_train, tmp_path):
    """GRPO under DDP: per-process rollouts (different images and seeds), averaged LoRA gradients,
    KL to the LoRA-disabled reference, one saved model."""
    (tmp_path / "rank_rewards.py").write_text("")  # keeps tmp_path on the path of both processes
    cfg = dict(model=str(tiny_model_dir), data=str(synth_train), output_dir=str(tmp_path / "run"), stage="scores",
               image_area=112 * 112, finetuning="lora", lora_r=4, lora_alpha=8, learning_rate=1e-3, beta=0.04,
               max_steps=2, batch_size=1, num_generations=2, max_new_tokens=6, rewards={"score": 1.0, "format": 1.0},
               report_to="none", progress_bar=False, save_steps=1, logging_steps=1)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = _launch(["grpo", "--config", str(tmp_path / "c.yaml")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count('"model_dir"') == 1
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-2" / "rng-1.pt").is_file()


class _Probe:
    """Records the dtype a language-model projection computes in during training forwards."""

    def __init__(self, model):
        proj = model.model.language_model.layers[0].mlp.down_proj
        self.dtypes = set()
        self.handles = [proj.register_forward_hook(self._proj)]

    def _proj(self, module, args, out):
        if torch.is_grad_enabled():
            self.dtypes.add(out.dtype)

    def close(self):
        for h in self.handles:
            h.remove()


def saved_for_backward(module, batch, loss_of) -> int:
    """Elements autograd keeps for backward in one training forward of ``module`` (then backward)."""
    count = [0]

    def pack(t):
        count[0] += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_of(module(**batch))
    loss.backward()
    module.zero_grad(set_to_none=True)
    return count[0]


def checkpointing_saving(trainer, batch, loss_of) -> float:
    """Saved-for-backward elements with checkpointing as configured / with it switched off."""
    model = trainer.dg.model
    assert model.is_gradient_checkpointing
    with trainer.accelerator.autocast():
        on = saved_for_backward(trainer.raw_module, batch, loss_of)
        model.gradient_checkpointing_disable()
        off = saved_for_backward(trainer.raw_module, batch, loss_of)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return on / off


def test_sft_bf16_autocast_and_gradient_checkpointing(tiny_model_dir, synth_train, tmp_path, make_sft_config):
    """Stage full (CE + heatmap loss through the head), LoRA, mixed_precision bf16 and gradient
    checkpointing: checkpointing keeps under half the activations for backward (the decoder layers
    recompute theirs), the projections run in bf16, losses stay finite, LoRA and head weights move."""
    cfg = make_sft_config(tiny_model_dir, synth_train, None, tmp_path, eval_data=None, stage="full",
                          heatmap_weight=1.0, finetuning="lora", lora_r=4, lora_alpha=8, max_steps=3, batch_size=2,
                          learning_rate=1e-2, mixed_precision="bf16", gradient_checkpointing=True)
    from imagedoctor.trainer.diagnoser.sft import collate

    tr = SFTTrainer(cfg)
    tr._setup()
    batch = collate(tr.dg, tr.train_examples[:2], cfg, cfg.heatmap_size, with_maps=True)
    ratio = checkpointing_saving(tr, batch, lambda out: out["loss"])
    assert ratio < 0.5, f"checkpointing keeps {ratio:.2f} of the activations"  # measured 0.25
    before = {n: p.detach().clone() for n, p in tr.raw_module.named_parameters() if p.requires_grad}
    probe = _Probe(tr.dg.model)
    result = tr.train()
    probe.close()
    assert probe.dtypes == {torch.bfloat16}, probe.dtypes
    assert all(torch.isfinite(torch.tensor(result[k])) for k in ("train/loss", "train/ce", "train/heatmap"))
    assert result["train/heatmap"] > 0
    after = dict(tr.raw_module.named_parameters())
    for prefix in ("head.", "model.model.language_model.layers.0.self_attn.q_proj.lora_B"):
        assert any(not torch.equal(after[n], v) for n, v in before.items() if n.startswith(prefix)), prefix
    # the saved model loads and runs without checkpointing
    from imagedoctor.core.diagnoser import Diagnoser

    dg = Diagnoser.from_pretrained(result["model_dir"], dtype="fp32", device="cpu")
    assert not dg.model.is_gradient_checkpointing


def test_grpo_bf16_autocast_and_gradient_checkpointing(tiny_model_dir, synth_train, tmp_path):
    """One GRPO iteration (2 inner steps, KL to the reference) in bf16 autocast with checkpointing."""
    cfg = GRPOConfig(model=str(tiny_model_dir), data=str(synth_train), output_dir=str(tmp_path), stage="scores",
                     image_area=112 * 112, finetuning="lora", lora_r=4, lora_alpha=8, learning_rate=1e-2, beta=0.04,
                     max_steps=1, batch_size=2, num_generations=2, max_new_tokens=8, num_iterations=2,
                     rewards={"score": 1.0, "format": 1.0}, mixed_precision="bf16", gradient_checkpointing=True,
                     report_to="none", progress_bar=False, logging_steps=1)
    # an untrained model earns no score/format reward; this verifiable stand-in has spread
    tr = GRPOTrainer(cfg, reward_fns={"length": lambda pred, gt: float(len(pred.raw_text))})
    tr._setup()
    batch = tr._policy_inputs(tr.rollout(tr.train_examples[:2], 2, True, seed=0))
    ratio = checkpointing_saving(tr, batch, lambda logp: logp.mean())
    assert ratio < 0.5, f"checkpointing keeps {ratio:.2f} of the activations"
    probe = _Probe(tr.dg.model)
    before = {n: p.detach().clone() for n, p in tr.raw_module.named_parameters() if p.requires_grad}
    result = tr.train()
    probe.close()
    assert probe.dtypes == {torch.bfloat16}, probe.dtypes
    assert torch.isfinite(torch.tensor(result["train/loss"])) and result["train/kl"] >= 0
    after = dict(tr.raw_module.named_parameters())
    assert any(not torch.equal(after[n], v) for n, v in before.items())
