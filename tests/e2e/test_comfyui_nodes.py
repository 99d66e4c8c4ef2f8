"""The pack in a real ComfyUI: loads as V3 nodes, every API workflow runs (CPU-sized), the UI
workflows open in Chromium without missing nodes or overlaps, and the web panels are drawn after a
run and again after a page reload. See conftest.py for how to run it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_harness import CHECKPOINT, EXAMPLE, EXAMPLE_DIAGNOSIS, ROOT  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "nodes"))
from test_workflows import overlaps  # noqa: E402  the same check the unit tests run on the files

API_FILES = sorted((ROOT / "workflows" / "api").glob("*.json"))
UI_FILES = sorted((ROOT / "workflows").glob("*.json"))
PANEL_NODES = {"ImageDoctorDiagnose": "diagnose", "ImageDoctorBestOfN": "ranking",
               "ImageDoctorRefineDefects": "refine", "ImageDoctorSaveDiagnosis": "saved"}
CPU_BATCH = 4


def cpu_sized(prompt: dict, tag: str) -> dict:
    """The same graph at CPU size: the tiny checkpoint, 64 px latents, 2 steps, 16 tokens; a
    unique tag in the diagnosis prompt so ComfyUI's cache does not skip the run."""
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        inp, ctype = node["inputs"], node["class_type"]
        if ctype == "CheckpointLoaderSimple":
            inp["ckpt_name"] = CHECKPOINT
        elif ctype == "EmptyLatentImage":
            inp.update(width=64, height=64, batch_size=min(int(inp["batch_size"]), CPU_BATCH))
        elif ctype == "KSampler":
            inp["steps"] = 2
        elif ctype == "ImageDoctorDiagnose":
            inp.update(max_new_tokens=16, prompt=f"{inp['prompt']} [{tag}]")
        elif ctype == "ImageDoctorRefineDefects":
            inp.update(steps=2, guide_size=64, max_new_tokens=16)
    return prompt


def _panel(outputs: dict, node_id: str) -> dict:
    return outputs[node_id]["imagedoctor"][0]


# ------------------------------------------------------------------------------ the pack
def test_pack_loads_as_native_v3_nodes(comfy_server, e2e_report):
    """Against ComfyUI's own comfy_api (not a stub): every node is an io.ComfyNode whose schema
    ComfyUI accepts, and the V3 entry point lists the same nodes."""
    probe = r"""
import asyncio, importlib.util, json, os, sys
sys.path.insert(0, sys.argv[1])
sys.argv = [sys.argv[0], "--cpu"]  # ComfyUI reads its device from the command line
import comfy.options
comfy.options.enable_args_parsing()
from comfy_api.latest import ComfyExtension, io
# the way ComfyUI's nodes.load_custom_node imports a custom-node folder
spec = importlib.util.spec_from_file_location("ImageDoctor", os.path.join(os.environ["PACK"], "__init__.py"))
mod = importlib.util.module_from_spec(spec)
sys.modules["ImageDoctor"] = mod
spec.loader.exec_module(mod)
out = {}
for key, cls in mod.NODE_CLASS_MAPPINGS.items():
    cls.GET_SCHEMA()  # ComfyUI's own schema checks
    info = cls.GET_NODE_INFO_V1()
    json.dumps(info)
    out[key] = {"v3": issubclass(cls, io.ComfyNode), "validate": "validate_inputs" in cls.__dict__,
                "fingerprint": "fingerprint_inputs" in cls.__dict__,
                "inputs": {k: v[0] if isinstance(v[0], str) else "COMBO"
                           for sec in info["input"].values() for k, v in sec.items()}}
ext = asyncio.run(mod.comfy_entrypoint())
nodes = asyncio.run(ext.get_node_list())
out["_entrypoint"] = isinstance(ext, ComfyExtension) and nodes == list(mod.NODE_CLASS_MAPPINGS.values())
print(json.dumps(out))
"""
    env = {**os.environ, "PACK": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", probe, str(comfy_server.comfyui_dir)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info.pop("_entrypoint") is True
    assert len(info) == 10 and all(v["v3"] for v in info.values())
    assert info["ImageDoctorRefineDefects"]["inputs"]["segs"] == "SEGS"
    assert {k for k, v in info.items() if v["validate"]} >= {"ImageDoctorDiagnose", "ImageDoctorLoadDiagnosisModel"}
    served = comfy_server.get("/object_info")
    ours = {k: v for k, v in served.items() if k.startswith("ImageDoctor")}
    assert set(ours) == set(info)
    seed = ours["ImageDoctorDiagnose"]["input"]["required"]["seed"][1]
    assert seed["control_after_generate"] is False
    e2e_report["versions"] = comfy_server.versions()
    e2e_report["pack_import_seconds"] = comfy_server.import_seconds()
    e2e_report["server_start_seconds"] = comfy_server.startup_seconds


def test_validation_reports_on_the_right_node(comfy_server):
    """A missing model folder fails validation on the loader, before anything runs."""
    prompt = json.loads((ROOT / "workflows" / "api" / "a_diagnose_and_preview.json").read_text())
    prompt["2"]["inputs"]["model_name"] = "no-such-model"
    with pytest.raises(AssertionError) as err:
        comfy_server.post("/prompt", {"prompt": prompt})
    text = str(err.value)
    assert "no model folder 'no-such-model'" in text and '"2"' in text


# ------------------------------------------------------------------------------ API workflows
@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.stem)
def test_api_workflow_runs(path, comfy_server, e2e_report):
    prompt = cpu_sized(json.loads(path.read_text()), f"{path.stem}-{time.time():.0f}")
    entry = comfy_server.run(prompt)
    outputs = entry["outputs"]
    out_dir = comfy_server.base / "output"
    batch = next((n["inputs"]["batch_size"] for n in prompt.values() if n["class_type"] == "EmptyLatentImage"), 1)
    checked = []
    for nid, node in prompt.items():
        ctype = node["class_type"]
        if ctype == "SaveImage":
            files = outputs[nid]["images"]
            assert files and all((out_dir / f["subfolder"] / f["filename"]).is_file() for f in files)
            checked.append(f"{ctype}: {len(files)} image(s)")
        if ctype in PANEL_NODES:
            panel = _panel(outputs, nid)
            assert panel["kind"] == PANEL_NODES[ctype]
            if ctype == "ImageDoctorSaveDiagnosis":
                saved = json.loads((out_dir / panel["path"]).read_text())
                assert len(saved) == panel["count"] == batch
            if ctype == "ImageDoctorDiagnose":
                assert len(panel["images"]) == batch and len(outputs[nid]["images"]) == batch
            if ctype == "ImageDoctorBestOfN":
                assert sorted(r["index"] for r in panel["rows"]) == list(range(batch))
            checked.append(f"{ctype}: {panel['kind']} panel")
    prefixes = [n["inputs"]["filename_prefix"] for n in prompt.values() if "filename_prefix" in n["inputs"]]
    assert len(prefixes) == len(set(prefixes))
    e2e_report["results"][f"api/{path.stem}"] = {"seconds": entry["seconds"], "checked": checked}


def test_refine_with_known_defects_and_segs(comfy_server, e2e_report):
    """Refine Defects on a scene with known defects (Load Diagnosis of its ground truth), once on
    the diagnosis' defects and once on SEGS from Defects to SEGS (Impact Pack's format)."""
    gt = json.loads((comfy_server.base / "input" / EXAMPLE_DIAGNOSIS).read_text())
    common = dict(model=["3", 0], vae=["3", 2], positive=["4", 0], negative=["5", 0], diagnosis_model=["6", 0],
                  image=["1", 0], diagnosis=["2", 0], seed=1, steps=2, cfg=7.0, sampler_name="euler",
                  scheduler="normal", denoise=0.6, score="overall", rounds=1, crop_factor=1.5, guide_size=64,
                  feather=-1.0, color_match=True, min_importance=0, labels="all", max_regions=8, max_new_tokens=16,
                  prompt="")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": EXAMPLE}},
        "2": {"class_type": "ImageDoctorLoadDiagnosis", "inputs": {"source": EXAMPLE_DIAGNOSIS}},
        "3": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": gt["prompt"], "clip": ["3", 1]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["3", 1]}},
        "6": {"class_type": "ImageDoctorLoadDiagnosisModel", "inputs": {
            "model_name": "ImageDoctor", "hf_id": "", "dtype": "fp32", "attention": "sdpa", "device": "cpu",
            "keep_loaded": True, "allow_download": False}},
        "7": {"class_type": "ImageDoctorRefineDefects", "inputs": dict(common)},
        "8": {"class_type": "ImageDoctorDefectsToSEGS", "inputs": {
            "image": ["1", 0], "diagnosis": ["2", 0], "labels": "all", "min_importance": 0, "crop_factor": 1.5,
            "drop_size": 1, "mask_source": "boxes", "threshold": 0.5, "batch_index": 0}},
        "9": {"class_type": "ImageDoctorRefineDefects", "inputs": {**common, "segs": ["8", 0], "seed": 2}},
        "10": {"class_type": "ImageDoctorSaveDiagnosis", "inputs": {
            "diagnosis": ["7", 1], "filename_prefix": "e2e/refined_diagnosis", "heatmaps": "none"}},
        "13": {"class_type": "ImageDoctorSaveDiagnosis", "inputs": {  # makes ComfyUI run node 9
            "diagnosis": ["9", 1], "filename_prefix": "e2e/refined_segs_diagnosis", "heatmaps": "none"}},
        "11": {"class_type": "ImageDoctorDefectBoxesOverlay", "inputs": {
            "images": ["1", 0], "diagnosis": ["2", 0], "min_importance": 0, "labels": "all"}},
        "12": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}},
    }
    entry = comfy_server.run(prompt)
    outs = entry["outputs"]
    n = len(gt["defects"])
    on_defects, on_segs = _panel(outs, "7"), _panel(outs, "9")
    assert len(on_defects["steps"]) == n and len(on_segs["steps"]) == n
    # the tiny random diagnoser gives no score, so nothing can be verified as better: all rejected
    assert all(s["verdict"] == "rejected" and s["after"] is None for s in on_defects["steps"] + on_segs["steps"])
    assert "n/a" in outs["7"]["text"][0] and "inf" not in outs["7"]["text"][0]
    seg_boxes = sorted([float(int(x0)), float(int(y0)), float(math.ceil(x1)), float(math.ceil(y1))]
                       for x0, y0, x1, y1 in (d["box"] for d in gt["defects"]))
    assert sorted(s["box"] for s in on_segs["steps"]) == seg_boxes  # the SEGs' bboxes, not the defects' boxes
    e2e_report["results"]["api/refine_known_defects_and_segs"] = {"seconds": entry["seconds"], "regions": n}


# ------------------------------------------------------------------------------ the browser
JS_NODES = """() => { const app = window.comfyAPI.app.app;
  return app.graph._nodes.map(n => ({id: n.id, type: n.type, pos: [...n.pos], size: [...n.size],
    registered: !!window.LiteGraph.registered_node_types[n.type],
    // the front end paints an image preview down to the node's bottom: the panel must come before it
    panelCovered: (() => { const ws = (n.widgets || []).map(w => w.name);
      const p = ws.indexOf('imagedoctor_panel'), q = ws.indexOf('$$canvas-image-preview');
      return p >= 0 && q >= 0 && p > q; })(),
    panel: (n.widgets || []).filter(w => w.name === 'imagedoctor_panel').map(w => {
      const r = w.element.getBoundingClientRect();
      return {text: w.element.textContent, height: r.height, width: r.width,
              font: parseFloat(getComputedStyle(w.element).fontSize)}; })[0] || null})); }"""

JS_CPU_SIZED = """(tag) => { const app = window.comfyAPI.app.app;
  for (const n of app.graph._nodes) for (const w of n.widgets || []) {
    if (w.name === 'ckpt_name') w.value = '%s';
    if (n.type === 'EmptyLatentImage' && (w.name === 'width' || w.name === 'height')) w.value = 64;
    if (n.type === 'EmptyLatentImage' && w.name === 'batch_size') w.value = Math.min(w.value, %d);
    if (w.name === 'steps') w.value = 2;
    if (w.name === 'max_new_tokens') w.value = 16;
    if (w.name === 'guide_size') w.value = 64;
    if (n.type === 'ImageDoctorDiagnose' && w.name === 'prompt') w.value = w.value + ' [' + tag + ']';
  } }""" % (CHECKPOINT, CPU_BATCH)


def _wait_idle(page, comfy_server, before: int, timeout: float = 900):
    t0 = time.time()
    while time.time() - t0 < timeout:
        q = comfy_server.get("/queue")
        if not q["queue_running"] and not q["queue_pending"] and len(comfy_server.get("/history")) > before:
            page.wait_for_timeout(1500)  # the last "executed" event and a frame to draw it
            return round(time.time() - t0, 1)
        page.wait_for_timeout(500)
    raise AssertionError("the queued workflow did not finish")


def _shot_nodes(page, e2e_out: Path, stem: str, types: set):
    """Screenshots of single nodes (title bar included), for the docs."""
    rects = page.evaluate("""(types) => { const app = window.comfyAPI.app.app; const c = app.canvas;
      const box = c.canvas.getBoundingClientRect(); const T = window.LiteGraph.NODE_TITLE_HEIGHT;
      return app.graph._nodes.filter(n => types.includes(n.type)).map(n => {
        const [x, y] = c.ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - T]);
        return {type: n.type, x: box.left + x, y: box.top + y, w: n.size[0] * c.ds.scale,
                h: (n.size[1] + T) * c.ds.scale}; }); }""", sorted(types))
    for r in rects:
        clip = {"x": max(0, r["x"] - 4), "y": max(0, r["y"] - 4), "width": r["w"] + 8, "height": r["h"] + 8}
        if clip["x"] + clip["width"] <= 1600 and clip["y"] + clip["height"] <= 1000:
            page.screenshot(path=str(e2e_out / f"{stem}_{r['type']}.png"), clip=clip)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_workflow_in_browser(path, page, comfy_server, e2e_out, e2e_report):
    wf = json.loads(path.read_text())
    page.evaluate("async (wf) => { await window.comfyAPI.app.app.loadGraphData(wf); }", wf)
    page.wait_for_timeout(1500)
    nodes = page.evaluate(JS_NODES)
    assert [n["type"] for n in nodes if not n["registered"]] == [], "missing node types"
    assert "missing" not in page.inner_text("body").lower()
    scale = page.evaluate("() => window.comfyAPI.app.app.canvas.ds.scale")
    assert scale == pytest.approx(wf["extra"]["ds"]["scale"])
    assert overlaps({"nodes": nodes}) == [], "nodes overlap when opened"
    page.screenshot(path=str(e2e_out / f"{path.stem}_opened.png"))

    before = len(comfy_server.get("/history"))
    page.evaluate(JS_CPU_SIZED, f"{path.stem}-{time.time():.0f}")
    page.evaluate("async () => { await window.comfyAPI.app.app.queuePrompt(0, 1); }")
    seconds = _wait_idle(page, comfy_server, before)
    nodes = page.evaluate(JS_NODES)
    assert overlaps({"nodes": nodes}) == [], "nodes overlap after the run"
    panels = {n["id"]: n["panel"] for n in nodes if n["type"] in PANEL_NODES}
    assert panels and all(p is not None and p["text"].strip() and p["height"] > 20 for p in panels.values()), panels
    assert all(p["font"] >= 12 for p in panels.values())  # readable at zoom 1; drawn at the file's zoom
    assert [n["id"] for n in nodes if n["panelCovered"]] == [], "a panel sits under an image preview"
    page.screenshot(path=str(e2e_out / f"{path.stem}_after_run.png"))
    _shot_nodes(page, e2e_out, path.stem, set(PANEL_NODES))

    page.reload()
    page.wait_for_function("window.comfyAPI?.app?.app?.graph?._nodes?.length > 0", timeout=120_000)
    page.wait_for_timeout(3000)
    restored = {n["id"]: n["panel"] for n in page.evaluate(JS_NODES) if n["type"] in PANEL_NODES}
    assert {k: (v or {}).get("text") for k, v in restored.items()} == {k: v["text"] for k, v in panels.items()}
    assert page.errors == [], page.errors
    e2e_report["results"][f"ui/{path.stem}"] = {"seconds": seconds, "panels": len(panels), "scale": scale,
                                                "front_end_errors_not_ours": sorted({e.splitlines()[0]
                                                                                     for e in page.other_errors})}


def test_panels_degrade_to_nothing_without_dom_widgets(page):
    """A front end without addDOMWidget: onExecuted draws nothing and throws nothing."""
    res = page.evaluate("""() => { const LG = window.LiteGraph; const app = window.comfyAPI.app.app;
      app.graph.clear(); const n = LG.createNode('ImageDoctorSaveDiagnosis'); app.graph.add(n);
      const saved = LG.LGraphNode.prototype.addDOMWidget; LG.LGraphNode.prototype.addDOMWidget = undefined;
      let error = null;
      try { n.onExecuted({imagedoctor: [{kind: 'saved', path: 'x.json', count: 1}]}); } catch (e) { error = String(e); }
      LG.LGraphNode.prototype.addDOMWidget = saved;
      const drawn = (n.widgets || []).some(w => w.name === 'imagedoctor_panel');
      n.onExecuted({imagedoctor: [{kind: 'saved', path: 'x.json', count: 1}]});
      return {error, drawn, drawnAfter: (n.widgets || []).some(w => w.name === 'imagedoctor_panel')}; }""")
    assert res == {"error": None, "drawn": False, "drawnAfter": True}
    assert page.errors == []


def test_node_sizes_are_current(page):
    """tests/nodes/node_sizes.json (what build_workflows lays out from) matches this front end."""
    stored = json.loads((ROOT / "tests" / "nodes" / "node_sizes.json").read_text())
    measured = page.evaluate("""(types) => { const app = window.comfyAPI.app.app; app.graph.clear(); const out = {};
      for (const t of types) { const n = window.LiteGraph.createNode(t); app.graph.add(n);
        out[t] = n.computeSize().map(Math.ceil); } return out; }""", sorted(stored["sizes"]))
    off = {t: (stored["sizes"][t], m) for t, m in measured.items()
           if abs(m[0] - stored["sizes"][t][0]) > 2 or abs(m[1] - stored["sizes"][t][1]) > 2}
    assert off == {}, f"re-measure and rebuild the workflows: {off}"


JS_REFINE_GRAPH = """([ckpt, example, diag]) => { const app = window.comfyAPI.app.app; const LG = window.LiteGraph;
  app.graph.clear();
  const add = (type, x, y, values = {}) => { const n = LG.createNode(type); n.pos = [x, y]; app.graph.add(n);
    for (const w of n.widgets || []) if (w.name in values) w.value = values[w.name]; return n; };
  const img = add('LoadImage', 40, 70, {image: example});
  const gt = add('ImageDoctorLoadDiagnosis', 40, 470, {source: diag});
  const ck = add('CheckpointLoaderSimple', 40, 650, {ckpt_name: ckpt});
  const pos = add('CLIPTextEncode', 40, 810, {text: 'shapes on a table'});
  const neg = add('CLIPTextEncode', 40, 960, {text: 'blurry'});
  const dm = add('ImageDoctorLoadDiagnosisModel', 420, 70, {dtype: 'fp32', device: 'cpu'});
  const rf = add('ImageDoctorRefineDefects', 420, 330, {steps: 2, guide_size: 64, max_new_tokens: 16, rounds: 1});
  const bx = add('ImageDoctorDefectBoxesOverlay', 820, 70);
  const pv = add('PreviewImage', 820, 250);
  const sv = add('ImageDoctorSaveDiagnosis', 820, 660, {filename_prefix: 'e2e/ui_refined_diagnosis'});
  img.connect(0, rf, 'image'); gt.connect(0, rf, 'diagnosis'); dm.connect(0, rf, 'diagnosis_model');
  ck.connect(0, rf, 'model'); ck.connect(2, rf, 'vae'); ck.connect(1, pos, 'clip'); ck.connect(1, neg, 'clip');
  pos.connect(0, rf, 'positive'); neg.connect(0, rf, 'negative');
  img.connect(0, bx, 'images'); gt.connect(0, bx, 'diagnosis'); bx.connect(0, pv, 'images');
  rf.connect(1, sv, 'diagnosis');
  for (const n of [img, gt, ck, pos, neg, dm, bx, sv]) n.size = [340, n.computeSize()[1]];
  img.size = [340, 340]; gt.size = [340, 120]; pos.size = [340, 110]; neg.size = [340, 110];
  pv.size = [340, 340]; rf.size = [340, rf.computeSize()[1] + 150];
  app.canvas.ds.scale = 0.8; app.canvas.ds.offset = [0, 0]; app.graph.setDirtyCanvas(true, true); }"""


def test_refine_panel_in_browser(page, comfy_server, e2e_out, e2e_report):
    """Refine Defects on a scene with known defects, queued from the UI: the panel lists every
    region with its label, importance and the score before and after (the tiny random diagnoser
    gives no score: all rejected, 'n/a')."""
    gt = json.loads((comfy_server.base / "input" / EXAMPLE_DIAGNOSIS).read_text())
    page.evaluate(JS_REFINE_GRAPH, [CHECKPOINT, EXAMPLE, EXAMPLE_DIAGNOSIS])
    page.wait_for_timeout(1000)
    before = len(comfy_server.get("/history"))
    page.evaluate("async () => { await window.comfyAPI.app.app.queuePrompt(0, 1); }")
    seconds = _wait_idle(page, comfy_server, before)
    panels = {n["type"]: n["panel"] for n in page.evaluate(JS_NODES) if n["panel"]}
    text = panels["ImageDoctorRefineDefects"]["text"]
    assert f"0 kept, {len(gt['defects'])} rejected" in text and "n/a" in text
    for d in gt["defects"]:
        assert f"{d['label'] if d['label'] == 'artifact' else 'misalign.'} {d['importance']}" in text
    assert "e2e/ui_refined_diagnosis" in panels["ImageDoctorSaveDiagnosis"]["text"]
    page.screenshot(path=str(e2e_out / "refine_known_defects_after_run.png"))
    _shot_nodes(page, e2e_out, "refine_known_defects", {"ImageDoctorRefineDefects", "PreviewImage"})
    assert page.errors == [], page.errors
    e2e_report["results"]["ui/refine_known_defects"] = {"seconds": seconds, "regions": len(gt["defects"])}
