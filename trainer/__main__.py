"""``python -m imagedoctor.trainer <command> ...``: headless training.

Each command lives in the module that owns it and exposes ``add_parser(subparsers)``; the parser
sets ``func``. Add a command by adding one line to `COMMANDS`. Use ``accelerate launch -m
imagedoctor.trainer ...`` for multi-GPU runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: command name -> module (relative to this package) defining ``add_parser(subparsers)``.
COMMANDS = {
    "flow-grpo": ".generator.flow_grpo",
    "sft-generator": ".generator.sft",
    "sft": ".diagnoser.sft",
    "grpo": ".diagnoser.grpo",
}


def build_parser(commands: dict[str, str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m imagedoctor.trainer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    done = set()
    for module in (commands or COMMANDS).values():
        if module in done:
            continue
        importlib.import_module(module, __package__).add_parser(sub)
        done.add(module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:  # ConfigError is a ValueError: one clear line
        if os.environ.get("IMAGEDOCTOR_DEBUG"):
            raise
        print(f"imagedoctor.trainer {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
