"""SFT: masking, learning on held-out synthetic samples, saving, resume, data errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from imagedoctor.trainer.diagnoser.sft import SFTTrainer, TrainingDataError, collate


def test_labels_mask_prompt_image_and_padding(tiny_model_dir, synth_train, tmp_path, make_sft_config):
    cfg = make_sft_config(tiny_model_dir, synth_train, None, tmp_path, eval_data=None, stage="full", heatmap_weight=1.0)
    tr = SFTTrainer(cfg)
    tr._setup()
    ex = tr.train_examples[:3]  # three different image sizes -> different prompt lengths
    assert len({e.image.size for e in ex}) == 3
    batch = collate(tr.dg, ex, cfg, 64, with_maps=True)
    tok = tr.dg.processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    for b, e in enumerate(ex):
        kept = batch["labels"][b][batch["labels"][b] != -100]
        # exactly the target + eos is supervised, nothing of the prompt or the image
        assert tok.decode(kept) == e.target + tok.eos_token
        assert not (kept == image_id).any()
        mis, art = batch["task_positions"][b].tolist()
        assert batch["input_ids"][b, mis] == tr.dg.task_token_ids["misalignment"]
        assert batch["input_ids"][b, art] == tr.dg.task_token_ids["artifact"]
        assert batch["gt_maps"][b][1].shape == (64, 64) and float(batch["gt_maps"][b][1].max()) > 0.5
    out = tr.raw_module(**batch)
    assert torch.isfinite(out["loss"]) and float(out["heatmap"]) > 0
    # prompt_variant changes the prompt only: the GRPO wrapper is in the input, the labels stay the targets
    from dataclasses import replace

    from imagedoctor.core.prompts import IMAGEDOCTOR_GRPO_WRAPPER

    grpo = collate(tr.dg, ex[:1], replace(cfg, prompt_variant="imagedoctor-grpo"), 64, with_maps=False)
    assert IMAGEDOCTOR_GRPO_WRAPPER in tok.decode(grpo["input_ids"][0])
    assert IMAGEDOCTOR_GRPO_WRAPPER not in tok.decode(batch["input_ids"][0])
    kept = grpo["labels"][0][grpo["labels"][0] != -100]
    assert tok.decode(kept) == ex[0].target + tok.eos_token


def _input_blind_mae(train_dir, eval_dir) -> float:
    """Held-out MAE of the best input-blind answer: every image gets the training set's mean scores."""
    import numpy as np

    from imagedoctor.core.data import load_project_dataset
    from imagedoctor.core.diagnosis import Scores
    from imagedoctor.core.metrics import score_mae

    dims = ("alignment", "aesthetics", "plausibility", "overall")
    train = [s.diagnosis.scores for s in load_project_dataset(train_dir)]
    mean = Scores(**{k: float(np.mean([getattr(t, k) for t in train])) for k in dims})
    held = [s.diagnosis.scores for s in load_project_dataset(eval_dir)]
    return score_mae([mean] * len(held), held)


#: How far below the input-blind MAE a stage-1 run must end, and the shuffled-label control must not.
MAE_MARGIN = 0.03


def test_sft_scores_stage_learns_on_heldout(sft_scores_run, synth_train, synth_eval, learning_seed):
    """Stage 1 (scores only), 400 steps: held-out CE falls by >= 80 %, >= 90 % of the scores become
    readable, and the held-out score MAE ends at least MAE_MARGIN below the best input-blind answer's
    (the training mean for every image). What is learned first is what the prompt gives (aesthetics
    follows the square's colour word: MAE 0.225 -> 0.0); the image-only dimensions are not yet.
    Seeds 0/1/2 and the shuffled-label control below: docs/training-diagnoser.md."""
    seed = learning_seed
    before, result = sft_scores_run(seed)
    after = result["eval"]
    blind = _input_blind_mae(synth_train, synth_eval)
    print(f"SFT scores stage seed {seed} before", before, "after", after, "input-blind MAE", blind)
    assert before["eval/scores_parsed"] == 0.0
    assert after["eval/loss"] <= 0.2 * before["eval/loss"], (before, after)
    assert after["eval/scores_parsed"] >= 0.9
    assert after["eval/score_mae"] <= blind - MAE_MARGIN, (after, blind)


def test_sft_shuffled_scores_do_not_beat_the_blind_answer(sft_scores_run, make_synthetic, synth_train, synth_eval,
                                                          tmp_path_factory, learning_seed):
    """Negative control: the same run with every image's scores taken from another image (prompt and
    pixels no longer predict them) learns the format but not the scores: its held-out MAE does not get
    MAE_MARGIN below the input-blind answer's."""
    seed = learning_seed
    shuffled = make_synthetic(tmp_path_factory.mktemp("data") / "shuffled", 48, seed=1, shuffle="scores")
    _, result = sft_scores_run(seed, shuffled)
    control = result["eval"]
    blind = _input_blind_mae(synth_train, synth_eval)
    print(f"SFT shuffled-scores control seed {seed}:", control, "input-blind MAE", blind)
    assert control["eval/scores_parsed"] >= 0.9  # it did learn to write scores
    assert control["eval/score_mae"] > blind - MAE_MARGIN, (control, blind)


def test_sft_full_stage_raises_heldout_heatmap_cc(tiny_model_dir, synth_train, synth_eval, tmp_path, make_sft_config,
                                                  make_synthetic, learning_seed):
    """Stage 2 (think + boxes + task tokens) with the plain upstream heatmap MSE, full fine-tune
    *including the vision tower* (``train_vision``), 200 steps: on the 12 held-out images the CE
    falls by >= 80 %, the heatmap MSE (mis + art, 64^2) by >= 80 %, and the mean heatmap CC
    (misalignment and artifact, core.metrics.heatmap_metrics) rises by >= 0.15 (measured 0.004 ->
    0.33). With the vision tower frozen the random tiny tower's merged tokens barely differ
    between image regions (std across tokens ~0.01) and the head only learns the mean map.
    Negative control: the same run on maps of other images (shuffled) must not raise the CC by 0.15."""
    seed = learning_seed
    torch.set_num_threads(2)
    shuffled = make_synthetic(tmp_path / "shuffled", 48, seed=1, shuffle="heatmaps")
    cc = {}
    for name, data in (("real", synth_train), ("shuffled maps", shuffled)):
        cfg = make_sft_config(tiny_model_dir, data, synth_eval, tmp_path / name, stage="full", heatmap_weight=1.0,
                              train_vision=True, max_steps=200, eval_samples=12, seed=seed)
        if name == "real":  # the same model and held-out set before either run
            probe = SFTTrainer(cfg)
            probe._setup()
            before = probe.evaluate(generate=False)
            del probe
        after = SFTTrainer(cfg).train()["eval"]
        print(f"SFT full stage ({name}, seed {seed}) before", before, "after", after)
        cc[name] = (before, after)
        if name == "real":
            assert after["eval/loss"] <= 0.2 * before["eval/loss"], (before, after)
            assert after["eval/heatmap_mse_loss"] <= 0.2 * before["eval/heatmap_mse_loss"], (before, after)
    (before, after), (_, control) = cc["real"], cc["shuffled maps"]
    assert after["eval/heatmap_cc"] >= before["eval/heatmap_cc"] + CC_MARGIN, (before, after)
    assert control["eval/heatmap_cc"] < before["eval/heatmap_cc"] + CC_MARGIN, (before, control)


#: Held-out heatmap-CC rise a stage-2 run must reach and the shuffled-map control must stay below.
CC_MARGIN = 0.15


def test_saved_folder_loads_and_lora_touches_only_the_language_model(tiny_model_dir, synth_train, tmp_path, make_sft_config):
    from imagedoctor.core.diagnoser import Diagnoser

    cfg = make_sft_config(tiny_model_dir, synth_train, None, tmp_path, eval_data=None, stage="full", heatmap_weight=1.0,
                     finetuning="lora", lora_r=4, lora_alpha=8, max_steps=2, batch_size=2, learning_rate=1e-2,
                     save_adapter=True)
    tr = SFTTrainer(cfg)
    result = tr.train()
    names = [n for n, p in tr.raw_module.named_parameters() if p.requires_grad]
    lora = [n for n in names if "lora_" in n]
    assert lora and all("language_model" in n for n in lora)
    assert not any(".visual." in n for n in names)
    assert any(n.startswith("head.") for n in names)
    dg = Diagnoser.from_pretrained(result["model_dir"], dtype="fp32", device="cpu")
    base = Diagnoser.from_pretrained(tiny_model_dir, dtype="fp32", device="cpu")
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(dict(dg.model.named_parameters())[q], dict(base.model.named_parameters())[q])
    v = "model.visual.blocks.0.attn.qkv.weight"
    assert torch.equal(dict(dg.model.named_parameters())[v], dict(base.model.named_parameters())[v])
    assert dg.head is not None and (tmp_path / "adapter" / "adapter_config.json").is_file()
    # The adapter folder alone (base named inside it) loads to the same weights as the merged folder.
    from_adapter = Diagnoser.from_pretrained(tmp_path / "adapter", dtype="fp32", device="cpu")
    for k, p in dg.model.named_parameters():
        torch.testing.assert_close(p, dict(from_adapter.model.named_parameters())[k], rtol=0, atol=1e-5)
    for k, p in dg.head.state_dict().items():
        assert torch.equal(p, from_adapter.head.state_dict()[k]), k


def test_resume_equals_uninterrupted(tiny_model_dir, synth_train, tmp_path, make_sft_config):
    from safetensors.torch import load_file

    common = dict(eval_data=None, stage="full", heatmap_weight=1.0, finetuning="lora", lora_r=4, lora_alpha=8,
                  batch_size=2, warmup_steps=3, learning_rate=1e-2)
    full = make_sft_config(tiny_model_dir, synth_train, None, tmp_path / "a", max_steps=4, **common)
    SFTTrainer(full).train()
    SFTTrainer(make_sft_config(tiny_model_dir, synth_train, None, tmp_path / "b", max_steps=2, **common)).train()
    resumed = SFTTrainer(make_sft_config(tiny_model_dir, synth_train, None, tmp_path / "b", max_steps=4, **common))
    resumed.train(resume="latest")
    a = load_file(str(tmp_path / "a" / "checkpoints" / "checkpoint-4" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "checkpoint-4" / "trainable.safetensors"))
    start = load_file(str(tmp_path / "b" / "checkpoints" / "checkpoint-2" / "trainable.safetensors"))
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], start[k]) for k in a)  # steps 3-4 did change the weights
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_bad_data_fails_before_model_loads(tmp_path):
    from imagedoctor.trainer.diagnoser.config import SFTConfig

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "data.jsonl").write_text('{"id": "x"}\n')
    cfg = SFTConfig(model=str(tmp_path / "no-model"), data=str(empty), output_dir=str(tmp_path / "o"),
                    stage="scores", heatmap_weight=0.0)
    with pytest.raises(TrainingDataError, match="no usable sample"):
        SFTTrainer(cfg)
    cfg = SFTConfig(model=str(tmp_path / "no-model"), data=str(tmp_path / "nowhere"), output_dir=str(tmp_path / "o"),
                    stage="scores", heatmap_weight=0.0)
    with pytest.raises(TrainingDataError, match="'data'"):
        SFTTrainer(cfg)


def test_metrics_file_written(sft_scores_run):
    _, result = sft_scores_run(0)
    from pathlib import Path

    lines = (Path(result["model_dir"]).parent / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert rows[0]["step"] == 10 and "train/loss" in rows[0]
    assert rows[-1]["step"] == 400 and "eval/loss" in rows[-1]


def test_sft_sdg_format_on_qwen3(tiny_qwen3_dir, synth_train, tmp_path, make_sft_config):
    """The same data trains SDG-style JSON targets on a Qwen3-VL detector without head."""
    from imagedoctor.core.diagnoser import Diagnoser

    cfg = make_sft_config(tiny_qwen3_dir, synth_train, None, tmp_path, eval_data=None, format="sdg", stage="full",
                          heatmap_weight=0.0, finetuning="lora", lora_r=4, lora_alpha=8, max_steps=3, batch_size=2,
                          learning_rate=1e-2)
    tr = SFTTrainer(cfg)
    result = tr.train()
    assert math.isfinite(result["train/ce"])
    assert '"box_2d"' in tr.train_examples[0].target and '"label": "artifact"' in tr.train_examples[0].target
    dg = Diagnoser.from_pretrained(result["model_dir"], dtype="fp32", device="cpu")
    assert dg.family == "qwen3_vl" and dg.head is None


def test_cli_sft_runs_and_reports_config_errors(tiny_model_dir, synth_train, tmp_path, capsys):
    import yaml

    from imagedoctor.trainer.__main__ import main

    cfg = dict(model=str(tiny_model_dir), data=str(synth_train), output_dir=str(tmp_path / "out"), stage="scores",
               heatmap_weight=0.0, image_area=112 * 112, finetuning="full", max_steps=1, batch_size=2,
               report_to="none", progress_bar=False)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["sft", "--config", str(tmp_path / "c.yaml")]) == 0
    assert (tmp_path / "out" / "model" / "config.json").is_file()
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**cfg, "stage": "scores", "heatmap_weight": 1.0}))
    assert main(["sft", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "heatmap_weight" in capsys.readouterr().err


def test_lr_schedule_steps_stops_a_longer_schedule_early(tiny_model_dir, synth_train, tmp_path, make_sft_config):
    """max_steps 4 of a 40-step cosine schedule: the learning rates are the first four of the long
    schedule, not a schedule squeezed into four steps (what an interrupted long run had)."""
    import math as _math

    lrs = {}
    for name, extra in (("long", {"lr_schedule_steps": 40}), ("short", {})):
        cfg = make_sft_config(tiny_model_dir, synth_train, None, tmp_path / name, eval_data=None, stage="full",
                              heatmap_weight=1.0, max_steps=4, lr_scheduler_type="cosine", warmup_steps=0,
                              learning_rate=1e-3, **extra)
        tr = SFTTrainer(cfg)
        tr._setup()
        seen = []
        for _ in range(4):
            seen.append(tr.scheduler.get_last_lr()[0])
            tr.optimizer.step()
            tr.scheduler.step()
        lrs[name] = seen
    want = [1e-3 * 0.5 * (1 + _math.cos(_math.pi * k / 40)) for k in range(4)]
    assert lrs["long"] == pytest.approx(want, rel=1e-6)
    assert lrs["short"][3] < 0.2 * want[3]  # the 4-step schedule is nearly spent by step 3


def test_score_mae_counts_unwritten_scores_as_the_largest_error():
    from imagedoctor.core.diagnosis import Scores
    from imagedoctor.core.metrics import score_mae

    gt = [Scores(alignment=0.5, aesthetics=0.2, plausibility=None, overall=1.0)]
    pred = [Scores(alignment=0.7, aesthetics=None, plausibility=0.3, overall=1.0)]
    # |0.7-0.5| + 1 (unwritten) + 0 ; plausibility has no ground truth
    assert score_mae(pred, gt) == pytest.approx((0.2 + 1.0 + 0.0) / 3)


def test_score_mae_written_separates_the_format_from_the_values():
    import math

    from imagedoctor.core.diagnosis import Scores
    from imagedoctor.core.metrics import score_mae_written

    gt = [Scores(alignment=0.5, aesthetics=0.2, plausibility=None, overall=1.0)] * 2
    pred = [Scores(alignment=0.7, aesthetics=None, plausibility=0.3, overall=1.0),
            Scores(alignment=None, aesthetics=0.6, plausibility=None, overall=None)]
    # 6 annotated scores, 3 written: |0.2|, |0.0|, |0.4|; plausibility has no ground truth
    share, mae = score_mae_written(pred, gt)
    assert share == pytest.approx(3 / 6) and mae == pytest.approx((0.2 + 0.0 + 0.4) / 3)
    # writing nothing: the share is 0 and the error undefined (not 0, which would read as perfect)
    share, mae = score_mae_written([Scores()], gt[:1])
    assert share == 0.0 and math.isnan(mae)
