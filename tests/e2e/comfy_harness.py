"""Shared pieces of the end-to-end harness (see conftest.py): constants, the ComfyUI client,
the example input. Imported by conftest.py and the e2e test modules."""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
CHECKPOINT = "tiny_sd15.safetensors"
DIAGNOSER = "ImageDoctor"  # the folder name the workflows use
EXAMPLE = "example.png"
EXAMPLE_DIAGNOSIS = "example_diagnosis.json"  # its ground truth, for Load Diagnosis
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}


def importable_pack() -> None:
    """``import imagedoctor`` from this checkout, whatever its folder is called."""
    try:
        import imagedoctor  # noqa: F401

        return
    except ImportError:
        pass
    import tempfile

    shim = Path(tempfile.mkdtemp(prefix="imagedoctor-e2e-path-"))
    (shim / "imagedoctor").symlink_to(ROOT, target_is_directory=True)
    sys.path.insert(0, str(shim))


def write_example(folder: Path) -> dict:
    """A synthetic scene with two known defects (core.synth) as example.png, and its ground
    truth as example_diagnosis.json; returns the ground truth as a dict."""
    from imagedoctor.core.synth import render_sample

    for index in range(200):  # the first sample of seed 0 with at least two defects
        sample = render_sample(0, index, size=256)
        if len(sample.diagnosis.defects) >= 2:
            break
    sample.image.save(folder / EXAMPLE)
    data = sample.diagnosis.to_dict(heatmap_encoding="png8")
    (folder / EXAMPLE_DIAGNOSIS).write_text(json.dumps(data))
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A running ComfyUI: its URL, folders, log, and the HTTP calls the tests need."""

    def __init__(self, url: str, base: Path, log: Path, comfyui_dir: Path):
        self.url, self.base, self.log, self.comfyui_dir = url, base, log, comfyui_dir
        self.client_id = uuid.uuid4().hex

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"POST {path} -> {exc.code}: {exc.read().decode()[:2000]}") from exc

    def run(self, prompt: dict, timeout: float = 900.0) -> dict:
        """Queue an API-format prompt, wait for it, return its history entry (raises on failure)."""
        pid = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})["prompt_id"]
        t0 = time.time()
        while time.time() - t0 < timeout:
            hist = self.get(f"/history/{pid}")
            if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
                entry = hist[pid]
                entry["seconds"] = round(time.time() - t0, 1)
                status = entry["status"]
                if status.get("status_str") != "success":
                    msgs = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                    raise AssertionError(f"prompt failed: {json.dumps(msgs)[:3000]}")
                return entry
            time.sleep(0.5)
        raise AssertionError(f"prompt {pid} did not finish in {timeout:.0f} s")

    def versions(self) -> dict:
        stats = self.get("/system_stats")["system"]
        return {"comfyui": stats.get("comfyui_version"), "python": stats.get("python_version", "").split()[0],
                "pytorch": stats.get("pytorch_version"), "frontend": self.frontend_version()}

    def frontend_version(self) -> str | None:
        for line in self.log.read_text(errors="replace").splitlines():
            if "frontend version:" in line:
                return line.rsplit(":", 1)[1].strip()
        return None

    def import_seconds(self) -> float | None:
        for line in self.log.read_text(errors="replace").splitlines():
            if line.strip().endswith("custom_nodes/ImageDoctor") and "seconds" in line:
                return float(line.split()[0])
        return None


