"""`to_rgb` / `array_to_rgb`: every PIL mode and array type to 8-bit RGB, deep values scaled, not clipped."""

import numpy as np
import pytest
from PIL import Image

from imagedoctor.core.images import array_to_rgb, to_rgb


def red(img):
    return np.asarray(img)[..., 0].astype(int).ravel().tolist()


def test_deep_and_float_modes_are_scaled():
    assert red(to_rgb(Image.fromarray(np.array([[0, 257, 32896, 65535]], np.uint16)))) == [0, 1, 128, 255]
    assert red(to_rgb(Image.fromarray(np.array([[0, 257, 65535, 70000]], np.int32), "I"))) == [0, 1, 255, 255]
    f = lambda v: Image.fromarray(np.array([v], np.float32), "F")  # noqa: E731
    assert red(to_rgb(f([0.0, 0.5, 1.0]))) == [0, 128, 255]          # 0-1
    assert red(to_rgb(f([0.0, 100.0, 255.0]))) == [0, 100, 255]      # 0-255
    assert red(to_rgb(f([-1.0, 0.0, 3.0]))) == [0, 64, 255]          # any other range: min-max
    with pytest.raises(ValueError, match="x.tif: a float image with NaN"):
        to_rgb(f([0.0, float("nan")]), "x.tif")


def test_other_modes_use_pil_and_drop_alpha():
    rgba = Image.fromarray(np.array([[[10, 20, 30, 0]]], np.uint8), "RGBA")
    assert np.asarray(to_rgb(rgba)).tolist() == [[[10, 20, 30]]]
    assert np.asarray(to_rgb(Image.fromarray(np.array([[True, False]])))).tolist() == [[[255] * 3, [0] * 3]]
    assert to_rgb(Image.new("CMYK", (2, 2))).mode == "RGB"


def test_arrays():
    assert red(array_to_rgb(np.array([[0, 65535]], np.uint16))) == [0, 255]
    assert red(array_to_rgb(np.array([[0.0, 0.5, 2.0]], np.float32))) == [0, 128, 255]
    assert red(array_to_rgb(np.array([[True, False]]))) == [255, 0]
    assert array_to_rgb(np.zeros((2, 3, 4), np.uint8)).size == (3, 2)
    with pytest.raises(ValueError, match="img must be HxWxC"):
        array_to_rgb(np.zeros((2, 3, 5)), "img")
