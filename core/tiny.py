"""Tiny, randomly initialised diagnosers, built fully offline.

`build_tiny_diagnoser(dir)` writes a folder in the same layout as a published checkpoint
(config.json with the task-token ids, safetensors weights with the head's tensors under their
upstream names, tokenizer with ``<MIS>``/``<ART>``, processor + chat template), which
``Diagnoser.from_pretrained(dir)`` then loads through the real code path. Tests and the demo use
it; users use it to try workflows offline. Its outputs are random: it is untrained.
"""

from __future__ import annotations

import random
from pathlib import Path

FAMILIES = ("qwen2_5_vl", "qwen3_vl")

# Special tokens of the Qwen-VL tokenizers (names as in the real vocabularies).
_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
TASK_TOKENS = ("<MIS>", "<ART>")

# A chat template with the Qwen-VL conventions (system default, vision placeholders).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' and default_system %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{%- endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{%- if message['content'] is string %}{{ message['content'] }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content['type'] == 'text' %}{{ content['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}<|im_end|>\n"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


def _corpus(seed: int) -> list[str]:
    """Text the tiny BPE is trained on: the prompts and both output formats."""
    from .prompts import IMAGEDOCTOR_FAST_PROMPT, IMAGEDOCTOR_PROMPT, SDG_PROMPT

    rng = random.Random(seed)
    words = "red green blue yellow circle square triangle left right above below two three one a the of".split()

    def pinned(text: str) -> str:
        # The vocabulary stays the one first trained (before the inference prompt regained its
        # upstream backslash and the slot was renamed), so prompt fixes do not re-draw the tiny
        # random models that the seed-sensitive learning tests are built on.
        return text.replace("\\\u201d", "\u201d").replace("{caption}", "{prompt}")

    lines = [pinned(IMAGEDOCTOR_PROMPT), pinned(IMAGEDOCTOR_FAST_PROMPT), SDG_PROMPT]
    for _ in range(200):
        lines.append(" ".join(rng.choice(words) for _ in range(8)))
        lines.append(
            f"Semantic Alignment score: {rng.random():.2f};\nMisalignment Locations: <point>{rng.randint(0, 511)},"
            f"{rng.randint(0, 511)}</point>\nOverall Impression score: {rng.random():.2f}"
        )
        lines.append(
            f'[{{"box_2d": [{rng.randint(0, 999)}, {rng.randint(0, 999)}, {rng.randint(0, 999)}, {rng.randint(0, 999)}], '
            f'"label": "artifact", "description": "warped edge", "importance": {rng.randint(1, 100)}}}]'
        )
    return lines


def build_tokenizer(seed: int = 0, vocab_size: int = 600):
    """A byte-level BPE tokenizer (Qwen2 style) trained offline, with the Qwen-VL special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    try:  # transformers 4.x: the fast class wraps a `tokenizers` object (the slow one needs vocab files)
        from transformers import Qwen2TokenizerFast as Qwen2Tokenizer
    except ImportError:  # transformers 5: one (fast) class
        from transformers import Qwen2Tokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer)
    hf = Qwen2Tokenizer(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=_SPECIAL[1:],
    )
    # Task tokens are added as normal (non-special) tokens so that decoded text keeps them.
    hf.add_tokens(list(TASK_TOKENS), special_tokens=False)
    return hf


def _rope_config(theta: float, **rope) -> dict:
    """Text-config keys of a (multimodal) RoPE: transformers 5 takes ``rope_parameters`` (theta
    inside); 4.x takes ``rope_scaling`` plus a separate ``rope_theta``."""
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        return {"rope_parameters": {"rope_type": "default", "rope_theta": theta, **rope}}
    return {"rope_scaling": {"rope_type": "default", **rope}, "rope_theta": theta}


def build_tiny_diagnoser(out_dir: str | Path, family: str = "qwen2_5_vl", seed: int = 0, with_head: bool = True) -> Path:
    """Build and save a tiny random diagnoser of ``family`` into ``out_dir``; returns the path.

    ``with_head=False`` saves a checkpoint without heatmap head (like the SDG detectors).
    """
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
    )
    from transformers.models.qwen3_vl import Qwen3VLVideoProcessor
    from transformers.models.qwen2_vl import Qwen2VLVideoProcessor

    from .diagnoser import save_diagnoser
    from .heatmap_head import HeatmapHead, HeatmapHeadConfig

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; use one of {list(FAMILIES)}")
    out = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(seed)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _SPECIAL + list(TASK_TOKENS)}
    vocab = len(tokenizer)
    text = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=None,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    token_ids = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    if family == "qwen2_5_vl":
        text.update(_rope_config(1000000.0, mrope_section=[2, 3, 3]))
        config = Qwen2_5_VLConfig(
            text_config=text,
            vision_config=dict(
                depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1],
            ),
            **token_ids,
        )
        model = Qwen2_5_VLForConditionalGeneration(config)
        image_processor = Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2)
        processor = Qwen2_5_VLProcessor(
            image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
            chat_template=CHAT_TEMPLATE.replace("default_system", "true"),
        )
    else:
        text.update(head_dim=16, **_rope_config(5000000.0, mrope_section=[2, 3, 3], mrope_interleaved=True))
        config = Qwen3VLConfig(
            text_config=text,
            vision_config=dict(
                depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
                spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=256, deepstack_visual_indexes=[1],
            ),
            **token_ids,
        )
        model = Qwen3VLForConditionalGeneration(config)
        image_processor = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2,
                                                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
        processor = Qwen3VLProcessor(
            image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen3VLVideoProcessor(),
            chat_template=CHAT_TEMPLATE.replace("default_system", "false"),
        )
    model.config.misalignment_token_id = ids["<MIS>"]
    model.config.artifact_token_id = ids["<ART>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = None
    head = None
    if with_head:
        head_cfg = HeatmapHeadConfig(text_dim=64, image_dim=64, embed_dim=32, depth=2, mlp_dim=64, num_heads=2, mask_in_chans=16)
        model.config.heatmap_head = head_cfg.to_dict()
        head = HeatmapHead(head_cfg)
    save_diagnoser(out, model, processor, head)
    (out / "README.md").write_text(
        f"# Tiny ImageDoctor diagnoser ({family}, seed {seed})\n\nRandomly initialised and UNTRAINED: its outputs are "
        "random. Built offline by `python -m imagedoctor tiny-model` for tests, demos and trying workflows.\n"
    )
    return out
