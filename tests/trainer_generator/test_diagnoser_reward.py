"""The diagnoser-backed reward on the tiny (random) core Diagnoser: structure only."""

from __future__ import annotations

import pytest
import torch

from imagedoctor.trainer.generator.rewards import as_reward_tensor, diagnoser_reward


@pytest.mark.parametrize("mode", ["scalar", "dense", "box"])
def test_diagnoser_reward_on_tiny_diagnoser(tiny_diagnoser, mode):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # "decoded" samples
    reward = diagnoser_reward(tiny_diagnoser, mode=mode, batch_size=2, max_new_tokens=8, think=False)
    out = as_reward_tensor(reward(images, ["a red cube", "a blue ball"], latent_size=(4, 4)), 2, (4, 4))
    assert out.shape == ((2,) if mode == "scalar" else (2, 4, 4))
    assert len(reward.last_diagnoses) == 2
    assert all((d.width, d.height) == (32, 32) for d in reward.last_diagnoses)
    if mode == "scalar":  # a random model rarely writes parseable scores: missing -> 0, always in [0, 1]
        assert torch.all((out >= 0) & (out <= 1))
