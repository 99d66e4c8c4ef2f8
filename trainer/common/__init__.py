"""What every trainer shares: config base, checkpoints, metrics logger, CLI builder, run plumbing."""

from .config import ConfigDeprecationWarning, ConfigError, TrainerConfig, config_class, load_yaml, option, parse_override
from .runtime import build_optimizer, make_accelerator, seed_everything

__all__ = ["ConfigDeprecationWarning", "ConfigError", "TrainerConfig", "build_optimizer", "config_class", "load_yaml",
           "make_accelerator", "option", "parse_override", "seed_everything"]
