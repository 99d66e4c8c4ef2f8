"""Atomic training checkpoints: trainable weights, optimizer, scheduler, RNG states and step.

Layout of ``OUTPUT/checkpoints/checkpoint-<step>/``::

    trainable.safetensors   every parameter with requires_grad (names of the training module)
    optimizer.pt            optimizer state_dict
    scheduler.pt            scheduler state_dict
    rng.pt                  python / numpy / torch (+ cuda) RNG states
    state.json              {"step": N, "config": {...}}

A checkpoint is written into a temporary folder beside its final place and renamed in one
``os.replace``: a crash leaves either the old set of checkpoints or the new one, never half.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{name: tensor} of the parameters that require grad (detached CPU copies)."""
    return {n: p.detach().cpu().clone().contiguous() for n, p in module.named_parameters() if p.requires_grad}


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint folders under ``root`` sorted by step (oldest first)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(root: str | Path, step: int, module: torch.nn.Module, optimizer, scheduler,
                    config: dict[str, Any] | None = None, keep: int = 0) -> Path:
    """Write ``root/checkpoint-<step>`` atomically; keep the newest ``keep`` (0 = all)."""
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"checkpoint-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".checkpoint-{step}.", dir=root))
    try:
        save_file(trainable_state(module), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "config": config or {}}, indent=2, default=str))
        if final.exists():
            old = root / f".old-checkpoint-{step}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep > 0:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_resume(resume: str | None, root: str | Path) -> Path | None:
    """``None`` -> no resume; ``"latest"`` -> newest checkpoint under ``root`` (error if none); else a path."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(root)
        if not found:
            raise FileNotFoundError(f"--resume latest: no checkpoint-N folder in {root}")
        return found[-1]
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"--resume {resume}: not a checkpoint folder (no state.json)")
    return path


def load_checkpoint(path: str | Path, module: torch.nn.Module, optimizer, scheduler) -> int:
    """Restore weights, optimizer, scheduler and RNG from ``path``; returns the step it was saved at."""
    from safetensors.torch import load_file

    path = Path(path)
    tensors = load_file(str(path / "trainable.safetensors"))
    params = dict(module.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    unknown = [n for n in tensors if n not in params]
    if missing or unknown:
        raise ValueError(f"{path}: checkpoint does not match the model being trained ({len(missing)} trainable "
                         f"parameters missing, e.g. {missing[:2]}; {len(unknown)} unknown, e.g. {unknown[:2]}). "
                         "Resume with the same config (finetuning, lora_*, train_vision) it was written with.")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=False))
    set_rng_state(torch.load(path / "rng.pt", map_location="cpu", weights_only=False))
    return int(json.loads((path / "state.json").read_text())["step"])
