"""End-to-end proofs with the shipped mini diagnoser (trained on synthetic shapes only).

Images come from the synthetic benchmark with seed 3000: never used in training (seed 0), in the
validation set (2000) or in the held-out table (1000). Everything runs on CPU with the weights
that ship in ``core/weights/imagedoctor-mini``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from imagedoctor.core.diagnosis import Defect, Diagnosis
from imagedoctor.core.synth import render_sample

SEED = 3000
POOLS, POOL_SIZE, CLEAN_PER_POOL = 12, 16, 4


@pytest.fixture(scope="module")
def mini():
    from imagedoctor.core.diagnoser import Diagnoser

    return Diagnoser.from_pretrained("imagedoctor-mini", dtype="fp32", device="cpu")


def diagnose(mini, images, prompts):
    # image_area="auto": the mini's own config.json (imagedoctor_image_area) sets the resize
    return mini.diagnose(images, prompts, max_new_tokens=320, batch_size=16)


def test_shipped_mini_is_small_says_what_it_is_and_ships(mini):
    """≤ 30 MB of safetensors, a card that says what it is, every file in the package data, and
    config files that transformers 4.57 reads too (CI's second leg; `core.mini.make_portable`)."""
    import fnmatch
    import json
    import tomllib
    from pathlib import Path

    from imagedoctor.core.diagnoser import BUILTIN_MODELS

    folder = BUILTIN_MODELS["imagedoctor-mini"]
    assert sum(f.stat().st_size for f in folder.glob("*.safetensors")) <= 30 * 2**20
    card = (folder / "README.md").read_text()
    assert "synthetic shapes only" in card and "published checkpoints" in card
    assert "GYX97/ImageDoctor" in card and "sdg-detector" in card
    assert mini.head is not None and mini.family == "qwen2_5_vl"
    assert mini.image_area == mini.model.config.imagedoctor_image_area  # diagnose(image_area="auto") uses it

    names = {f.name for f in folder.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "README.md", "model.safetensors",
            "model-heatmap-head.safetensors"} <= names
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["imagedoctor.core"]
    unpackaged = [n for n in names if not any(fnmatch.fnmatch(f"weights/{folder.name}/{n}", p) for p in patterns)]
    assert not unpackaged, f"not in pyproject's package-data: {unpackaged}"

    text = json.loads((folder / "config.json").read_text())["text_config"]
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    assert "rope_scaling" in text and "rope_theta" in text and "extra_special_tokens" not in tok, (
        "run core.mini.make_portable on the folder (bench/mini_model.py --export does)")


def _pools():
    """POOLS pools of POOL_SIZE synthetic images, CLEAN_PER_POOL without defects, the rest with 1-3."""
    clean, damaged, i = [], [], 0
    while len(clean) < POOLS * CLEAN_PER_POOL or len(damaged) < POOLS * (POOL_SIZE - CLEAN_PER_POOL):
        s = render_sample(SEED, i)
        n = len(s.diagnosis.defects)
        if n == 0 and len(clean) < POOLS * CLEAN_PER_POOL:
            clean.append(s)
        elif 1 <= n <= 3 and len(damaged) < POOLS * (POOL_SIZE - CLEAN_PER_POOL):
            damaged.append(s)
        i += 1
    rng = np.random.default_rng(SEED)
    pools = []
    for p in range(POOLS):
        members = clean[p * CLEAN_PER_POOL:(p + 1) * CLEAN_PER_POOL]
        members += damaged[p * (POOL_SIZE - CLEAN_PER_POOL):(p + 1) * (POOL_SIZE - CLEAN_PER_POOL)]
        pools.append([members[k] for k in rng.permutation(POOL_SIZE)])
    return pools


def test_best_of_16_picks_a_defect_free_image_far_more_often_than_chance(mini):
    """Chance of a clean pick is 4/16 = 25 %; measured with the shipped weights: see docs/mini-model.md.

    12 disjoint pools, so under random picking the clean picks are Binomial(12, 0.25): passing needs
    at least 9 of 12 (P = 3.9e-4). About 35 s of one CPU core (192 images, batches of 16)."""
    from scipy.stats import binom

    from imagedoctor.core.select import best_of_n

    hits = 0
    for pool in _pools():
        diags = diagnose(mini, [s.load_image() for s in pool], [s.prompt for s in pool])
        best = best_of_n(diags, "overall").best
        hits += int(not pool[best].diagnosis.defects)
    chance = CLEAN_PER_POOL / POOL_SIZE
    p_value = binom.sf(hits - 1, POOLS, chance)  # P(>= hits clean picks | picking at random)
    assert hits / POOLS >= 2 * chance and p_value < 1e-3, (hits, POOLS, p_value)


def _one_artifact_samples(k):
    out, i = [], 0
    while len(out) < k:
        s = render_sample(SEED, 10_000 + i)
        labels = [d.label for d in s.diagnosis.defects]
        if labels == ["artifact"]:
            out.append(s)
        i += 1
    return out


def _float(img):
    return np.asarray(img, dtype=np.float32) / 255.0


def test_refinement_accepts_restoring_the_clean_pixels_and_rejects_damage(mini):
    """Restoring a real artifact's clean source pixels under the mask is accepted; painting noise into a
    clean image is rejected. The verdicts are the mini's own re-diagnoses."""
    from imagedoctor.core.refine import context_box, refine_defects

    def run(image, diagnosis, inpaint):
        return refine_defects(image, diagnosis, inpaint, lambda arr: diagnose(mini, [arr], [diagnosis.prompt])[0],
                              score="overall", rounds=1)

    samples = _one_artifact_samples(3)
    accepted, removed = 0, 0
    for s in samples:
        image, clean = _float(s.load_image()), _float(render_sample(SEED, int(s.meta["index"]), artifacts=False).load_image())
        [d0] = diagnose(mini, [image], [s.prompt])
        h, w = image.shape[:2]
        crops = [context_box(d.box, w, h) for d in d0.defects]

        def restore(crop, mask, image=image, clean=clean, crops=crops):
            # which region is this? the context box whose pixels match the crop
            crop = _float(crop)
            err = [np.abs(_resize(image[y0:y1, x0:x1], crop.shape[1], crop.shape[0]) - crop).mean()
                   for x0, y0, x1, y1 in crops]
            x0, y0, x1, y1 = crops[int(np.argmin(err))]
            return _resize(clean[y0:y1, x0:x1], crop.shape[1], crop.shape[0])

        result = run(image, d0, restore)
        accepted += result.accepted
        gt = s.diagnosis.defects[0].box
        x0, y0, x1, y1 = (int(round(v)) for v in gt)
        before = np.abs(image[y0:y1, x0:x1] - clean[y0:y1, x0:x1]).mean()
        after = np.abs(result.image[y0:y1, x0:x1] - clean[y0:y1, x0:x1]).mean()
        removed += int(result.accepted > 0 and after < 0.5 * before)
    assert removed >= 2, f"{removed} of {len(samples)} artifacts removed and accepted ({accepted} acceptances)"

    rejected = 0
    rng = np.random.default_rng(0)
    for s in _one_artifact_samples(6)[3:]:
        clean = _float(render_sample(SEED, int(s.meta["index"]), artifacts=False).load_image())
        [d0] = diagnose(mini, [clean], [s.prompt])
        obj = s.meta["objects"][0]["box"]
        region = Diagnosis(width=d0.width, height=d0.height, scores=d0.scores, prompt=s.prompt,
                           defects=[Defect(box=tuple(obj), label="artifact", reason="test region", importance=50)])

        def damage(crop, mask):
            arr = _float(crop)
            noise = rng.normal(0, 0.35, arr.shape).astype(np.float32)
            return np.clip(arr + noise * mask[..., None], 0, 1)

        result = run(clean, region, damage)
        rejected += int(result.accepted == 0)
    assert rejected == 3


def _resize(arr, width, height):
    from PIL import Image

    img = Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8))
    return np.asarray(img.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
