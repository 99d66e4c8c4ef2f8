"""Config reference tables of the docs, generated from the config dataclasses.

A Markdown file marks each generated block::

    <!-- config-table: SFTConfig - DiagnoserTrainConfig -->
    | key | default | meaning |
    ...
    <!-- end config-table -->

``CLASS`` alone lists every field of that config; ``CLASS - BASE`` only the fields that
``CLASS`` adds or whose default or help differs from ``BASE``. ``<!-- renamed-keys: CLASS -->``
lists the old key names still accepted. Regenerate after changing a config::

    python -m imagedoctor.trainer.common.docs docs/training-diagnoser.md docs/training-generator.md
    python -m imagedoctor.trainer.common.docs --check docs/training-*.md    # exit 1 when stale
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .config import format_default

BLOCK_RE = re.compile(r"(<!-- (config-table|renamed-keys): ([A-Za-z_ -]+?) -->\n)(.*?)(<!-- end \2 -->)", re.S)


def config_classes() -> dict:
    from ..diagnoser.config import DiagnoserTrainConfig, GRPOConfig, SFTConfig
    from ..generator.config import FlowGRPOConfig, GeneratorConfig, SFTGeneratorConfig

    return {c.__name__: c for c in (DiagnoserTrainConfig, SFTConfig, GRPOConfig, GeneratorConfig, FlowGRPOConfig,
                                    SFTGeneratorConfig)}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def config_table(cls, base=None) -> str:
    """A Markdown table of ``cls``'s fields (minus those identical in ``base``)."""
    inherited = {name: (default, text) for name, default, text in base.help_rows()} if base else {}
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for name, default, text in cls.help_rows():
        if name in inherited and inherited[name] == (default, text):
            continue
        lines.append(f"| `{name}` | `{_cell(format_default(default))}` | {_cell(text)} |")
    return "\n".join(lines) + "\n"


def renamed_table(cls) -> str:
    lines = ["| old key | new key |", "|---|---|"]
    lines += [f"| `{old}` | `{new}` |" for old, new in sorted(cls.renamed().items())]
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    """``text`` with every generated block brought up to date."""
    classes = config_classes()

    def block(m: re.Match) -> str:
        kind, spec = m.group(2), m.group(3).strip()
        names = [n.strip() for n in spec.split(" - ")]
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise ValueError(f"unknown config class {unknown} in <!-- {kind}: {spec} -->; known: {sorted(classes)}")
        if kind == "renamed-keys":
            body = renamed_table(classes[names[0]])
        else:
            body = config_table(classes[names[0]], classes[names[1]] if len(names) > 1 else None)
        return m.group(1) + body + m.group(5)

    return BLOCK_RE.sub(block, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imagedoctor.trainer.common.docs", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path in args.files:
        text = path.read_text(encoding="utf-8")
        new = render(text)
        if new != text:
            stale.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    for path in stale:
        print(f"{path}: {'out of date' if args.check else 'updated'}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
