"""Proof that the trainer learns: reward gain on held-out seeds, BoxFlow locality, exact resume,
the CLI loop with TensorBoard and export, and supervised fine-tuning (tiny pipelines, CPU)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from imagedoctor.core.diagnosis import Defect, Diagnosis
from imagedoctor.trainer.generator.flow_grpo import FlowGRPOTrainer, load_pipeline
from imagedoctor.trainer.generator.rewards import box_reward_map
from imagedoctor.trainer.generator.lora_export import lora_state_dict

HELD_OUT_SEEDS = list(range(1000, 1008))
HELD_OUT_PROMPTS = ["a red cube", "a blue ball", "a purple hat", "a tall tower"] * 2  # two unseen prompts


def brightness(images, prompts, **context):
    """Programmatic scalar reward: mean pixel value per image."""
    return images.mean(dim=(1, 2, 3))


def darkness(images, prompts, **context):
    """The negative control: the inverted reward must move the model the other way."""
    return -images.mean(dim=(1, 2, 3))


#: Training seeds of the learning tests. The default run uses one; the seed-to-seed spreads quoted
#: in the tests (and docs/training-generator.md) were measured with IMAGEDOCTOR_LEARNING_SEEDS=0,1,2,
#: which also checks every margin against each of those seeds.
LEARNING_SEEDS = [int(s) for s in os.environ.get("IMAGEDOCTOR_LEARNING_SEEDS", "0").split(",")]


DEFAULT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


#: Reward-attributable held-out brightness change a 30-iteration SD3 run must reach: the change
#: with the brightness reward minus the change with the inverted reward, same seed (same LoRA
#: init, prompts and noise). Measured on the shared 2-core machine (seeds 0, 1, 2): brightness
#: reward +0.0433 / +0.0464 / +0.0457, inverted reward +0.0403 / +0.0406 / +0.0400, difference
#: +0.0030 / +0.0058 / +0.0057 (mean 0.0048, std 0.0016). Both runs brighten the images: Adam moves
#: every LoRA entry by about the learning rate whatever the (noisy) gradient, and the tiny random
#: model's brightness responds to that change in either direction (second order); the sign of the
#: reward only decides the first-order part. So the test asserts the paired difference, with the
#: margin at mean - 2 std.
BRIGHTNESS_MARGIN = 0.0015


@pytest.mark.parametrize("seed", LEARNING_SEEDS)
def test_flow_grpo_follows_the_reward_on_held_out_seeds(seed, grpo_config, tiny_sd3_path, tmp_path):
    """30 iterations on SD3 with the brightness reward and, as the negative control, with the inverted
    reward: the held-out brightness (unseen prompts and seeds, ODE sampling) ends higher with the
    reward than with its inverse by more than BRIGHTNESS_MARGIN; the exported LoRA reproduces the
    trained model in plain diffusers."""
    iterations = 30
    change, trainers = {}, {}
    for name, reward in (("brightness", brightness), ("darkness", darkness)):
        cfg = grpo_config(model=str(tiny_sd3_path), max_steps=iterations, guidance_scale=1.0, seed=seed,
                          output_dir=str(tmp_path / name))
        trainer = FlowGRPOTrainer(cfg, reward_fn=reward)
        before = trainer.evaluate(HELD_OUT_PROMPTS, HELD_OUT_SEEDS)
        history = trainer.train()["history"]
        assert len(history) == iterations
        change[name] = trainer.evaluate(HELD_OUT_PROMPTS, HELD_OUT_SEEDS) - before
        trainers[name] = trainer
    print(f"sd3 seed {seed}: held-out brightness change {change['brightness']:+.4f} (brightness reward), "
          f"{change['darkness']:+.4f} (inverted reward), difference {change['brightness'] - change['darkness']:+.4f}")
    assert change["brightness"] - change["darkness"] > BRIGHTNESS_MARGIN, change
    _assert_export_reproduces(trainers["brightness"], tiny_sd3_path)


def _assert_export_reproduces(trainer, path):
    after = trainer.evaluate(HELD_OUT_PROMPTS, HELD_OUT_SEEDS)
    fresh = load_pipeline(str(path))
    fresh.load_lora_weights(str(trainer.config.output_dir + "/lora.safetensors"))
    trainer.pipeline.transformer = fresh.transformer
    trainer.model = fresh.transformer
    assert trainer.evaluate(HELD_OUT_PROMPTS, HELD_OUT_SEEDS) == pytest.approx(after, abs=1e-4)


def test_flow_grpo_flux_trains_and_exports(grpo_config, tiny_flux_path, tmp_path):
    """FLUX (guidance embedding, packed latents, single blocks through proj_out): a short run changes
    the held-out images and the exported LoRA reproduces them in diffusers. No learning claim: on
    the tiny FLUX model the brightness reward's effect did not exceed the seed-to-seed spread
    (difference to the inverted reward, seeds 0/1/2: +0.051, -0.066, -0.023)."""
    cfg = grpo_config(model=str(tiny_flux_path), max_steps=4, guidance_scale=3.5, seed=0,
                      lora_target_modules=DEFAULT_TARGETS + ["proj_out"], output_dir=str(tmp_path / "flux"))
    trainer = FlowGRPOTrainer(cfg, reward_fn=brightness)
    before = trainer.generate(HELD_OUT_PROMPTS, HELD_OUT_SEEDS)
    trainer.train()
    assert float((trainer.generate(HELD_OUT_PROMPTS, HELD_OUT_SEEDS) - before).abs().mean()) > 1e-4
    _assert_export_reproduces(trainer, tiny_flux_path)


BOX = (0, 0, 16, 16)  # top-left quadrant of the 32x32 image = latent cells [0:4, 0:4]


class BrightBoxDiagnoser:
    """A programmatic diagnoser: one artifact box whose importance grows with the box's brightness."""

    def __init__(self):
        self.reference = None

    def __call__(self, images: torch.Tensor) -> list[Diagnosis]:
        inside = images[:, :, : BOX[3], : BOX[2]].mean(dim=(1, 2, 3))
        if self.reference is None:
            self.reference = float(inside.mean())
        return [
            Diagnosis(width=32, height=32, scores={"overall": 0.5},
                      defects=[Defect(BOX, "artifact", importance=int(np.clip(round(50 + 3000 * (b - self.reference)), 1, 100)))])
            for b in inside.tolist()
        ]


def _train_box(grpo_config, sign: float, output_dir, seed: int = 0):
    """BoxFlow run with the box reward (``sign=1``) or its inverse (``sign=-1``): returns the held-out
    darkening inside the box and the mean absolute change inside / outside it."""
    diagnoser = BrightBoxDiagnoser()

    def box_reward(images, prompts, latent_size, **context):
        return sign * box_reward_map(diagnoser(images), latent_size)

    cfg = grpo_config(max_steps=20, reward_mode="box", output_dir=str(output_dir), seed=seed)
    trainer = FlowGRPOTrainer(cfg, reward_fn=box_reward)
    before = trainer.generate(HELD_OUT_PROMPTS, HELD_OUT_SEEDS)
    trainer.train()
    after = trainer.generate(HELD_OUT_PROMPTS, HELD_OUT_SEEDS)
    change = (after - before).abs().mean(dim=(0, 1))  # [H, W]
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[: BOX[3], : BOX[2]] = True
    darkening = float(before[:, :, : BOX[3], : BOX[2]].mean() - after[:, :, : BOX[3], : BOX[2]].mean())
    return darkening, float(change[inside].mean()), float(change[~inside].mean())


#: Held-out darkening of the penalised box. Measured on the shared 2-core machine, seeds 0/1/2: box
#: reward +0.0377 / +0.0373 / +0.0297, inverted box reward -0.0357 / -0.0330 / -0.0266 (paired
#: difference 0.0735 / 0.0703 / 0.0564, mean 0.067, std 0.009). Each run must move the box its own
#: way by more than BOX_MARGIN (a third of the smallest |change|).
BOX_MARGIN = 0.01


@pytest.mark.parametrize("seed", LEARNING_SEEDS)
def test_boxflow_darkens_the_penalised_box(grpo_config, tmp_path, seed):
    """BoxFlow with a box whose importance grows with its brightness: on held-out seeds the box gets
    darker with the box reward and brighter with the inverted reward (negative control, same seed),
    each by more than BOX_MARGIN."""
    dark, box_in, box_out = _train_box(grpo_config, 1.0, tmp_path / "box", seed)
    inv_dark, inv_in, inv_out = _train_box(grpo_config, -1.0, tmp_path / "inverted", seed)
    print(f"seed {seed} box reward: darkening {dark:+.4f} (change in {box_in:.4f} out {box_out:.4f}); inverted: "
          f"darkening {inv_dark:+.4f} (in {inv_in:.4f} out {inv_out:.4f}); difference {dark - inv_dark:+.4f}")
    assert dark > BOX_MARGIN, (dark, inv_dark)
    assert inv_dark < -BOX_MARGIN, (dark, inv_dark)  # the inverted reward moves the box the other way


def test_constant_reward_map_equals_scalar_update(grpo_config, tmp_path):
    """DenseFlow with a map that is constant per image reduces exactly to scalar Flow-GRPO."""

    def scalar_fn(images, prompts, **c):
        return images.mean(dim=(1, 2, 3)) * 10

    def map_fn(images, prompts, latent_size, **c):
        return scalar_fn(images, prompts)[:, None, None].expand(-1, *latent_size).clone()

    states = []
    for mode, fn in (("dense", map_fn), ("scalar", scalar_fn)):
        cfg = grpo_config(max_steps=1, reward_mode=mode, std_floor=1e-9, adv_eps=0.0,
                          output_dir=str(tmp_path / mode))
        trainer = FlowGRPOTrainer(cfg, reward_fn=fn)
        trainer.iteration(0)
        states.append(lora_state_dict(trainer.transformer))
    changed = [k for k in states[0] if "lora_B" in k and states[0][k].abs().max() > 0]
    assert changed
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=1e-5, atol=1e-7)


class Interrupt(Exception):
    pass


def test_resume_is_exact(grpo_config, tmp_path):
    common = dict(max_steps=4, save_steps=2, ema=True, steps_per_generation=2, micro_batch_size=2,
                  beta=0.01)
    full = FlowGRPOTrainer(grpo_config(output_dir=str(tmp_path / "full"), **common), reward_fn=brightness)
    full.train()
    reference = load_file(str(tmp_path / "full" / "lora.safetensors"))

    def crashing(images, prompts, step=0, **context):
        if step == 3:
            raise Interrupt("simulated crash")
        return brightness(images, prompts)

    cfg = grpo_config(output_dir=str(tmp_path / "resumed"), **common)
    with pytest.raises(Interrupt):
        FlowGRPOTrainer(cfg, reward_fn=crashing).train()
    checkpoints = sorted((tmp_path / "resumed" / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == ["checkpoint-2"]  # atomic: no temp folders left behind
    resumed = FlowGRPOTrainer(cfg, reward_fn=brightness)
    history = resumed.train(resume="latest")["history"]
    assert resumed.step == 4 and len(history) == 4
    result = load_file(str(tmp_path / "resumed" / "lora.safetensors"))
    assert result.keys() == reference.keys()
    for key in reference:
        assert torch.equal(result[key], reference[key]), key  # bit for bit
    assert any(v.abs().max() > 0 for k, v in reference.items() if "lora_B" in k)


def test_cli_flow_grpo_end_to_end(tiny_sd3_path, prompts_file, tmp_path, monkeypatch):
    from imagedoctor.trainer.__main__ import main

    (tmp_path / "my_rewards.py").write_text(
        "def redness(images, prompts, **context):\n"
        "    return images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = dict(
        model=str(tiny_sd3_path), prompts_file=str(prompts_file), resolution=32, max_sequence_length=16,
        max_steps=2, batch_size=4, num_generations=2, sample_batch_size=4, micro_batch_size=2, num_steps=4,
        sde_window_start=1, sde_window_size=2, guidance_scale=2.0, lora_r=2, lora_alpha=4, reward="python:my_rewards:redness",
        output_dir=str(tmp_path / "run"), report_to="tensorboard", sample_steps=1, gradient_checkpointing=True,
        export_dtype="float16", progress_bar=False,
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["flow-grpo", "--config", str(tmp_path / "c.yaml")]) == 0
    out = tmp_path / "run"
    lora = load_file(str(out / "lora.safetensors"))
    assert lora and all(v.dtype == torch.float16 for v in lora.values())
    assert list((out / "logs").rglob("events.out.tfevents.*")), "no TensorBoard events"
    assert (out / "checkpoints" / "checkpoint-2" / "trainable.safetensors").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["num_generations"] == 2
    # resuming a finished run does no more iterations and re-exports the same LoRA
    assert main(["flow-grpo", "--config", str(tmp_path / "c.yaml"), "--resume"]) == 0
    again = load_file(str(out / "lora.safetensors"))
    assert all(torch.equal(again[k], lora[k]) for k in lora)


def _write_picks(data, colours, noise=False):
    from PIL import Image

    data.mkdir()
    rng = np.random.default_rng(0)
    for i, (prompt, rgb) in enumerate(colours.items()):
        arr = np.zeros((40, 48, 3), np.uint8)
        arr[:] = rgb
        arr[10:30, 12:36] = 255 - np.array(rgb, np.uint8)
        if noise:  # the control's "picks": uniform noise under the same prompts
            arr = rng.integers(0, 256, size=arr.shape, dtype=np.uint8)
        Image.fromarray(arr).save(data / f"pick_{i}.png")
        if i == 2:
            (data / f"pick_{i}.json").write_text('{"prompt": "%s", "schema": "imagedoctor.diagnosis/1"}' % prompt)
        else:
            (data / f"pick_{i}.txt").write_text(prompt)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / "no_prompt.png")  # skipped
    return data


@pytest.mark.parametrize("seed", LEARNING_SEEDS)
def test_sft_generator_fits_the_picks(tiny_sd3_path, tmp_path, seed):
    """120 steps on three (prompt, pick) pairs lower the flow-matching loss on those picks (fixed
    noise) below 0.9x. Most of that fall is not about the picks: the control, trained on the same
    prompts with noise images, lowers it almost as much (the tiny random model first learns to
    predict the noise). What is specific to the picks is the paired difference: the pick-trained
    LoRA's loss on the picks is below the control's by more than SFT_MARGIN. Measured on the shared
    2-core machine, seeds 0/1/2: 0.5556 vs 0.5733, 0.4008 vs 0.4194, 0.5541 vs 0.5827 (difference
    0.018 / 0.019 / 0.029; mean 0.022, std 0.006; margin = mean - 2 std)."""
    from imagedoctor.trainer.generator.config import SFTGeneratorConfig
    from imagedoctor.trainer.generator.sft import SFTGeneratorTrainer, read_pairs

    colours = {"a red square": (220, 30, 30), "a blue square": (30, 30, 220), "a green field": (30, 200, 40)}
    picks = _write_picks(tmp_path / "picks", colours)
    other = _write_picks(tmp_path / "noise", colours, noise=True)
    assert [p for _, p in read_pairs(picks)] == list(colours)
    losses = {}
    for name, data in (("picks", picks), ("control", other)):
        cfg = SFTGeneratorConfig(model=str(tiny_sd3_path), data_dir=str(data), resolution=32, max_sequence_length=16,
                                 num_epochs=1, max_steps=120, batch_size=3, micro_batch_size=3, lora_r=4,
                                 lora_alpha=4, learning_rate=1e-2, output_dir=str(tmp_path / name), report_to="none",
                                 progress_bar=False, save_steps=60, seed=seed)
        trainer = SFTGeneratorTrainer(cfg)

        def loss_on_picks():  # always measured on the true picks, whatever the run trains on
            trained_on = trainer.pairs
            trainer.pairs = read_pairs(picks)
            trainer._encode_data()
            loss = trainer.eval_loss()
            trainer.pairs = trained_on
            trainer._encode_data()
            return loss

        before = loss_on_picks()
        history = trainer.train()["history"]
        assert len(history) == 120
        losses[name] = (before, loss_on_picks())
    print(f"seed {seed}: flow-matching loss on the picks {losses['picks'][0]:.4f} -> {losses['picks'][1]:.4f}; "
          f"control (trained on noise images) -> {losses['control'][1]:.4f}")
    before, after = losses["picks"]
    assert after < 0.9 * before, losses
    assert losses["control"][1] - after > SFT_MARGIN, losses
    pipe = load_pipeline(str(tiny_sd3_path))
    pipe.load_lora_weights(str(tmp_path / "picks" / "lora.safetensors"))  # diffusers accepts the export


#: Paired margin of the generator SFT test (see its docstring for the measured values).
SFT_MARGIN = 0.01


def test_two_process_ddp_run(tiny_sd3_path, prompts_file, tmp_path):
    """`torchrun` (what `accelerate launch` does) with 2 CPU processes: DDP over gloo, one export,
    per-process RNG state in the checkpoint, different prompts per process."""
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not installed")
    (tmp_path / "rank_rewards.py").write_text(
        "import os\n"
        "def brightness(images, prompts, **context):\n"
        "    with open(os.path.join(os.path.dirname(__file__), 'seen_' + os.environ['RANK']), 'a') as f:\n"
        "        f.write('|'.join(prompts) + '\\n')\n"
        "    return images.mean(dim=(1, 2, 3))\n")
    config = dict(
        model=str(tiny_sd3_path), prompts_file=str(prompts_file), resolution=32, max_sequence_length=16,
        max_steps=2, batch_size=4, num_generations=2, sample_batch_size=4, micro_batch_size=2, num_steps=3,
        sde_window_size=1, guidance_scale=1.0, lora_r=2, lora_alpha=2, reward="python:rank_rewards:brightness",
        output_dir=str(tmp_path / "run"), report_to="none", progress_bar=False,
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "-m", "imagedoctor.trainer", "flow-grpo", "--config",
                           str(tmp_path / "c.yaml")], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"lora_path"') == 1  # only the main process prints the summary
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "rng-0.pt").exists() and (checkpoint / "rng-1.pt").exists()
    seen = [(tmp_path / f"seen_{r}").read_text() for r in (0, 1)]
    assert seen[0] != seen[1]  # each process samples its own prompts and noise
    assert load_file(str(tmp_path / "run" / "lora.safetensors"))


def test_cached_prompt_embeddings_train_the_same(grpo_config, tmp_path):
    """cache_prompt_embeddings frees the text encoders and trains (numerically) the same LoRA."""
    states = []
    for cache in (False, True):
        cfg = grpo_config(max_steps=2, guidance_scale=2.0, cache_prompt_embeddings=cache,
                          output_dir=str(tmp_path / str(cache)))
        trainer = FlowGRPOTrainer(cfg, reward_fn=brightness)
        if cache:
            assert trainer.pipeline.text_encoder is None and trainer.pipeline.text_encoder_3 is None
            with pytest.raises(ValueError, match="not cached"):
                trainer.generate(["an unseen prompt"], [0])
        trainer.train()
        states.append(lora_state_dict(trainer.transformer))
    for key in states[0]:
        torch.testing.assert_close(states[1][key], states[0][key], rtol=1e-4, atol=1e-6)
