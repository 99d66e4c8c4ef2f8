"""``imagedoctor eval``: predictions vs ground truth in every format, and --model over a data set."""

import json
import math

import numpy as np
import pytest

from imagedoctor.cli import main as cli_main
from imagedoctor.core.data import load_project_dataset
from imagedoctor.core.data.tfrecord import encode_example, write_records
from imagedoctor.core.diagnosis import Defect, Diagnosis
from imagedoctor.core.evaluate import evaluate, format_table, pair_predictions, save_predictions, to_frame
from imagedoctor.core.synth import generate


@pytest.fixture(scope="module")
def synth_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalsynth") / "ds"
    generate(root, 24, seed=11, size=96, workers=1)
    return root


def run_json(capsys, argv):
    assert cli_main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_ground_truth_against_itself_is_perfect(synth_ds, capsys):
    out = run_json(capsys, ["eval", "--pred", str(synth_ds), "--gt", str(synth_ds)])
    assert out["ground_truth"]["format"] == "project" and out["n_images"] == 24
    assert out["scores"]["average"]["plcc"] == pytest.approx(1.0)
    assert out["heatmaps"]["artifact"]["mse"] == 0.0
    assert out["sdg"]["box_f1"]["0.5"]["overall"]["f1"] == pytest.approx(1.0)
    assert out["sdg"]["cln_acc"] == 1.0 and out["sdg"]["imp_acc"] == 1.0
    assert out["sdg"]["matching"] == "hungarian" and out["protocols"] == {"scores": "plcc-srcc", "heatmaps": "richhf",
                                                                          "sdg": "pixel"}


def test_jsonl_predictions_with_missing_and_resized_samples(synth_ds, tmp_path, capsys):
    ds = load_project_dataset(synth_ds)
    ids, preds = [], []
    for s in list(ds)[1:]:  # the first sample has no prediction
        d = s.diagnosis
        # predict on a 2x downscaled image: boxes and maps are brought back to the GT size
        half = Diagnosis(width=48, height=48, scores=d.scores,
                         defects=[Defect(tuple(v / 2 for v in df.box), df.label, df.reason, df.importance)
                                  for df in d.defects],
                         heatmaps={k: (None if v is None else v[::2, ::2]) for k, v in d.heatmaps.items()})
        ids.append(s.id)
        preds.append(half)
    path = tmp_path / "pred.jsonl"
    save_predictions(path, ids, preds)
    out = run_json(capsys, ["eval", "--pred", str(path), "--gt", str(synth_ds), "--matching", "greedy",
                            "--out", str(tmp_path / "r.json")])
    assert out["n_missing"] == 1 and out["pairing"] == {"missing": 1, "extra": 0}
    assert out["scores"]["per_dim"]["overall"]["n_missing"] == 1
    assert out["sdg"]["matching"] == "greedy" and out["sdg"]["n_missing"] == 1
    assert out["sdg"]["box_f1"]["0.5"]["overall"]["precision"] == pytest.approx(1.0)
    assert out["heatmaps"]["misalignment"]["n_missing"] == 1
    assert json.loads((tmp_path / "r.json").read_text()) == out
    # the table prints every section
    assert cli_main(["eval", "--pred", str(path), "--gt", str(synth_ds)]) == 0
    table = capsys.readouterr().out
    for word in ("PLCC", "auc_judd", "BoxF1@0.1", "BoxF1@0.5", "DetTypeF1", "ClnAcc", "ImpAcc", "DescCos"):
        assert word in table


def test_richhf_ground_truth_has_no_box_section(tmp_path, capsys):
    import io

    from PIL import Image

    def png(v):
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8), v, np.uint8), mode="L").save(buf, format="PNG")
        return buf.getvalue()

    recs = [encode_example({"filename": f"img{i}.png", "aesthetics_score": 0.1 * i, "artifact_score": 0.5,
                            "misalignment_score": 0.2 * i, "overall_score": 0.3, "artifact_map": png(0),
                            "misalignment_map": png(255 * (i % 2)), "prompt_misalignment_label": "1 1",
                            "prompt": "red cube"}) for i in range(1, 4)]
    write_records(tmp_path / "test.tfrecord", recs)
    preds = [{"id": f"img{i}", **Diagnosis(width=8, height=8, scores={"alignment": 0.1 * i}).to_dict()}
             for i in range(1, 4)]
    (tmp_path / "p.json").write_text(json.dumps(preds))
    out = run_json(capsys, ["eval", "--pred", str(tmp_path / "p.json"), "--gt", str(tmp_path / "test.tfrecord")])
    assert out["ground_truth"]["format"] == "richhf" and "sdg" not in out
    assert out["scores"]["per_dim"]["alignment"]["plcc"] == pytest.approx(1.0)
    assert out["scores"]["per_dim"]["aesthetics"]["n_missing"] == 3
    assert out["heatmaps"]["misalignment"]["n_missing"] == 3


def test_sdg_ground_truth(tmp_path, capsys):
    gt = [{"id": "a", "image": "a.png", "prompt": "p", "width": 100, "height": 100,
           "defects": [{"box_2d": [0, 0, 500, 500], "label": "artifact", "description": "x", "importance": 90}]},
          {"id": "b", "image": "b.png", "prompt": "p", "width": 100, "height": 100, "defects": []}]
    (tmp_path / "gt.jsonl").write_text("\n".join(json.dumps(g) for g in gt) + "\n")
    pred = [{"id": "a", **Diagnosis(width=100, height=100,
                                    defects=[Defect((0, 0, 50, 50), "artifact", "x", 95)]).to_dict()},
            {"id": "b", **Diagnosis(width=100, height=100).to_dict()}]
    (tmp_path / "pred.jsonl").write_text("\n".join(json.dumps(p) for p in pred) + "\n")
    out = run_json(capsys, ["eval", "--pred", str(tmp_path / "pred.jsonl"), "--gt", str(tmp_path / "gt.jsonl")])
    assert out["ground_truth"]["format"] == "sdg"
    assert out["sdg"]["box_f1"]["0.5"]["overall"]["f1"] == 1.0 and out["sdg"]["cln_acc"] == 1.0
    assert "scores" not in out and "heatmaps" not in out
    assert out["sdg"]["protocol"] == out["protocols"]["sdg"] == "sdg-release"  # the default for SDG-30K
    pixel = run_json(capsys, ["eval", "--pred", str(tmp_path / "pred.jsonl"), "--gt", str(tmp_path / "gt.jsonl"),
                              "--protocol", "pixel", "--matching", "greedy"])
    assert pixel["sdg"]["protocol"] == "pixel" and pixel["sdg"]["matching"] == "greedy"


def test_released_evaluator_format_and_raw_responses(tmp_path, capsys):
    """The released ground-truth layout (filepath, ann_translated_bboxes in xyxy) against saved raw outputs."""
    gt = [{"filepath": "a.png", "caption": "p", "width": 200, "height": 100,
           "ann_translated_bboxes": [{"box_2d": [0, 0, 10, 10], "label": "artifact", "description": "blur"}]},
          {"filepath": "b.png", "caption": "p", "width": 200, "height": 100, "ann_translated_bboxes": []}]
    (tmp_path / "gt.jsonl").write_text("\n".join(json.dumps(g) for g in gt) + "\n")
    answers = ['<think>t</think><answer>[{"box_2d": [0, 0, 10, 20], "label": "artifact", "description": "a"}, '
               '{"box_2d": [0, 0, 20, 10], "label": "artifact", "description": "b"}]</answer>', "no idea"]
    pred = [{"id": f"sdg-{i + 1:06d}", **Diagnosis(width=200, height=100, format="sdg", raw_text=t).to_dict()}
            for i, t in enumerate(answers)]
    (tmp_path / "pred.jsonl").write_text("\n".join(json.dumps(p) for p in pred) + "\n")
    argv = ["eval", "--pred", str(tmp_path / "pred.jsonl"), "--gt", str(tmp_path / "gt.jsonl")]
    out = run_json(capsys, argv)
    s = out["sdg"]
    # two boxes tie at IoU 0.5 on the one GT box: one TP, one FP; the unparsable output is "clean"
    assert s["protocol"] == "sdg-release" and s["n_parse_failures"] == 1
    assert s["box_f1"]["0.5"]["overall"]["precision"] == 0.5 and s["box_f1"]["0.5"]["overall"]["recall"] == 1.0
    assert s["cln_acc"] == 1.0 and s["imp_acc"] is None
    assert cli_main(argv) == 0
    assert "protocol: sdg-release" in capsys.readouterr().out
    assert cli_main(argv + ["--matching", "greedy"]) == 2
    assert "--matching applies to --protocol pixel" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["eval"]) == 2
    assert "give --pred and --gt" in capsys.readouterr().err
    assert cli_main(["eval", "--model", "m"]) == 2
    assert "--model and --data go together" in capsys.readouterr().err
    assert cli_main(["eval", "--pred", str(tmp_path / "none.jsonl"), "--gt", str(tmp_path)]) == 2
    assert "cannot tell the format" in capsys.readouterr().err
    assert cli_main(["eval", "--pred", str(tmp_path / "none.jsonl"), "--gt", str(tmp_path / "gt.jsonl")]) == 2
    assert "ground truth" in capsys.readouterr().err


def test_pairing_and_frames():
    d = Diagnosis(width=10, height=10)
    with pytest.raises(ValueError, match="2 predictions without ids for 1"):
        pair_predictions([None, None], [d, d], ["a"])
    with pytest.raises(ValueError, match="appears twice"):
        pair_predictions(["a", "a"], [d, d], ["a"])
    out, info = pair_predictions(["b", "z"], [d, d], ["a", "b"])
    assert out == [None, d] and info == {"missing": 1, "extra": 1}
    scaled = to_frame(Diagnosis(width=10, height=20, defects=[Defect((1, 2, 5, 10), "artifact")]), 20, 40)
    assert scaled.defects[0].box == (2, 4, 10, 20)


def test_evaluate_function_and_table_with_nothing_defined():
    gts = [Diagnosis(width=4, height=4)]
    res = evaluate([None], gts)
    assert res["n_missing"] == 1 and "scores" not in res and math.isnan(res["sdg"]["box_f1"]["0.5"]["overall"]["f1"])
    assert "n/a" in format_table(res)
    with pytest.raises(ValueError, match="unknown matching"):
        evaluate([None], gts, matching="best")


def test_eval_runs_the_tiny_diagnoser_over_a_synthetic_set(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "synth"
    generate(data, 3, seed=5, size=64, workers=1)
    pred_file = tmp_path / "pred.jsonl"
    out = run_json(capsys, ["eval", "--model", str(tiny_model_dir), "--data", str(data), "--batch-size", "2",
                            "--max-new-tokens", "8", "--device", "cpu", "--dtype", "fp32", "--save-pred",
                            str(pred_file), "--no-progress"])
    # tiny-model outputs are random: check structure, not values
    assert out["n_images"] == 3 and out["n_missing"] == 0
    assert set(out) >= {"scores", "heatmaps", "sdg", "ground_truth"}
    assert set(out["sdg"]["box_f1"]) == {"0.1", "0.5"}
    assert out["heatmaps"]["artifact"]["n"] + out["heatmaps"]["artifact"]["n_missing"] == 3
    lines = pred_file.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["id"] == "synth-5-000000"
    # the saved predictions evaluate to the same numbers
    again = run_json(capsys, ["eval", "--pred", str(pred_file), "--gt", str(data)])
    assert again["sdg"]["box_f1"] == out["sdg"]["box_f1"]
