"""The mini diagnoser's targets on a held-out synthetic set (issue 11). Prints JSON.

    python bench/mini_model.py --model imagedoctor-mini --data HELDOUT        # the shipped weights
    python bench/mini_model.py --model BASE --checkpoint RUN/checkpoints/checkpoint-N --data VAL  # a curve point

HELDOUT is ``python -m imagedoctor synth --n 200 --seed 1000 --out HELDOUT`` (seed 1000 is never used
in training). Metrics: `imagedoctor.core.mini.mini_targets` (the ``eval`` command's code; definitions there).
Targets: overall PLCC >= 0.6, heatmap CC >= 0.4, BoxF1@0.1 >= 0.4, scores parsed >= 0.98.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def load_checkpoint_weights(dg, checkpoint: str | Path) -> None:
    """Copy a trainer checkpoint's weights (``model.*`` / ``head.*`` of the SFT module) into ``dg``."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(Path(checkpoint) / "trainable.safetensors"))
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    head_sd = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    with torch.no_grad():
        for module, sd in ((dg.model, model_sd), (dg.head, head_sd)):
            if not sd:
                continue
            missing, unexpected = module.load_state_dict(sd, strict=False)
            params = {n for n, _ in module.named_parameters()}
            if unexpected or (set(missing) & params and module is dg.head):
                raise ValueError(f"{checkpoint}: tensors do not fit the model (unexpected {unexpected[:3]}, "
                                 f"missing {sorted(set(missing) & params)[:3]})")


def export(model: str, checkpoint: str, out: str) -> None:
    """Write a model folder: ``model`` with the weights of the trainer ``checkpoint``, readable by
    transformers 4.57 and 5.x (`make_portable`)."""
    from imagedoctor.core.diagnoser import Diagnoser

    from imagedoctor.core.mini import make_portable

    dg = Diagnoser.from_pretrained(model, dtype="fp32", device="cpu")
    load_checkpoint_weights(dg, checkpoint)
    dg.save_pretrained(out)
    make_portable(out)  # loads on transformers 4.57 too (CI's second leg, many ComfyUI installs)


def run(model: str, data: str, checkpoint: str | None = None, image_area: int | None = None, limit: int | None = None,
        batch_size: int = 8, max_new_tokens: int = 400, dtype: str = "fp32", save_pred: str | None = None) -> dict:
    from imagedoctor.core.data import load_project_dataset
    from imagedoctor.core.diagnoser import Diagnoser
    from imagedoctor.core.evaluate import save_predictions
    from imagedoctor.core.mini import mini_targets

    dg = Diagnoser.from_pretrained(model, dtype=dtype, device="cpu")
    if checkpoint:
        load_checkpoint_weights(dg, checkpoint)
    if image_area is None:
        image_area = getattr(dg.model.config, "imagedoctor_image_area", None) or "auto"
    samples = list(load_project_dataset(data))[:limit]
    start = time.perf_counter()
    preds = dg.diagnose([s.load_image() for s in samples], [s.prompt for s in samples], max_new_tokens=max_new_tokens,
                        batch_size=batch_size, image_area=image_area)
    seconds = time.perf_counter() - start
    if save_pred:
        save_predictions(save_pred, [s.id for s in samples], preds)
    out = mini_targets(preds, [s.diagnosis for s in samples])
    out.update(model=str(model), checkpoint=checkpoint, data=str(data), image_area=image_area,
               seconds=round(seconds, 1), seconds_per_image=round(seconds / max(1, len(samples)), 3))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model folder or 'imagedoctor-mini'")
    p.add_argument("--data", required=True, help="held-out project data set (synth)")
    p.add_argument("--checkpoint", help="trainer checkpoint folder whose weights replace the model's")
    p.add_argument("--image-area", type=int, default=None, help="default: the config's imagedoctor_image_area")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=400)
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--save-pred", help="write the predictions as JSONL")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--export", help="with --checkpoint: write the model folder here instead of evaluating")
    a = p.parse_args()
    if a.export:
        export(a.model, a.checkpoint, a.export)
        return
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    from imagedoctor.core.metrics import to_jsonable

    print(json.dumps(to_jsonable(run(a.model, a.data, a.checkpoint, a.image_area, a.limit, a.batch_size, a.max_new_tokens, a.dtype,
                         a.save_pred)), indent=2))


if __name__ == "__main__":
    main()
