"""diagnose-dataset without a model: input readers, decoding, the shard store, settings errors."""

import base64
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from imagedoctor.cli import main as cli_main
from imagedoctor.core.diagnosis import Defect, Diagnosis, Scores
from imagedoctor.core.scale import DiagnoseDatasetConfig, read_manifest, read_results, row_to_diagnosis
from imagedoctor.core.scale.dataset import job_record
from imagedoctor.core.scale.shards import ShardCollector, ShardStore
from imagedoctor.core.scale.work import (
    decode_groups,
    decode_heatmap,
    encode_heatmap,
    make_groups,
    output_schema,
    restore_size,
    result_row,
)


def png_bytes(seed, size=(60, 40)):
    arr = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def decoded_pixels(manifest, **kw):
    groups = make_groups(manifest.table, 0, len(manifest), len(manifest))
    g = decode_groups(groups, image_area=None, **kw).to_pylist()[0]
    return g["pixels"], g["error"]


def test_every_input_format_reads_the_same_rows(tmp_path):
    imgs = [png_bytes(i) for i in range(3)]
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, b in enumerate(imgs):
        (folder / f"im{i}.png").write_bytes(b)
    (folder / "prompts.tsv").write_text("im0.png\tzero\nim1\tone\nim2.png\ttwo\n")  # by name or by stem
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": f"r{i}", "image": f"folder/im{i}.png" if i != 1 else
                                           "data:image/png;base64," + base64.b64encode(imgs[1]).decode(),
                                           "caption": p}) for i, p in enumerate(["zero", "one", "two"])))
    parquet = tmp_path / "pq"
    parquet.mkdir()
    pq.write_table(pa.table({"id": ["r0", "r1"], "prompt": ["zero", "one"], "image": imgs[:2]}), parquet / "a.parquet")
    pq.write_table(pa.table({"id": ["r2"], "prompt": ["two"],
                             "image": [{"bytes": imgs[2], "path": None}]}), parquet / "b.parquet")
    project = tmp_path / "proj"
    (project / "images").mkdir(parents=True)
    lines = []
    for i, p in enumerate(["zero", "one", "two"]):
        (project / "images" / f"{i}.png").write_bytes(imgs[i])
        lines.append(json.dumps({"id": f"r{i}", "image": f"images/{i}.png", "prompt": p, "width": 60, "height": 40}))
    (project / "data.jsonl").write_text("\n".join(lines))

    manifests = {"folder": read_manifest(folder), "jsonl": read_manifest(jsonl, prompt_column="caption"),
                 "parquet": read_manifest(parquet), "project": read_manifest(project)}
    want_pixels = [Image.open(io.BytesIO(b)).convert("RGB").tobytes() for b in imgs]
    for fmt, m in manifests.items():
        assert m.format == fmt
        assert m.table.column("prompt").to_pylist() == ["zero", "one", "two"], fmt
        assert m.table.column("index").to_pylist() == [0, 1, 2]
        pixels, errors = decoded_pixels(m)
        assert errors == [None, None, None], fmt
        assert pixels == want_pixels, fmt
    assert manifests["folder"].table.column("id").to_pylist() == ["im0.png", "im1.png", "im2.png"]
    assert manifests["parquet"].table.column("id").to_pylist() == ["r0", "r1", "r2"]
    # the fingerprint follows content, not where the input lies
    assert manifests["folder"].fingerprint() == read_manifest(folder).fingerprint()
    (folder / "prompts.tsv").write_text("im0.png\tzero!\nim1\tone\nim2.png\ttwo\n")
    assert manifests["folder"].fingerprint() != read_manifest(folder).fingerprint()


def test_bad_rows_become_error_rows_not_exceptions(tmp_path):
    (tmp_path / "ok.png").write_bytes(png_bytes(0))
    (tmp_path / "tiny.png").write_bytes(png_bytes(1, size=(20, 30)))
    (tmp_path / "broken.png").write_bytes(png_bytes(2)[:40])  # truncated
    rows = [{"id": "a", "image": "ok.png", "prompt": "p"}, {"id": "a", "image": "ok.png", "prompt": "dup"},
            {"id": "b", "image": "tiny.png", "prompt": "p"}, {"id": "c", "image": "broken.png", "prompt": "p"},
            {"id": "d", "image": "ok.png", "prompt": "  "}, {"id": "e", "image": "gone.png", "prompt": "p"},
            {"id": "f", "prompt": "p"}]
    f = tmp_path / "in.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    m = read_manifest(f)
    assert len(m) == 8
    groups = make_groups(m.table, 0, 8, 8)
    g = decode_groups(groups, image_area=None).to_pylist()[0]
    err = g["error"]
    assert err[0] is None and g["width"][0] == 60
    assert "duplicate id 'a'" in err[1]
    assert "too small (20x30" in err[2] and (g["width"][2], g["height"][2]) == (20, 30)
    assert "unreadable image" in err[3]
    assert err[4] == "empty prompt"
    assert "does not exist" in err[5]
    assert "no 'image' field" in err[6]
    assert "not valid JSON" in err[7]


def test_groups_never_span_shards_and_resize_matches_the_diagnoser(tmp_path):
    from imagedoctor.core.prompts import resize_for_model

    (tmp_path / "a.png").write_bytes(png_bytes(3, size=(300, 200)))
    (tmp_path / "prompts.json").write_text(json.dumps({f"a{i}.png": "x" for i in range(10)} | {"a.png": "x"}))
    m = read_manifest(tmp_path)
    g0 = make_groups(m.table, 0, shard_size=8, batch_size=3)
    assert [len(x) for x in g0.column("index").to_pylist()] == [3, 3, 2]
    assert make_groups(m.table, 1, shard_size=8, batch_size=3).column("index").to_pylist() == [[8, 9, 10]]
    d = decode_groups(g0.slice(0, 1), image_area=4096).to_pylist()[0]
    assert (d["width"][0], d["height"][0]) == (300, 200)
    size = resize_for_model(300, 200, 4096)
    assert (d["pixel_width"][0], d["pixel_height"][0]) == size
    want = Image.open(tmp_path / "a.png").convert("RGB").resize(size, Image.BICUBIC).tobytes()
    assert d["pixels"][0] == want


def test_restore_size_maps_boxes_and_heatmaps_to_the_original():
    d = Diagnosis(width=50, height=25, defects=[Defect(box=(10, 5, 20, 25), label="artifact")],
                  heatmaps={"artifact": np.ones((25, 50), np.float32)})
    r = restore_size(d, 100, 50)
    assert r.defects[0].box == (20.0, 10.0, 40.0, 50.0)
    assert r.heatmaps["artifact"].shape == (50, 100) and r.heatmaps["misalignment"] is None


def test_heatmap_encodings_round_trip():
    hm = np.random.default_rng(0).random((7, 11)).astype(np.float32)
    f16 = decode_heatmap(encode_heatmap(hm, "f16"), 11, 7, "f16")
    assert f16.shape == (7, 11) and np.abs(f16 - hm).max() < 1e-3
    png = decode_heatmap(encode_heatmap(hm, "png"), 11, 7, "png")
    assert np.abs(png - hm).max() <= 0.5 / 255 + 1e-6
    assert len(encode_heatmap(hm, "f16")) == 7 * 11 * 2


def _job(n, shard_size, heatmaps="png"):
    return {"fingerprint": f"job-{n}-{shard_size}", "heatmaps": heatmaps}


def test_shards_are_atomic_resumable_and_filterable_by_score(tmp_path):
    store = ShardStore(tmp_path / "out", _job(5, 2), n_rows=5, shard_size=2)
    store.open()
    (store.out / ".part-000001.parquet.tmp-99").write_bytes(b"half")  # left by a killed run
    store.open()
    assert not list(store.out.glob(".part-*"))
    rows = []
    for i in range(5):
        d = Diagnosis(width=8, height=4, scores=Scores(overall=i / 4, alignment=0.5), prompt=f"p{i}",
                      heatmaps={"artifact": np.full((4, 8), i / 4, np.float32)})
        rows.append(result_row(i, f"id{i}", f"p{i}", 8, 4, d if i != 3 else None, "boom" if i == 3 else None,
                               "m", "png"))
    table = pa.Table.from_pylist(rows, schema=output_schema("png"))
    col = ShardCollector(store)
    col.add(table.take([4, 0]))  # rows arrive in any order
    assert col.written == [2]
    col.add(table.take([3, 1, 2]))
    assert sorted(col.written) == [0, 1, 2] and (col.ok, col.failed) == (4, 1)
    assert store.done() == {0, 1, 2}
    out = read_results(store.out)
    assert out.column("index").to_pylist() == [0, 1, 2, 3, 4]
    good = read_results(store.out, columns=["id"], filters=(pc.field("overall") >= 0.5) & pc.field("error").is_null())
    assert good.column("id").to_pylist() == ["id2", "id4"]
    assert read_results(store.out, filters=[("overall", "<", 0.5)]).column("id").to_pylist() == ["id0", "id1"]
    d4 = row_to_diagnosis(out.to_pylist()[4])
    assert d4.scores.overall == 1.0 and d4.heatmaps["artifact"].min() == 1.0
    assert row_to_diagnosis(out.to_pylist()[3]) is None
    # another job must not mix its rows into these shards
    with pytest.raises(ValueError, match="holds results of another job"):
        ShardStore(store.out, _job(5, 3), n_rows=5, shard_size=3).open()
    # a shard of the wrong size (written by hand) is not taken as done
    pq.write_table(table.slice(0, 1), store.out / "part-000000.parquet")
    assert store.done() == {1, 2}


def test_settings_errors_are_clear(tmp_path, capsys):
    with pytest.raises(ValueError, match="only apply to --engine ray"):
        DiagnoseDatasetConfig(model="m", input="i", out="o", workers=2)
    with pytest.raises(ValueError, match="never spans two shards"):
        DiagnoseDatasetConfig(model="m", input="i", out="o", batch_size=16, shard_size=8)
    rc = cli_main(["diagnose-dataset", "--model", "m", "--input", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_job_record_changes_with_what_changes_the_output(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(0))
    (tmp_path / "prompts.json").write_text('{"a.png": "x"}')
    m = read_manifest(tmp_path)
    base = DiagnoseDatasetConfig(model="m", input=str(tmp_path), out="o")
    j = job_record(base, m, "imagedoctor", "sha", 4096)
    same = job_record(DiagnoseDatasetConfig(model="m", input=str(tmp_path), out="o", engine="ray", workers=4), m,
                      "imagedoctor", "sha", 4096)
    assert j == same  # engine and worker count do not change the output
    other = job_record(DiagnoseDatasetConfig(model="m", input=str(tmp_path), out="o", batch_size=4), m, "imagedoctor",
                       "sha", 4096)
    assert other["fingerprint"] != j["fingerprint"]


@pytest.mark.parametrize("config,fmt,think,image_area,size,record", [
    ({}, "imagedoctor", True, "auto", (782, 335), 512 * 512),             # inference: ~512², aspect kept
    ({}, "imagedoctor", False, "auto", (512, 512), "fixed"),              # score-only scorer: 512x512
    ({}, "sdg", True, "auto", (700, 300), None),                          # SDG detectors: the processor decides
    ({"imagedoctor_prompt_variant": "sdg-reward"}, "sdg", True, "auto", (512, 512), "fixed"),
    ({"imagedoctor_image_area": 4096}, "imagedoctor", True, "auto", (97, 41), 4096),
    ({"imagedoctor_prompt_variant": "imagedoctor-grpo"}, "imagedoctor", True, 64 * 48, (84, 36), 64 * 48),
])
def test_decode_resizes_as_the_diagnoser_would(tmp_path, config, fmt, think, image_area, size, record):
    """The decode step pre-resizes (the model then keeps the size): it must pick the same policy as
    `Diagnoser.diagnose` for the checkpoint's config.json, format, think and image_area."""
    from imagedoctor.core.diagnoser import Diagnoser
    from imagedoctor.core.scale.dataset import policy_record, resolve_image_area
    from imagedoctor.core.scale.work import decode_image

    family = "qwen2_5_vl" if fmt == "imagedoctor" else "qwen3_vl"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": family, "imagedoctor_format": fmt, **config}))
    policy = resolve_image_area(str(tmp_path), image_area, fmt, think)
    dg = Diagnoser(None, None, family=family, format=fmt, task_token_ids={},
                   prompt_variant=config.get("imagedoctor_prompt_variant"),
                   image_area=config.get("imagedoctor_image_area", "auto"))
    assert policy == dg.image_policy_for(dg.prompt_variant_for(fmt, think), image_area)
    src = io.BytesIO(png_bytes(0, (700, 300)))
    img, original = decode_image(src, policy)
    assert original == (700, 300) and img.size == size
    rec = policy_record(policy)
    assert (rec["kind"] if isinstance(rec, dict) else rec) == record
    json.dumps(rec)  # the job record stays JSON
