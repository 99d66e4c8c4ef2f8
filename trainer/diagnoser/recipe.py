"""Run a training recipe folder end to end: build the start model, write the data, train the stages.

    python -m imagedoctor.trainer recipe trainer/recipes/mini --workdir runs/mini

A recipe folder holds ``recipe.yaml`` and one trainer config per stage::

    model: {builder: mini, size: mini, seed: 0}      # the start model (core.mini)
    data:                                             # synthetic data sets (core.synth), by name
      train: {n: 16000, seed: 0}                     # optional: size (512), p_clean (0.2)
      val: {n: 96, seed: 2000}
    heldout: {n: 200, seed: 1000}                     # final evaluation (never trained on); optional
                                                      # size, batch_size, max_new_tokens
    stages:                                           # trainer configs, run in order
      - {trainer: sft, config: sft.yaml}
    output: imagedoctor-mini                          # the last stage's model is copied here
    model_card: README.md                             # copied into the output folder

Stage configs may use ``{workdir}``, ``{model}`` (the start model), ``{data.NAME}`` and
``{previous}`` (the model the previous stage wrote) in their string values. Every step is skipped
when its result exists and an interrupted stage resumes from its latest checkpoint, so running
the same command again continues the recipe. Results: ``WORKDIR/OUTPUT`` (a model folder) and
``WORKDIR/heldout.json`` (the held-out targets, `core.mini.mini_targets`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("imagedoctor.trainer")

RECIPE_FILE = "recipe.yaml"
RECIPE_KEYS = {"model", "data", "heldout", "stages", "output", "model_card"}


class RecipeError(ValueError):
    """A recipe folder or file is invalid; the message names what and how to fix it."""


def load_recipe(folder: str | Path) -> dict[str, Any]:
    """Read and check ``folder/recipe.yaml`` (stage configs must exist)."""
    import yaml

    folder = Path(folder)
    path = folder / RECIPE_FILE
    if not path.is_file():
        raise RecipeError(f"{folder} is not a recipe folder: {RECIPE_FILE} is missing")
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(recipe, dict):
        raise RecipeError(f"{path}: must be a mapping of keys to values")
    unknown = sorted(set(recipe) - RECIPE_KEYS)
    if unknown:
        raise RecipeError(f"{path}: unknown key(s) {unknown}; known: {sorted(RECIPE_KEYS)}")
    for key in ("model", "stages", "output"):
        if key not in recipe:
            raise RecipeError(f"{path}: key {key!r} is required")
    if recipe["model"].get("builder", "mini") != "mini":
        raise RecipeError(f"{path}: model.builder must be 'mini' (the only builder so far)")
    for i, stage in enumerate(recipe["stages"]):
        if not isinstance(stage, dict) or stage.get("trainer") not in ("sft", "grpo") or "config" not in stage:
            raise RecipeError(f"{path}: stages[{i}] must be {{trainer: sft|grpo, config: FILE}}, got {stage!r}")
        if not (folder / stage["config"]).is_file():
            raise RecipeError(f"{path}: stages[{i}] config {stage['config']!r} does not exist in {folder}")
    recipe["_folder"] = folder
    return recipe


def _substitute(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, rep in names.items():
            value = value.replace("{" + key + "}", rep)
        return value
    if isinstance(value, list):
        return [_substitute(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, names) for k, v in value.items()}
    return value


def _stage_config(recipe: dict, stage: dict, names: dict[str, str]):
    from ..common.config import load_yaml
    from .config import GRPOConfig, SFTConfig

    data = load_yaml(recipe["_folder"] / stage["config"])
    cls = SFTConfig if stage["trainer"] == "sft" else GRPOConfig
    return cls.from_dict(_substitute(data, names))


def run_recipe(folder: str | Path, workdir: str | Path, stop_after: str | None = None) -> dict[str, Any]:
    """Run (or continue) the recipe in ``folder`` inside ``workdir``; returns a summary."""
    from ...core.mini import build_mini_diagnoser
    from ...core.synth import generate

    recipe = load_recipe(folder)
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"workdir": str(work), "steps": []}

    def done(step: str, seconds: float, **extra) -> None:
        summary["steps"].append({"step": step, "seconds": round(seconds, 1), **extra})
        logger.info("recipe: %s done in %.0f s", step, seconds)

    base = work / "base"
    start = time.perf_counter()
    if not (base / "config.json").is_file():
        spec = {k: v for k, v in recipe["model"].items() if k != "builder"}
        build_mini_diagnoser(base, **spec)
    done("model", time.perf_counter() - start)
    names = {"workdir": str(work), "model": str(base)}
    for name, spec in {**(recipe.get("data") or {}), **({"heldout": recipe["heldout"]} if "heldout" in recipe else {})}.items():
        out = work / "data" / name
        start = time.perf_counter()
        if not (out / "data.jsonl").is_file():
            generate(out, int(spec["n"]), seed=int(spec["seed"]), size=int(spec.get("size", 512)),
                     p_clean=float(spec.get("p_clean", 0.2)))
        names[f"data.{name}"] = str(out)
        done(f"data.{name}", time.perf_counter() - start)
    if stop_after == "data":
        return summary
    previous = str(base)
    for i, stage in enumerate(recipe["stages"]):
        names["previous"] = previous
        cfg = _stage_config(recipe, stage, names)
        out = Path(cfg.output_dir)
        start = time.perf_counter()
        if not (out / "model" / "config.json").is_file():
            from ..common import checkpoint as ckpt

            resume = "latest" if ckpt.list_checkpoints(out / ckpt.CHECKPOINT_DIR) else None
            if stage["trainer"] == "sft":
                from .sft import SFTTrainer as Trainer
            else:
                from .grpo import GRPOTrainer as Trainer
            result = Trainer(cfg).train(resume=resume)
            (out / "result.json").write_text(json.dumps(result, indent=2, default=str))
        previous = str(out / "model")
        done(f"stage{i + 1}.{stage['trainer']}", time.perf_counter() - start, config=stage["config"])
    final = work / recipe["output"]
    if not (final / "config.json").is_file():
        tmp = final.with_name(f".{final.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(previous, tmp)
        if recipe.get("model_card"):
            shutil.copy(recipe["_folder"] / recipe["model_card"], tmp / "README.md")
        tmp.rename(final)
    summary["model_dir"] = str(final)
    if "heldout" in recipe and not (work / "heldout.json").is_file():
        start = time.perf_counter()
        spec = recipe["heldout"]
        result = evaluate_heldout(final, names["data.heldout"], batch_size=int(spec.get("batch_size", 8)),
                                  max_new_tokens=int(spec.get("max_new_tokens", 400)))
        (work / "heldout.json").write_text(json.dumps(result, indent=2))
        done("heldout", time.perf_counter() - start)
    if (work / "heldout.json").is_file():
        summary["heldout"] = json.loads((work / "heldout.json").read_text())
    return summary


def evaluate_heldout(model_dir: str | Path, data: str | Path, batch_size: int = 8, max_new_tokens: int = 400) -> dict:
    """`core.mini.mini_targets` of the model at ``model_dir`` on the data set ``data``."""
    from ...core.data import load_project_dataset
    from ...core.diagnoser import Diagnoser
    from ...core.metrics import to_jsonable
    from ...core.mini import mini_targets

    dg = Diagnoser.from_pretrained(str(model_dir), dtype="fp32", device="cpu")
    area = getattr(dg.model.config, "imagedoctor_image_area", None) or "auto"
    samples = list(load_project_dataset(data))
    start = time.perf_counter()
    preds = dg.diagnose([s.load_image() for s in samples], [s.prompt for s in samples], batch_size=batch_size,
                        max_new_tokens=max_new_tokens, image_area=area)
    out = mini_targets(preds, [s.diagnosis for s in samples])
    out["seconds_per_image"] = round((time.perf_counter() - start) / max(1, len(samples)), 3)
    return to_jsonable(out)


# --- CLI -------------------------------------------------------------------------------------
#: What each key of recipe.yaml means (``recipe --help-config``).
RECIPE_KEY_HELP = {
    "model": "the start model: {builder: mini, size: mini, seed: 0, image_area: 65536} (core.mini.build_mini_diagnoser)",
    "data": "synthetic data sets by name, each {n, seed[, size, p_clean]} (core.synth); stage configs use {data.NAME}",
    "heldout": "optional {n, seed[, size, batch_size, max_new_tokens]}: the final held-out evaluation (never trained on)",
    "stages": "list of {trainer: sft|grpo, config: FILE}: trainer configs run in order; they may use {workdir}, "
              "{model}, {data.NAME} and {previous} (the model the previous stage wrote). Their keys: "
              "`python -m imagedoctor.trainer sft --help-config` (or grpo)",
    "output": "folder name under the workdir that receives the last stage's model",
    "model_card": "optional README.md copied into the output folder",
}


def add_parser(subparsers) -> Any:
    p = subparsers.add_parser("recipe", help="run a recipe folder: start model, data, training stages, evaluation",
                              description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", help="recipe folder with recipe.yaml (e.g. trainer/recipes/mini)")
    p.add_argument("--workdir", help="where models, data, checkpoints and results go (reruns continue); required")
    p.add_argument("--stop-after", choices=["data"], default=None, help="stop after writing the data")
    p.add_argument("--help-config", action="store_true", help="print the keys of recipe.yaml and exit")
    p.set_defaults(func=_run)
    return p


def _run(args) -> int:
    if args.help_config:
        print("recipe.yaml:\n" + "\n".join(f"{k}: {v}" for k, v in RECIPE_KEY_HELP.items()))
        return 0
    if not args.folder or not args.workdir:
        raise RecipeError("recipe needs a recipe folder and --workdir, e.g. `python -m imagedoctor.trainer recipe "
                          "trainer/recipes/mini --workdir runs/mini` (--help-config lists the recipe keys)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(json.dumps(run_recipe(args.folder, args.workdir, args.stop_after), indent=2, default=str))
    return 0
