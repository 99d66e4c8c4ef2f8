"""The mini diagnoser: a small Qwen2.5-VL + heatmap head sized to train on CPU and ship in the repo.

`build_mini_diagnoser(dir)` writes the *untrained* starting point of the mini recipe
(``trainer/recipes/mini``): a Qwen2.5-VL of a few million parameters, the ImageDoctor heatmap
head, and a byte-level BPE tokenizer trained on the texts the model reads and writes on the
synthetic benchmark (`core.synth`): the ImageDoctor prompt, captions and target outputs.

Why a domain tokenizer: with the Qwen2 word-level pre-tokenizer the fixed ImageDoctor prompt
alone is ~250 tokens; here pre-tokens are only split at newlines, quote characters, backslashes,
single digits (except digits right after a letter, like the prompt's ``x1,y1``) and the synthetic
benchmark's content words (colours, shapes, counts, relations), so the whole fixed instruction
becomes a few dozen tokens and the model computes on the image and the answer instead, while the
words that vary stay shared tokens. Digits stay single tokens (coordinates and scores
are written digit by digit). Quotes and backslashes are isolated so that a one-character edit
of the prompt near them (e.g. the upstream ``\\”``) inserts one token instead of re-tokenising a
whole sentence.

The trained weights ship as ``core/weights/imagedoctor-mini`` (``Diagnoser.from_pretrained(
"imagedoctor-mini")``): trained on synthetic shapes only, for trying the pack.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .tiny import TASK_TOKENS, _SPECIAL

#: Qwen2-VL's chat layout with its newlines (the tiny model's template drops them): the assistant
#: turn starts after "assistant\n", and "\n" is its own pre-token, so the prompt/answer boundary
#: never falls inside a BPE token.
MINI_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_prompt(prompt: str) -> str:
    """What `MINI_CHAT_TEMPLATE` renders for one image + the mini's ImageDoctor prompt (generation prompt on)."""
    from .prompts import build_prompt

    return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|><|image_pad|><|vision_end|>" + build_prompt(prompt, variant=MINI_PROMPT_VARIANT)
            + "<|im_end|>\n<|im_start|>assistant\n")


#: The prompt variant the mini is trained and queried with (named in its config.json).
MINI_PROMPT_VARIANT = "imagedoctor-mini"

#: Image area of the mini (about 256x256 -> 252x252 -> 9x9 merged visual tokens).
MINI_IMAGE_AREA = 256 * 256


@dataclass
class MiniSize:
    """Sizes of a mini diagnoser (text model, vision tower, heatmap head, vocabulary)."""

    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vision_hidden_size: int = 128
    vision_intermediate_size: int = 384
    vision_depth: int = 4
    vision_num_heads: int = 4
    vision_fullatt_block_indexes: list[int] = field(default_factory=lambda: [1, 3])
    head_embed_dim: int = 64
    head_depth: int = 2
    head_mlp_dim: int = 128
    head_num_heads: int = 4
    head_upsample_stages: int = 2
    vocab_size: int = 2048

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "mini": MiniSize(),
    # a few hundred thousand parameters: for tests of the recipe machinery, learns little
    "micro": MiniSize(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vision_hidden_size=32, vision_intermediate_size=64, vision_depth=2,
                      vision_num_heads=2, vision_fullatt_block_indexes=[1], head_embed_dim=32, head_depth=1,
                      head_mlp_dim=64, head_num_heads=2, vocab_size=700),
}


def _content_words_re() -> str:
    from .synth import COLORS, COUNT_WORDS, RELATIONS, SHAPES

    words = set(COLORS) | set(COUNT_WORDS.values()) | {r.split()[0] for r in RELATIONS}
    words |= set(SHAPES) | {f"{s}s" for s in SHAPES}
    return r" ?\b(?:" + "|".join(sorted(words, key=lambda w: (-len(w), w))) + r")\b"


#: The benchmark's content words (colours, shapes, counts, relations) are always whole tokens, so
#: "red" in a caption, a reason and an answer is the same token.
CONTENT_WORDS_RE = _content_words_re()


def _chat_segments(text: str) -> list[str]:
    """The pieces of a chat-formatted text between special tokens (what BPE sees)."""
    import re

    pattern = "|".join(re.escape(t) for t in _SPECIAL)
    return [p for p in re.split(pattern, text) if p]


def domain_corpus(n: int = 1500, seed: int = 7, image_area: int = MINI_IMAGE_AREA, size: int = 256) -> list[str]:
    """Texts of ``n`` synthetic samples as the mini reads and writes them (prompt turn + target)."""
    from .diagnosis import Diagnosis
    from .formats import render
    from .geometry import Frame
    from .prompts import resize_for_model
    from .synth import render_sample

    lines = []
    for i in range(n):
        s = render_sample(seed, i, size=size)
        gt = s.diagnosis
        frame = Frame.pixels(*resize_for_model(gt.width, gt.height, image_area))
        gt = Diagnosis(width=gt.width, height=gt.height, scores=gt.scores, defects=gt.defects, prompt=s.prompt)
        chat = (chat_prompt(s.prompt) + render(gt, "imagedoctor", frame=frame, think=True, task_tokens=True)
                + "<|im_end|>")
        lines.extend(_chat_segments(chat))
    return lines


def build_domain_tokenizer(corpus: list[str], vocab_size: int = 2048):
    """Byte-level BPE over ``corpus`` with the Qwen-VL special tokens and ``<MIS>``/``<ART>``.

    Pre-tokens split only at newlines, quote characters / backslashes and single digits (see the
    module docstring). Saved as a generic ``TokenizersBackend`` so the pre-tokenizer survives a
    save/load round trip (Qwen2Tokenizer would rebuild its own word-level one).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
        pre_tokenizers.Split(Regex(r"[\\\"'”“’‘]"), behavior="isolated"),
        pre_tokenizers.Split(Regex(r"(?<![A-Za-z])[0-9]"), behavior="isolated"),
        pre_tokenizers.Split(Regex(CONTENT_WORDS_RE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(_SPECIAL),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 additional_special_tokens=list(_SPECIAL[1:]))
    hf.add_tokens(list(TASK_TOKENS), special_tokens=False)
    return hf


def build_mini_diagnoser(out_dir: str | Path, size: str | MiniSize = "mini", seed: int = 0,
                         image_area: int = MINI_IMAGE_AREA, corpus_samples: int = 1500) -> Path:
    """Write an untrained mini diagnoser (random weights, domain tokenizer) to ``out_dir``.
    Needs transformers 5, like the trainers (the folder it writes loads on 4.57 after `make_portable`)."""
    import torch
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        raise RuntimeError(f"building the mini diagnoser needs transformers>=5 (this is {transformers.__version__}: "
                           "its Qwen2.5-VL processor accepts only Qwen2 tokenizer classes); upgrade transformers "
                           "to build or train it; loading imagedoctor-mini works on 4.57")
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl import Qwen2VLVideoProcessor

    from .diagnoser import save_diagnoser
    from .heatmap_head import HeatmapHead, HeatmapHeadConfig

    sz = PRESETS[size] if isinstance(size, str) else size
    torch.manual_seed(seed)
    tokenizer = build_domain_tokenizer(domain_corpus(corpus_samples, image_area=image_area), sz.vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _SPECIAL + list(TASK_TOKENS)}
    head_dim = sz.hidden_size // sz.num_attention_heads
    half = head_dim // 2
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # 16/24/24 of 64 as upstream
    text = dict(vocab_size=len(tokenizer), hidden_size=sz.hidden_size, intermediate_size=sz.intermediate_size,
                num_hidden_layers=sz.num_hidden_layers, num_attention_heads=sz.num_attention_heads,
                num_key_value_heads=sz.num_key_value_heads, max_position_embeddings=4096, bos_token_id=None,
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section})
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(depth=sz.vision_depth, hidden_size=sz.vision_hidden_size,
                           intermediate_size=sz.vision_intermediate_size, num_heads=sz.vision_num_heads,
                           out_hidden_size=sz.hidden_size, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=112, fullatt_block_indexes=list(sz.vision_fullatt_block_indexes)),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2),
        tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
        chat_template=MINI_CHAT_TEMPLATE,
    )
    model.config.misalignment_token_id = ids["<MIS>"]
    model.config.artifact_token_id = ids["<ART>"]
    model.config.imagedoctor_image_area = int(image_area)
    model.config.imagedoctor_prompt_variant = MINI_PROMPT_VARIANT
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = None
    head_cfg = HeatmapHeadConfig(text_dim=sz.hidden_size, image_dim=sz.hidden_size, embed_dim=sz.head_embed_dim,
                                 depth=sz.head_depth, mlp_dim=sz.head_mlp_dim, num_heads=sz.head_num_heads,
                                 upsample_stages=sz.head_upsample_stages)
    model.config.heatmap_head = head_cfg.to_dict()
    head = HeatmapHead(head_cfg)
    out = save_diagnoser(out_dir, model, processor, head)
    return out


def make_portable(folder: str | Path) -> Path:
    """Rewrite a saved mini's config and tokenizer config so transformers 4.57 reads them as 5.x does.

    transformers 5 saves the text RoPE as ``rope_parameters`` (theta inside) and the tokenizer as a
    ``TokenizersBackend`` with a list of ``extra_special_tokens``; 4.57 reads ``rope_scaling`` plus
    ``rope_theta`` (without them it fails on the multimodal RoPE) and a
    ``PreTrainedTokenizerFast`` with ``additional_special_tokens``. Both keys are written, so both
    versions load the same model (checked: same tokens, same generated text, heatmaps equal to
    1e-7). Idempotent. Returns ``folder``.
    """
    import json

    from .fileio import atomic_write

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    text = config.get("text_config", config)
    rope = text.get("rope_parameters")
    if rope is not None:
        text["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
        text["rope_theta"] = rope.get("rope_theta", text.get("rope_theta"))
    atomic_write(folder / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    tok_path = folder / "tokenizer_config.json"
    tok = json.loads(tok_path.read_text(encoding="utf-8"))
    if tok.get("tokenizer_class") == "TokenizersBackend":
        tok["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = tok.get("extra_special_tokens")
    if isinstance(extra, list):
        del tok["extra_special_tokens"]
        tok["additional_special_tokens"] = list(dict.fromkeys([*(tok.get("additional_special_tokens") or []), *extra]))
    atomic_write(tok_path, json.dumps(tok, indent=2, sort_keys=True) + "\n")
    return folder


# ----------------------------------------------------------------------------------------------
# targets (issue 11)
# ----------------------------------------------------------------------------------------------
#: What the shipped mini must reach on a held-out synthetic set (seed never used in training).
MINI_TARGETS = {"overall_plcc": 0.6, "heatmap_cc": 0.4, "box_f1_0.1": 0.4, "scores_parsed": 0.98}


def mini_targets(preds, gts) -> dict:
    """The target numbers of `MINI_TARGETS` (and a few more) for predictions against ground truth.

    All come from `core.evaluate.evaluate`, the ``eval`` command's code: ``overall_plcc`` is the
    PLCC of the overall score over images whose overall score was read; ``heatmap_cc`` the mean
    over the two maps of the mean CC over images with a non-empty GT map; ``box_f1_0.1`` BoxF1 at
    IoU 0.1 over both labels (Hungarian matching, micro-averaged); ``scores_parsed`` the fraction
    of images whose four scores were all read.
    """
    import math

    from .evaluate import evaluate

    result = evaluate(list(preds), list(gts))
    ccs = [result["heatmaps"][k]["cc"] for k in ("misalignment", "artifact")]
    box = result["sdg"]["box_f1"]["0.1"]
    out = {
        "n": result["n_images"],
        "overall_plcc": result["scores"]["per_dim"]["overall"]["plcc"],
        "heatmap_cc": float(sum(ccs) / 2) if all(math.isfinite(c) for c in ccs) else float("nan"),
        "box_f1_0.1": box["overall"]["f1"],
        "scores_parsed": sum(1 for p in preds if p is not None and len(p.scores.present()) == 4) / max(1, len(preds)),
        "plcc_per_dim": {k: v["plcc"] for k, v in result["scores"]["per_dim"].items()},
        "srcc_overall": result["scores"]["per_dim"]["overall"]["srcc"],
        "heatmap_cc_per_map": dict(zip(("misalignment", "artifact"), ccs)),
        "box_f1_0.1_per_label": {k: v["f1"] for k, v in box["per_label"].items()},
        "box_f1_0.5": result["sdg"]["box_f1"]["0.5"]["overall"]["f1"],
        "det_type_f1": result["sdg"]["det_type_f1"]["overall"],
        "cln_acc": result["sdg"]["cln_acc"],
        "imp_acc": result["sdg"]["imp_acc"],
    }
    out["met"] = {k: bool(out[k] >= v) for k, v in MINI_TARGETS.items()}
    return out


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def add_parser(subparsers) -> None:
    p = subparsers.add_parser("mini-model", help="build the untrained mini diagnoser (start of the mini recipe)",
                              description=__doc__.splitlines()[0])
    p.add_argument("dir", help="output folder (written atomically)")
    p.add_argument("--size", choices=sorted(PRESETS), default="mini", help="size preset")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    p.add_argument("--image-area", type=int, default=MINI_IMAGE_AREA, help="pixels the model sees (config key "
                                                                             "imagedoctor_image_area)")
    p.add_argument("--corpus-samples", type=int, default=1500, help="synthetic samples the tokenizer is trained on")
    p.set_defaults(func=run)


def run(args) -> int:
    path = build_mini_diagnoser(args.dir, args.size, seed=args.seed, image_area=args.image_area,
                                corpus_samples=args.corpus_samples)
    print(f"wrote an UNTRAINED mini diagnoser ({args.size}) to {path}; train it with the mini recipe "
          "(docs/mini-model.md)")
    return 0
