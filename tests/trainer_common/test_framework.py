"""The common trainer framework: config loading and errors, renamed keys, checkpoints, metrics,
``--help-config`` for every command, and docs tables that cannot drift from the dataclasses."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from imagedoctor.trainer.__main__ import COMMANDS, main
from imagedoctor.trainer.common import checkpoint as ckpt
from imagedoctor.trainer.common.config import ConfigDeprecationWarning, ConfigError
from imagedoctor.trainer.common.docs import config_classes, render
from imagedoctor.trainer.common.metrics import MetricsLogger
from imagedoctor.trainer.diagnoser.config import GRPOConfig, SFTConfig

ROOT = Path(__file__).resolve().parents[2]
DIAG = dict(model="m", data="d", output_dir="o", stage="scores", report_to="none", rewards={"score": 1.0})


# --- config loading ----------------------------------------------------------------------------
def test_scientific_notation_and_overrides(tmp_path):
    """YAML 1.1 reads `1e-5` as a string; we read it as the number everyone means (file and --set)."""
    path = tmp_path / "c.yaml"
    path.write_text("model: m\ndata: d\noutput_dir: o\nstage: scores\nheatmap_weight: 0\nlearning_rate: 1e-5\n"
                    "head_learning_rate: 3E-4\nlora_dropout: .5e-1\n")
    cfg = SFTConfig.from_yaml(path)
    assert cfg.learning_rate == 1e-5 and isinstance(cfg.learning_rate, float)
    assert cfg.head_learning_rate == 3e-4 and cfg.lora_dropout == 0.05
    cfg = SFTConfig.from_yaml(path, {"learning_rate": "2e-4", "max_steps": 7.0})
    assert cfg.learning_rate == 2e-4 and cfg.max_steps == 7 and isinstance(cfg.max_steps, int)
    with pytest.raises(ConfigError, match="'max_steps': must be an integer, got 7.5"):
        SFTConfig.from_yaml(path, {"max_steps": 7.5})
    with pytest.raises(ConfigError, match="'learning_rate': must be a number, got 'fast'"):
        SFTConfig.from_yaml(path, {"learning_rate": "fast"})


@pytest.mark.parametrize("command", ["sft", "grpo"])
def test_yaml_syntax_error_names_file_and_line(command, tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("model: m\ndata: d\noutput_dir: [o\nstage: scores\n")
    assert main([command, "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:" in err and "YAML syntax error" in err and "Traceback" not in err
    line = int(err.split(f"{path}:")[1].split(":")[0])
    assert line in (3, 4, 5), err  # the unclosed list opened on line 3
    path.write_text("model: m\n  data: d\n")  # bad indentation
    assert main([command, "--config", str(path)]) == 2
    assert f"{path}:2:" in capsys.readouterr().err


def test_learning_rate_1e5_through_the_cli(tmp_path, capsys):
    """The issue-11 case: `learning_rate: 1e-5` used to be rejected as a string."""
    path = tmp_path / "c.yaml"
    path.write_text(f"model: m\ndata: {tmp_path / 'no-data'}\noutput_dir: {tmp_path / 'o'}\nstage: scores\n"
                    "heatmap_weight: 0\nlearning_rate: 1e-5\nreport_to: none\n")
    assert main(["sft", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "config key 'learning_rate'" not in err and "config key 'data'" in err  # the config passed; data missing


def test_renamed_keys_warn_and_map(tmp_path):
    with pytest.warns(ConfigDeprecationWarning, match="'num_inner_steps' is deprecated; use 'num_iterations'"):
        cfg = GRPOConfig(**DIAG, num_inner_steps=3)
    assert cfg.num_iterations == 3
    path = tmp_path / "c.yaml"
    path.write_text("model: m\ndata: d\noutput_dir: o\nnum_inner_steps: 2\n")
    with pytest.warns(ConfigDeprecationWarning, match="use 'num_iterations'"):
        assert GRPOConfig.from_yaml(path).num_iterations == 2
    with pytest.raises(ConfigError, match="'num_inner_steps' and 'num_iterations' are the same setting"):
        GRPOConfig(**DIAG, num_inner_steps=2, num_iterations=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name alone warns about nothing
        GRPOConfig(**DIAG, num_iterations=2)


def test_generator_renamed_keys(tiny_sd3_dir_for_config, tmp_path):
    from imagedoctor.trainer.generator.config import FlowGRPOConfig, SFTGeneratorConfig

    prompts = tmp_path / "p.txt"
    prompts.write_text("a cube\n")
    old = dict(pretrained_model=str(tiny_sd3_dir_for_config), prompts_file=str(prompts), reward="python:m:f",
               lora_rank=4, lora_targets=["to_q"], save_every=3, keep_checkpoints=1, logging="none", log_every=2,
               group_size=2, batch_size=4, sample_batch_size=4, clip_range=0.2, optimizer_steps_per_iteration=2, max_steps=5,
               lr_warmup_steps=1, adam_weight_decay=0.0, lr_scheduler="linear", sample_every=4)
    with pytest.warns(ConfigDeprecationWarning) as record:
        cfg = FlowGRPOConfig(**old)
    assert len(record) == 14
    assert (cfg.model, cfg.lora_r, cfg.lora_target_modules, cfg.save_steps, cfg.save_total_limit, cfg.report_to,
            cfg.logging_steps, cfg.num_generations, cfg.epsilon, cfg.steps_per_generation, cfg.warmup_steps,
            cfg.weight_decay, cfg.lr_scheduler_type, cfg.sample_steps) == (
        str(tiny_sd3_dir_for_config), 4, ["to_q"], 3, 1, "none", 2, 2, 0.2, 2, 1, 0.0, "linear", 4)
    # `num_iterations` was the run length of flow-grpo and is now TRL's mu: an old config is refused, not guessed
    with pytest.raises(ConfigError, match="'num_iterations': its meaning changed.*max_steps: 300"):
        FlowGRPOConfig(model=str(tiny_sd3_dir_for_config), prompts_file=str(prompts), reward="python:m:f",
                       num_iterations=300)
    cfg = FlowGRPOConfig(model=str(tiny_sd3_dir_for_config), prompts_file=str(prompts), reward="python:m:f",
                         num_iterations=2, max_steps=10)
    assert (cfg.num_iterations, cfg.max_steps) == (2, 10)
    with pytest.warns(ConfigDeprecationWarning, match="'lora_rank' is deprecated; use 'lora_r'"):
        SFTGeneratorConfig(model=str(tiny_sd3_dir_for_config), data_dir=str(tmp_path), lora_rank=2, report_to="none")


@pytest.fixture(scope="module")
def tiny_sd3_dir_for_config(tmp_path_factory):
    """A folder that passes the generator config's file checks (no weights needed to validate a config)."""
    root = tmp_path_factory.mktemp("fake-sd3")
    (root / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline"}')
    for sub in ("transformer", "vae"):
        (root / sub).mkdir()
        (root / sub / "config.json").write_text("{}")
    (root / "scheduler").mkdir()
    return root


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help_config(command, capsys):
    assert main([command, "--help-config"]) == 0
    out = capsys.readouterr().out
    if command == "recipe":  # not a trainer: its "config" is recipe.yaml, whose every key is explained
        from imagedoctor.trainer.diagnoser.recipe import RECIPE_KEYS

        assert out.startswith("recipe.yaml:") and all(f"\n{k}: " in out for k in RECIPE_KEYS)
        return
    cls = {"sft": "SFTConfig", "grpo": "GRPOConfig", "flow-grpo": "FlowGRPOConfig",
           "sft-generator": "SFTGeneratorConfig"}[command]
    assert out.startswith(cls + ":")
    for name, _, text in config_classes()[cls].help_rows():
        assert f"\n{name} (" in out and text.split(".")[0] in out


def test_every_field_has_help_and_one_name_per_idea():
    classes = config_classes()
    for cls in classes.values():
        for name, _, text in cls.help_rows():
            assert text, f"{cls.__name__}.{name} has no help"
    # the shared ideas are spelt the same in both families
    names = {c: {n for n, _, _ in cls.help_rows()} for c, cls in classes.items()}
    for key in ("model", "max_steps", "lora_r", "lora_alpha", "lora_target_modules", "save_steps", "save_total_limit",
                "report_to", "logging_steps", "warmup_steps", "lr_scheduler_type", "weight_decay"):
        for c in ("SFTConfig", "GRPOConfig", "FlowGRPOConfig", "SFTGeneratorConfig"):
            assert key in names[c], (c, key)
    for c in ("GRPOConfig", "FlowGRPOConfig"):
        assert {"num_generations", "num_iterations", "beta", "epsilon"} <= names[c]


# --- docs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("doc", ["training-diagnoser.md", "training-generator.md"])
def test_docs_tables_match_the_dataclasses(doc):
    """Regenerate with `python -m imagedoctor.trainer.common.docs docs/training-*.md`."""
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    assert text.count("<!-- config-table:") >= 3
    assert render(text) == text, f"docs/{doc} is out of date: run python -m imagedoctor.trainer.common.docs docs/{doc}"


def test_docs_check_detects_drift(tmp_path):
    from imagedoctor.trainer.common.docs import main as docs_main

    doc = tmp_path / "d.md"
    doc.write_text("x\n<!-- config-table: SFTConfig - DiagnoserTrainConfig -->\n| stale |\n<!-- end config-table -->\n")
    assert docs_main(["--check", str(doc)]) == 1
    assert docs_main([str(doc)]) == 0 and "`heatmap_size`" in doc.read_text()
    assert docs_main(["--check", str(doc)]) == 0


# --- checkpoints and metrics ------------------------------------------------------------------
def _tiny_run():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    module[0].weight.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    return module, opt, sched


def _step(module, opt, sched):
    loss = module(torch.randn(5, 3)).pow(2).mean()  # draws from the global RNG: resume must restore it
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def test_checkpoint_resume_is_exact_and_atomic(tmp_path):
    module, opt, sched = _tiny_run()
    for _ in range(2):
        _step(module, opt, sched)
    root = tmp_path / "checkpoints"
    path = ckpt.save_checkpoint(root, 2, module, opt, sched, {"seed": 0}, keep=2,
                                extra_tensors={"ema.0": torch.ones(2)}, extra={"history": [{"loss": 1.5}]})
    for _ in range(2):
        _step(module, opt, sched)
    expected = [p.detach().clone() for p in module.parameters()]
    files = sorted(p.name for p in path.iterdir())
    assert files == ["extra.safetensors", "optimizer.pt", "rng-0.pt", "scheduler.pt", "state.json",
                     "trainable.safetensors"]
    assert json.loads((path / "state.json").read_text())["step"] == 2

    module2, opt2, sched2 = _tiny_run()
    state = ckpt.load_checkpoint(ckpt.resolve_resume("latest", root), module2, opt2, sched2)
    assert state["step"] == 2 and state["extra"]["history"] == [{"loss": 1.5}]
    assert torch.equal(state["extra_tensors"]["ema.0"], torch.ones(2))
    for _ in range(2):
        _step(module2, opt2, sched2)
    for a, b in zip(expected, module2.parameters()):
        assert torch.equal(a, b)  # weights, optimizer, scheduler and RNG all restored

    # a save that dies half-way leaves no checkpoint folder behind and keeps the old ones
    class Boom:
        def state_dict(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ckpt.save_checkpoint(root, 4, module, Boom(), sched)
    assert [p.name for p in root.iterdir()] == ["checkpoint-2"]
    # keep=2 prunes the oldest
    for step in (3, 5, 7):
        ckpt.save_checkpoint(root, step, module, opt, sched, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["checkpoint-5", "checkpoint-7"]
    with pytest.raises(FileNotFoundError, match="no checkpoint-N folder"):
        ckpt.resolve_resume("latest", tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        ckpt.resolve_resume(str(tmp_path), root)
    # a checkpoint of another model is refused with the fix
    other = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="does not match the model being trained.*Fix"):
        ckpt.load_checkpoint(root / "checkpoint-7", other, torch.optim.AdamW(other.parameters()), sched)


def test_metrics_logger_writes_jsonl_and_tensorboard(tmp_path):
    log = MetricsLogger(tmp_path, True, "tensorboard")
    log.log(1, {"train/loss": 0.5, "train/nan": float("nan")})
    log.log(2, {"eval/loss": 0.25})
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 1 and rows[0]["train/loss"] == 0.5 and rows[1] == {"step": 2, "eval/loss": 0.25}
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))
    silent = MetricsLogger(tmp_path / "other", False, "tensorboard")  # not the main process
    silent.log(1, {"x": 1.0})
    assert not (tmp_path / "other").exists()


def test_product_does_not_cite_files_users_do_not_have():
    """REFERENCE.md and ../shared are not part of the repository: provenance lives in docs/provenance.md."""
    offenders = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if (not path.is_file() or path.suffix not in (".py", ".md", ".toml", ".json", ".yaml", ".txt")
                or rel.parts[0] in ("tests", ".git") or rel.parts[0].startswith(".")):
            continue
        text = path.read_text(encoding="utf-8", errors="ignore")
        if "REFERENCE.md" in text or "../shared" in text or "shared/REFERENCE" in text:
            offenders.append(str(rel))
    assert not offenders, f"cite docs/provenance.md instead: {offenders}"
    assert (ROOT / "docs" / "provenance.md").is_file()
