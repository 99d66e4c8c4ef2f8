"""ImageDoctor core: all real logic (model, head, parsing, metrics, masks, selection, rendering).

Never imports ComfyUI. Heavy libraries (torch, transformers) are imported lazily by the
modules that need them, so ``import imagedoctor.core`` stays cheap.
"""

from .diagnosis import (
    DEFAULT_IMPORTANCE,
    HEATMAP_NAMES,
    LABELS,
    SCORE_NAMES,
    Defect,
    Diagnosis,
    DiagnosisSchemaError,
    Scores,
    importance_bucket,
)
from .formats import DiagnosisParseError, parse, render

__all__ = [
    "Defect", "Diagnosis", "DiagnosisSchemaError", "DiagnosisParseError", "Scores", "SCORE_NAMES", "LABELS",
    "HEATMAP_NAMES", "DEFAULT_IMPORTANCE", "importance_bucket", "parse", "render", "Diagnoser",
]


def __getattr__(name):  # lazy: importing the Diagnoser pulls in torch/transformers
    if name == "Diagnoser":
        from .diagnoser import Diagnoser

        return Diagnoser
    raise AttributeError(name)
