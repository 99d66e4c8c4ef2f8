"""The recipe runner on a micro recipe: start model, data, one SFT stage, final folder, held-out table."""

import json

import pytest

from imagedoctor.trainer.diagnoser.recipe import RecipeError, load_recipe, run_recipe

RECIPE = """
model: {builder: mini, size: micro, seed: 0, image_area: 12544, corpus_samples: 20}
data:
  train: {n: 6, seed: 0, size: 128}
  val: {n: 2, seed: 2000, size: 128}
heldout: {n: 3, seed: 1000, size: 128, max_new_tokens: 24}
stages:
  - {trainer: sft, config: sft.yaml}
output: my-mini
model_card: README.md
"""
SFT = """
model: "{model}"
data: "{data.train}"
eval_data: "{data.val}"
output_dir: "{workdir}/sft"
image_area: 12544
finetuning: full
train_vision: true
learning_rate: 1.0e-3
max_steps: 2
batch_size: 2
heatmap_size: 32
eval_samples: 2
eval_max_new_tokens: 8
report_to: none
progress_bar: false
"""


@pytest.fixture
def recipe_dir(tmp_path):
    d = tmp_path / "recipe"
    d.mkdir()
    (d / "recipe.yaml").write_text(RECIPE)
    (d / "sft.yaml").write_text(SFT)
    (d / "README.md").write_text("# my mini\n")
    return d


def test_recipe_runs_end_to_end_and_a_rerun_continues(recipe_dir, tmp_path):
    from imagedoctor.core.diagnoser import Diagnoser

    work = tmp_path / "work"
    summary = run_recipe(recipe_dir, work)
    final = work / "my-mini"
    assert summary["model_dir"] == str(final)
    assert (final / "README.md").read_text() == "# my mini\n"
    assert json.loads((work / "sft" / "result.json").read_text())["step"] == 2
    held = json.loads((work / "heldout.json").read_text())
    assert held["n"] == 3 and set(held["met"]) == {"overall_plcc", "heatmap_cc", "box_f1_0.1", "scores_parsed"}
    dg = Diagnoser.from_pretrained(final, dtype="fp32", device="cpu")
    assert dg.model.config.imagedoctor_image_area == 12544 and dg.head is not None
    stamp = (work / "sft" / "result.json").stat().st_mtime_ns
    again = run_recipe(recipe_dir, work)  # everything exists: nothing is redone
    assert (work / "sft" / "result.json").stat().st_mtime_ns == stamp
    assert again["heldout"] == held


def test_recipe_errors_name_the_problem(recipe_dir):
    (recipe_dir / "recipe.yaml").write_text(RECIPE.replace("output: my-mini", "outptu: my-mini"))
    with pytest.raises(RecipeError, match="unknown key.*outptu"):
        load_recipe(recipe_dir)
    (recipe_dir / "recipe.yaml").write_text(RECIPE.replace("config: sft.yaml", "config: nope.yaml"))
    with pytest.raises(RecipeError, match="nope.yaml"):
        load_recipe(recipe_dir)
    with pytest.raises(RecipeError, match="recipe.yaml is missing"):
        load_recipe(recipe_dir / "sft.yaml")


def test_shipped_mini_recipe_validates(tmp_path):
    """The recipe that made the shipped weights: every stage config loads and validates (placeholders
    filled) before hours of training could fail on a typo."""
    from pathlib import Path

    import imagedoctor
    from imagedoctor.trainer.diagnoser.recipe import _stage_config, load_recipe

    folder = Path(imagedoctor.__file__).resolve().parent / "trainer" / "recipes" / "mini"
    recipe = load_recipe(folder)
    names = {"workdir": str(tmp_path), "model": str(tmp_path / "base"), "previous": str(tmp_path / "prev"),
             **{f"data.{k}": str(tmp_path / k) for k in recipe["data"]}}
    cfgs = [_stage_config(recipe, stage, names) for stage in recipe["stages"]]
    assert [c.max_steps for c in cfgs] == [1500, 1100] and cfgs[0].lr_schedule_steps == 4000
    assert cfgs[1].model == str(tmp_path / "prev")
