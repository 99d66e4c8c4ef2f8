"""workflows/: every node type exists (ours or ComfyUI core's), input names and types are valid,
links connect matching types; UI and API files agree with tests/nodes/build_workflows.py."""

import json

import pytest

from build_workflows import ROOT, WORKFLOWS, build
from comfy_core_nodes import is_widget, signatures

SIGS = signatures()
API_FILES = sorted((ROOT / "workflows" / "api").glob("*.json"))
UI_FILES = sorted((ROOT / "workflows").glob("*.json"))
FILE_DEPENDENT = {("ImageDoctorLoadDiagnosisModel", "model_name"), ("LoadImage", "image"),
                  ("CheckpointLoaderSimple", "ckpt_name")}
PY_TYPES = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}


def test_four_scenarios_in_both_formats():
    assert {p.stem for p in API_FILES} == {p.stem for p in UI_FILES} == set(WORKFLOWS)
    assert len(WORKFLOWS) == 4


def test_files_match_builder():
    for path, text in build().items():
        assert path.read_text() == text, f"{path} is stale: run python tests/nodes/build_workflows.py"


def _check_widget(ctype, name, t, opts, value):
    if (ctype, name) in FILE_DEPENDENT:
        assert isinstance(value, str)
        return
    if isinstance(t, list):
        assert value in t, f"{ctype}.{name}: {value!r} not in {t}"
        return
    assert isinstance(value, PY_TYPES[t]) and not (t != "BOOLEAN" and isinstance(value, bool)), \
        f"{ctype}.{name}: {value!r} is not {t}"
    if "min" in opts:
        assert value >= opts["min"], f"{ctype}.{name} below min"
    if "max" in opts:
        assert value <= opts["max"], f"{ctype}.{name} above max"


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.stem)
def test_api_workflow_valid(path):
    graph = json.loads(path.read_text())
    assert any(n["class_type"].startswith("ImageDoctor") for n in graph.values())
    for nid, node in graph.items():
        ctype = node["class_type"]
        assert ctype in SIGS, f"node {nid}: unknown node type {ctype}"
        sig = {name: (t, opts, optional) for name, t, opts, optional in SIGS[ctype]["inputs"]}
        unknown = set(node["inputs"]) - set(sig)
        assert not unknown, f"node {nid} ({ctype}): unknown inputs {unknown}"
        for name, (t, opts, optional) in sig.items():
            if name not in node["inputs"]:
                assert optional, f"node {nid} ({ctype}): required input {name!r} missing"
                continue
            value = node["inputs"][name]
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                src = graph[value[0]]
                out_type = SIGS[src["class_type"]]["outputs"][value[1]]
                assert not is_widget(t) or t in PY_TYPES, f"{ctype}.{name} is a combo fed by a link"
                assert out_type == t, f"node {nid} ({ctype}).{name} wants {t}, gets {out_type}"
            else:
                assert is_widget(t), f"node {nid} ({ctype}).{name} is a {t} socket but has a literal"
                _check_widget(ctype, name, t, opts, value)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_workflow_valid(path):
    wf = json.loads(path.read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert wf["last_node_id"] == max(nodes) and wf["last_link_id"] == len(wf["links"])
    for n in wf["nodes"]:
        assert n["type"] in SIGS, f"unknown node type {n['type']}"
        sig = SIGS[n["type"]]
        names = [i[0] for i in sig["inputs"]]
        for inp in n["inputs"]:
            assert inp["name"] in names
        assert [o["type"] for o in n["outputs"]] == sig["outputs"]
        n_widgets = sum(1 + (1 if o.get("control_after_generate") else 0)
                        + (1 if n["type"] == "LoadImage" else 0)
                        for name, t, o, _ in sig["inputs"] if is_widget(t))
        assert len(n["widgets_values"]) == n_widgets, f"{n['type']}: widgets_values length"
    for lid, src, sslot, dst, dslot, ltype in wf["links"]:
        assert nodes[src]["outputs"][sslot]["type"] == ltype
        assert lid in nodes[src]["outputs"][sslot]["links"]
        target = nodes[dst]["inputs"][dslot]
        assert target["link"] == lid and target["type"] == ltype, f"link {lid} type mismatch"


def _rects(wf):
    from build_workflows import TITLE

    return {n["id"]: (n["pos"][0], n["pos"][1] - TITLE, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
            for n in wf["nodes"]}


def overlaps(wf, gap: float = 10.0) -> list[tuple[int, int]]:
    """Pairs of nodes whose rectangles (title bar included) come closer than ``gap``."""
    rects = _rects(wf)
    ids = sorted(rects)
    bad = []
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            ax0, ay0, ax1, ay1 = rects[a]
            bx0, by0, bx1, by1 = rects[b]
            if ax0 < bx1 + gap and bx0 < ax1 + gap and ay0 < by1 + gap and by0 < ay1 + gap:
                bad.append((a, b))
    return bad


def test_overlap_check_catches_overlaps():
    wf = {"nodes": [{"id": 1, "pos": [0, 40], "size": [300, 200]}, {"id": 2, "pos": [0, 250], "size": [300, 100]},
                    {"id": 3, "pos": [400, 40], "size": [300, 100]}]}
    assert overlaps(wf) == [(1, 2)]  # 2's title bar (220..250) runs into 1 (ends at 240)
    wf["nodes"][1]["pos"] = [0, 290]
    assert overlaps(wf) == []


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_layout_readable_and_roomy(path):
    from build_workflows import PANEL, PREVIEW, SHOWS_IMAGES, SIZES

    wf = json.loads(path.read_text())
    assert overlaps(wf) == [], f"{path.name}: overlapping nodes {overlaps(wf)}"
    for n in wf["nodes"]:
        w, h = SIZES["sizes"][n["type"]]
        room = (PREVIEW if n["type"] in SHOWS_IMAGES else 0) + PANEL.get(n["type"], 0)
        assert n["size"][0] >= w and n["size"][1] >= h + room, \
            f"{path.name}: node {n['id']} ({n['type']}) {n['size']} leaves no room for what a run shows"
    ds = wf["extra"]["ds"]
    assert 0.6 <= ds["scale"] <= 1.0  # the front end draws no text below 0.6
    prefixes = [n["widgets_values"][-1] if n["type"] == "SaveImage" else n["widgets_values"][0]
                for n in wf["nodes"] if n["type"] in ("SaveImage", "ImageDoctorSaveDiagnosis")]
    assert len(prefixes) == len(set(prefixes)), f"{path.name}: save nodes share a prefix {prefixes}"
