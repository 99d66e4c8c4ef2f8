"""``python -m imagedoctor diagnose-dataset``: the CLI face of `DiagnoseDatasetConfig` / `diagnose_dataset`."""

from __future__ import annotations

import argparse
import json
import sys

from .dataset import ENGINES, DiagnoseDatasetConfig, config_fields, diagnose_dataset
from .sources import INPUT_FORMATS
from .work import HEATMAP_MODES

_HELP = {f.name: f.metadata.get("help", "") for f in config_fields()}


def _image_area(text: str):
    if text == "auto":
        return "auto"
    if text in ("none", "keep"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--image-area takes 'auto', 'keep' or a pixel count, not {text!r}") from None


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "diagnose-dataset", help="diagnose a whole data set into resumable Parquet shards (local or Ray)",
        description="Diagnose every row of a data set; results go to Parquet shards in --out. Rerun the same "
                    "command to resume after a stop or a crash. Details: docs/scale.md.")

    def arg(name: str, **kw):
        p.add_argument("--" + name.replace("_", "-"), dest=name, help=_HELP[name], **kw)

    arg("model", required=True)
    arg("input", required=True)
    arg("out", required=True)
    arg("format", choices=INPUT_FORMATS, default="auto")
    arg("prompts")
    arg("prompt_column", default="prompt")
    arg("image_column", default="image")
    arg("id_column", default="id")
    arg("engine", choices=ENGINES, default="local")
    arg("ray_address")
    arg("workers", type=int)
    arg("gpus_per_worker", type=float)
    arg("cpus_per_worker", type=float, default=1.0)
    arg("decode_cpus", type=float, default=1.0)
    arg("batch_size", type=int, default=8)
    arg("shard_size", type=int, default=256)
    arg("heatmaps", choices=HEATMAP_MODES, default="none")
    arg("max_new_tokens", type=int, default=1024)
    arg("min_new_tokens", type=int, default=0)
    p.add_argument("--no-think", dest="think", action="store_false", help="Scores without the reasoning block "
                                                                          "(ImageDoctor's fast mode).")
    arg("image_area", type=_image_area, default="auto")
    arg("dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto")
    arg("device")
    arg("max_retries", type=int, default=3)
    arg("overwrite", action="store_true")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="No progress bar.")
    p.add_argument("--json", action="store_true", help="Print the summary as JSON.")
    p.set_defaults(func=run)


def run(args) -> int:
    kwargs = {f.name: getattr(args, f.name) for f in config_fields()}
    try:
        result = diagnose_dataset(DiagnoseDatasetConfig(**kwargs))
    except ModuleNotFoundError as exc:  # pyarrow / ray not installed: say which extra to install
        print(f"imagedoctor diagnose-dataset: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict(), indent=2) if args.json else "diagnose-dataset: " + result.line())
    return 0 if result.complete else 1
