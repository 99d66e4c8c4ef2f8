"""Build workflows/*.json (UI format) and workflows/api/*.json (API format) from one description.

    python tests/nodes/build_workflows.py        # rewrite the files
tests/nodes/test_workflows.py checks the files are what this script builds, that every node
type, input name and link type is valid, and that no two nodes overlap.

Layout: nodes stand in columns (data flows left to right). Each node is as tall as the front end
needs (its measured minimum size, node_sizes.json) plus room for what appears after a run (an
image preview, an ImageDoctor panel), so nothing has to grow into a neighbour. The view opens at a
zoom where the front end still draws text.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from comfy_core_nodes import is_widget, signatures  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SIZES = json.loads((Path(__file__).parent / "node_sizes.json").read_text())
TITLE = SIZES["title_height"]  # drawn above a node's pos
WIDTH = 320
GAP_X, GAP_Y = 60, 40
ORIGIN = (40, 40 + TITLE)
VIEW = {"scale": 0.8, "offset": [0, 0]}  # the front end stops drawing text below 0.6
PREVIEW = 260  # the front end's image preview widget (220 px minimum) and its size caption
SHOWS_IMAGES = {"LoadImage", "PreviewImage", "SaveImage", "ImageDoctorDiagnose"}
#: ImageDoctor panels (web/imagedoctor.js): their height, capped at 260 px (longer ones scroll)
PANEL = {"ImageDoctorDiagnose": 170, "ImageDoctorBestOfN": 290, "ImageDoctorRefineDefects": 290,
         "ImageDoctorSaveDiagnosis": 80}
PANEL_MANY = 290  # Diagnose of a batch: one table row per image plus their defects
PROMPT = "a red cube to the left of a blue ball on a wooden table, photo"
NEGATIVE = "blurry, deformed, extra limbs, watermark"
CKPT = "v1-5-pruned-emaonly.safetensors"
MODEL = "ImageDoctor"  # a folder in models/imagedoctor

LOADER = ("ImageDoctorLoadDiagnosisModel", {"model_name": MODEL, "hf_id": "", "dtype": "auto", "attention": "sdpa",
                                            "device": "auto", "keep_loaded": True, "allow_download": False})


def diagnose(images, model, prompt=PROMPT, mode="full", top_k=4):
    return ("ImageDoctorDiagnose", {"model": model, "images": images, "prompt": prompt, "format": "auto",
                                    "mode": mode, "top_k": top_k, "max_new_tokens": 512, "sampling": "greedy",
                                    "seed": 0, "per_line_prompts": False, "heatmaps": True})


def ksampler(model, pos, neg, latent, denoise=1.0, seed=42):
    return ("KSampler", {"model": model, "seed": seed, "steps": 20, "cfg": 7.0, "sampler_name": "euler",
                         "scheduler": "normal", "positive": pos, "negative": neg, "latent_image": latent,
                         "denoise": denoise})


WORKFLOWS = {
    "a_diagnose_and_preview": {
        1: ("LoadImage", {"image": "example.png"}),
        2: LOADER,
        3: diagnose([1, 0], [2, 0]),
        4: ("ImageDoctorHeatmapOverlay", {"images": [1, 0], "diagnosis": [3, 0], "heatmap": "max", "alpha": 0.5,
                                          "colormap": "jet"}),
        5: ("ImageDoctorDefectBoxesOverlay", {"images": [1, 0], "diagnosis": [3, 0], "min_importance": 0,
                                              "labels": "all"}),
        6: ("PreviewImage", {"images": [4, 0]}),
        7: ("PreviewImage", {"images": [5, 0]}),
        8: ("ImageDoctorSaveDiagnosis", {"diagnosis": [3, 0], "filename_prefix": "ImageDoctor/diagnosis",
                                         "heatmaps": "png8"}),
    },
    "b_best_of_16": {
        1: ("CheckpointLoaderSimple", {"ckpt_name": CKPT}),
        2: ("CLIPTextEncode", {"text": PROMPT, "clip": [1, 1]}),
        3: ("CLIPTextEncode", {"text": NEGATIVE, "clip": [1, 1]}),
        4: ("EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 16}),
        5: ksampler([1, 0], [2, 0], [3, 0], [4, 0]),
        6: ("VAEDecode", {"samples": [5, 0], "vae": [1, 2]}),
        7: LOADER,
        8: diagnose([6, 0], [7, 0]),
        9: ("ImageDoctorBestOfN", {"images": [6, 0], "diagnosis": [8, 0], "criterion": "defect_penalty",
                                   "w_alignment": 1.0, "w_aesthetics": 1.0, "w_plausibility": 1.0, "w_overall": 1.0,
                                   "penalty": 0.1, "top_k": 4}),
        10: ("SaveImage", {"images": [9, 0], "filename_prefix": "ImageDoctor/best"}),
        11: ("PreviewImage", {"images": [9, 2]}),
        12: ("ImageDoctorSaveDiagnosis", {"diagnosis": [8, 0], "filename_prefix": "ImageDoctor/best_of_16",
                                          "heatmaps": "none"}),
    },
    "c_defect_mask_inpaint": {
        1: ("LoadImage", {"image": "example.png"}),
        2: ("CheckpointLoaderSimple", {"ckpt_name": CKPT}),
        3: LOADER,
        4: diagnose([1, 0], [3, 0]),
        5: ("ImageDoctorDefectMask", {"diagnosis": [4, 0], "source": "both", "labels": "all", "min_importance": 20,
                                      "threshold": 0.5, "weighting": "binary", "grow": 8, "feather": 8.0}),
        6: ("VAEEncode", {"pixels": [1, 0], "vae": [2, 2]}),
        7: ("SetLatentNoiseMask", {"samples": [6, 0], "mask": [5, 0]}),
        8: ("CLIPTextEncode", {"text": PROMPT, "clip": [2, 1]}),
        9: ("CLIPTextEncode", {"text": NEGATIVE, "clip": [2, 1]}),
        10: ksampler([2, 0], [8, 0], [9, 0], [7, 0], denoise=0.6),
        11: ("VAEDecode", {"samples": [10, 0], "vae": [2, 2]}),
        12: ("ImageCompositeMasked", {"destination": [1, 0], "source": [11, 0], "x": 0, "y": 0,
                                      "resize_source": False, "mask": [5, 0]}),
        13: ("SaveImage", {"images": [12, 0], "filename_prefix": "ImageDoctor/inpainted"}),
        14: ("PreviewImage", {"images": [4, 8]}),
    },
    "d_refine_defects": {
        1: ("LoadImage", {"image": "example.png"}),
        2: ("CheckpointLoaderSimple", {"ckpt_name": CKPT}),
        3: ("CLIPTextEncode", {"text": PROMPT, "clip": [2, 1]}),
        4: ("CLIPTextEncode", {"text": NEGATIVE, "clip": [2, 1]}),
        5: LOADER,
        6: diagnose([1, 0], [5, 0]),
        7: ("ImageDoctorRefineDefects", {
            "diagnosis_model": [5, 0], "image": [1, 0], "diagnosis": [6, 0], "model": [2, 0], "vae": [2, 2],
            "positive": [3, 0], "negative": [4, 0], "seed": 0, "steps": 20, "cfg": 7.0, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 0.6, "score": "overall", "rounds": 2, "crop_factor": 1.5,
            "guide_size": 512, "feather": -1.0, "color_match": True, "min_importance": 0, "labels": "all",
            "max_regions": 8, "max_new_tokens": 512, "prompt": ""}),
        8: ("SaveImage", {"images": [7, 0], "filename_prefix": "ImageDoctor/refined"}),
        9: ("ImageDoctorSaveDiagnosis", {"diagnosis": [7, 1], "filename_prefix": "ImageDoctor/refined_diagnosis",
                                         "heatmaps": "png8"}),
        10: ("ImageDoctorDefectBoxesOverlay", {"images": [7, 0], "diagnosis": [7, 1], "min_importance": 0,
                                               "labels": "all"}),
        11: ("PreviewImage", {"images": [10, 0]}),
    },
}


#: columns of node ids, left to right, each top to bottom
LAYOUTS = {
    "a_diagnose_and_preview": [[1, 2], [3], [4, 5, 8], [6, 7]],
    "b_best_of_16": [[1, 2, 3, 4], [5, 6, 7], [8], [9, 12], [10, 11]],
    "c_defect_mask_inpaint": [[1, 2, 3], [4], [5, 6, 7, 8, 9], [10, 11, 12], [13, 14]],
    "d_refine_defects": [[1, 5, 2], [3, 4, 6], [7], [8, 9], [10, 11]],
}


def node_size(ctype: str, batch: int = 1) -> list[int]:
    """[w, h]: the front end's minimum plus room for the preview and panel a run adds."""
    w, h = SIZES["sizes"][ctype]
    if ctype in SHOWS_IMAGES:
        h += PREVIEW
    if ctype in PANEL:
        h += PANEL_MANY if (ctype == "ImageDoctorDiagnose" and batch > 1) else PANEL[ctype]
    return [max(WIDTH, int(w)), int(h)]


def layout(name: str, graph) -> dict[int, tuple[list[int], list[int]]]:
    """node id -> (pos, size) from LAYOUTS; every node placed exactly once."""
    columns = LAYOUTS[name]
    placed = [nid for col in columns for nid in col]
    assert sorted(placed) == sorted(graph), f"{name}: layout places {sorted(placed)}, graph has {sorted(graph)}"
    batch = max((inp.get("batch_size", 1) for _, inp in graph.values()), default=1)
    out, x = {}, ORIGIN[0]
    for col in columns:
        y, width = ORIGIN[1], 0
        for nid in col:
            size = node_size(graph[nid][0], batch)
            out[nid] = ([x, y], size)
            y += size[1] + GAP_Y + TITLE
            width = max(width, size[0])
        x += width + GAP_X
    return out


def is_link(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], int) and isinstance(v[1], int)


def api_format(graph) -> dict:
    out = {}
    for nid, (ctype, inputs) in graph.items():
        out[str(nid)] = {
            "class_type": ctype,
            "inputs": {k: ([str(v[0]), v[1]] if is_link(v) else v) for k, v in inputs.items()},
            "_meta": {"title": ctype.replace("ImageDoctor", "ImageDoctor ")},
        }
    return out


def _control(name, opts) -> bool:
    return bool(opts.get("control_after_generate"))


def ui_format(graph, sigs, wf_name) -> dict:
    links, nodes = [], []
    link_id = 0
    out_links: dict[tuple[int, int], list[int]] = {}
    in_links: dict[tuple[int, str], int] = {}
    for nid, (ctype, inputs) in graph.items():
        sig = sigs[ctype]
        for name, t, _o, _opt in sig["inputs"]:
            v = inputs.get(name)
            if is_link(v):
                link_id += 1
                src, slot = v
                src_type = sigs[graph[src][0]]["outputs"][slot]
                links.append([link_id, src, slot, nid, None, src_type])
                in_links[(nid, name)] = link_id
                out_links.setdefault((src, slot), []).append(link_id)
    order = {nid: i for i, nid in enumerate(graph)}
    places = layout(wf_name, graph)
    for nid, (ctype, inputs) in graph.items():
        sig = sigs[ctype]
        node_inputs, widgets = [], []
        for name, t, opts, optional in sig["inputs"]:
            if is_widget(t) and not is_link(inputs.get(name)):
                if name in inputs:
                    widgets.append(inputs[name])
                    if ctype == "LoadImage" and name == "image":
                        widgets.append("image")
                    if _control(name, opts):
                        widgets.append("fixed")
                continue
            slot = len(node_inputs)
            lid = in_links.get((nid, name))
            for link in links:
                if link[0] == lid:
                    link[4] = slot
            node_inputs.append({"name": name, "type": t if isinstance(t, str) else "COMBO", "link": lid})
        outputs = [
            {"name": n, "type": t, "links": out_links.get((nid, i), []), "slot_index": i}
            for i, (n, t) in enumerate(zip(sig["output_names"], sig["outputs"]))
        ]
        pos, size = places[nid]
        nodes.append({
            "id": nid, "type": ctype, "pos": pos, "size": size, "flags": {},
            "order": order[nid], "mode": 0, "inputs": node_inputs, "outputs": outputs,
            "properties": {"Node name for S&R": ctype}, "widgets_values": widgets,
        })
    return {"last_node_id": max(graph), "last_link_id": link_id, "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {"ds": VIEW}, "version": 0.4}


def build() -> dict[Path, str]:
    sigs = signatures()
    files = {}
    for name, graph in WORKFLOWS.items():
        files[ROOT / "workflows" / f"{name}.json"] = json.dumps(ui_format(graph, sigs, name), indent=2) + "\n"
        files[ROOT / "workflows" / "api" / f"{name}.json"] = json.dumps(api_format(graph), indent=2) + "\n"
    return files


if __name__ == "__main__":
    for path, text in build().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print("wrote", path.relative_to(ROOT))
