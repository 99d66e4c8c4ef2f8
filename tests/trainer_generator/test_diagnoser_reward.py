"""The diagnoser-backed generator reward: values from hand-made diagnoses, and on the tiny (random)
core Diagnoser the values it returns equal what its own diagnoses imply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imagedoctor.core.diagnosis import Defect, Diagnosis
from imagedoctor.trainer.generator.rewards import as_reward_tensor, diagnoser_reward


class FixedDiagnoser:
    """Returns the given diagnoses (what a trained diagnoser would say), records the call."""

    def __init__(self, diagnoses):
        self.diagnoses = diagnoses
        self.calls = []

    def diagnose(self, images, prompts, **kwargs):
        self.calls.append((len(images), list(prompts), kwargs))
        return self.diagnoses


def _hand_diagnoses():
    art = np.zeros((32, 32), np.float32)
    art[:16, :16] = 1.0  # top-left quadrant = latent cells [0:2, 0:2] of a 4x4 grid
    first = Diagnosis(width=32, height=32, scores={"overall": 0.8}, heatmaps={"artifact": art},
                      defects=[Defect((0, 0, 16, 16), "artifact", importance=60),
                               Defect((16, 16, 32, 32), "misalignment", importance=100)])
    second = Diagnosis(width=32, height=32, scores={})  # unparseable output: no score
    return [first, second]


@pytest.mark.parametrize("mode", ["scalar", "dense", "box"])
def test_reward_values_by_hand(mode):
    dg = FixedDiagnoser(_hand_diagnoses())
    reward = diagnoser_reward(dg, mode=mode, batch_size=2, missing=0.1)
    out = as_reward_tensor(reward(torch.zeros(2, 3, 32, 32), ["a", "b"], latent_size=(4, 4)), 2, (4, 4))
    assert dg.calls[0][0] == 2 and dg.calls[0][2]["heatmaps"] == (mode == "dense")
    if mode == "scalar":
        torch.testing.assert_close(out, torch.tensor([0.8, 0.1]))  # a missing score is `missing`
    elif mode == "dense":
        # 0.8 * (1 - mean(misalignment absent = 0, artifact)) : artifact 1 -> 0.8 * 0.5 = 0.4, else 0.8
        expected = torch.full((2, 4, 4), 0.8)
        expected[0, :2, :2] = 0.4
        expected[1] = 0.1
        torch.testing.assert_close(out, expected)
    else:
        # 0.8 - 0.5 * 60/100 in the artifact box, 0.8 - 0.05 * 100/100 in the misalignment box
        expected = torch.full((2, 4, 4), 0.8)
        expected[0, :2, :2] = 0.8 - 0.3
        expected[0, 2:, 2:] = 0.8 - 0.05
        expected[1] = 0.1
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("mode", ["scalar", "dense", "box"])
def test_diagnoser_reward_on_tiny_diagnoser(tiny_diagnoser, mode):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # "decoded" samples
    reward = diagnoser_reward(tiny_diagnoser, mode=mode, batch_size=2, max_new_tokens=8, think=False, missing=0.25)
    out = as_reward_tensor(reward(images, ["a red cube", "a blue ball"], latent_size=(4, 4)), 2, (4, 4))
    diagnoses = reward.last_diagnoses
    assert len(diagnoses) == 2 and all((d.width, d.height) == (32, 32) for d in diagnoses)
    scalars = torch.tensor([0.25 if d.scores.overall is None else d.scores.overall for d in diagnoses])
    if mode == "scalar":
        torch.testing.assert_close(out, scalars)
        return
    assert out.shape == (2, 4, 4)
    for i, d in enumerate(diagnoses):
        if mode == "dense":
            maps = [np.zeros((32, 32), np.float32) if d.heatmaps.get(n) is None else d.heatmaps[n]
                    for n in ("misalignment", "artifact")]
            pooled = np.mean(maps, axis=0).reshape(4, 8, 4, 8).mean(axis=(1, 3))  # 8x8 pixel blocks
            expected = scalars[i] * (1 - torch.from_numpy(np.clip(pooled, 0, 1)))
        else:
            expected = torch.full((4, 4), float(scalars[i]))
            for label, alpha in (("artifact", 0.5), ("misalignment", 0.05)):
                worst = torch.zeros(4, 4)
                for df in d.defects_of(label):
                    x0, y0, x1, y1 = df.box  # share of each 8x8-pixel cell inside the box
                    cx = torch.tensor([max(0.0, min(x1, 8 * j + 8) - max(x0, 8 * j)) / 8 for j in range(4)])
                    cy = torch.tensor([max(0.0, min(y1, 8 * j + 8) - max(y0, 8 * j)) / 8 for j in range(4)])
                    worst = torch.maximum(worst, df.importance_or(50) / 100 * torch.outer(cy, cx))
                expected -= alpha * worst
        torch.testing.assert_close(out[i], expected.float(), rtol=1e-5, atol=1e-5)
