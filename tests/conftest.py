"""Session-scoped tiny models, built once through the same code users run (`imagedoctor tiny-model`)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny Qwen2.5-VL diagnoser with heatmap head (ImageDoctor layout)."""
    from imagedoctor.core.tiny import build_tiny_diagnoser

    return build_tiny_diagnoser(tmp_path_factory.mktemp("models") / "tiny-qwen2_5_vl", family="qwen2_5_vl", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory):
    """A saved tiny Qwen3-VL diagnoser without head (SDG detector layout)."""
    from imagedoctor.core.tiny import build_tiny_diagnoser

    return build_tiny_diagnoser(tmp_path_factory.mktemp("models") / "tiny-qwen3_vl", family="qwen3_vl", seed=0, with_head=False)


@pytest.fixture(scope="session")
def tiny_diagnoser(tiny_model_dir):
    """The tiny Qwen2.5-VL diagnoser loaded through `Diagnoser.from_pretrained` (fp32, CPU)."""
    from imagedoctor.core.diagnoser import Diagnoser

    return Diagnoser.from_pretrained(tiny_model_dir, dtype="fp32", device="cpu")
