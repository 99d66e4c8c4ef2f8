"""Fixtures of the diagnoser-trainer tests: a small synthetic defect data set in the project format.

Each image is a grey canvas with one coloured square (the "artifact") and sometimes a second,
hollow square (the "misalignment"). Scores are functions of what is visible (square colour,
size, presence of the hollow square), so a model that looks at the image can predict them;
heatmaps are 1 inside the squares. Images have three different sizes to exercise padding.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

SIZES = ((112, 112), (112, 84), (84, 112))
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def make_sample(i: int, rng: np.random.RandomState):
    from PIL import Image, ImageDraw

    from imagedoctor.core.data import Sample
    from imagedoctor.core.diagnosis import Defect, Diagnosis

    w, h = SIZES[i % len(SIZES)]
    name = list(COLOURS)[rng.randint(len(COLOURS))]
    side = int(rng.randint(20, 44))
    x0, y0 = int(rng.randint(0, w - side)), int(rng.randint(0, h - side))
    img = Image.new("RGB", (w, h), (128, 128, 128))
    draw = ImageDraw.Draw(img)
    draw.rectangle([x0, y0, x0 + side - 1, y0 + side - 1], fill=COLOURS[name])
    art = np.zeros((h, w), np.float32)
    art[y0 : y0 + side, x0 : x0 + side] = 1.0
    mis = np.zeros((h, w), np.float32)
    defects = [Defect((x0, y0, x0 + side, y0 + side), "artifact", "warped square", 60)]
    hollow = bool(rng.rand() < 0.5)
    if hollow:
        s2 = 16
        mx, my = (w - s2 - 2, 2) if x0 < w / 2 else (2, h - s2 - 2)
        draw.rectangle([mx, my, mx + s2 - 1, my + s2 - 1], outline=(255, 255, 255), width=3)
        mis[my : my + s2, mx : mx + s2] = 1.0
        defects.append(Defect((mx, my, mx + s2, my + s2), "misalignment", "extra box", 40))
    scores = {
        "alignment": 0.3 if hollow else 0.8,
        "aesthetics": {"red": 0.2, "green": 0.5, "blue": 0.8}[name],
        "plausibility": round(0.9 - (side - 20) / 24 * 0.6, 1),
        "overall": {"red": 0.3, "green": 0.5, "blue": 0.7}[name] - (0.1 if hollow else 0.0),
    }
    scores = {k: round(float(v), 1) for k, v in scores.items()}
    prompt = f"a {name} square"
    gt = Diagnosis(width=w, height=h, scores=scores, defects=defects, prompt=prompt,
                   heatmaps={"misalignment": mis, "artifact": art}, format="ground_truth")
    return Sample(f"s{i:04d}", None, prompt, gt, image=img)


def write_synthetic(root, n: int, seed: int, shuffle: str | None = None):
    """The synthetic set; ``shuffle="scores"`` or ``"heatmaps"`` gives each image the scores (or the
    maps) of another image: the labels of a negative control, which no model can learn from the pixels."""
    import dataclasses

    from imagedoctor.core.data import write_project_dataset

    rng = np.random.RandomState(seed)
    samples = [make_sample(i, rng) for i in range(n)]
    if shuffle is not None:
        perm = np.random.RandomState(seed + 1000).permutation(n)
        shuffled = []
        for i, sample in enumerate(samples):
            donor = samples[int(perm[i])].diagnosis
            if shuffle == "scores":
                gt = dataclasses.replace(sample.diagnosis, scores=donor.scores)
            else:
                maps = {}
                for name, m in donor.heatmaps.items():  # the donor's map, resized to this image
                    from PIL import Image

                    maps[name] = np.asarray(Image.fromarray(m).resize(sample.diagnosis.size), dtype=np.float32)
                gt = dataclasses.replace(sample.diagnosis, heatmaps=maps)
            shuffled.append(type(sample)(sample.id, None, sample.prompt, gt, image=sample.image))
        samples = shuffled
    write_project_dataset(root, samples, overwrite=True)
    return root


@pytest.fixture(scope="session")
def synth_train(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data") / "train", 48, seed=1)


@pytest.fixture(scope="session")
def synth_eval(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data") / "eval", 12, seed=2)


def sft_config(model, train, eval_dir, out, **overrides):
    """A CPU-sized SFT config for the tiny model and the synthetic set."""
    from imagedoctor.trainer.diagnoser.config import SFTConfig

    kwargs = dict(model=str(model), data=str(train), eval_data=str(eval_dir), output_dir=str(out), stage="scores",
                  heatmap_weight=0.0, image_area=112 * 112, finetuning="full", learning_rate=2e-3,
                  head_learning_rate=3e-3, max_steps=120, batch_size=4, heatmap_size=64, save_steps=0,
                  report_to="none", progress_bar=False, eval_max_new_tokens=64, logging_steps=10, seed=0)
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


#: Training seeds of the learning tests (see tests/trainer_generator/test_learning.py): the default
#: run uses one, IMAGEDOCTOR_LEARNING_SEEDS=0,1,2 measures the seed-to-seed spread.
LEARNING_SEEDS = [int(s) for s in os.environ.get("IMAGEDOCTOR_LEARNING_SEEDS", "0").split(",")]


def pytest_generate_tests(metafunc):
    if "learning_seed" in metafunc.fixturenames:
        metafunc.parametrize("learning_seed", LEARNING_SEEDS)


@pytest.fixture(scope="session")
def make_synthetic():
    """`write_synthetic` as a fixture (test modules cannot import conftest)."""
    return write_synthetic


@pytest.fixture(scope="session")
def sft_scores_run(tiny_model_dir, synth_train, synth_eval, tmp_path_factory):
    """Cold-start stage 1 (scores only, full fine-tune) on the synthetic set, per (seed, labels):
    ``run(seed, train_dir=synth_train) -> (before, result)``, each computed once per session
    (``before`` only for the real labels: None for another training set)."""
    from imagedoctor.trainer.diagnoser.sft import SFTTrainer

    done = {}

    def run(seed: int = 0, train=None):
        key = (seed, str(train or synth_train))
        if key not in done:
            cfg = sft_config(tiny_model_dir, train or synth_train, synth_eval, tmp_path_factory.mktemp("sft-scores"),
                             seed=seed, max_steps=400)  # 120 steps learn the format, not yet the scores
            before = None
            if train is None:  # only the real-label run's starting point is asserted on
                probe = SFTTrainer(cfg)
                probe._setup()
                before = probe.evaluate()
                del probe
            done[key] = (before, SFTTrainer(cfg).train())
        return done[key]

    return run


@pytest.fixture(scope="session")
def make_sft_config():
    """`sft_config` as a fixture (test modules cannot import conftest)."""
    return sft_config
