"""Session fixtures: tiny random SD3 and FLUX pipelines built offline, once per session."""

from __future__ import annotations

import pytest
import torch



@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models are dominated by thread hand-off cost: one thread is far faster on small CPUs.

    Set per test and restored after, so other test folders keep their own setting.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


PROMPTS = ["a red cube", "a blue ball", "a green tree", "a yellow car", "a white cat", "a black dog"]


@pytest.fixture(scope="session")
def tiny_sd3_path(tmp_path_factory):
    from imagedoctor.trainer.generator.tiny_pipelines import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "sd3", family="sd3", seed=0)


@pytest.fixture(scope="session")
def tiny_flux_path(tmp_path_factory):
    from imagedoctor.trainer.generator.tiny_pipelines import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "flux", family="flux", seed=0)


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("# training prompts\n" + "\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture
def grpo_config(tiny_sd3_path, prompts_file, tmp_path):
    """A factory of small, fast FlowGRPOConfig objects (keyword overrides)."""
    from imagedoctor.trainer.generator.config import FlowGRPOConfig

    def make(**overrides):
        base = dict(
            model=str(tiny_sd3_path), prompts_file=str(prompts_file), resolution=32,
            max_sequence_length=16, max_steps=4, batch_size=8, num_generations=4, sample_batch_size=8,
            micro_batch_size=4, num_steps=6, sde_window_size=2, guidance_scale=1.0, lora_r=4, lora_alpha=4,
            learning_rate=3e-2, output_dir=str(tmp_path / "out"), report_to="none", progress_bar=False,
            reward="python:unused:reward",
        )
        base.update(overrides)
        return FlowGRPOConfig(**base)

    return make
