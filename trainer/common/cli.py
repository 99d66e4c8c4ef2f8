"""One CLI shape for every trainer command::

    python -m imagedoctor.trainer COMMAND --config C.yaml [--set KEY=VALUE ...] [--resume [latest|PATH]]
    python -m imagedoctor.trainer COMMAND --help-config       # every key, its default and meaning

The config is read and validated (``ConfigError``: key and fix) before the trainer, and so any
model, is built.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from .config import ConfigError, parse_override


def add_config_arguments(parser) -> None:
    parser.add_argument("--config", help="YAML config: a flat mapping of config keys (see --help-config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (value read as YAML, e.g. learning_rate=1e-5); repeatable")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="latest|PATH",
                        help="continue from the newest checkpoint in OUTPUT_DIR/checkpoints (no value or 'latest') "
                             "or from the given checkpoint folder")
    parser.add_argument("--help-config", action="store_true",
                        help="list every config key with its default and meaning, then exit")


def config_from_args(args, config_cls):
    """The validated config from ``--config`` and ``--set`` (raises `ConfigError` before any model loads)."""
    overrides = dict(parse_override(o) for o in args.overrides)
    if not args.config and not overrides:
        raise ConfigError("no config given. Fix: pass --config CONFIG.yaml (and see --help-config for the keys)")
    return config_cls.from_yaml(args.config, overrides)


def add_trainer_command(subparsers, name: str, help: str, config_cls, build: Callable[[Any], Any],
                        description: str | None = None):
    """Register ``name``: ``build(config)`` returns a trainer whose ``train(resume=...)`` returns a
    JSON-serialisable summary, printed once (by the main process)."""

    def run(args) -> int:
        if args.help_config:
            print(config_cls.help_text())
            return 0
        trainer = build(config_from_args(args, config_cls))
        result = trainer.train(resume=args.resume)
        if getattr(getattr(trainer, "accelerator", None), "is_main_process", True):
            print(json.dumps(result, indent=2, default=str))
        return 0

    parser = subparsers.add_parser(name, help=help, description=description or help)
    add_config_arguments(parser)
    parser.set_defaults(func=run)
    return parser
