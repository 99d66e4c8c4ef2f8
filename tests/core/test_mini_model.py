"""The shipped mini diagnoser (trained on synthetic shapes only): size, card, packaging, portability.

Its end-to-end proofs (best of 16, refinement) are measured by ``bench/mini_proofs.py``; they do
not hold yet with the shipped weights (docs/mini-model.md).
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def mini():
    from imagedoctor.core.diagnoser import Diagnoser

    return Diagnoser.from_pretrained("imagedoctor-mini", dtype="fp32", device="cpu")


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
