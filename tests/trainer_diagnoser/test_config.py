"""Config validation happens before any model loads and names the key and the fix."""

from __future__ import annotations

import pytest

from imagedoctor.trainer.diagnoser.config import ConfigError, GRPOConfig, SFTConfig

BASE = dict(model="m", data="d", output_dir="o")


def test_defaults_are_valid_and_documented():
    for cls in (SFTConfig, GRPOConfig):
        cfg = cls(**BASE, **({"heatmap_weight": 1.0} if cls is SFTConfig else {}))
        rows = cls.help_rows()
        assert all(help_text for _, _, help_text in rows), "every field needs metadata help"
        assert {k for k, _, _ in rows} == set(cfg.to_dict())


@pytest.mark.parametrize("cls,kwargs,key", [
    (SFTConfig, {"model": ""}, "model"),
    (SFTConfig, {"format": "coco"}, "format"),
    (SFTConfig, {"stage": "scores", "heatmap_weight": 1.0}, "heatmap_weight"),
    (SFTConfig, {"format": "sdg", "stage": "scores", "heatmap_weight": 0.0}, "stage"),
    (SFTConfig, {"finetuning": "lora", "train_vision": True}, "train_vision"),
    (SFTConfig, {"batch_size": 0}, "batch_size"),
    (SFTConfig, {"image_area": 10}, "image_area"),
    (SFTConfig, {"mixed_precision": "fp8"}, "mixed_precision"),
    (GRPOConfig, {"num_generations": 1}, "num_generations"),
    (GRPOConfig, {"finetuning": "full", "beta": 0.04}, "beta"),
    (GRPOConfig, {"rewards": {"bogus": 1.0}}, "rewards"),
    (GRPOConfig, {"format": "sdg", "rewards": {"score": 1.0}}, "rewards"),
    (GRPOConfig, {"stage": "scores", "rewards": {"heatmap": 1.0}}, "rewards"),
    (GRPOConfig, {"loss_type": "mean"}, "loss_type"),
    (GRPOConfig, {"temperature": 0.0}, "temperature"),
    (GRPOConfig, {"reward_variant": "paper"}, "reward_variant"),
    (GRPOConfig, {"prompt_variant": "sdg-grpo"}, "prompt_variant"),          # another format's variant
    (SFTConfig, {"prompt_variant": "imagedoctor-fast"}, "prompt_variant"),   # pre-fills the answer
    (SFTConfig, {"prompt_variant": "imagedoctor", "think": False}, "prompt_variant"),
    (SFTConfig, {"max_steps": 100, "lr_schedule_steps": 50}, "lr_schedule_steps"),
])
def test_bad_values_name_the_key(cls, kwargs, key):
    with pytest.raises(ConfigError, match=repr(key)):
        cls(**{**BASE, **kwargs})


def test_from_yaml_rejects_unknown_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m\ndata: d\noutput_dir: o\nlearning_rat: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rat"):
        SFTConfig.from_yaml(path)
    path.write_text("model: m\ndata: d\noutput_dir: o\nstage: scores\nheatmap_weight: 0\nmax_steps: 7\n")
    cfg = SFTConfig.from_yaml(path)
    assert cfg.max_steps == 7 and cfg.stage == "scores"
    with pytest.raises(ConfigError, match="missing.yaml.*does not exist"):
        SFTConfig.from_yaml(tmp_path / "missing.yaml")


def test_shipped_paper_configs_load_and_validate():
    import warnings
    from pathlib import Path

    import imagedoctor

    folder = Path(imagedoctor.__file__).parent / "trainer" / "configs"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a renamed (deprecated) key in a shipped config would warn every user
        configs = {p.stem: GRPOConfig.from_yaml(p) for p in sorted(folder.glob("*_grpo_paper.yaml"))}
    assert set(configs) == {"imagedoctor_grpo_paper", "sdg_detector_grpo_paper"}
    doctor, sdg = configs["imagedoctor_grpo_paper"], configs["sdg_detector_grpo_paper"]
    assert doctor.reward_variant == sdg.reward_variant == "upstream"
    assert doctor.rewards == {"score": 1.0, "heatmap": 1.0, "grounding": 1.0} and doctor.format == "imagedoctor"
    assert (doctor.learning_rate, doctor.beta, doctor.num_generations, doctor.max_new_tokens) == (2e-6, 0.04, 8, 4096)
    assert doctor.num_iterations == sdg.num_iterations == 1
    assert (doctor.prompt_variant, sdg.prompt_variant) == ("imagedoctor-grpo", "sdg-grpo")
    assert sdg.rewards == {"sdg": 1.0} and sdg.format == "sdg" and sdg.embedding_model == "Qwen/Qwen3-Embedding-0.6B"
    assert (sdg.learning_rate, sdg.beta, sdg.num_generations, sdg.max_new_tokens) == (5e-6, 0.01, 8, 4096)
