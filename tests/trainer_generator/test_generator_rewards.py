"""Reward math (BoxFlow, DenseFlow, scalar) on hand-made diagnoses, and the diagnoser-backed reward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imagedoctor.core.diagnosis import Defect, Diagnosis
from imagedoctor.trainer.generator.rewards import (
    as_reward_tensor,
    box_coverage,
    box_reward_map,
    dense_from_heatmaps,
    diagnoser_reward,
    diagnosis_scalar,
    load_reward,
    pool_to_grid,
    scalar,
)


def diag(defects=(), overall=0.8, heatmaps=None, size=(64, 64)):
    return Diagnosis(width=size[0], height=size[1], scores={"overall": overall, "alignment": 0.5},
                     defects=list(defects), heatmaps=heatmaps or {})


def test_box_coverage_cells():
    cov = box_coverage((0, 0, 32, 16), (64, 64), (4, 4))  # cells are 16x16 px
    expected = np.zeros((4, 4))
    expected[0, :2] = 1.0
    np.testing.assert_allclose(cov, expected)
    half = box_coverage((8, 0, 16, 16), (64, 64), (4, 4))
    assert half[0, 0] == pytest.approx(0.5) and half.sum() == pytest.approx(0.5)


def test_box_reward_map_single_box():
    d = diag([Defect((0, 0, 32, 32), "artifact", importance=80)], overall=0.9)
    r = box_reward_map([d], (4, 4))
    assert r.shape == (1, 4, 4)
    np.testing.assert_allclose(r[0, :2, :2], 0.9 - 0.5 * 0.8, rtol=1e-6)
    np.testing.assert_allclose(r[0, 2:, :], 0.9)
    np.testing.assert_allclose(r[0, :, 2:], 0.9)


def test_box_reward_same_label_max_and_labels_add():
    d = diag([
        Defect((0, 0, 48, 48), "artifact", importance=40),
        Defect((16, 16, 64, 64), "artifact", importance=90),   # overlaps the first: max, not sum
        Defect((0, 0, 16, 16), "misalignment", importance=100),  # other label: adds
    ], overall=1.0)
    r = box_reward_map([d], (4, 4), alpha={"artifact": 0.5, "misalignment": 0.05})[0]
    assert r[0, 0] == pytest.approx(1.0 - 0.5 * 0.4 - 0.05 * 1.0)
    assert r[1, 1] == pytest.approx(1.0 - 0.5 * 0.9)  # overlap: max(0.4, 0.9)
    assert r[0, 2] == pytest.approx(1.0 - 0.5 * 0.4)
    assert r[3, 3] == pytest.approx(1.0 - 0.5 * 0.9)
    assert r[3, 0] == pytest.approx(1.0)


def test_box_reward_alpha_configurable_and_default_importance():
    d = diag([Defect((0, 0, 64, 64), "misalignment")], overall=0.5)  # importance None -> 50
    np.testing.assert_allclose(box_reward_map([d], (2, 2), alpha={"misalignment": 1.0}), 0.0, atol=1e-7)
    np.testing.assert_allclose(box_reward_map([d], (2, 2)), 0.5 - 0.05 * 0.5, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown label"):
        box_reward_map([d], (2, 2), alpha={"blur": 1.0})


def test_box_reward_uses_original_image_frame():
    d = diag([Defect((0, 0, 100, 50), "artifact", importance=100)], overall=1.0, size=(200, 100))
    r = box_reward_map([d], (2, 2))[0]  # left half of the top row
    np.testing.assert_allclose(r, [[0.5, 1.0], [1.0, 1.0]])


def test_dense_from_heatmaps():
    mis = np.zeros((64, 64), np.float32)
    mis[:32, :32] = 1.0
    art = np.zeros((64, 64), np.float32)
    art[:, :] = 0.5
    d1 = diag(overall=0.8, heatmaps={"misalignment": mis, "artifact": art})
    d2 = diag(overall=0.4)  # no heatmaps: no defect anywhere
    r = dense_from_heatmaps([d1, d2], (2, 2))
    np.testing.assert_allclose(r[0], [[0.8 * (1 - 0.75), 0.8 * 0.75], [0.8 * 0.75, 0.8 * 0.75]], rtol=1e-6)
    np.testing.assert_allclose(r[1], 0.4)
    only_mis = dense_from_heatmaps([d1], (2, 2), heatmaps=("misalignment",))
    np.testing.assert_allclose(only_mis[0], [[0.0, 0.8], [0.8, 0.8]], atol=1e-6)


def test_pool_to_grid_averages():
    hm = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(pool_to_grid(hm, (2, 2)), [[2.5, 4.5], [10.5, 12.5]])


def test_scalar_helpers():
    ds = [diag(overall=0.3), Diagnosis(width=8, height=8)]
    np.testing.assert_allclose(diagnosis_scalar(ds), [0.3, 0.0])
    np.testing.assert_allclose(diagnosis_scalar(ds, "alignment", missing=-1), [0.5, -1.0])
    rew = scalar(lambda images, prompts, **c: images.mean(dim=(1, 2, 3)))
    out = rew(torch.ones(2, 3, 4, 4), ["a", "b"], latent_size=(1, 1))
    assert out.shape == (2,) and torch.all(out == 1)
    with pytest.raises(ValueError, match=r"\[B\] or \[B, h, w\]"):
        as_reward_tensor(np.zeros((3, 2)), 3)
    with pytest.raises(ValueError, match="latent grid"):
        as_reward_tensor(np.zeros((3, 2, 2)), 3, (4, 4))
    with pytest.raises(ValueError, match="NaN"):
        as_reward_tensor([float("nan")], 1)


class FakeDiagnoser:
    """Duck-typed Diagnoser: one artifact box over the brightest quadrant."""

    def __init__(self):
        self.calls = []

    def diagnose(self, images, prompts, format=None, max_new_tokens=0, batch_size=8, heatmaps=True, think=True):
        self.calls.append(dict(n=len(images), batch_size=batch_size, heatmaps=heatmaps))
        out = []
        for img, prompt in zip(images, prompts):
            w, h = img.size
            a = np.asarray(img, dtype=np.float32).mean(axis=2) / 255
            hm = np.zeros((h, w), np.float32)
            hm[: h // 2, : w // 2] = 1.0
            out.append(Diagnosis(width=w, height=h, prompt=prompt, scores={"overall": float(a.mean())},
                                 defects=[Defect((0, 0, w / 2, h / 2), "artifact", importance=60)],
                                 heatmaps={"artifact": hm}))
        return out


@pytest.mark.parametrize("mode", ["scalar", "dense", "box"])
def test_diagnoser_reward_modes(mode):
    fake = FakeDiagnoser()
    reward = diagnoser_reward(fake, mode=mode, batch_size=3)
    images = torch.full((2, 3, 16, 16), 0.5)
    out = as_reward_tensor(reward(images, ["a", "b"], latent_size=(4, 4)), 2, (4, 4))
    assert fake.calls == [dict(n=2, batch_size=3, heatmaps=(mode == "dense"))]
    score = 128 / 255
    if mode == "scalar":
        np.testing.assert_allclose(out.numpy(), [score, score], rtol=1e-5)
    elif mode == "dense":  # mean of (mis=None -> 0, art) = 0.5 in the top-left quadrant
        np.testing.assert_allclose(out[0, :2, :2].numpy(), score * 0.5, rtol=1e-5)
        np.testing.assert_allclose(out[0, 2:, 2:].numpy(), score, rtol=1e-5)
    else:
        np.testing.assert_allclose(out[0, :2, :2].numpy(), score - 0.5 * 0.6, rtol=1e-5)
        np.testing.assert_allclose(out[0, 2:, :].numpy(), score, rtol=1e-5)
    assert len(reward.last_diagnoses) == 2


def test_load_reward_specs():
    fn = load_reward("python:imagedoctor.trainer.generator.rewards:scalar", fn=lambda i, p, **c: [1.0] * len(p))
    assert fn(None, ["x"]).tolist() == [1.0]
    with pytest.raises(ValueError, match="unknown reward"):
        load_reward("pickscore")
    with pytest.raises(ValueError, match="diagnoser model path"):
        load_reward("diagnoser")
    with pytest.raises(ValueError, match="unknown reward mode"):
        diagnoser_reward(FakeDiagnoser(), mode="heat")
