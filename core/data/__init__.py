"""Data set readers and the project's own data set format.

- `load_project_dataset` / `write_project_dataset`: the project format (``data.jsonl`` + images
  + heatmap PNGs) that every reader converts to and the trainers read.
- `read_richhf`: RichHF-18K TFRecords (no TensorFlow needed) joined to Pick-a-Pic images.
- `read_sdg30k`: SDG-30K annotation JSONL (0-1000 boxes; xyxy or Gemini yxyx by field) as pixel ground truth.
"""

from .project import (
    DATA_FILE,
    DatasetError,
    DatasetWriter,
    LoadReport,
    ProjectDataset,
    Sample,
    load_heatmap_png,
    load_project_dataset,
    save_heatmap_png,
    write_project_dataset,
)
from .richhf import RichHFRecord, export_pickapic, read_richhf, richhf_to_samples, tokenize_prompt
from .sdg30k import read_sdg30k

__all__ = [
    "DATA_FILE", "DatasetError", "DatasetWriter", "LoadReport", "ProjectDataset", "Sample", "load_heatmap_png",
    "load_project_dataset", "save_heatmap_png", "write_project_dataset", "RichHFRecord", "read_richhf",
    "richhf_to_samples", "export_pickapic", "tokenize_prompt", "read_sdg30k",
]
