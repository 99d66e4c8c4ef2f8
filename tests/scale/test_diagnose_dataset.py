"""diagnose-dataset end to end with the tiny model: local engine, Ray Data on a local 2-CPU Ray,
a run killed half-way and resumed, a Ray worker that dies mid-batch. One Ray session per module."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from imagedoctor.core.scale import DiagnoseDatasetConfig, diagnose_dataset, read_results, row_to_diagnosis
from imagedoctor.core.scale.work import FAULT_ENV

N, BROKEN = 40, {7: "unreadable image", 19: "empty prompt", 31: "image too small"}
#: Small and fast: 8 rows per shard and per batch (5 shards), 2 new tokens, 64x48 model input.
SETTINGS = dict(batch_size=8, shard_size=8, max_new_tokens=2, image_area=64 * 48, heatmaps="png", progress=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale") / "images"
    root.mkdir()
    prompts = []
    for i in range(N):
        name = f"img{i:03d}.png"
        size = (16, 16) if i == 31 else (96, 72)
        arr = (np.random.default_rng(i).random((size[1], size[0], 3)) * 255).astype("uint8")
        Image.fromarray(arr).save(root / name)
        prompts.append({"image": name, "prompt": "" if i == 19 else f"object number {i} on a table"})
    (root / "img007.png").write_bytes((root / "img007.png").read_bytes()[:60])  # truncated file
    (root / "prompts.jsonl").write_text("\n".join(json.dumps(p) for p in prompts))
    return root


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    import ray

    marker = tmp_path_factory.mktemp("fault") / "kill-worker-once"
    os.environ[FAULT_ENV] = str(marker)  # before ray.init: Ray's workers inherit it
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2, log_to_driver=False)
    yield marker
    ray.shutdown()
    os.environ.pop(FAULT_ENV, None)


@pytest.fixture(scope="module")
def local_run(images, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    cfg = DiagnoseDatasetConfig(model=str(tiny_model_dir), input=str(images), out=str(out), **SETTINGS)
    return out, diagnose_dataset(cfg)


def test_local_engine_diagnoses_every_row_and_reports_bad_ones(local_run, images, tiny_diagnoser, tiny_model_dir):
    out, result = local_run
    assert (result.total, result.diagnosed, result.failed, result.skipped) == (N, N - 3, 3, 0)
    assert result.complete and result.shards_written == 5 and result.output_errors == 3
    t = read_results(out)
    assert t.column("index").to_pylist() == list(range(N))
    assert t.column("id").to_pylist() == [f"img{i:03d}.png" for i in range(N)]
    errors = t.column("error").to_pylist()
    for i in range(N):
        assert (errors[i] is None) == (i not in BROKEN)
        if i in BROKEN:
            assert BROKEN[i] in errors[i]
    rows = t.to_pylist()
    assert {r["model"] for r in rows} == {str(tiny_model_dir)}
    # rows 8-15 are one model batch; the shards hold what Diagnoser.diagnose says on the original images
    originals = [Image.open(images / f"img{i:03d}.png").convert("RGB") for i in range(8, 16)]
    want = tiny_diagnoser.diagnose(originals, [r["prompt"] for r in rows[8:16]], max_new_tokens=2, batch_size=8,
                                   image_area=64 * 48)
    for row, w in zip(rows[8:16], want):
        d = row_to_diagnosis(row, "png")
        assert (d.width, d.height, row["width"], row["height"]) == (96, 72, 96, 72)
        assert d.raw_text == w.raw_text and d.scores == w.scores and d.prompt == w.prompt
        assert [x.box for x in d.defects] == pytest.approx([x.box for x in w.defects], abs=1e-3)
        for name in ("misalignment", "artifact"):
            # decoded at the model's input size then resized (not directly), and stored as 8-bit
            assert np.abs(d.heatmaps[name] - w.heatmaps[name]).mean() < 0.02
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["complete"] and summary["failed"] == 3


def test_ray_output_equals_local_row_for_row(ray_session, local_run, images, tiny_model_dir, tmp_path):
    out, _ = local_run
    cfg = DiagnoseDatasetConfig(model=str(tiny_model_dir), input=str(images), out=str(tmp_path / "ray"),
                                engine="ray", workers=2, cpus_per_worker=0.5, decode_cpus=0.5, **SETTINGS)
    result = diagnose_dataset(cfg)
    assert (result.diagnosed, result.failed, result.skipped, result.workers) == (N - 3, 3, 0, 2)
    assert read_results(tmp_path / "ray").equals(read_results(out))


def test_killed_run_resumes_on_ray_with_a_dying_worker_and_loses_nothing(ray_session, local_run, images,
                                                                       tiny_model_dir, tmp_path):
    out = tmp_path / "resumed"
    argv = [sys.executable, "-m", "imagedoctor", "diagnose-dataset", "--model", str(tiny_model_dir),
            "--input", str(images), "--out", str(out), "--batch-size", "8", "--shard-size", "8",
            "--max-new-tokens", "2", "--image-area", str(64 * 48), "--heatmaps", "png", "--no-progress"]
    log = tmp_path / "killed-run.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("part-*.parquet")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    written = sorted(out.glob("part-*.parquet"))
    assert 1 <= len(written) < 5, f"the run was not killed half-way ({len(written)} shards):\n" + \
        log.read_text(errors="replace")[-3000:]
    ray_session.write_text("")  # the first Ray worker call now kills its own process
    cfg = DiagnoseDatasetConfig(model=str(tiny_model_dir), input=str(images), out=str(out), engine="ray",
                                workers=1, cpus_per_worker=0.5, decode_cpus=0.5, **SETTINGS)
    result = diagnose_dataset(cfg)
    assert not ray_session.exists(), "the fault was not injected"
    assert result.skipped == 8 * len(written) and result.diagnosed + result.failed == N - result.skipped
    assert result.complete and result.output_rows == N
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    t = read_results(out)
    assert sorted(t.column("index").to_pylist()) == list(range(N))  # nothing lost, nothing twice
    assert t.equals(read_results(local_run[0]))
    # a finished job reruns as a no-op
    again = diagnose_dataset(cfg)
    assert (again.skipped, again.diagnosed, again.failed, again.shards_written) == (N, 0, 0, 0)
