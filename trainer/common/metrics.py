"""One metrics logger for every trainer: ``OUTPUT/metrics.jsonl`` plus TensorBoard (``OUTPUT/logs``).

Only the main process writes; every other process gets a logger that does nothing, so trainers
call it unconditionally.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping


class MetricsLogger:
    """``log(step, {name: value})`` appends one JSON line and (``report_to: tensorboard``) the scalars."""

    def __init__(self, out_dir: str | Path, enabled: bool = True, report_to: str = "tensorboard"):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if report_to == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(out_dir) / "logs"))

    def log(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled or not values:
            return
        row = {"step": int(step), **{k: float(v) for k, v in values.items() if v is not None}}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)

    def log_images(self, step: int, tag: str, images) -> None:
        """``images`` [N, 3, H, W] float in [0, 1] (TensorBoard only; never stops training)."""
        if self.tb is not None:
            try:
                self.tb.add_images(tag, images.float().cpu(), step, dataformats="NCHW")
            except Exception:  # noqa: BLE001 - image logging is best effort
                pass

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
