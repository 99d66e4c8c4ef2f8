"""The config base of every trainer: dataclass fields with help text, YAML + ``--set`` loading,
did-you-mean for unknown keys, deprecated names, and checks before any model loads.

A trainer config is a dataclass deriving from `TrainerConfig`, decorated with `config_class`.
Every field carries ``metadata={"help": ...}`` (via `option`); ``--help-config`` and the docs
tables are generated from it. Values are type-checked against the annotations (``1e-5`` from a
YAML file becomes a float) and ``__post_init__`` of each class rejects bad values and impossible
combinations with the key and the fix::

    config key 'num_generations': 3 does not divide batch_size=8. Fix: ...

Renamed keys stay accepted: ``_renamed = {"old": "new"}`` on the class maps them, with a
`ConfigDeprecationWarning` naming the new key.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import tempfile
import types
import typing
import warnings
from pathlib import Path
from typing import Any, ClassVar, Mapping

__all__ = [
    "ConfigError", "ConfigDeprecationWarning", "TrainerConfig", "config_class", "option", "load_yaml",
    "parse_override", "load_config",
]


class ConfigError(ValueError):
    """A config value or combination is invalid; the message names the key and the fix."""


class ConfigDeprecationWarning(FutureWarning):
    """A config key was renamed; the old name still works for now (shown to users by default)."""


def option(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its help text (what ``--help-config`` and the docs print)."""
    if not help:
        raise ValueError("every config field needs help text")
    kw: dict[str, Any] = {"metadata": {"help": help}}
    if default_factory is not dataclasses.MISSING:
        kw["default_factory"] = default_factory
    else:
        kw["default"] = default
    return dataclasses.field(**kw)


# --------------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------------
def _yaml_loader():
    """PyYAML's SafeLoader that also reads ``1e-5`` as a float.

    YAML 1.1 (what PyYAML implements) only reads floats with a dot (``1.0e-5``); ``1e-5`` would
    be the *string* "1e-5". YAML 1.2 and every user reads it as a number, so we do too.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."),
    )
    return Loader


def _yaml_load(text: str, source: str) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        detail = f"{context}, {problem}" if context else problem
        raise ConfigError(f"{where}: YAML syntax error: {detail}. Fix: check the indentation, colons and quotes "
                          "on that line (a value containing ': ' or '#' needs quotes)") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A config file as a mapping; syntax errors name the file, line and column."""
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist. Fix: pass the path of a YAML file to --config")
    data = _yaml_load(path.read_text(encoding="utf-8"), str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values, got {type(data).__name__}. "
                          "Fix: write one 'key: value' per line")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` (value read as YAML, so ``1e-5``, ``[a, b]``, ``{x: 1}`` and ``null`` work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. --set learning_rate=1e-5)")
    key, value = text.split("=", 1)
    return key.strip(), _yaml_load(value, f"--set {key.strip()}")


# --------------------------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------------------------
_NUMBER_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
                 "list": "a list", "dict": "a mapping"}


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(tp) if a is not type(None)]
        base = " or ".join(_describe(a) for a in parts)
        return base + " or null" if len(parts) < len(typing.get_args(tp)) else base
    if origin is not None:
        tp = origin
    return _NUMBER_WORDS.get(getattr(tp, "__name__", str(tp)), getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (int -> float, "1e-5" -> float, tuple -> list), or raise TypeError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except TypeError:
                continue
        raise TypeError
    base = origin or tp
    if base is Any:
        return value
    if base is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise TypeError from None
        raise TypeError
    if base is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise TypeError
    if base is list:
        if isinstance(value, (list, tuple)):
            (item,) = typing.get_args(tp) or (Any,)
            return [_coerce(v, item) for v in value]
        raise TypeError
    if base is dict:
        if isinstance(value, Mapping):
            key_tp, val_tp = typing.get_args(tp) or (Any, Any)
            return {_coerce(k, key_tp): _coerce(v, val_tp) for k, v in value.items()}
        raise TypeError
    return value


# --------------------------------------------------------------------------------------------
# The base class
# --------------------------------------------------------------------------------------------
MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
REPORT_TO = ("tensorboard", "none")


def config_class(cls):
    """``@dataclass`` plus: renamed keys accepted (with a warning), unknown keys rejected with a
    did-you-mean, both as keyword arguments and from YAML."""
    cls = dataclasses.dataclass(cls)
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **type(self)._resolve_keys(kwargs))

    cls.__init__ = __init__
    return cls


@dataclasses.dataclass
class TrainerConfig:
    """Fields every trainer has (output, seed, optimiser, schedule, logging, checkpoints)."""

    #: Old key -> new key (still accepted, with a `ConfigDeprecationWarning`).
    _renamed: ClassVar[dict[str, str]] = {}
    #: Where the keys are documented (named in unknown-key errors).
    _docs: ClassVar[str] = "docs/training-*.md"

    model: str = option("", "Model to start from: a local folder (or a cached hub id).")
    output_dir: str = option("", "Where checkpoints, logs and the trained result go.")
    seed: int = option(0, "Seed of initialisation, data order and sampling (resume is exact).")
    learning_rate: float = option(1e-5, "Peak AdamW learning rate.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    adam_beta1: float = option(0.9, "AdamW beta1.")
    adam_beta2: float = option(0.999, "AdamW beta2.")
    adam_epsilon: float = option(1e-8, "AdamW epsilon.")
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0 = off).")
    lr_scheduler_type: str = option("constant_with_warmup", f"Learning-rate schedule: one of {list(LR_SCHEDULERS)}.")
    warmup_steps: int = option(0, "Linear warm-up optimiser steps.")
    mixed_precision: str = option("no", f"accelerate mixed precision (autocast): one of {list(MIXED_PRECISION)}.")
    gradient_checkpointing: bool = option(False, "Recompute activations in backward (saves memory, costs time).")
    logging_steps: int = option(10, "Log scalars every N steps (TensorBoard + metrics.jsonl).")
    save_steps: int = option(500, "Write a checkpoint every N steps (0 = only at the end).")
    save_total_limit: int = option(2, "Keep at most N checkpoints (oldest deleted).")
    report_to: str = option("tensorboard", f"Where scalars go besides metrics.jsonl: one of {list(REPORT_TO)}.")
    progress_bar: bool = option(True, "Show a tqdm progress bar on the main process.")

    def __post_init__(self) -> None:
        self._check_types()
        self._check_common()

    # -- keys ------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def renamed(cls) -> dict[str, str]:
        """All old -> new key names of this class and its bases."""
        out: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            out.update(vars(klass).get("_renamed", {}))
        return out

    @classmethod
    def _resolve_keys(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        names = cls.field_names()
        renamed = cls.renamed()
        out: dict[str, Any] = {}
        unknown = []
        for key, value in data.items():
            key = str(key)
            if key in renamed and key not in names:
                new = renamed[key]
                if new in data:
                    raise ConfigError(f"config keys '{key}' and '{new}' are the same setting ('{key}' is the old "
                                      f"name). Fix: keep only '{new}'")
                warnings.warn(f"config key '{key}' is deprecated; use '{new}' (same meaning)",
                              ConfigDeprecationWarning, stacklevel=3)
                key = new
            if key not in names:
                unknown.append(key)
                continue
            out[key] = value
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, names + list(renamed), n=1)
                hints.append(f"'{key}'" + (f" (did you mean '{renamed.get(close[0], close[0])}'?)" if close else ""))
            raise ConfigError(f"unknown config key(s) {', '.join(hints)} for {cls.__name__}. Fix: remove or correct "
                              f"them; `--help-config` lists every key ({cls._docs})")
        return out

    # -- checks ------------------------------------------------------------------------------
    def _fail(self, key: str, problem: str, fix: str) -> typing.NoReturn:
        raise ConfigError(f"config key '{key}': {problem}. Fix: {fix}")

    def _check_types(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                setattr(self, f.name, _coerce(value, hints[f.name]))
            except TypeError:
                self._fail(f.name, f"must be {_describe(hints[f.name])}, got {value!r} ({type(value).__name__})",
                           f"set {f.name} to {_describe(hints[f.name])} (see --help-config)")

    def _choice(self, key: str, choices) -> None:
        value = getattr(self, key)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self._fail(key, f"{value!r} is not allowed{hint}", f"use one of {list(choices)}")

    def _positive(self, key: str, allow_zero: bool = False) -> None:
        value = getattr(self, key)
        if value < 0 or (value == 0 and not allow_zero):
            self._fail(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}",
                       f"set {key} to a value {'>= 0' if allow_zero else '> 0'}")

    def _check_common(self) -> None:
        """Checks of the fields every trainer config has (subclasses add their own)."""
        if not self.model:
            self._fail("model", "is empty", "set it to the model folder to start from")
        if not self.output_dir:
            self._fail("output_dir", "is empty", "set it to the folder the run writes to")
        self._choice("mixed_precision", MIXED_PRECISION)
        self._choice("lr_scheduler_type", LR_SCHEDULERS)
        self._choice("report_to", REPORT_TO)
        if self.report_to == "tensorboard":
            import importlib.util

            if importlib.util.find_spec("tensorboard") is None:
                self._fail("report_to", "'tensorboard' needs the tensorboard package, which is not installed",
                           "pip install tensorboard (or imagedoctor[train]), or set report_to: none")
        self._positive("learning_rate")
        for key in ("weight_decay", "max_grad_norm", "warmup_steps", "save_steps", "adam_epsilon"):
            self._positive(key, allow_zero=True)
        for key in ("logging_steps", "save_total_limit"):
            self._positive(key)
        for key in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, key) < 1:
                self._fail(key, f"{getattr(self, key)} is outside [0, 1)", "use e.g. 0.9 (beta1) or 0.999 (beta2)")

    # -- loading and saving -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        if not isinstance(data, Mapping):
            raise ConfigError(f"a config must be a mapping of keys to values, got {type(data).__name__}")
        return cls(**dict(data))

    @classmethod
    def from_yaml(cls, path: str | Path | None, overrides: Mapping[str, Any] | None = None):
        """Read ``path`` (YAML), apply ``overrides`` (``--set``), validate."""
        data = load_yaml(path) if path is not None else {}
        data.update(overrides or {})
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the config as YAML (atomic: a temp file, then a rename)."""
        import yaml

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                yaml.safe_dump(self.to_dict(), fh, sort_keys=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    # -- documentation ------------------------------------------------------------------------
    @classmethod
    def help_rows(cls) -> list[tuple[str, Any, str]]:
        """(key, default, help) per field, in declaration order."""
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            rows.append((f.name, default, f.metadata.get("help", "")))
        return rows

    @classmethod
    def help_text(cls) -> str:
        """What ``--help-config`` prints: one ``key (default): help`` line per field, then renames."""
        lines = [f"{cls.__name__}: {(cls.__doc__ or '').strip().splitlines()[0]}", ""]
        lines += [f"{name} ({format_default(default)}): {text}" for name, default, text in cls.help_rows()]
        renamed = cls.renamed()
        if renamed:
            lines += ["", "Renamed keys (old names still work, with a warning):"]
            lines += [f"  {old} -> {new}" for old, new in sorted(renamed.items())]
        return "\n".join(lines)


def format_default(value: Any) -> str:
    """A default as YAML would spell it (``null``, ``true``, ``1.0e-05``, ``[a, b]``)."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip() or "''"


def load_config(path: str | Path | None, cls: type, overrides: Mapping[str, Any] | None = None):
    """``cls.from_yaml(path, overrides)`` (kept as a function for scripts)."""
    return cls.from_yaml(path, overrides)
