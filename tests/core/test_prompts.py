"""Prompt variants return the authors' runtime strings byte for byte, with their system turns,
pre-fills and image policies; a checkpoint's config.json can name its variant.

The SHA-256 values below were computed once from the upstream sources, not from this package:
the string constants were read with Python's ``ast`` (nothing imported) from
EthanG97/ImageDoctor@f541579 ``inference.py:17`` (the f-string, ``{task_prompt}`` = caption),
``modify/flow_grpo/flow_grpo/doctor_hp.py:83`` (``.format(prompt=clean_prompt(caption))``,
cleaning rule of line 91), om-ai-lab/VLM-R1 ``qwen_module.py:76-83`` ("odLength" template, Question
= the inference prompt), nianbai006/SDG@2374570 ``dense_grpo_rewards.py:107-169`` and
``sdg_detector/inference/eval_gpt_thinkpe_imp.py:60`` (``.format(caption=caption)``).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from imagedoctor.core.diagnoser import Diagnoser
from imagedoctor.core.prompts import (
    PROMPT_VARIANTS,
    ImagePolicy,
    assistant_prefill,
    build_messages,
    build_prompt,
    get_variant,
    resize_for_model,
    system_prompt,
)

UPSTREAM_SHA256 = {
    ("a red cat.", "imagedoctor"): "7ada828b122011f4c609a0ad56d508939749681517b44d72a714558e47e8267f",
    ("a red cat.", "imagedoctor-fast"): "6f9d58c1d771498f81118b10eb9cf49e5b44ee1e7b9d31ff6a3123ee97ca7a22",
    ("a red cat.", "imagedoctor-grpo"): "2effc9a3426f7525607731b57c11b8d7ddb5ff19bd4fb074e32b5dcfe0d7a578",
    ("a red cat.", "sdg-grpo"): "1f607e1d094fe524f513c9cf991e8efb74bdbfc0de736847887749f36e058f9f",
    ("a red cat.", "sdg-gpt"): "faea52cc4895236fa405515714d004b18191954611f8ace0b0faea82ad6c5b2e",
    ("  a cat ", "imagedoctor"): "ffff59f970c6b9b7fba8c94a97f40dd5390b1c6a8a809a6d31380df6a3cbdcd7",
    ("  a cat ", "imagedoctor-fast"): "6541c7e2a1455d3d007386386cd8e77c95f9718c32c33a9fccd2aefba4be4c01",
    ("  a cat ", "sdg-sft"): "66d6857caf0fe4db932e43b988945f64913f955548fda6aa5da5e3d724d8cf5a",
    ("A photo of a dog, sitting!?", "imagedoctor-fast"): "b88c7d44b64bafdc23a998d6efd38f2346322d6a4347f19a3bf4ac12d769df2d",
    ("A photo of a dog, sitting!?", "sdg-reward"): "dadef8ada080c1fa98664e3b31acf4bd33e49a12b497487330bff70c993888f6",
}


@pytest.mark.parametrize("caption,variant", sorted(UPSTREAM_SHA256))
def test_runtime_strings_match_upstream(caption, variant):
    fmt = PROMPT_VARIANTS[variant].format
    text = build_prompt(caption, fmt, variant=variant)
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == UPSTREAM_SHA256[(caption, variant)]


def test_inference_prompt_keeps_the_backslash_and_the_raw_caption():
    text = build_prompt("  a red cat. ")  # format imagedoctor, default variant
    assert text.count("\\") == 1 and "following format: \\\u201d I need" in text
    assert text.endswith("Text Caption: [  a red cat. ]")
    assert system_prompt("imagedoctor") is None and assistant_prefill("imagedoctor") == ""


def test_fast_prompt_cleans_the_caption_and_prefills():
    for raw, cleaned in [("a red cat.", "a red cat"), ("  a cat!?\u3002 ", "a cat"), ("a.b c", "a.b c"),
                         ("dots...", "dots"), ("\u4e00\u53ea\u732b\uff0c", "\u4e00\u53ea\u732b")]:
        assert build_prompt(raw, think=False).endswith(f"Text Caption: [{cleaned}]")
    assert assistant_prefill("imagedoctor", think=False) == "<think>\n...</think>\n<answer>"
    assert "\\" not in build_prompt("x", think=False)


def test_grpo_question_wraps_the_inference_prompt_in_the_user_turn():
    text = build_prompt("a cat", variant="imagedoctor-grpo")
    assert text.startswith("First thinks about the reasoning process in the mind") and "\nGiven a caption" in text
    assert text.endswith(build_prompt("a cat"))
    assert [m["role"] for m in build_messages("a cat", variant="imagedoctor-grpo")] == ["user"]


def test_sdg_query_system_turns_per_checkpoint():
    q = build_prompt("a {red} cat ", "sdg")  # .format(caption) inserts the caption raw
    assert "Text Caption: a {red} cat \n" in q and "(object/part)" not in q and "Style Guide" not in q
    assert q == build_prompt("a {red} cat ", "sdg", variant="sdg-sft") == build_prompt("a {red} cat ", "sdg", variant="sdg-reward")
    assert system_prompt("sdg") == "You are a helpful assistant. "  # GRPO detector: trailing space
    assert system_prompt("sdg", variant="sdg-sft") is None and system_prompt("sdg", variant="sdg-reward") is None
    assert system_prompt("sdg", variant="sdg-gpt") == "You are a helpful assistant."
    grpo, sft = build_messages("c", "sdg"), build_messages("c", "sdg", variant="sdg-sft")
    assert [m["role"] for m in grpo] == ["system", "user"] and [m["role"] for m in sft] == ["user"]
    assert [c["type"] for c in sft[0]["content"]] == ["image", "text"]  # image first
    assert "(object/part)" in build_prompt("c", "sdg", variant="sdg-gpt")


def test_variant_errors():
    with pytest.raises(ValueError, match="unknown prompt variant 'nope'"):
        build_prompt("a", variant="nope")
    with pytest.raises(ValueError, match="is for format 'sdg'"):
        build_prompt("a", "imagedoctor", variant="sdg-sft")
    with pytest.raises(TypeError, match="must be a string"):
        build_prompt(None)


def test_image_policies():
    assert get_variant("imagedoctor").image.size_for(1024, 768) == resize_for_model(1024, 768) == (591, 443)
    # scale sqrt(512^2 / 1e7) = 0.16190..: 1e7 -> 1619086, 1 -> int(0.16) = 0 -> at least 1
    assert resize_for_model(10, 10) == (512, 512) and resize_for_model(10_000_000, 1) == (1_619_086, 1)
    assert resize_for_model(1, 10_000_000) == (1, 1_619_086)
    img = Image.fromarray((np.random.default_rng(0).random((300, 200, 3)) * 255).astype("uint8"))
    for name, size, resample in [("imagedoctor-grpo", (512, 512), Image.LANCZOS),
                                 ("imagedoctor-fast", (512, 512), Image.BICUBIC),
                                 ("sdg-reward", (512, 512), Image.BICUBIC)]:
        out = get_variant(name).image.apply(img)
        assert np.array_equal(np.asarray(out), np.asarray(img.resize(size, resample))), name
    assert get_variant("sdg-grpo").image.apply(img) is img and ImagePolicy.from_area(None).kind == "keep"
    with pytest.raises(ValueError, match="positive integer"):
        ImagePolicy.from_area(0)


# --- through a checkpoint ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def image():
    return Image.fromarray((np.random.default_rng(1).random((90, 150, 3)) * 255).astype("uint8"))


def test_tokenised_prompt_carries_the_backslash(tiny_diagnoser, image):
    inputs, _, _ = tiny_diagnoser.build_inputs([image], ["a red cat."], image_area=112 * 112)
    tok = tiny_diagnoser.processor.tokenizer
    ids = inputs["input_ids"][0].tolist()
    assert "following format: \\\u201d I need" in tok.decode(ids)
    k = next(i for i, t in enumerate(ids) if "\\" in tok.decode([t]))  # a token holds the backslash ...
    assert tok.decode(ids[k:k + 4]).startswith("\\\u201d")           # ... right before the closing quote
    without = tok(build_prompt("a red cat.").replace("\\", ""))["input_ids"]
    assert len(without) < len(tok(build_prompt("a red cat."))["input_ids"])


def _with_config(src, dst, **keys):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(keys)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_checkpoint_config_names_its_prompt_variant_and_image_area(tiny_model_dir, tmp_path, image):
    folder = _with_config(tiny_model_dir, tmp_path / "ft", imagedoctor_prompt_variant="imagedoctor-grpo",
                          imagedoctor_image_area=64 * 64)
    dg = Diagnoser.from_pretrained(folder, dtype="fp32", device="cpu")
    assert dg.prompt_variant == "imagedoctor-grpo" and dg.image_area == 64 * 64
    inputs, resized, _ = dg.build_inputs([image], ["a cat"])
    text = dg.processor.tokenizer.decode(inputs["input_ids"][0])
    assert "<|vision_end|>First thinks about the reasoning" in text and resized[0].size == resize_for_model(150, 90, 4096)
    # think=False still means the score-only variant; an explicit image_area wins over the checkpoint's
    inputs, resized, _ = dg.build_inputs([image], ["a cat."], think=False, image_area=None)
    text = dg.processor.tokenizer.decode(inputs["input_ids"][0])
    assert "Text Caption: [a cat]<|im_end|>" in text and text.endswith("assistant<think>\n...</think>\n<answer>")
    assert resized[0].size == (150, 90)
    # the keys survive save_pretrained
    dg.save_pretrained(tmp_path / "again")
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again["imagedoctor_prompt_variant"] == "imagedoctor-grpo" and again["imagedoctor_image_area"] == 4096


def test_bad_config_keys_name_the_key(tiny_model_dir, tmp_path):
    folder = _with_config(tiny_model_dir, tmp_path / "bad", imagedoctor_prompt_variant="imagedoctor-v9")
    with pytest.raises(ValueError, match="imagedoctor_prompt_variant.*unknown prompt variant"):
        Diagnoser.from_pretrained(folder, dtype="fp32", device="cpu")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(imagedoctor_prompt_variant=None, imagedoctor_image_area=-5)
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="imagedoctor_image_area"):
        Diagnoser.from_pretrained(folder, dtype="fp32", device="cpu")


def test_sdg_checkpoint_system_turns(tiny_qwen3_dir, image):
    dg = Diagnoser.from_pretrained(tiny_qwen3_dir, dtype="fp32", device="cpu")
    tok = dg.processor.tokenizer

    def text(**kw):
        inputs, resized, _ = dg.build_inputs([image], ["a cat"], **kw)
        return tok.decode(inputs["input_ids"][0]), resized[0].size

    grpo, size = text()  # (the tiny chat template drops the newlines of the real one)
    assert grpo.startswith("<|im_start|>systemYou are a helpful assistant. <|im_end|><|im_start|>user<|vision_start|>")
    assert size == (150, 90)  # left to the processor's budget
    sft, _ = text(variant="sdg-sft")
    assert sft.startswith("<|im_start|>user<|vision_start|>") and "system" not in sft
    reward, size = text(variant="sdg-reward")
    pads = re.compile(r"(<\|image_pad\|>)+")
    assert pads.sub("", reward) == pads.sub("", sft) and size == (512, 512)  # same text, a 512x512 image
