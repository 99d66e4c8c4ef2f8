"""Every node called the way ComfyUI calls it (V1 and V3), plus the bad-input matrix."""

import json
import sys

import numpy as np
import pytest
import torch

from imagedoctor.core.diagnosis import Diagnosis
from imagedoctor.nodes import registry
from imagedoctor.nodes.comfy_types import ComfyInputError
from imagedoctor.nodes.models import DiagnosisModel
from idoc_helpers import FakeVAE, call_v1, call_v3, make_diag

IDS = sorted(registry.NODE_CLASS_MAPPINGS)


def node(key):
    return registry.NODE_CLASS_MAPPINGS["ImageDoctor" + key]


# --------------------------------------------------------------------------- schema conventions
def test_registry_exports_and_conventions():
    import imagedoctor

    assert imagedoctor.NODE_CLASS_MAPPINGS is registry.NODE_CLASS_MAPPINGS
    assert set(registry.NODE_DISPLAY_NAME_MAPPINGS) == set(IDS) and len(IDS) == 10
    assert registry.API == "v1"  # comfy_api not importable here -> classic classes
    assert imagedoctor.WEB_DIRECTORY == "./web"
    for key, cls in registry.NODE_CLASS_MAPPINGS.items():
        assert cls.CATEGORY.startswith("ImageDoctor"), key
        types = cls.INPUT_TYPES()
        for section in types.values():
            for name, spec in section.items():
                assert spec[1].get("tooltip"), f"{key}.{name} has no tooltip"
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)


def test_v3_classes_built_when_comfy_api_importable(v3_nodes):
    import asyncio

    import imagedoctor

    io = sys.modules["comfy_api.latest.io"]
    assert v3_nodes.API == "v3"
    classes = v3_nodes.NODE_CLASS_MAPPINGS
    assert len(classes) == 10
    for key, cls in classes.items():
        assert issubclass(cls, io.ComfyNode) and not hasattr(cls, "INPUT_TYPES")
        schema = cls.define_schema()
        schema.validate()
        assert schema.node_id == key and schema.category.startswith("ImageDoctor")
        assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)
    diag = classes["ImageDoctorDiagnose"].define_schema()
    assert [o.io_type for o in diag.outputs][:2] == ["DIAGNOSIS", "FLOAT"]
    seed = next(i for i in diag.inputs if i.id == "seed")
    assert seed.control_after_generate is False  # a greedy default must not re-run on every queue
    refine = classes["ImageDoctorRefineDefects"].define_schema()
    assert next(i for i in refine.inputs if i.id == "segs").Parent is io.SEGS  # the API's own SEGS type
    ext = asyncio.run(imagedoctor.comfy_entrypoint())
    assert asyncio.run(ext.get_node_list()) == v3_nodes.NODES


def test_v1_fallback_hooks_only_where_defined():
    """An old ComfyUI treats a present IS_CHANGED as 'check every run': only nodes that fingerprint have it."""
    with_fp = {k for k, c in registry.NODE_CLASS_MAPPINGS.items() if hasattr(c, "IS_CHANGED")}
    assert with_fp == {"ImageDoctorLoadDiagnosisModel", "ImageDoctorLoadDiagnosis"}
    with_val = {k for k, c in registry.NODE_CLASS_MAPPINGS.items() if hasattr(c, "VALIDATE_INPUTS")}
    assert with_val == {"ImageDoctorLoadDiagnosisModel", "ImageDoctorDiagnose", "ImageDoctorBestOfN",
                        "ImageDoctorSaveDiagnosis", "ImageDoctorLoadDiagnosis"}


# --------------------------------------------------------------------------- happy paths, V1 + V3
@pytest.mark.parametrize("api", ["v1", "v3"])
def test_best_of_n(api, batch, request):
    images, diags = batch
    before = images.clone()
    if api == "v3":
        cls = request.getfixturevalue("v3_nodes").NODE_CLASS_MAPPINGS["ImageDoctorBestOfN"]
        (best, idx, top, table), ui = call_v3(cls, images=images, diagnosis=diags, top_k=3)
    else:
        (best, idx, top, table), ui = call_v1(node("BestOfN"), images=images, diagnosis=diags, top_k=3)
    panel = ui["imagedoctor"][0]
    assert panel["kind"] == "ranking" and [r["index"] for r in panel["rows"]] == [1, 3, 2, 0]
    assert panel["rows"][0]["scores"]["overall"] == 0.9 and panel["top_k"] == [1, 3, 2]
    assert idx == 1 and best.shape == (1, 48, 64, 3) and torch.equal(best[0], images[1])
    assert top.shape[0] == 3 and torch.equal(top[1], images[3]) and torch.equal(top[2], images[2])
    assert "rank" in table
    assert torch.equal(images, before)
    (_, idx2, _, _), _ = call_v1(node("BestOfN"), images=images, diagnosis=diags, criterion="defect_penalty",
                                 penalty=0.5)
    assert idx2 == 1


def test_defect_mask_and_segs(batch):
    images, diags = batch
    (mask,), _ = call_v1(node("DefectMask"), diagnosis=diags, source="boxes")
    assert mask.shape == (4, 48, 64) and mask[0, 10, 10] == 1 and mask[1].sum() == 0
    (soft,), _ = call_v1(node("DefectMask"), diagnosis=diags, source="both", weighting="importance", grow=2,
                         feather=3.0)
    from imagedoctor.core.masks import defect_mask

    for i, d in enumerate(diags):  # the node adds nothing to the core's mask: same values, not just in range
        np.testing.assert_array_equal(soft[i].numpy(), defect_mask(d, "both", None, 0, 0.5, "importance", 2, 3.0))
    (boxes,), _ = call_v1(node("DefectMask"), diagnosis=diags, source="boxes", weighting="importance", grow=2,
                          feather=3.0)
    assert float(boxes[0, 12, 12]) == pytest.approx(0.8, abs=1e-6)  # inside image 0's box: importance 80/100
    assert float(boxes[0, 40, 50]) == 0.0 and float(boxes[1].max()) == 0.0  # far from it, and no defects: 0
    (segs,), _ = call_v1(node("DefectsToSEGS"), image=images, diagnosis=diags, crop_factor=2.0)
    (h, w), items = segs
    assert (h, w) == (48, 64) and len(items) == 1
    seg = items[0]
    assert seg._fields == ("cropped_image", "cropped_mask", "confidence", "crop_region", "bbox", "label",
                           "control_net_wrapper")
    x0, y0, x1, y1 = seg.crop_region
    assert seg.cropped_mask.shape == (y1 - y0, x1 - x0) and seg.cropped_image.shape == (1, y1 - y0, x1 - x0, 3)
    assert seg.label == "artifact" and seg.confidence == pytest.approx(0.8) and seg.bbox == [4, 4, 20, 20]
    (segs2,), _ = call_v1(node("DefectsToSEGS"), image=images, diagnosis=diags, batch_index=3, drop_size=12)
    assert segs2[1] == []  # the 10px box is dropped


def test_overlays(batch):
    images, diags = batch
    (hm,), _ = call_v1(node("HeatmapOverlay"), images=images, diagnosis=diags, heatmap="artifact", alpha=0.8)
    assert hm.shape == images.shape and not torch.equal(hm, images)
    (bx,), _ = call_v1(node("DefectBoxesOverlay"), images=images, diagnosis=diags, min_importance=50)
    assert bx.shape == images.shape
    assert torch.allclose(bx[1], images[1], atol=1 / 255)  # image 1 has no defects: unchanged
    assert not torch.allclose(bx[0], images[0], atol=1 / 255)


def test_save_diagnosis(comfy, batch):
    _, diags = batch
    (path,), ui = call_v1(node("SaveDiagnosis"), diagnosis=diags, filename_prefix="sub/run")
    full = comfy.base / "output" / path
    assert full.is_file() and path.startswith("sub")
    data = json.loads(full.read_text())
    assert len(data) == 4 and Diagnosis.from_dict(data[0]).defects[0].importance == 80
    assert "saved 4" in ui["text"][0]
    assert ui["imagedoctor"] == [{"kind": "saved", "path": path, "count": 4}]
    assert not list((comfy.base / "output" / "sub").glob("*.tmp"))
    (path2,), _ = call_v1(node("SaveDiagnosis"), diagnosis=diags, filename_prefix="sub/run", heatmaps="none")
    assert path2 != path and json.loads((comfy.base / "output" / path2).read_text())[0]["heatmaps"]["artifact"] is None
    (back,), _ = call_v1(node("LoadDiagnosis"), source=path)  # round trip through the file
    assert len(back) == 4
    assert back[0].defects == diags[0].defects and back[2].scores == diags[2].scores
    (one,), _ = call_v1(node("LoadDiagnosis"), source=diags[1].to_json())
    assert len(one) == 1 and one[0].scores.overall == 0.9


def test_refine_node_through_comfy_sampler_interface(comfy, batch):
    """The ComfyUI inpaint callable (VAE encode -> noise mask -> common_ksampler -> decode) inside
    core.refine, with a programmatic diagnoser standing in for the model (fast, deterministic)."""
    images, diags = batch

    class Oracle:  # a Diagnoser-shaped object: scores improve as region (4..20) gets greyer
        def diagnose(self, imgs, prompts, **kw):
            out = []
            for im in imgs:
                dev = float((im[4:20, 4:20] - 0.5).abs().mean())
                out.append(Diagnosis(64, 48, scores={"overall": max(0.0, 1 - dev)}, prompt=prompts[0]))
            return out

    dm = DiagnosisModel.from_diagnoser(Oracle())
    cls = node("RefineDefects")
    images1, diags1 = images[:1], diags[:1]
    (out, final, log), ui = call_v1(cls, diagnosis_model=dm, image=images1, diagnosis=diags1, model=object(),
                                    vae=FakeVAE(), positive=[], negative=[], guide_size=64, steps=2)
    assert out.shape == images1.shape and "accepted" in log and final[0].scores.overall > 0.9
    assert comfy.ksampler_calls and comfy.ksampler_calls[0]["steps"] == 2
    assert not torch.equal(out, images1)
    panel = ui["imagedoctor"][0]
    assert panel["kind"] == "refine" and panel["images"] == [{"image": 0, "accepted": 1, "rejected": 0}]
    step = panel["steps"][0]
    assert step["verdict"] == "accepted" and step["after"] > step["before"] and step["box"] == [4.0, 4.0, 20.0, 20.0]


def test_refine_takes_impact_segs_as_regions(comfy, batch):
    """A SEGS input (Impact Pack's detectors) replaces the defects as regions; the diagnosis decides."""
    from imagedoctor.nodes.masking import _SEG

    images, diags = batch
    seen = []

    class Oracle:
        def diagnose(self, imgs, prompts, **kw):
            seen.append(imgs.shape)
            dev = float((imgs[0][30:40, 40:56] - 0.5).abs().mean())
            return [Diagnosis(64, 48, scores={"overall": max(0.0, 1 - dev)}, prompt=prompts[0])]

    dm = DiagnosisModel.from_diagnoser(Oracle())
    seg = _SEG(None, None, 0.9, [36, 26, 60, 44], [40, 30, 56, 40], "hand")
    no_defects = [make_diag(overall=0.1, defects=[])]
    (out, _, log), ui = call_v1(node("RefineDefects"), diagnosis_model=dm, image=images[:1], diagnosis=no_defects,
                                model=object(), vae=FakeVAE(), positive=[], negative=[], guide_size=64, steps=1,
                                segs=((48, 64), [seg]), crop_factor=1.5)
    step = ui["imagedoctor"][0]["steps"][0]
    assert step["box"] == [40.0, 30.0, 56.0, 40.0] and step["importance"] == 90 and "hand" in step["reason"]
    assert step["verdict"] == "accepted" and len(seen) == 1
    changed = (out[0] - images[0]).abs().sum(-1) > 1e-6
    assert changed[30:40, 40:56].all() and not changed[:20, :30].any()  # only the SEG's region was inpainted
    with pytest.raises(ComfyInputError, match="describes a 32x32 image"):
        call_v1(node("RefineDefects"), diagnosis_model=dm, image=images[:1], diagnosis=no_defects, model=object(),
                vae=FakeVAE(), positive=[], negative=[], segs=((32, 32), [seg]))


# --------------------------------------------------------------------------- the tiny model
@pytest.fixture
def loaded(comfy, tiny_model_dir):
    comfy.folder_paths.add_model_folder_path("imagedoctor", str(tiny_model_dir.parent))
    return comfy


def test_loader_lists_and_loads_lazily(loaded, tiny_model_dir):
    cls = node("LoadDiagnosisModel")
    options = cls.INPUT_TYPES()["required"]["model_name"][0]
    assert tiny_model_dir.name in options
    (dm,), _ = call_v1(cls, model_name=tiny_model_dir.name, dtype="fp32", keep_loaded=False)
    assert isinstance(dm, DiagnosisModel) and not dm.loaded and dm.local_files_only
    assert dm.source == str(tiny_model_dir)
    with pytest.raises(ComfyInputError, match="no model folder 'nope'.*Put a saved diagnoser folder"):
        call_v1(cls, model_name="nope")
    assert cls.VALIDATE_INPUTS(model_name=tiny_model_dir.name) is True
    assert "no model folder 'nope'" in cls.VALIDATE_INPUTS(model_name="nope")
    assert cls.VALIDATE_INPUTS(model_name="nope", hf_id="org/model") is True  # checked when it runs


def test_loader_checks_the_folder_when_it_runs(loaded, tmp_path):
    """A broken folder or an uncached hub id is reported on the loader, with the fix."""
    root = loaded.base / "models" / "imagedoctor"
    (root / "noweights").mkdir(parents=True)
    (root / "noweights" / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    (root / "llama").mkdir()
    (root / "llama" / "config.json").write_text('{"model_type": "llama"}')
    (root / "llama" / "model.safetensors").write_bytes(b"")
    cls = node("LoadDiagnosisModel")
    with pytest.raises(ComfyInputError, match="no .safetensors weights"):
        call_v1(cls, model_name="noweights")
    with pytest.raises(ComfyInputError, match="holds a 'llama' model"):
        call_v1(cls, model_name="llama")
    with pytest.raises(ComfyInputError, match="not in the local Hugging Face cache. Turn on allow_download"):
        call_v1(cls, model_name="", hf_id="imagedoctor-test/never-cached")


def test_loader_fingerprint_follows_the_files(loaded, tiny_model_dir):
    import os

    cls = node("LoadDiagnosisModel")
    before = cls.IS_CHANGED(model_name=tiny_model_dir.name, hf_id="")
    weights = next(tiny_model_dir.glob("*.safetensors"))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cls.IS_CHANGED(model_name=tiny_model_dir.name, hf_id="") != before


def test_diagnose_with_tiny_model(loaded, tiny_model_dir):
    (dm,), _ = call_v1(node("LoadDiagnosisModel"), model_name=tiny_model_dir.name, dtype="fp32",
                       keep_loaded=False)
    images = torch.rand(2, 40, 56, 4)  # RGBA: converted
    before = images.clone()
    out, ui = call_v1(node("Diagnose"), model=dm, images=images, prompt="a cat\na dog", per_line_prompts=True,
                      max_new_tokens=12)
    diags, a, b, c, o, table, mis, art, ov = out
    assert len(diags) == 2 and diags[1].prompt == "a dog" and (diags[0].width, diags[0].height) == (56, 40)
    assert diags[0].format == "imagedoctor"  # format auto = the checkpoint's (a Qwen2.5-VL ImageDoctor layout)
    assert mis.shape == art.shape == (2, 40, 56) and ov.shape == (2, 40, 56, 3)
    for value, name in zip((a, b, c, o), ("alignment", "aesthetics", "plausibility", "overall")):
        expected = diags[0].scores[name]  # the first image's parsed score, or -1 when it gave none
        assert value == (-1.0 if expected is None else expected)
    for i in range(2):  # the heatmap outputs are the diagnosis' own maps
        for name, out_map in (("misalignment", mis), ("artifact", art)):
            hm = diags[i].heatmaps[name]
            np.testing.assert_array_equal(out_map[i].numpy(), np.zeros((40, 56)) if hm is None else hm)
    assert table.count("\n") == 2
    assert len(ui["images"]) == 2 and ui["text"] == [table]
    panel = ui["imagedoctor"][0]
    assert panel["kind"] == "diagnose" and panel["format"] == "imagedoctor" and panel["mode"] == "full"
    assert [im["full"] for im in panel["images"]] == [True, True]
    assert [im["scores"]["overall"] for im in panel["images"]] == [d.scores.overall for d in diags]
    json.dumps(ui)  # the history stores it as JSON
    assert loaded.progress and loaded.progress[-1].current > 0
    assert not dm.loaded  # keep_loaded=False really unloads
    assert torch.equal(images, before)


def test_diagnose_greedy_ignores_seed_and_sampling_uses_it(loaded, tiny_diagnoser):
    dm = DiagnosisModel.from_diagnoser(tiny_diagnoser)
    images = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(1))

    def raw(**kw):
        (diags, *_), _ = call_v1(node("Diagnose"), model=dm, images=images, prompt="a cube", max_new_tokens=24, **kw)
        return diags[0].raw_text

    assert raw(seed=1) == raw(seed=2)  # greedy: the seed changes nothing
    assert raw(sampling="sample", seed=5) == raw(sampling="sample", seed=5)
    assert len({raw(sampling="sample", seed=s) for s in range(4)}) > 1


def test_diagnose_modes(loaded, tiny_diagnoser):
    dm = DiagnosisModel.from_diagnoser(tiny_diagnoser)
    images = torch.rand(3, 32, 40, 3, generator=torch.Generator().manual_seed(2))
    calls = []
    real = tiny_diagnoser.diagnose

    def spy(imgs, prompts, **kw):
        calls.append((len(prompts), kw.get("think", True)))  # True: diagnose's default
        return real(imgs, prompts, **kw)

    tiny_diagnoser.diagnose = spy
    try:
        _, ui = call_v1(node("Diagnose"), model=dm, images=images, prompt="a cube", max_new_tokens=8,
                        mode="scores only (fast)")
        assert calls == [(3, False)] and [im["full"] for im in ui["imagedoctor"][0]["images"]] == [False] * 3
        calls.clear()
        (diags, *_), ui = call_v1(node("Diagnose"), model=dm, images=images, prompt="a cube", max_new_tokens=8,
                                  mode="fast ranking, full top-K", top_k=1)
    finally:
        del tiny_diagnoser.diagnose
    panel = ui["imagedoctor"][0]
    assert calls == [(3, False), (1, True)]  # all three scored, only the best one diagnosed in full
    assert sorted(panel["order"]) == [0, 1, 2]
    assert [im["full"] for im in panel["images"]] == [i == panel["order"][0] for i in range(3)]
    with pytest.raises(ComfyInputError, match="needs scores"):
        call_v1(node("Diagnose"), model=dm, images=images, prompt="x", format="sdg", mode="scores only (fast)")


def test_diagnose_validate_inputs():
    v = node("Diagnose").VALIDATE_INPUTS
    assert v(prompt="a cat") is True and v(prompt=None) is True  # None: linked, known only at run time
    assert "prompt is empty" in v(prompt="  ")
    assert "SDG-format models give none" in v(prompt="x", format="sdg", mode="fast ranking, full top-K")
    assert "mode must be one of" in v(prompt="x", mode="fastest")
    b = node("BestOfN").VALIDATE_INPUTS
    assert b(criterion="weighted") is True
    assert "at least one weight" in b(criterion="weighted", w_alignment=0, w_aesthetics=0, w_plausibility=0,
                                      w_overall=0)
    assert "between 0 and 10" in b(w_overall=11)
    assert "relative name" in node("SaveDiagnosis").VALIDATE_INPUTS(filename_prefix="/etc/x")
    assert "no file" in node("LoadDiagnosis").VALIDATE_INPUTS(source="nothing_here.json")


def test_load_diagnosis_fingerprint_follows_the_file(comfy, batch):
    import os

    _, diags = batch
    (path,), _ = call_v1(node("SaveDiagnosis"), diagnosis=diags, filename_prefix="fp/run")
    cls = node("LoadDiagnosis")
    before = cls.IS_CHANGED(source=path)
    full = comfy.base / "output" / path
    st = full.stat()
    os.utime(full, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cls.IS_CHANGED(source=path) != before
    assert cls.IS_CHANGED(source='{"a": 1}') == '{"a": 1}'


def test_diagnose_interrupt(loaded, tiny_diagnoser):
    dm = DiagnosisModel.from_diagnoser(tiny_diagnoser)
    loaded.interrupted = True
    mm = sys.modules["comfy.model_management"]
    with pytest.raises(mm.InterruptProcessingException):
        call_v1(node("Diagnose"), model=dm, images=torch.rand(1, 32, 32, 3), prompt="x", max_new_tokens=8)


def test_diagnose_v3_with_tiny(v3_nodes, comfy, tiny_diagnoser):
    from imagedoctor.nodes.models import DiagnosisModel as V3Handle  # the re-imported module's class

    cls = v3_nodes.NODE_CLASS_MAPPINGS["ImageDoctorDiagnose"]
    args, ui = call_v3(cls, model=V3Handle.from_diagnoser(tiny_diagnoser), images=torch.rand(1, 32, 40, 3),
                       prompt="a cube", max_new_tokens=8)
    assert len(args) == 9 and isinstance(args[0][0], Diagnosis) and "images" in ui and "imagedoctor" in ui


# --------------------------------------------------------------------------- bad inputs
def _bad_cases(images, diags):
    B = images.shape[0]
    nan = images.clone()
    nan[0, 0, 0, 0] = float("nan")
    other = [make_diag(32, 32)] * B
    return [
        ("BestOfN", dict(images=images[0, :, :, 0], diagnosis=diags), "must be an IMAGE"),
        ("BestOfN", dict(images=images[:0], diagnosis=diags), "empty batch"),
        ("BestOfN", dict(images=images[:3], diagnosis=diags), "has 4 diagnoses"),
        ("BestOfN", dict(images=nan, diagnosis=diags), "NaN"),
        ("BestOfN", dict(images=images, diagnosis=other), "describes a 32x32"),
        ("BestOfN", dict(images=images, diagnosis=[]), "empty DIAGNOSIS"),
        ("BestOfN", dict(images=images, diagnosis="x"), "must be a DIAGNOSIS"),
        ("BestOfN", dict(images=torch.rand(4, 48, 64, 5), diagnosis=diags), r"shape \[4, 48, 64, 5\]"),
        ("HeatmapOverlay", dict(images=images[:3], diagnosis=diags), "has 4 diagnoses but the image batch has 3"),
        ("HeatmapOverlay", dict(images=images, diagnosis=diags, heatmap="sky"), "heatmap"),
        ("DefectBoxesOverlay", dict(images=torch.rand(4, 10, 10, 3), diagnosis=diags), "describes a 64x48"),
        ("DefectMask", dict(diagnosis=[]), "empty DIAGNOSIS"),
        ("DefectMask", dict(diagnosis=diags + [make_diag(32, 32)]), "different sizes"),
        ("DefectMask", dict(diagnosis=diags, source="pixels"), "source"),
        ("DefectsToSEGS", dict(image=images, diagnosis=diags, batch_index=9), "batch_index"),
        ("DefectsToSEGS", dict(image=nan, diagnosis=diags), "NaN"),
        ("SaveDiagnosis", dict(diagnosis=diags, filename_prefix="../x"), "relative"),
        ("Diagnose", dict(model="m", images=images, prompt="x"), "DIAGNOSIS_MODEL"),
        ("Diagnose", dict(model=DiagnosisModel("x"), images=images, prompt="a\nb", per_line_prompts=True),
         "2 prompts but the image batch has 4"),
        ("Diagnose", dict(model=DiagnosisModel("x"), images=images[:0], prompt="x"), "empty batch"),
        ("Diagnose", dict(model=DiagnosisModel("x"), images=torch.rand(2, 3, 8), prompt="x"), "must be an IMAGE"),
        ("Diagnose", dict(model=DiagnosisModel("x"), images=images, prompt=["a", "b"]), "2 prompts"),
        ("RefineDefects", dict(diagnosis_model=DiagnosisModel("x"), image=images[:2], diagnosis=diags, model=None,
                               vae=None, positive=[], negative=[]), "has 4 diagnoses but the image batch has 2"),
        ("LoadDiagnosisModel", dict(model_name="x", dtype="int4"), "dtype"),
        ("LoadDiagnosis", dict(source="../../etc/passwd"), "no file"),
        ("LoadDiagnosis", dict(source='{"schema": "other/1"}'), "not valid diagnosis JSON"),
        ("LoadDiagnosis", dict(source="[]"), "empty list"),
    ]


@pytest.mark.parametrize("case", range(27))
def test_bad_input_matrix(case, comfy, batch):
    images, diags = batch
    cases = _bad_cases(images, diags)
    assert len(cases) == 27
    key, kwargs, msg = cases[case]
    with pytest.raises(ComfyInputError, match=msg):
        call_v1(node(key), **kwargs)


def test_mask_helper_bad_inputs():
    from imagedoctor.nodes.comfy_types import mask_batch

    assert mask_batch(torch.zeros(8, 9)).shape == (1, 8, 9)  # [H,W] accepted
    assert mask_batch(torch.zeros(1, 8, 9), batch=3).shape == (3, 8, 9)
    with pytest.raises(ComfyInputError, match="is 9x8"):
        mask_batch(torch.zeros(2, 8, 9), size=(16, 16))
    with pytest.raises(ComfyInputError, match="batch size 2"):
        mask_batch(torch.zeros(2, 8, 9), batch=3)
    with pytest.raises(ComfyInputError, match="NaN"):
        mask_batch(torch.full((8, 9), float("nan")))
    with pytest.raises(ComfyInputError, match="MASK"):
        mask_batch(torch.zeros(1, 1, 8, 9))


def test_keep_loaded_sessions_nest(loaded, tiny_model_dir):
    (dm,), _ = call_v1(node("LoadDiagnosisModel"), model_name=tiny_model_dir.name, dtype="fp32", keep_loaded=False)
    import gc
    import weakref

    with dm.session() as outer:
        with dm.session() as inner:
            assert inner is outer
        assert dm.loaded  # the inner session must not unload under the outer one
        weights = weakref.ref(outer.model)
        del outer, inner
    assert not dm.loaded
    gc.collect()
    assert weights() is None  # keep_loaded=False really frees the weights
    (kept,), _ = call_v1(node("LoadDiagnosisModel"), model_name=tiny_model_dir.name, dtype="fp32", keep_loaded=True)
    with kept.session():
        pass
    assert kept.loaded
    kept.unload()
    assert not kept.loaded


def test_refine_node_with_tiny_diagnoser(comfy, tiny_diagnoser, batch):
    images, diags = batch
    dm = DiagnosisModel.from_diagnoser(tiny_diagnoser)
    (out, final, log), ui = call_v1(node("RefineDefects"), diagnosis_model=dm, image=images[:1],
                                    diagnosis=diags[:1], model=object(), vae=FakeVAE(), positive=[], negative=[],
                                    guide_size=64, steps=1, max_new_tokens=16)
    assert out.shape == (1, 48, 64, 3) and len(final) == 1 and "region 1/1" in log
    # the random tiny model gives no overall score, so nothing can be verified as better: rejected
    assert "rejected" in log and torch.equal(out, images[:1])
    assert "-> n/a" in log and "inf" not in log  # a missing score reads n/a
    step = ui["imagedoctor"][0]["steps"][0]
    assert step["before"] == 0.4 and step["after"] is None and step["verdict"] == "rejected"


def test_all_light_nodes_through_v3(v3_nodes, comfy, batch):
    """The same nodes built as V3 io.ComfyNode classes give the same outputs as V1."""
    images, diags = batch
    v3 = v3_nodes.NODE_CLASS_MAPPINGS
    cases = {
        "ImageDoctorDefectMask": dict(diagnosis=diags, source="both", grow=1),
        "ImageDoctorDefectsToSEGS": dict(image=images, diagnosis=diags),
        "ImageDoctorHeatmapOverlay": dict(images=images, diagnosis=diags),
        "ImageDoctorDefectBoxesOverlay": dict(images=images, diagnosis=diags),
        "ImageDoctorBestOfN": dict(images=images, diagnosis=diags, criterion="weighted"),
        "ImageDoctorSaveDiagnosis": dict(diagnosis=diags, filename_prefix="v3/run"),
        "ImageDoctorLoadDiagnosis": dict(source=diags[0].to_json()),
    }
    for key, kwargs in cases.items():
        args3, ui3 = call_v3(v3[key], **kwargs)
        args1, ui1 = call_v1(registry.NODE_CLASS_MAPPINGS[key], **kwargs)
        for a, b in zip(args3, args1):
            if isinstance(a, torch.Tensor):
                assert torch.equal(a, b), key
            elif key == "ImageDoctorLoadDiagnosis":
                assert [d.to_dict() for d in a] == [d.to_dict() for d in b]
            elif key != "ImageDoctorSaveDiagnosis" and not isinstance(a, tuple):
                assert a == b, key
        if key == "ImageDoctorBestOfN":
            assert ui3 == ui1


def test_box_caption_stays_inside_small_images():
    """A box at the right edge of a small image: the caption moves left instead of being cut."""
    from PIL import Image

    from imagedoctor.core.render import LABEL_COLOURS, draw_defects

    img = Image.new("RGB", (64, 48), (0, 0, 0))
    d = make_diag(defects=[((52, 20, 63, 40), "misalignment", "x", 77)], heatmaps=False)
    out = np.asarray(draw_defects(img, d))
    fill = np.all(out == LABEL_COLOURS["misalignment"], axis=-1)
    cols = np.where(fill[:20].any(axis=0))[0]  # the caption strip sits above the box (rows < 20)
    assert cols.min() < 52 and cols.max() <= 63  # shifted left, ends inside the image
    text = np.all(out[:20] > 200, axis=-1)
    assert text.any() and np.where(text.any(axis=0))[0].max() < 63  # white text drawn, not clipped
