"""Data-set-scale diagnosis: ``python -m imagedoctor diagnose-dataset`` and its Python API.

    from imagedoctor.core.scale import DiagnoseDatasetConfig, diagnose_dataset, read_results
    result = diagnose_dataset(DiagnoseDatasetConfig(model=M, input="images/", out="out/", engine="ray"))
    good = read_results("out/", filters=[("overall", ">=", 0.8), ("error", "=", None)])

Local by default (one process); ``engine="ray"`` runs Ray Data across GPUs and machines. The
output is Parquet shards that a rerun resumes (docs/scale.md). Ray and pyarrow are imported only
when a job runs (``pip install 'imagedoctor[scale]'``).
"""

from .dataset import (
    ENGINES,
    DiagnoseDatasetConfig,
    DiagnoseDatasetResult,
    diagnose_dataset,
    read_results,
    row_to_diagnosis,
)
from .sources import INPUT_FORMATS, Manifest, read_manifest
from .work import HEATMAP_MODES

__all__ = [
    "DiagnoseDatasetConfig", "DiagnoseDatasetResult", "diagnose_dataset", "read_results", "row_to_diagnosis",
    "read_manifest", "Manifest", "ENGINES", "INPUT_FORMATS", "HEATMAP_MODES",
]
