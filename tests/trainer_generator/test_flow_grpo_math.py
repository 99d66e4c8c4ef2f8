"""SDE/ODE steps, log-probs, advantages and the loss against hand-written formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from scipy.stats import norm

from imagedoctor.trainer.generator.sde import (
    clipped_policy_loss,
    dense_advantages,
    dense_ratio,
    flow_grpo_loss,
    group_advantages,
    kl_to_reference,
    ode_step,
    sde_step_with_logprob,
    sde_window_steps,
    step_dt,
)


@pytest.fixture
def scheduler():
    s = FlowMatchEulerDiscreteScheduler(shift=3.0)
    s.set_timesteps(10)
    return s


def reference_step(sigma, sigma_next, sigma1, x, v, a):
    """Flow-GRPO's formula written out in float64 numpy."""
    denom = 1 - (sigma1 if sigma == 1 else sigma)
    std = a * math.sqrt(sigma / denom)
    dt = sigma_next - sigma
    mean = x * (1 + std**2 / (2 * sigma) * dt) + v * (1 + std**2 * (1 - sigma) / (2 * sigma)) * dt
    return mean, std * math.sqrt(-dt), std


@pytest.mark.parametrize("step", [0, 3, 9])
def test_sde_step_matches_formula(scheduler, step):
    g = torch.Generator().manual_seed(step)
    x, v = torch.randn(3, 4, 5, 6, generator=g), torch.randn(3, 4, 5, 6, generator=g)
    t = scheduler.timesteps[step]
    prev, log_prob, mean, std_dev_t = sde_step_with_logprob(scheduler, v, t, x, 0.7, generator=torch.Generator().manual_seed(1))
    sigmas = scheduler.sigmas.double().numpy()
    ref_mean, step_std, ref_std = reference_step(sigmas[step], sigmas[step + 1], sigmas[1], x.double().numpy(), v.double().numpy(), 0.7)
    np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std_dev_t.flatten().numpy(), ref_std, rtol=1e-5)
    # the drawn sample is mean + step_std * eps with eps ~ N(0, 1)
    eps = (prev.double().numpy() - ref_mean) / step_std
    assert abs(eps.mean()) < 0.3 and 0.7 < eps.std() < 1.3
    # log-prob: Gaussian density of the drawn sample, averaged over non-batch dims
    ref_lp = norm.logpdf(prev.double().numpy(), loc=ref_mean, scale=step_std).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(log_prob.numpy(), ref_lp, rtol=1e-4, atol=1e-3)


def test_first_step_uses_sigma1_in_denominator(scheduler):
    assert float(scheduler.sigmas[0]) == 1.0
    x = torch.zeros(1, 1, 2, 2)
    _, _, _, std = sde_step_with_logprob(scheduler, x, scheduler.timesteps[0], x, 0.5)
    s1 = float(scheduler.sigmas[1])
    assert float(std.flatten()[0]) == pytest.approx(0.5 * math.sqrt(1.0 / (1 - s1)), rel=1e-5)


def test_log_prob_of_given_sample_is_gaussian_density(scheduler):
    g = torch.Generator().manual_seed(0)
    x, v, target = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    t = scheduler.timesteps[4]
    prev, lp, mean, std = sde_step_with_logprob(scheduler, v, t, x, 0.7, prev_sample=target)
    assert torch.equal(prev, target)
    step_std = (std * torch.sqrt(-step_dt(scheduler, t, x))).double()
    dens = torch.distributions.Normal(mean.double(), step_std).log_prob(target.double()).mean(dim=(1, 2, 3))
    torch.testing.assert_close(lp.double(), dens, rtol=1e-5, atol=1e-5)


def test_per_pixel_and_mean_log_probs_agree(scheduler):
    g = torch.Generator().manual_seed(3)
    x, v = torch.randn(2, 4, 6, 5, generator=g), torch.randn(2, 4, 6, 5, generator=g)
    t = torch.stack([scheduler.timesteps[2], scheduler.timesteps[7]])  # per-sample timesteps
    prev, lp, _, _ = sde_step_with_logprob(scheduler, v, t, x, 0.7, generator=torch.Generator().manual_seed(0))
    _, lp_map, _, _ = sde_step_with_logprob(scheduler, v, t, x, 0.7, prev_sample=prev, per_pixel=True)
    assert lp_map.shape == (2, 6, 5)
    torch.testing.assert_close(lp_map.mean(dim=(1, 2)), lp, rtol=1e-5, atol=1e-5)
    # per-sample timesteps really differ: each row equals its own scalar-timestep call
    _, lp1, _, _ = sde_step_with_logprob(scheduler, v[1:], scheduler.timesteps[7], x[1:], 0.7, prev_sample=prev[1:])
    torch.testing.assert_close(lp[1:], lp1)


def test_sde_with_zero_noise_level_limit_is_ode(scheduler):
    g = torch.Generator().manual_seed(5)
    x, v = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    t = scheduler.timesteps[5]
    _, _, mean, _ = sde_step_with_logprob(scheduler, v, t, x, 1e-6)
    torch.testing.assert_close(mean, ode_step(scheduler, v, t, x), rtol=1e-5, atol=1e-5)
    dt = float(scheduler.sigmas[6] - scheduler.sigmas[5])
    torch.testing.assert_close(ode_step(scheduler, v, t, x), x + dt * v)


def test_sde_window_steps():
    assert sde_window_steps(10) == list(range(10))
    assert sde_window_steps(10, 1, 3) == [1, 2, 3]
    assert sde_window_steps(10, 8, 5) == [8, 9]
    with pytest.raises(ValueError, match="selects no step"):
        sde_window_steps(10, 10, 1)


def test_group_advantages_per_prompt():
    rewards = torch.tensor([1.0, 3.0, 10.0, 10.0, 0.0, 2.0])
    adv = group_advantages(rewards, ["a", "a", "b", "b", "c", "c"], eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, 0.0, 0.0, -1.0, 1.0]))
    clipped = group_advantages(torch.tensor([0.0, 0, 0, 0, 0, 0, 0, 100.0]), ["p"] * 8, clip=2.0)
    assert float(clipped.max()) == 2.0


def test_dense_advantages_per_pixel_with_floor():
    maps = torch.zeros(4, 2, 2)
    maps[0, 0, 0], maps[1, 0, 0] = 1.0, 3.0  # group "a": pixel (0, 0) varies, others constant
    maps[2:, 1, 1] = torch.tensor([0.0, 0.002])  # group "b": a tiny variation
    adv = dense_advantages(maps, ["a", "a", "b", "b"], std_floor=0.05, normalise="pixel")
    torch.testing.assert_close(adv[:2, 0, 0], torch.tensor([-1.0, 1.0]))
    assert adv[:2, 1:, :].abs().max() == 0
    # floor: 0.001 / 0.05 = 0.02, not +-1
    torch.testing.assert_close(adv[2:, 1, 1], torch.tensor([-0.02, 0.02]))
    glob = dense_advantages(maps, ["a", "a", "b", "b"], std_floor=1e-6, normalise="global")
    centred = maps.clone()
    centred[:2] -= maps[:2].mean(0)
    centred[2:] -= maps[2:].mean(0)
    torch.testing.assert_close(glob, (centred / centred.std()).clamp(-5, 5))


def test_dense_ratio_value_and_gradient():
    lp = torch.randn(2, 3, 3, requires_grad=True)
    old = lp.detach() - 0.01
    ratio = dense_ratio(lp, old)
    torch.testing.assert_close(ratio.detach(), torch.full((2, 3, 3), math.exp(0.01)))
    adv = torch.randn(2, 3, 3)
    (ratio * adv).sum().backward()
    torch.testing.assert_close(lp.grad, math.exp(0.01) * adv)  # each pixel gets its own advantage


def test_clipped_loss_blocks_gradient_outside_range():
    lp = torch.tensor([0.0, 0.0], requires_grad=True)
    old = torch.tensor([-0.1, 0.1])  # ratios e^0.1 (too high), e^-0.1 (too low)
    adv = torch.tensor([1.0, -1.0])  # both would push further out of range
    out = flow_grpo_loss(lp, old, adv, epsilon=1e-4)
    out.loss.backward()
    assert torch.all(lp.grad == 0)
    assert float(out.clip_fraction) == 1.0
    lp2 = torch.tensor([0.0, 0.0], requires_grad=True)
    flow_grpo_loss(lp2, torch.zeros(2), adv, epsilon=1e-4).loss.backward()
    torch.testing.assert_close(lp2.grad, -adv / 2)
    assert float(clipped_policy_loss(torch.ones(3), torch.tensor([1.0, 2, 3]), 0.1)) == pytest.approx(-2.0)


def test_kl_to_reference_both_normalisations_by_hand():
    """mu - mu_ref = 0.3 everywhere, std_dev_t = 0.5, dt = -0.1 (image 0) and -0.05 (image 1):
    flow_grpo (train_sd3.py): 0.3^2 / (2 * 0.5^2) = 0.18 for both images;
    exact (Gaussian KL of the step, std = std_dev_t sqrt(-dt)): 0.18 / 0.1 = 1.8 and 0.18 / 0.05 = 3.6."""
    ref = torch.zeros(2, 4, 3, 3)
    mean = ref + 0.3
    std = torch.full((2, 1, 1, 1), 0.5)
    dt = torch.tensor([-0.1, -0.05]).view(2, 1, 1, 1)
    torch.testing.assert_close(kl_to_reference(mean, ref, std, dt), torch.tensor([0.18, 0.18]))
    torch.testing.assert_close(kl_to_reference(mean, ref, std, dt, "flow_grpo"), torch.tensor([0.18, 0.18]))
    torch.testing.assert_close(kl_to_reference(mean, ref, std, dt, "exact"), torch.tensor([1.8, 3.6]))
    with pytest.raises(ValueError, match="flow_grpo"):
        kl_to_reference(mean, ref, std, dt, "gaussian")


def test_exact_kl_is_the_gaussian_kl_of_the_step():
    g = torch.Generator().manual_seed(0)
    mean, ref = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    std, dt = torch.full((2, 1, 1, 1), 0.5), torch.full((2, 1, 1, 1), -0.1)
    s = 0.5 * math.sqrt(0.1)
    gaussian = torch.distributions.kl_divergence(torch.distributions.Normal(mean, s), torch.distributions.Normal(ref, s))
    torch.testing.assert_close(kl_to_reference(mean, ref, std, dt, "exact"), gaussian.mean(dim=(1, 2, 3)))
    # flow_grpo's value leaves the -dt factor out: the same KL times -dt
    torch.testing.assert_close(kl_to_reference(mean, ref, std, dt, "flow_grpo"), 0.1 * gaussian.mean(dim=(1, 2, 3)))
    kl = kl_to_reference(mean, ref, std, dt)
    out = flow_grpo_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), kl=kl, beta=0.5)
    assert float(out.loss) == pytest.approx(0.5 * float(kl.mean()), rel=1e-5)
