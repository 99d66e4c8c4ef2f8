"""What the mini's vision tower knows about the defects (docs/mini-model.md, "What limits it"). Prints JSON.

    python bench/mini_vision_probe.py --train TRAIN --heldout HELDOUT [--model imagedoctor-mini]
        [--probe-train 6000] [--direct-minutes 12] [--threads 2]

1. Linear probe: the model's merged visual tokens, pooled (mean, max, std over the image), and a ridge
   regression fitted on ``--probe-train`` training images; held-out PLCC of the overall score and AUC
   of clean-vs-damaged. Run it on the trained mini and on its untrained start model to see what
   training added.
2. Direct supervision (``--direct-minutes`` > 0): the vision tower plus a linear head on its pooled
   tokens, trained for that long on the four scores (MSE) and clean-vs-damaged (BCE), batch 16,
   AdamW 5e-4; held-out PLCC per score and AUC every 200 steps. This is the most the tower could
   learn in that time if the language model read it perfectly (alignment needs the prompt, which
   the tower does not see).

TRAIN and HELDOUT are synthetic sets (``python -m imagedoctor synth``) of the recipe's seeds.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from imagedoctor.core.diagnosis import SCORE_NAMES
from mini_proofs import auc  # bench/ is on the path when this file runs as a script


def _auc(scores, positive) -> float:
    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    return auc(scores[positive], scores[~positive])


def _targets(samples) -> np.ndarray:
    """[N, 5]: the four scores and 1.0 for a defect-free image."""
    return np.array([[getattr(s.diagnosis.scores, n) for n in SCORE_NAMES] + [float(not s.diagnosis.defects)]
                     for s in samples], dtype=np.float32)


def _tower(dg):
    inner = getattr(dg.model, "model", dg.model)
    return getattr(inner, "visual", None) or dg.model.visual


def _tokens(dg, images):
    """Merged visual tokens per image: list of [T, D] tensors (the language model's visual input)."""
    px = dg.processor.image_processor(images=images, return_tensors="pt")
    out = _tower(dg)(px["pixel_values"], grid_thw=px["image_grid_thw"])
    emb = getattr(out, "pooler_output", out)
    merge = dg.processor.image_processor.merge_size ** 2
    return emb.split((px["image_grid_thw"].prod(-1) // merge).tolist())


def _images(samples, side: int):
    from PIL import Image

    return [s.load_image().convert("RGB").resize((side, side), Image.Resampling.BICUBIC) for s in samples]


def linear_probe(dg, train, held, side: int) -> dict:
    import torch
    from scipy.stats import pearsonr

    def features(samples):
        rows = []
        for i in range(0, len(samples), 32):
            with torch.no_grad():
                rows += [torch.cat([t.mean(0), t.amax(0), t.std(0)]).numpy()
                         for t in _tokens(dg, _images(samples[i:i + 32], side))]
        return np.stack(rows)

    xtr, xte = features(train), features(held)
    ytr, yte = _targets(train), _targets(held)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    out = {}
    for lam in (10.0, 100.0, 1000.0):
        a = xtr.T @ xtr + lam * np.eye(xtr.shape[1])
        w = np.linalg.solve(a, xtr.T @ (ytr - ytr.mean(0)))
        pred = xte @ w
        out[f"ridge_{lam:g}"] = {"overall_plcc": round(float(pearsonr(pred[:, 3], yte[:, 3])[0]), 3),
                                 "clean_auc": round(_auc(pred[:, 4], yte[:, 4] > 0.5), 3)}
    return out


def direct_supervision(dg, train, held, side: int, minutes: float, seed: int = 0) -> list[dict]:
    import torch
    from scipy.stats import pearsonr

    torch.manual_seed(seed)
    tower = _tower(dg)
    dim = _tokens(dg, _images(held[:1], side))[0].shape[-1]
    head = torch.nn.Sequential(torch.nn.LayerNorm(2 * dim), torch.nn.Linear(2 * dim, 5))
    opt = torch.optim.AdamW(list(tower.parameters()) + list(head.parameters()), lr=5e-4, weight_decay=0.01)
    held_images, yte = _images(held, side), _targets(held)

    def predict(images):
        return head(torch.stack([torch.cat([t.mean(0), t.amax(0)]) for t in _tokens(dg, images)]))

    def evaluate(step, elapsed):
        tower.eval()
        with torch.no_grad():
            p = torch.cat([predict(held_images[i:i + 50]) for i in range(0, len(held_images), 50)]).numpy()
        tower.train()
        row = {"step": step, "seconds": round(elapsed)}
        row.update({n: round(float(pearsonr(p[:, k], yte[:, k])[0]), 3) for k, n in enumerate(SCORE_NAMES)})
        row["clean_auc"] = round(_auc(p[:, 4], yte[:, 4] > 0.5), 3)
        print(json.dumps(row), flush=True)
        return row

    rng = np.random.default_rng(seed)
    curve, step, start = [evaluate(0, 0)], 0, time.perf_counter()
    while time.perf_counter() - start < minutes * 60:
        batch = [train[int(i)] for i in rng.choice(len(train), 16, replace=False)]
        y = torch.from_numpy(_targets(batch))
        p = predict(_images(batch, side))
        loss = 10 * torch.nn.functional.mse_loss(p[:, :4], y[:, :4]) + \
            torch.nn.functional.binary_cross_entropy_with_logits(p[:, 4], y[:, 4])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 200 == 0:
            curve.append(evaluate(step, time.perf_counter() - start))
    curve.append(evaluate(step, time.perf_counter() - start))
    return curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="imagedoctor-mini")
    p.add_argument("--train", required=True, help="synthetic training set (the recipe's: seed 0)")
    p.add_argument("--heldout", required=True, help="synthetic held-out set (the recipe's: seed 1000)")
    p.add_argument("--probe-train", type=int, default=6000, help="training images for the linear probe")
    p.add_argument("--direct-minutes", type=float, default=0.0, help="minutes of direct supervision (0: skip)")
    p.add_argument("--side", type=int, default=252, help="square image side fed to the tower (252 = 18 patches)")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    import torch

    from imagedoctor.core.data import load_project_dataset
    from imagedoctor.core.diagnoser import Diagnoser

    if a.threads:
        torch.set_num_threads(a.threads)
    dg = Diagnoser.from_pretrained(a.model, dtype="fp32", device="cpu")
    train = list(load_project_dataset(a.train, strict=False))
    held = list(load_project_dataset(a.heldout, strict=False))
    out = {"model": a.model, "probe_train": a.probe_train, "heldout": len(held)}
    start = time.perf_counter()
    out["linear_probe"] = linear_probe(dg, train[:a.probe_train], held, a.side)
    out["linear_probe"]["seconds"] = round(time.perf_counter() - start)
    if a.direct_minutes > 0:
        out["direct_supervision"] = direct_supervision(dg, train, held, a.side, a.direct_minutes)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
