"""The mini diagnoser's builder: domain tokenizer, chat template, head with fewer upsampling stages."""

import pytest
import torch

from imagedoctor.core.heatmap_head import HeatmapHead, HeatmapHeadConfig
from imagedoctor.core.mini import build_domain_tokenizer, chat_prompt, domain_corpus
from imagedoctor.core.prompts import build_prompt


@pytest.fixture(scope="module")
def domain_tokenizer():
    return build_domain_tokenizer(domain_corpus(n=40, size=128), vocab_size=1200)


def test_domain_tokenizer_round_trips_and_compresses_the_prompt(domain_tokenizer):
    tok = domain_tokenizer
    text = chat_prompt("two red circles left of a blue square")
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    # ~250 tokens with a word-level pre-tokenizer; the fixed instruction collapses to a few dozen
    assert len(ids) < 80, len(ids)
    assert tok.decode(tok("Semantic Alignment score: 0.617;")["input_ids"]).endswith("0.617;")
    digits = [tok.decode([i]) for i in tok("<point>123,45</point>")["input_ids"]]
    assert [d for d in digits if d.isdigit()] == ["1", "2", "3", "4", "5"]  # one token per digit


def test_prompt_answer_boundary_is_a_token_boundary(domain_tokenizer):
    """The prompt's tokens are a prefix of (prompt + answer)'s: training labels and generation agree."""
    tok = domain_tokenizer
    prompt = chat_prompt("three green triangles above a red square")
    for answer in ("<think>\nRegion 1 (artifact, importance 40): blur\n</think>\n<answer>Semantic", "<answer>x",
                   "Semantic Alignment score: 1.0"):
        p, full = tok(prompt)["input_ids"], tok(prompt + answer)["input_ids"]
        assert full[: len(p)] == p


def test_one_character_prompt_edit_near_a_quote_adds_one_token(domain_tokenizer):
    """Upstream's runtime prompt has a backslash before the closing quote: one extra token, the rest equal."""
    tok = domain_tokenizer
    # build_prompt has the backslash since the prompts became byte-exact upstream runtime strings;
    # the mini's own variant is the same text without it
    edited = build_prompt("a red circle")
    text = build_prompt("a red circle", variant="imagedoctor-mini")
    assert text == edited.replace("format: \\”", "format: ”") and edited != text
    a, b = tok(text)["input_ids"], tok(edited)["input_ids"]
    assert len(b) == len(a) + 1
    k = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert b[:k] + b[k + 1 :] == a


@pytest.mark.skipif(int(__import__("transformers").__version__.split(".")[0]) < 5,
                    reason="building the mini (like training it) needs transformers 5: 4.57's processor accepts only "
                           "Qwen2 tokenizer classes; loading the shipped mini on 4.57 is tested in test_mini_model.py")
def test_processor_chat_template_matches_chat_prompt(tmp_path, domain_tokenizer):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl import Qwen2VLVideoProcessor

    from imagedoctor.core.mini import MINI_CHAT_TEMPLATE, MINI_PROMPT_VARIANT
    from imagedoctor.core.prompts import build_messages

    proc = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=domain_tokenizer,
                               video_processor=Qwen2VLVideoProcessor(), chat_template=MINI_CHAT_TEMPLATE)
    text = proc.apply_chat_template(build_messages("a red circle", variant=MINI_PROMPT_VARIANT), tokenize=False,
                                    add_generation_prompt=True)
    assert text == chat_prompt("a red circle")


@pytest.mark.parametrize("stages", [1, 2, 4])
def test_head_upsample_stages(stages):
    cfg = HeatmapHeadConfig(text_dim=16, image_dim=8, embed_dim=32, mlp_dim=32, num_heads=2, upsample_stages=stages)
    head = HeatmapHead(cfg).eval()
    out = head(torch.randn(3, 16), torch.randn(3, 6, 8), (2, 3))
    assert out.shape == (3, 2 * 2**stages, 3 * 2**stages)
    full = set(HeatmapHead(HeatmapHeadConfig(text_dim=16, image_dim=8, embed_dim=32, mlp_dim=32, num_heads=2)).state_dict())
    names = set(head.state_dict())
    # fewer stages drop the last stages' parameters; every other name is upstream's
    assert {n for n in names if "last_conv1" not in n} <= full


def test_head_upsample_stages_rejects_bad_values():
    with pytest.raises(ValueError, match="upsample_stages"):
        HeatmapHeadConfig.from_dict({"upsample_stages": 5}, text_dim=16, image_dim=8)


def test_builtin_name_resolution_and_precedence(tmp_path, monkeypatch, tiny_model_dir):
    """A local folder named like the built-in wins; then the built-in name; hub ids keep their slash."""
    import shutil

    from imagedoctor.core import diagnoser

    monkeypatch.setitem(diagnoser.BUILTIN_MODELS, "imagedoctor-mini", tiny_model_dir)
    monkeypatch.chdir(tmp_path)
    assert diagnoser._resolve_folder("imagedoctor-mini", True) == tiny_model_dir
    local = tmp_path / "imagedoctor-mini"
    shutil.copytree(tiny_model_dir, local)
    assert diagnoser._resolve_folder("imagedoctor-mini", True).resolve() == local.resolve()
    shutil.rmtree(local)
    monkeypatch.setitem(diagnoser.BUILTIN_MODELS, "imagedoctor-mini", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="missing from this installation"):
        diagnoser._resolve_folder("imagedoctor-mini", True)


def test_image_area_auto_uses_the_checkpoints_config(tmp_path, tiny_model_dir):
    """config.json's ``imagedoctor_image_area`` is the default resize; an explicit area still wins;
    a bad value is refused at load time naming the key."""
    import json
    import shutil

    from PIL import Image

    from imagedoctor.core.diagnoser import Diagnoser
    from imagedoctor.core.prompts import IMAGEDOCTOR_IMAGE_AREA

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    img = Image.new("RGB", (512, 384), (200, 30, 30))
    plain = Diagnoser.from_pretrained(folder, dtype="fp32", device="cpu")
    assert plain.image_area == "auto"
    _, [resized], _ = plain.build_inputs([img], ["a red square"])
    assert abs(resized.width * resized.height - IMAGEDOCTOR_IMAGE_AREA) / IMAGEDOCTOR_IMAGE_AREA < 0.15

    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "imagedoctor_image_area": 112 * 112}))
    dg = Diagnoser.from_pretrained(folder, dtype="fp32", device="cpu")
    assert dg.image_area == 112 * 112
    _, [resized], _ = dg.build_inputs([img], ["a red square"])
    assert abs(resized.width * resized.height - 112 * 112) / (112 * 112) < 0.15
    _, [resized], _ = dg.build_inputs([img], ["a red square"], image_area=None)
    assert resized.size == img.size

    (folder / "config.json").write_text(json.dumps({**cfg, "imagedoctor_image_area": "big"}))
    with pytest.raises(ValueError, match="imagedoctor_image_area"):
        Diagnoser.from_pretrained(folder, dtype="fp32", device="cpu")


def test_make_portable_keeps_the_model_as_transformers_reads_it(tmp_path):
    """The rewritten config/tokenizer files give the same RoPE and the same token ids (here, on
    the transformers that runs the tests; CI's second leg loads the shipped mini on 4.57)."""
    import shutil

    from transformers import AutoConfig, AutoTokenizer

    from imagedoctor.core.diagnoser import BUILTIN_MODELS
    from imagedoctor.core.mini import make_portable

    src = BUILTIN_MODELS["imagedoctor-mini"]
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(src / name, tmp_path / name)
    make_portable(tmp_path)
    make_portable(tmp_path)  # idempotent
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>a red circle<|im_end|>\n<MIS><ART>"
    a, b = AutoConfig.from_pretrained(src).text_config, AutoConfig.from_pretrained(tmp_path).text_config
    assert a.rope_parameters == b.rope_parameters
    assert b.rope_scaling["mrope_section"] == a.rope_parameters["mrope_section"]
    ta, tb = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(tmp_path)
    assert ta(text)["input_ids"] == tb(text)["input_ids"]
    assert tb.pad_token == ta.pad_token and tb.eos_token == ta.eos_token
