"""Pack import: fast, and no transformers/diffusers (nor torch) pulled in at import time."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import importlib.util, json, sys, time
t = time.perf_counter()
if sys.argv[1] == "comfyui":
    # the way ComfyUI's load_custom_node imports a custom-node folder
    spec = importlib.util.spec_from_file_location("ImageDoctor", sys.argv[2] + "/__init__.py",
                                                  submodule_search_locations=[sys.argv[2]])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ImageDoctor"] = mod
    spec.loader.exec_module(mod)
elif sys.argv[1] == "core":
    import imagedoctor.core
    import imagedoctor as mod
    built = [m for m in sys.modules if m.startswith("imagedoctor.nodes")]
    print(json.dumps({"seconds": time.perf_counter() - t, "heavy": [], "nodes": 0, "built": built}))
    sys.exit(0)
else:
    import imagedoctor as mod
dt = time.perf_counter() - t
heavy = [m for m in ("torch", "transformers", "diffusers", "accelerate", "peft", "scipy") if m in sys.modules]
print(json.dumps({"seconds": dt, "heavy": heavy, "nodes": len(mod.NODE_CLASS_MAPPINGS)}))
"""


def _probe(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode, str(ROOT)], capture_output=True, text=True, timeout=120,
                         cwd="/")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_as_package_is_light():
    r = _probe("package")
    assert r["heavy"] == [], f"importing the pack pulled in {r['heavy']}"
    assert r["nodes"] == 10
    assert r["seconds"] < 2.0, f"pack import took {r['seconds']:.2f}s"


def test_import_as_comfyui_custom_node_folder():
    r = _probe("comfyui")
    assert r["heavy"] == [] and r["nodes"] == 10
    assert r["seconds"] < 2.0


def test_headless_core_import_builds_no_node():
    r = _probe("core")
    assert r["built"] == [], f"importing imagedoctor.core imported {r['built']}"
