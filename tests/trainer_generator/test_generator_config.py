"""Bad configs fail before any model loads, naming the key and the fix; YAML loading; CLI errors."""

from __future__ import annotations

import pytest
import yaml

from imagedoctor.trainer.__main__ import COMMANDS, build_parser, main
from imagedoctor.trainer.generator.config import ConfigError, FlowGRPOConfig, SFTGeneratorConfig, load_config


def base(tiny_sd3_path, prompts_file, **kw):
    d = dict(model=str(tiny_sd3_path), prompts_file=str(prompts_file), reward="python:m:f")
    d.update(kw)
    return d


@pytest.mark.parametrize("overrides, key, fix", [
    (dict(batch_size=10, num_generations=4), "num_generations", "multiple of num_generations"),
    (dict(batch_size=8, num_generations=4, micro_batch_size=3), "micro_batch_size", "multiple"),
    (dict(num_generations=1, batch_size=8), "num_generations", "2 or more"),
    (dict(num_steps=10, sde_window_start=10), "sde_window_start", "0..9"),
    (dict(sde_window_size=0), "sde_window_size", "null"),
    (dict(resolution=500), "resolution", "496 or 512"),
    (dict(reward_mode="heatmap"), "reward_mode", "scalar"),
    (dict(mixed_precision="fp8"), "mixed_precision", "bf16"),
    (dict(reward="diagnoser"), "reward_kwargs.diagnoser", "reward_kwargs"),
    (dict(reward="pickscore"), "reward", "python:"),
    (dict(ema_decay=1.0), "ema_decay", "0.9"),
    (dict(batch_size=8, num_generations=4, micro_batch_size=4, steps_per_generation=3),
     "steps_per_generation", "divisor"),
    (dict(kl_normalisation="gaussian"), "kl_normalisation", "flow_grpo"),
    (dict(learning_rate="fast"), "learning_rate", "a number"),
    (dict(learning_rate=-1.0), "learning_rate", "> 0"),
    (dict(export_name="lora.pt"), "export_name", ".safetensors"),
])
def test_bad_combinations_name_key_and_fix(tiny_sd3_path, prompts_file, overrides, key, fix):
    with pytest.raises(ConfigError) as err:
        FlowGRPOConfig(**base(tiny_sd3_path, prompts_file, **overrides))
    msg = str(err.value)
    assert f"'{key}'" in msg and "Fix:" in msg and fix in msg


def test_missing_model_files(tmp_path, prompts_file, tiny_sd3_path):
    with pytest.raises(ConfigError, match="'model'.*does not exist"):
        FlowGRPOConfig(**base(tmp_path / "nope", prompts_file))
    half = tmp_path / "half"
    half.mkdir()
    (half / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline"}')
    with pytest.raises(ConfigError, match="has no transformer/config.json"):
        FlowGRPOConfig(**base(half, prompts_file))
    with pytest.raises(ConfigError, match="'prompts_file'"):
        FlowGRPOConfig(**base(tiny_sd3_path, tmp_path / "missing.txt"))
    # hub ids are not checked locally
    cfg = FlowGRPOConfig(**base(tiny_sd3_path, prompts_file, model="stabilityai/stable-diffusion-3.5-medium"))
    assert cfg.resolved_family() == "sd3"


def test_yaml_unknown_key_suggests(tmp_path, tiny_sd3_path, prompts_file):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base(tiny_sd3_path, prompts_file, num_generatons=4)))
    with pytest.raises(ConfigError, match=r"'num_generatons' \(did you mean 'num_generations'\?\)"):
        load_config(path, FlowGRPOConfig)
    # an old key misspelt still points to the new name
    path.write_text(yaml.safe_dump(base(tiny_sd3_path, prompts_file, group_szie=4)))
    with pytest.raises(ConfigError, match=r"'group_szie' \(did you mean 'num_generations'\?\)"):
        load_config(path, FlowGRPOConfig)
    path.write_text(yaml.safe_dump(base(tiny_sd3_path, prompts_file, num_generations=4, batch_size=8)))
    cfg = load_config(path, FlowGRPOConfig, overrides={"num_steps": 5})
    assert cfg.num_generations == 4 and cfg.num_steps == 5 and cfg.sde_steps == [0, 1, 2, 3, 4]
    assert load_config(path, FlowGRPOConfig, overrides={"sde_window_start": 1, "sde_window_size": 2}).sde_steps == [1, 2]
    cfg.save(tmp_path / "round.yaml")
    assert load_config(tmp_path / "round.yaml", FlowGRPOConfig) == cfg


def test_sft_config(tmp_path, tiny_sd3_path):
    with pytest.raises(ConfigError, match="'data_dir'"):
        SFTGeneratorConfig(model=str(tiny_sd3_path), data_dir=str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="'micro_batch_size'"):
        SFTGeneratorConfig(model=str(tiny_sd3_path), data_dir=str(tmp_path), batch_size=3, micro_batch_size=2)


def test_every_field_has_help():
    import dataclasses

    for cls in (FlowGRPOConfig, SFTGeneratorConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


def test_cli_registry_and_errors(tmp_path, tiny_sd3_path, prompts_file, capsys, monkeypatch):
    assert {"flow-grpo", "sft-generator"} <= set(COMMANDS)
    parser = build_parser()
    args = parser.parse_args(["flow-grpo", "--config", "x.yaml", "--set", "seed=3", "--resume"])
    assert args.resume == "latest" and args.overrides == ["seed=3"]

    import imagedoctor.trainer.generator.flow_grpo as fgt

    def no_load(*a, **k):  # a bad config must fail before any model loads
        raise AssertionError("model loaded")

    monkeypatch.setattr(fgt, "load_pipeline", no_load)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(base(tiny_sd3_path, prompts_file, batch_size=6, num_generations=4)))
    assert main(["flow-grpo", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "'num_generations'" in err and "Fix:" in err
    assert main(["sft-generator", "--set", "model=/does/not/exist", "--set", f"data_dir={tmp_path}"]) == 2
    assert "'model'" in capsys.readouterr().err
    assert main(["flow-grpo", "--help-config"]) == 0
    out = capsys.readouterr().out
    assert "num_generations (8): Images per prompt" in out and "group_size -> num_generations" in out
