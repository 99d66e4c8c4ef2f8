"""Output formats: lenient and strict parsers, and renderers for training targets.

``parse(text, format, width, height)`` reads a model output into a `Diagnosis` whose boxes are
pixels of the original ``width`` x ``height`` image. It never raises on malformed output: what
it could not read is listed in ``diagnosis.problems``. ``strict=True`` raises
`DiagnosisParseError` (with the problems) instead.
"""

from __future__ import annotations

from ..diagnosis import Diagnosis
from ..geometry import Frame
from .common import DiagnosisParseError
from .imagedoctor import parse_imagedoctor, render_imagedoctor
from .sdg import parse_sdg, render_sdg

FORMATS = ("imagedoctor", "sdg")

__all__ = ["parse", "render", "DiagnosisParseError", "Frame", "FORMATS", "parse_imagedoctor", "parse_sdg",
           "render_imagedoctor", "render_sdg"]


def parse(
    text: str,
    format: str,
    width: int,
    height: int,
    frame: Frame | None = None,
    strict: bool = False,
    prompt: str = "",
) -> Diagnosis:
    """Parse ``text`` written in ``format`` ("imagedoctor" or "sdg") for a ``width`` x ``height`` image."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; use one of {list(FORMATS)}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    fn = parse_imagedoctor if format == "imagedoctor" else parse_sdg
    try:
        diagnosis = fn(text, int(width), int(height), frame=frame, prompt=prompt)
    except Exception as exc:  # last line of defence: a lenient parser never raises
        diagnosis = Diagnosis(width=int(width), height=int(height), raw_text=str(text), format=format, prompt=prompt,
                              problems=[f"parser failed: {type(exc).__name__}: {exc}"])
    if strict and diagnosis.problems:
        raise DiagnosisParseError(diagnosis.problems, diagnosis)
    return diagnosis


def render(diagnosis: Diagnosis, format: str, frame: Frame | None = None, **kwargs) -> str:
    """Render ``diagnosis`` as the text a model trained on ``format`` should output."""
    if format == "imagedoctor":
        return render_imagedoctor(diagnosis, frame=frame, **kwargs)
    if format == "sdg":
        return render_sdg(diagnosis, frame=frame, **kwargs)
    raise ValueError(f"unknown format {format!r}; use one of {list(FORMATS)}")
