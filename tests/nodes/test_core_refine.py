"""core.refine: verified local refinement behind an inpaint(image, mask) callable."""

import numpy as np
import pytest
from PIL import Image

from imagedoctor.core.diagnosis import Defect, Diagnosis
from imagedoctor.core.refine import RefineCancelled, color_match, context_box, refine_defects, refine_region

W, H = 96, 64


def blob_image():
    """Grey image with a bright 'defect' square at (20..36, 16..32)."""
    img = np.full((H, W, 3), 0.4, np.float32)
    img[16:32, 20:36] = [1.0, 0.0, 1.0]
    return img


def oracle(img: np.ndarray) -> Diagnosis:
    """A deterministic 'diagnoser': overall drops with the amount of magenta; boxes where it is."""
    mag = (img[..., 0] > 0.8) & (img[..., 1] < 0.2) & (img[..., 2] > 0.8)
    defects = []
    if mag.any():
        ys, xs = np.nonzero(mag)
        defects.append(Defect((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), "artifact", "blob", 80))
    return Diagnosis(W, H, scores={"overall": float(1.0 - mag.mean() * 5)}, defects=defects)


def grey_inpaint(calls):
    def inpaint(crop, mask):
        assert isinstance(crop, Image.Image) and crop.size[::-1] == mask.shape
        calls.append(crop.size)
        arr = np.asarray(crop, dtype=np.float32) / 255.0
        arr[mask > 0.5] = 0.4
        return arr

    return inpaint


def test_context_box_and_color_match():
    assert context_box((40, 40, 60, 50), 100, 100, 2.0, min_crop=1) == (30, 35, 70, 55)
    assert context_box((40, 40, 60, 50), 100, 100, 2.0) == (30, 29, 70, 61)  # min 32 px
    assert context_box((0, 0, 10, 10), 100, 100, 1.0, min_crop=32) == (0, 0, 32, 32)
    assert context_box((90, 90, 100, 100), 100, 100, 3.0, min_crop=1) == (70, 70, 100, 100)
    ref = np.random.default_rng(0).random((20, 20, 3)).astype(np.float32)
    out = color_match(np.clip(ref * 0.5 + 0.3, 0, 1), ref)
    assert np.abs(out.mean((0, 1)) - ref.mean((0, 1))).max() < 0.02


def test_refine_accepts_improvement_and_upscales_to_guide_size():
    img = blob_image()
    before = img.copy()
    d0 = oracle(img)
    calls = []
    res = refine_defects(img, d0, grey_inpaint(calls), oracle, guide_size=128, color_match=False, feather=0)
    assert np.array_equal(img, before)  # input not mutated
    assert res.accepted == 1 and res.rejected == 0
    assert max(calls[0]) == 128  # crop upscaled to the guide size
    assert res.diagnosis.scores.overall > d0.scores.overall and not res.diagnosis.defects
    assert np.abs(res.image[20:28, 24:32] - 0.4).max() < 0.02
    assert np.array_equal(res.image[:, 60:], img[:, 60:])  # outside the crop untouched
    assert any("accepted" in line for line in res.log)


def test_refine_rejects_when_score_does_not_improve():
    img = blob_image()
    d0 = oracle(img)

    def worse(crop, mask):  # paints the whole crop magenta: more defect, lower score
        return Image.new("RGB", crop.size, (255, 0, 255))

    res = refine_defects(img, d0, worse, oracle, guide_size=64, rounds=3, color_match=False)
    assert res.accepted == 0 and res.rejected == 1
    assert np.array_equal(res.image, img) and res.diagnosis is d0
    assert "did not improve" in "\n".join(res.log) and "nothing accepted, stopping" in res.log[-2]


def test_refine_requires_penalty_drop():
    img = blob_image()
    d0 = oracle(img)

    def same_defects(x):
        d = oracle(x)
        return Diagnosis(W, H, scores={"overall": 0.99}, defects=d0.defects)

    res = refine_defects(img, d0, grey_inpaint([]), same_defects, guide_size=64)
    assert res.accepted == 0 and "defect load did not drop" in "\n".join(res.log)
    res2 = refine_defects(img, d0, grey_inpaint([]), same_defects, guide_size=64, require_penalty_drop=False)
    assert res2.accepted == 1


def test_refine_filters_rounds_and_cancel():
    img = blob_image()
    d0 = oracle(img)
    res = refine_defects(img, d0, grey_inpaint([]), oracle, min_importance=90, guide_size=64)
    assert res.accepted == 0 and "no defect regions" in res.log[1]
    with pytest.raises(RefineCancelled):
        refine_defects(img, d0, grey_inpaint([]), oracle, should_cancel=lambda: True, guide_size=64)
    with pytest.raises(ValueError, match="diagnosis is for"):
        refine_defects(img, Diagnosis(10, 10), grey_inpaint([]), oracle)
    with pytest.raises(ValueError, match="NaN"):
        refine_defects(np.full((H, W, 3), np.nan), d0, grey_inpaint([]), oracle)


def test_refine_region_feathered_paste_and_color_match():
    img = blob_image()
    d = Defect((20, 16, 36, 32), "artifact", importance=80)

    def dark(crop, mask):  # returns a different size; refine resizes it
        return Image.new("RGB", (50, 40), (0, 0, 0))

    out, crop = refine_region(img, d, dark, context=2.0, guide_size=64, feather=6, color_matching=False)
    cx0, cy0, cx1, cy1 = crop
    assert (cx0, cy0) == (12, 8) and out[24, 28].max() < 0.05
    edge = out[24, 16]  # inside the feather ramp, outside the box
    assert 0.0 < edge[1] < 0.4
    out2, _ = refine_region(img, d, dark, context=2.0, guide_size=64, feather=6, color_matching=True)
    assert out2[24, 28].mean() > out[24, 28].mean()  # colour matched toward the context's grey
