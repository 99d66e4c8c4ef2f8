"""End-to-end harness: a real ComfyUI on the CPU with this pack, driven over its HTTP API and in
Chromium. Run by hand (not part of CI: ComfyUI is not on the package registries):

    COMFYUI_DIR=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m pytest tests/e2e -p no:cacheprovider

Run it with the Python ComfyUI runs on (that venv also needs this pack's requirements, pytest and
playwright). Environment:
- ``COMFYUI_DIR`` (required): a ComfyUI checkout; it is not modified: models, inputs, outputs and
  the user folder live in a temporary ``--base-directory`` with this checkout linked into its
  ``custom_nodes/ImageDoctor``.
- ``CHROMIUM`` (default ``/usr/bin/chromium``): the browser Playwright drives (Playwright's own
  browser download is not needed).
- ``IMAGEDOCTOR_E2E_CACHE`` (default ``~/.cache/imagedoctor-e2e``): built models, reused.
- ``IMAGEDOCTOR_E2E_OUT`` (default a temporary folder): screenshots and ``report.json``.

Nothing is downloaded: the diagnoser is the tiny random one (`imagedoctor tiny-model`), the
checkpoint a tiny random SD1.5-layout file (tests/e2e/tiny_sd15.py), the input image a synthetic
scene with known defects (core.synth).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_harness import (  # noqa: E402
    CHECKPOINT, CHROMIUM_ARGS, DIAGNOSER, HERE, ROOT, SETTINGS, ComfyServer, free_port, importable_pack, write_example,
)

importable_pack()


# ------------------------------------------------------------------------------------ paths
@pytest.fixture(scope="session")
def comfyui_dir() -> Path:
    value = os.environ.get("COMFYUI_DIR")
    if not value or not (Path(value) / "main.py").is_file():
        pytest.fail("set COMFYUI_DIR to a ComfyUI checkout (a folder with main.py) to run tests/e2e", pytrace=False)
    return Path(value).resolve()


@pytest.fixture(scope="session")
def e2e_cache() -> Path:
    path = Path(os.environ.get("IMAGEDOCTOR_E2E_CACHE", Path.home() / ".cache" / "imagedoctor-e2e"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def e2e_out(tmp_path_factory) -> Path:
    value = os.environ.get("IMAGEDOCTOR_E2E_OUT")
    path = Path(value) if value else tmp_path_factory.mktemp("e2e-out")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def e2e_report(e2e_out):
    """A dict the tests fill in; written to ``report.json`` at the end of the session."""
    report: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "results": {}}
    yield report
    (e2e_out / "report.json").write_text(json.dumps(report, indent=2, default=str))


# ------------------------------------------------------------------------------------ models
@pytest.fixture(scope="session")
def tiny_checkpoint(comfyui_dir, e2e_cache) -> Path:
    path = e2e_cache / CHECKPOINT
    if not path.is_file():
        env = {**os.environ, "COMFYUI_DIR": str(comfyui_dir)}
        subprocess.run([sys.executable, str(HERE / "tiny_sd15.py"), str(path)], check=True, env=env, timeout=900)
    return path


@pytest.fixture(scope="session")
def tiny_diagnoser_dir(e2e_cache) -> Path:
    from imagedoctor.core.tiny import build_tiny_diagnoser

    path = e2e_cache / "tiny-diagnoser"
    if not (path / "config.json").is_file():
        build_tiny_diagnoser(path, family="qwen2_5_vl", seed=0)
    return path


@pytest.fixture(scope="session")
def comfy_base(tmp_path_factory, tiny_checkpoint, tiny_diagnoser_dir) -> Path:
    """A ComfyUI --base-directory: this pack in custom_nodes, the tiny models, the example input."""
    base = tmp_path_factory.mktemp("comfy-base")
    for sub in ("custom_nodes", "models/checkpoints", "models/imagedoctor", "input", "output", "temp",
                "user/default"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / "ImageDoctor").symlink_to(ROOT, target_is_directory=True)
    (base / "models" / "checkpoints" / CHECKPOINT).symlink_to(tiny_checkpoint)
    shutil.copytree(tiny_diagnoser_dir, base / "models" / "imagedoctor" / DIAGNOSER)
    write_example(base / "input")
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(SETTINGS))
    return base


@pytest.fixture(scope="session")
def comfy_server(comfyui_dir, comfy_base, e2e_out):
    """ComfyUI on the CPU at 127.0.0.1 with the pack; stopped at the end of the session."""
    port = free_port()
    log = e2e_out / "comfyui.log"
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory",
           str(comfy_base), "--disable-auto-launch", "--database-url", "sqlite:///:memory:"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=comfyui_dir, stdout=fh, stderr=subprocess.STDOUT, env=env)
    server = ComfyServer(f"http://127.0.0.1:{port}", comfy_base, log, comfyui_dir)
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited ({proc.returncode}); log:\n{log.read_text()[-4000:]}")
            try:
                server.get("/system_stats")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.time() - t0 > 180:
                    raise AssertionError(f"ComfyUI did not start in 180 s; log:\n{log.read_text()[-4000:]}")
                time.sleep(1)
        server.startup_seconds = round(time.time() - t0, 1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------------ browser
@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not Path(path).is_file():
        pytest.fail(f"no Chromium at {path}: install it (Debian: apt-get install chromium) or set CHROMIUM",
                    pytrace=False)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, comfy_server):
    """A fresh page on ComfyUI, the app ready; console errors collected in ``page.errors``."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    pg = context.new_page()
    # Uncaught errors raised in this pack's script. (Front end 1.27.10 itself throws one at start-up,
    # "Cannot read properties of undefined (reading 'id')" in its settings store; not ours.)
    pg.errors, pg.other_errors = [], []
    pg.on("pageerror", lambda exc: (pg.errors if "ImageDoctor" in (exc.stack or "") else pg.other_errors)
          .append(f"{exc}\n{exc.stack}"))
    # the pack's panel code catches its own errors and warns: those count too
    pg.on("console", lambda msg: pg.errors.append(msg.text) if "[ImageDoctor]" in msg.text else None)
    pg.goto(comfy_server.url)
    pg.wait_for_function("window.comfyAPI?.app?.app?.graph && window.LiteGraph", timeout=120_000)
    pg.wait_for_timeout(1000)
    yield pg
    context.close()
