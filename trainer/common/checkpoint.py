"""One checkpoint format for every trainer: atomic, with optimizer, scheduler, RNG and step.

Layout of ``OUTPUT/checkpoints/checkpoint-<step>/``::

    trainable.safetensors   every trainable parameter, by name in the trained module
    extra.safetensors       trainer tensors beside the weights (e.g. the EMA of the LoRA), optional
    optimizer.pt            optimizer state_dict   (tensors and numbers only: loaded weights_only)
    scheduler.pt            LR scheduler state_dict
    rng-<rank>.pt           python / numpy / torch (+ cuda) RNG state of each process
    state.json              {"step": N, "world_size": W, "config": {...}, "extra": {...}}

A checkpoint is written into ``.tmp-checkpoint-<step>`` beside its final place and renamed in
one ``os.replace``: a crash leaves the old set of checkpoints or the new one, never half of one.
In a multi-process run every process writes its own RNG file into the temporary folder and
the main process writes the rest and renames it.

    --resume latest                 the newest complete checkpoint under OUTPUT/checkpoints
    --resume OUTPUT/checkpoints/checkpoint-500
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

logger = logging.getLogger("imagedoctor.trainer")

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "state.json"


# --- RNG -------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """RNG states as tensors and numbers (so they load with ``weights_only=True``)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- weights ---------------------------------------------------------------------------------
def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{name: tensor} of the parameters that require grad (detached, contiguous CPU copies)."""
    return {n: p.detach().cpu().clone().contiguous() for n, p in module.named_parameters() if p.requires_grad}


def load_trainable_state(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], where: str) -> None:
    params = dict(module.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    unknown = [n for n in tensors if n not in params]
    if missing or unknown:
        raise ValueError(f"{where}: checkpoint does not match the model being trained ({len(missing)} trainable "
                         f"parameters missing, e.g. {missing[:2]}; {len(unknown)} unknown, e.g. {unknown[:2]}). "
                         "Fix: resume with the config the checkpoint was written with (model, finetuning, lora_*)")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


# --- folders ---------------------------------------------------------------------------------
def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under ``root`` sorted by step (oldest first)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := CHECKPOINT_RE.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, root: str | Path) -> Path | None:
    """``None`` -> no resume; ``"latest"`` -> newest checkpoint under ``root``; else that folder."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(root)
        if not found:
            raise FileNotFoundError(f"--resume latest: no checkpoint-N folder in {root}. Fix: start without "
                                    "--resume, or pass a checkpoint folder")
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {resume}: not a checkpoint folder (no {STATE_FILE}). Fix: pass "
                                "'latest' or an OUTPUT/checkpoints/checkpoint-N folder")
    return path


class _Single:
    """Stand-in for an accelerator in single-process use (tests, scripts)."""

    is_main_process = True
    process_index = 0
    num_processes = 1

    def wait_for_everyone(self) -> None:
        pass


def save_checkpoint(root: str | Path, step: int, module: torch.nn.Module, optimizer, scheduler,
                    config: Mapping[str, Any] | None = None, keep: int = 0, accelerator=None,
                    extra_tensors: Mapping[str, torch.Tensor] | None = None,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``root/checkpoint-<step>`` atomically (all processes call this); keep the newest
    ``keep`` (0 = all). ``extra`` must be JSON-serialisable (e.g. the metric history)."""
    from safetensors.torch import save_file

    acc = accelerator or _Single()
    root = Path(root)
    final = root / f"checkpoint-{step}"
    tmp = root / f".tmp-checkpoint-{step}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    try:
        torch.save(rng_state(), tmp / f"rng-{acc.process_index}.pt")
        if acc.is_main_process:
            save_file(trainable_state(module), str(tmp / "trainable.safetensors"))
            if extra_tensors:
                save_file({k: v.detach().cpu().contiguous() for k, v in extra_tensors.items()},
                          str(tmp / "extra.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            state = {"step": int(step), "world_size": acc.num_processes, "config": dict(config or {}),
                     "extra": dict(extra or {})}
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, default=str))
        acc.wait_for_everyone()
        if acc.is_main_process:
            if final.exists():
                old = root / f".old-checkpoint-{step}"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            if keep > 0:
                for old in list_checkpoints(root)[:-keep]:
                    shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    acc.wait_for_everyone()
    return final


def load_checkpoint(path: str | Path, module: torch.nn.Module, optimizer, scheduler,
                    accelerator=None) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this process's RNG from ``path``.

    Returns ``{"step", "extra", "extra_tensors"}``.
    """
    from safetensors.torch import load_file

    acc = accelerator or _Single()
    path = Path(path)
    state = json.loads((path / STATE_FILE).read_text())
    load_trainable_state(module, load_file(str(path / "trainable.safetensors")), str(path))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
    rng_file = path / f"rng-{acc.process_index}.pt"
    if not rng_file.is_file():
        logger.warning("%s has no RNG state for process %d (written by %s processes); using process 0's",
                       path, acc.process_index, state.get("world_size"))
        rng_file = path / "rng-0.pt"
    set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))
    extra_file = path / "extra.safetensors"
    return {"step": int(state["step"]), "extra": state.get("extra", {}),
            "extra_tensors": load_file(str(extra_file)) if extra_file.is_file() else {}}
