"""Command line: ``python -m imagedoctor <command> ...`` (also installed as ``imagedoctor``).

Each command lives in the module that owns its logic and exposes ``add_parser(subparsers)``;
the parser sets ``func`` to the function that runs it. Modules are imported only when the
CLI runs, never by ComfyUI.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: command name -> module (relative to this package) that defines ``add_parser``.
COMMANDS = {
    "diagnose": ".core.commands",
    "parse": ".core.commands",
    "tiny-model": ".core.commands",
    "demo": ".core.demo",
    "synth": ".core.synth",
    "eval": ".core.evaluate",
    "diagnose-dataset": ".core.scale.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagedoctor", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    done = set()
    for name, module in COMMANDS.items():
        if module in done:
            continue
        try:
            mod = importlib.import_module(module, __package__)
        except ModuleNotFoundError as exc:  # a command whose module is not built yet
            if module.rsplit(".", 1)[-1] not in str(exc):
                raise
            continue
        mod.add_parser(sub)
        done.add(module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, OSError) as exc:
        # User errors: one clear line, no traceback (set IMAGEDOCTOR_DEBUG=1 for one).
        import os

        if os.environ.get("IMAGEDOCTOR_DEBUG"):
            raise
        print(f"imagedoctor {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
