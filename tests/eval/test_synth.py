"""The synthetic defect benchmark: determinism, exact ground truth, score formula, CLI."""

import hashlib
import json
import re

import numpy as np
import pytest

from imagedoctor.cli import main as cli_main
from imagedoctor.core.data import load_project_dataset
from imagedoctor.core.diagnosis import Defect
from imagedoctor.core.synth import (
    BASE_IMPORTANCE,
    COLORS,
    SHAPES,
    generate,
    importance_of,
    render_sample,
    scores_from_defects,
)

PROMPT_RE = re.compile(
    r"^(a|an|two|three) ({c}) ({s})s?( (left of|right of|above|below) (a|an|two|three) ({c}) ({s})s?)?$".format(
        c="|".join(COLORS), s="|".join(SHAPES)))


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def synth_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "ds"
    generate(root, 60, seed=7, size=128, workers=1)
    return root


def test_same_seed_same_bytes_any_worker_count(synth_ds, tmp_path):
    generate(tmp_path / "b", 60, seed=7, size=128, workers=2)
    assert _digest(tmp_path / "b") == _digest(synth_ds)
    generate(tmp_path / "c", 60, seed=8, size=128, workers=1)
    assert _digest(tmp_path / "c") != _digest(synth_ds)


def test_samples_are_valid_and_ground_truth_is_consistent(synth_ds):
    ds = load_project_dataset(synth_ds, strict=True)
    assert len(ds) == 60
    kinds = set()
    n_clean = 0
    for s in ds:
        assert PROMPT_RE.match(s.prompt), s.prompt
        d = s.diagnosis
        kinds.update(s.meta["kinds"])
        n_clean += not d.defects
        assert d.size == (128, 128)
        for name in ("misalignment", "artifact"):
            assert d.heatmaps[name] is not None  # synthetic maps are always annotated
        for df in d.defects:
            x0, y0, x1, y1 = df.box
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
            assert 1 <= df.importance <= 100 and df.reason
            # the defect's heat (importance / 100) lies inside its box
            hm = d.heatmaps[df.label]
            inside = hm[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))]
            assert inside.max() >= df.importance / 100 - 1 / 255
        for name in ("misalignment", "artifact"):
            if not d.defects_of(name):
                assert d.heatmaps[name].max() == 0.0  # heat only where a defect is
        assert d.scores.as_dict() == scores_from_defects(d.defects, len(s.meta["objects"])).as_dict()
    assert n_clean >= 1 and len(kinds) >= 8  # most defect kinds occur in 60 samples


def test_score_formula_by_hand():
    defects = [Defect((0, 0, 1, 1), "misalignment", importance=80),
               Defect((0, 0, 1, 1), "artifact", importance=40), Defect((0, 0, 1, 1), "artifact", importance=60)]
    s = scores_from_defects(defects, n_objects=3)
    # M = .8, A = 1.0: alignment = 1 - .45*.8 = .64; plausibility = 1 - .45 = .55
    # aesthetics = .9 - .25*1 - .03*2 = .59; overall = .4*.64 + .35*.55 + .25*.59 = .256 + .1925 + .1475 = .596
    assert s.as_dict() == {"alignment": 0.64, "aesthetics": 0.59, "plausibility": 0.55, "overall": 0.596}
    assert scores_from_defects([], 1).as_dict() == {"alignment": 1.0, "aesthetics": 0.9, "plausibility": 1.0,
                                                    "overall": 0.975}


def test_importance_grows_with_size_and_severity():
    # size factor min(1, .6 + .4 * sqrt(frac / .04)): a 4 % box gets the full base importance
    assert importance_of("blur", 1.0, (0, 0, 20, 20), 100) == BASE_IMPORTANCE["blur"]
    # 1 % box: .6 + .4 * .5 = .8 -> 40 * .8 = 32
    assert importance_of("blur", 1.0, (0, 0, 10, 10), 100) == 32
    assert importance_of("blur", 0.5, (0, 0, 20, 20), 100) == 20


def test_artifacts_change_the_pixels_inside_their_box(monkeypatch):
    """Each sample is rendered twice: as is, and with the artifact step turned off (same seed, same
    scene and misalignments). Inside every artifact box a visible share of the pixels differs;
    outside all artifact boxes the two images are identical."""
    import imagedoctor.core.synth as synth

    checked = 0
    for i in range(30):
        s = render_sample(3, i, 128)
        arts = s.diagnosis.defects_of("artifact")
        if not arts:
            continue
        with monkeypatch.context() as m:
            m.setattr(synth, "_artifact", lambda *a, **k: None)
            clean = render_sample(3, i, 128)
        assert clean.diagnosis.defects_of("artifact") == [] and clean.prompt == s.prompt
        img = np.asarray(s.image).astype(np.int16)
        ref = np.asarray(clean.image).astype(np.int16)
        changed = np.abs(img - ref).max(axis=-1) > 24
        outside = np.ones(changed.shape, bool)
        for df in arts:
            x0, y0, x1, y1 = (int(v) for v in df.box)
            assert changed[y0:y1, x0:x1].mean() >= synth.MIN_VISIBLE_FRACTION, (i, df)
            outside[y0:y1, x0:x1] = False
        assert np.array_equal(img[outside], ref[outside]), i
        checked += len(arts)
    assert checked >= 10


def test_cli_synth(tmp_path, capsys):
    assert cli_main(["synth", "--n", "5", "--out", str(tmp_path / "o"), "--seed", "1", "--size", "64",
                     "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "wrote 5 samples (64x64)" in out and "samples/s" in out
    lines = (tmp_path / "o" / "data.jsonl").read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[0])["id"] == "synth-1-000000"
    assert cli_main(["synth", "--n", "0", "--out", str(tmp_path / "p")]) == 2  # clear user error
    assert "--n must be at least 1" in capsys.readouterr().err
    assert cli_main(["synth", "--n", "1", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "pass overwrite=True" in capsys.readouterr().err
