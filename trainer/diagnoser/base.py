"""What the diagnoser's SFT and GRPO trainers share: data check before any model loads, the
accelerator, optimiser, checkpoints, resume, metrics and the end of a run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..common import checkpoint as ckpt
from ..common.metrics import MetricsLogger
from ..common.runtime import build_optimizer, make_accelerator, seed_everything
from .config import DiagnoserTrainConfig
from .data import load_samples
from .modeling import save_final

logger = logging.getLogger("imagedoctor.trainer")


class DiagnoserTrainer:
    """Base of `SFTTrainer` and `GRPOTrainer`; subclasses implement ``_build`` and ``train``."""

    config_class: type = DiagnoserTrainConfig

    def __init__(self, config: DiagnoserTrainConfig):
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.cfg = config
        self.out = Path(config.output_dir)
        # data are checked before any model loads
        self.train_samples = load_samples(config.data, "data")
        self.eval_samples = (load_samples(config.eval_data, "eval_data")[: config.eval_samples]
                             if config.eval_data else [])
        self.accelerator = None

    # -- setup ---------------------------------------------------------------------------
    def _setup(self) -> None:
        """Accelerator, seed, model (``_build`` returns the module to train), optimiser, DDP wrap."""
        if self.accelerator is not None:
            return
        self.accelerator = make_accelerator(self.cfg, self._find_unused_parameters())
        seed_everything(self.cfg.seed)
        module, groups = self._build()
        module.train()
        optimizer, scheduler = build_optimizer(groups, self.cfg, self.cfg.lr_schedule_steps or self.cfg.max_steps)
        self.module, self.optimizer, self.scheduler = self.accelerator.prepare(module, optimizer, scheduler)
        self.raw_module = module

    def _find_unused_parameters(self) -> bool:
        return False

    def _build(self):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- checkpoints -------------------------------------------------------------------------
    def _checkpoint(self, step: int) -> None:
        ckpt.save_checkpoint(self.out / ckpt.CHECKPOINT_DIR, step, self.raw_module, self.optimizer, self.scheduler,
                             self.cfg.to_dict(), keep=self.cfg.save_total_limit, accelerator=self.accelerator)

    def _resume(self, resume: str | None) -> int:
        path = ckpt.resolve_resume(resume, self.out / ckpt.CHECKPOINT_DIR)
        if path is None:
            return 0
        step = ckpt.load_checkpoint(path, self.raw_module, self.optimizer, self.scheduler, self.accelerator)["step"]
        logger.info("resumed from %s at step %d", path, step)
        return step

    def _logger(self) -> MetricsLogger:
        return MetricsLogger(self.out, self.accelerator.is_main_process, self.cfg.report_to)

    def _progress(self, step: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=self.cfg.max_steps, initial=step, desc=desc,
                    disable=not (self.cfg.progress_bar and self.accelerator.is_main_process))

    def _finish(self, step: int, last: dict[str, float], log: MetricsLogger) -> dict[str, Any]:
        """Final checkpoint, the merged model folder and held-out metrics; returns the run's summary."""
        acc = self.accelerator
        self._checkpoint(step)
        result: dict[str, Any] = {"step": step, **last}
        if acc.is_main_process:
            self.cfg.save(self.out / "config.yaml")
            result["model_dir"] = str(save_final(self.dg, self.peft_model, self.out, self.cfg.save_adapter))
            result["eval"] = self.evaluate()
            log.log(step, result["eval"])
        log.close()
        acc.wait_for_everyone()
        return result

    def evaluate(self) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError
