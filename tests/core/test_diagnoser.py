"""The Diagnoser on tiny random models: loading paths, batching, hooks, errors."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from imagedoctor.core.diagnoser import Diagnoser, DiagnosisCancelled, to_pil_images
from imagedoctor.core.heatmap_head import HEAD_PREFIXES, HeatmapHead, HeatmapHeadConfig

PROMPTS = ["a red cube", "two blue balls", "a cat on a mat"]


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    # Three aspect ratios -> three different visual grids in one batch.
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")) for h, w in [(120, 200), (200, 120), (160, 160)]]


def test_batch_equals_single_calls(tiny_diagnoser, images):
    kw = dict(max_new_tokens=12, image_area=112 * 112)
    batch = tiny_diagnoser.diagnose(images, PROMPTS, **kw)
    for img, prompt, b in zip(images, PROMPTS, batch):
        [single] = tiny_diagnoser.diagnose([img], [prompt], **kw)
        assert single.raw_text == b.raw_text
        for name in ("misalignment", "artifact"):
            assert b.heatmaps[name].shape == (img.height, img.width)
            np.testing.assert_allclose(single.heatmaps[name], b.heatmaps[name], atol=1e-5)
        assert (b.width, b.height, b.prompt) == (img.width, img.height, prompt)


def test_heatmap_uses_state_predicting_task_token(tiny_diagnoser, images):
    """Force a <MIS> into the output: the head must read the state that predicted it."""
    from imagedoctor.core.generation import GenerationOutput

    dg = tiny_diagnoser
    mis, art = dg.task_token_ids["misalignment"], dg.task_token_ids["artifact"]
    seq = torch.tensor([[5, mis, 7, art, 9]])
    states = torch.randn(1, 5, dg.model.config.text_config.hidden_size)
    grid = torch.tensor([[1, 4, 6]])
    visual = [torch.randn(6, dg.model.config.vision_config.out_hidden_size)]
    from imagedoctor.core import Diagnosis

    d = Diagnosis(width=60, height=40)
    dg.attach_heatmaps([d], GenerationOutput(seq, [5], states, visual), grid, [(60, 40)])
    [(m_ref, a_ref)] = dg.decode_heatmaps(states[:, [1, 3]], visual, grid, [(60, 40)])
    np.testing.assert_allclose(d.heatmaps["misalignment"], m_ref)
    np.testing.assert_allclose(d.heatmaps["artifact"], a_ref)
    assert not d.problems


def test_published_layout_loads_head_by_name(tiny_model_dir, tmp_path, images):
    """Upstream layout: one model.safetensors, transformers-4.49 key names, head tensors inside."""
    legacy = tmp_path / "legacy"
    shutil.copytree(tiny_model_dir, legacy)
    tensors = {}
    for f in legacy.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():
                name = k.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
                tensors[name] = sf.get_tensor(k)
        f.unlink()
    (legacy / "model.safetensors.index.json").unlink()
    assert any(k.startswith("visual.") for k in tensors) and any(k.startswith("heatmap.") for k in tensors)
    save_file(tensors, str(legacy / "model.safetensors"), metadata={"format": "pt"})
    original = Diagnoser.from_pretrained(tiny_model_dir, dtype="fp32", device="cpu")
    loaded = Diagnoser.from_pretrained(legacy, dtype="fp32", device="cpu")
    assert loaded.load_report.has_head and not loaded.load_report.missing_head_keys
    for k, v in original.head.state_dict().items():
        assert torch.equal(v, loaded.head.state_dict()[k]), k
    a = original.diagnose(images[:1], PROMPTS[:1], max_new_tokens=8, image_area=112 * 112)[0]
    b = loaded.diagnose(images[:1], PROMPTS[:1], max_new_tokens=8, image_area=112 * 112)[0]
    assert a.raw_text == b.raw_text
    np.testing.assert_allclose(a.heatmaps["artifact"], b.heatmaps["artifact"], atol=1e-6)


def test_head_shape_mismatch_is_a_clear_error(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["heatmap_head"]["embed_dim"] = 64
    cfg["heatmap_head"]["mlp_dim"] = 64
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="heatmap head weights do not match"):
        Diagnoser.from_pretrained(bad, device="cpu")


def test_published_head_dimensions():
    head = HeatmapHead(HeatmapHeadConfig())
    sd = head.state_dict()
    assert all(k.split(".")[0] + "." in HEAD_PREFIXES for k in sd)
    assert sd["text_hidden_fcs.0.0.weight"].shape == (2048, 2048) and sd["text_hidden_fcs.0.2.weight"].shape == (768, 2048)
    assert sd["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].shape == (2, 384)
    assert sd["heatmap.output_upscaling.deconv_layers.3.0.weight"].shape == (384, 192, 3, 3)
    assert sd["heatmap.output_upscaling.last_conv1.weight"].shape == (192, 192, 3, 3)
    assert sd["heatmap.output_hypernetworks_mlps.0.layers.2.weight"].shape == (192, 768)
    assert sd["heatmap.transformer.layers.1.cross_attn_token_to_image.q_proj.weight"].shape == (384, 768)
    assert sd["heatmap.output_upscaling.conv_layers.2.scale"].shape == (768, 1, 1)


def test_head_any_grid():
    torch.manual_seed(0)
    head = HeatmapHead(HeatmapHeadConfig(text_dim=16, image_dim=8, embed_dim=32, mlp_dim=32, num_heads=2)).eval()
    with torch.no_grad():
        out = head(torch.randn(3, 16), torch.randn(3, 5 * 7, 8), (5, 7))
    assert out.shape == (3, 80, 112) and float(out.min()) >= 0 and float(out.max()) <= 1
    with pytest.raises(ValueError, match="do not fill"):
        head(torch.randn(1, 16), torch.randn(1, 30, 8), (5, 7))


def test_progress_and_cancel(tiny_diagnoser, images):
    seen = []
    tiny_diagnoser.diagnose(images, PROMPTS, max_new_tokens=6, batch_size=2, image_area=112 * 112,
                            progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (12, 12) and all(t == 12 for _, t in seen) and seen == sorted(seen)
    calls = []
    with pytest.raises(DiagnosisCancelled):
        tiny_diagnoser.diagnose(images, PROMPTS, max_new_tokens=50, image_area=112 * 112,
                                should_cancel=lambda: calls.append(1) or len(calls) >= 3)
    assert len(calls) == 3


def test_sampling_seed_is_reproducible(tiny_diagnoser, images):
    kw = dict(max_new_tokens=10, do_sample=True, temperature=1.5, image_area=112 * 112)
    a = tiny_diagnoser.diagnose(images[:2], PROMPTS[:2], seed=3, **kw)
    b = tiny_diagnoser.diagnose(images[:2], PROMPTS[:2], seed=3, **kw)
    assert [d.raw_text for d in a] == [d.raw_text for d in b]


def test_qwen3_family_without_head(tiny_qwen3_dir, images):
    dg = Diagnoser.from_pretrained(tiny_qwen3_dir, dtype="fp32", device="cpu")
    assert (dg.family, dg.format, dg.head) == ("qwen3_vl", "sdg", None)
    assert "no heatmap head" in dg.load_report.notes[0]
    ds = dg.diagnose(images, PROMPTS, max_new_tokens=8)
    assert all(d.format == "sdg" and d.heatmaps == {"misalignment": None, "artifact": None} for d in ds)


def test_input_conversion_and_errors(tiny_diagnoser):
    t = torch.rand(2, 20, 30, 4)
    assert [im.size for im in to_pil_images(t)] == [(30, 20), (30, 20)]
    assert to_pil_images(np.zeros((5, 6), np.uint8))[0].mode == "RGB"
    with pytest.raises(ValueError, match=r"shape \(5, 6, 2\)"):
        to_pil_images(np.zeros((5, 6, 2)))
    with pytest.raises(ValueError, match="NaN"):
        to_pil_images(np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="empty batch"):
        to_pil_images([])
    img = Image.new("RGB", (32, 32))
    with pytest.raises(ValueError, match="2 prompts for 1 images"):
        tiny_diagnoser.diagnose([img], ["a", "b"])
    with pytest.raises(ValueError, match="unknown format"):
        tiny_diagnoser.diagnose([img], "a", format="xml")


def test_loading_errors(tmp_path, tiny_model_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Diagnoser.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        Diagnoser.from_pretrained("example-org/not-in-the-cache")  # hub id form, offline: clear error
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_model_dir / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="pickled"):
        Diagnoser.from_pretrained(pickled)


def test_save_pretrained_round_trip(tiny_diagnoser, tmp_path, images):
    out = tiny_diagnoser.save_pretrained(tmp_path / "copy")
    again = Diagnoser.from_pretrained(out, dtype="fp32", device="cpu")
    a = tiny_diagnoser.diagnose(images[:1], PROMPTS[:1], max_new_tokens=6, image_area=112 * 112)[0]
    b = again.diagnose(images[:1], PROMPTS[:1], max_new_tokens=6, image_area=112 * 112)[0]
    assert a.raw_text == b.raw_text
    assert not list(tmp_path.glob(".copy.*")), "temporary folders must not be left behind"


def test_lora_adapter_folder_loads_onto_its_base(tiny_model_dir, tmp_path, images):
    """A peft adapter folder (+ head tensors) loads as base + merged adapter, same outputs as merging by hand."""
    import copy

    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file as save_st

    from imagedoctor.core.diagnoser import HEAD_FILE

    base = Diagnoser.from_pretrained(tiny_model_dir, dtype="fp32", device="cpu")
    torch.manual_seed(0)
    peft_model = get_peft_model(copy.deepcopy(base.model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                                       init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    head_sd = {k: v + 0.01 for k, v in base.head.state_dict().items()}
    save_st(head_sd, str(adapter / HEAD_FILE))
    loaded = Diagnoser.from_pretrained(adapter, dtype="fp32", device="cpu", base_model=tiny_model_dir)
    assert "merged into base" in loaded.load_report.notes[-1]
    merged = peft_model.merge_and_unload()
    for k, v in merged.state_dict().items():
        assert torch.allclose(v, loaded.model.state_dict()[k], atol=1e-6), k
    for k, v in head_sd.items():
        assert torch.equal(v, loaded.head.state_dict()[k])
    d = loaded.diagnose(images[:1], PROMPTS[:1], max_new_tokens=6, image_area=112 * 112)[0]
    assert d.heatmaps["artifact"] is not None


@pytest.mark.parametrize("decoder", ["hf", "static"])
def test_vision_placeholders_are_never_generated(tiny_diagnoser, images, decoder, monkeypatch):
    ids = tiny_diagnoser.vision_token_ids
    assert len(ids) == 4
    # raw_text is decoded with skip_special_tokens, which would hide a sampled placeholder: check the ids
    # `diagnose` generated instead (captured from the core decoder it calls).
    import imagedoctor.core.diagnoser as diagnoser_module

    generated = []
    real = diagnoser_module.decode

    def capture(*args, **kwargs):
        out = real(*args, **kwargs)
        generated.append(out.sequences.clone())
        return out

    monkeypatch.setattr(diagnoser_module, "decode", capture)
    ds = tiny_diagnoser.diagnose(images, PROMPTS, max_new_tokens=24, do_sample=True, temperature=5.0, seed=1,
                                 image_area=112 * 112, decoder=decoder)
    tok = tiny_diagnoser.processor.tokenizer
    assert len(ds) == len(images) and generated and sum(g.shape[0] for g in generated) == len(images)
    for seqs in generated:
        assert seqs.numel() > 0 and not torch.isin(seqs, torch.tensor(ids)).any()
    from imagedoctor.core.generation import generate_batch

    inputs, _, _ = tiny_diagnoser.build_inputs(images, PROMPTS, image_area=112 * 112)
    out = generate_batch(tiny_diagnoser.model, inputs, max_new_tokens=24, suppress_token_ids=ids,
                         eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id, do_sample=True,
                         temperature=5.0, seed=2)
    assert not torch.isin(out.sequences, torch.tensor(ids)).any()
