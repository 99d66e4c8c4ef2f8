"""What every engine does to a *group* (the rows of one model batch): decode on a CPU, then diagnose.

A group is ``batch_size`` consecutive rows of one shard, fixed by the row indices alone. The
local engine and Ray therefore hand the model exactly the same batches, whatever the worker
count or how often the job was resumed, and a batch's padding never differs between runs:
that is what makes the output identical row for row across engines (greedy decoding, no
sampling seeds involved).

Tables passed between the steps (one Arrow row per group, list columns hold the group's rows):

- `group_schema`:   shard, group, index, id, prompt, path, data, src_file, src_row, error
- `decoded_schema`: shard, group, index, id, prompt, width, height, pixels, pixel_width, pixel_height, error
  (``pixels``: RGB bytes already resized to what the model sees)
- `output_schema`:  one row per input row, what the Parquet shards hold (see docs/scale.md)
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..diagnosis import HEATMAP_NAMES, SCORE_NAMES, Defect, Diagnosis
from ..geometry import clamp_box

#: Smallest image side accepted: one merged 2x2 patch of 14 px (Qwen-VL's smallest visual token).
MIN_SIDE = 28
#: Largest aspect ratio the Qwen-VL image processors accept.
MAX_ASPECT = 200
HEATMAP_MODES = ("none", "png", "f16")
HEATMAP_COLUMNS = {name: f"heatmap_{name}" for name in HEATMAP_NAMES}
#: Env var naming a marker file: the first worker call that finds it deletes it and kills its own
#: process (os._exit). Fault injection for tests of Ray's worker restarts; unset in normal use.
FAULT_ENV = "IMAGEDOCTOR_FAULT_KILL_WORKER_ONCE"


def _pa():
    from .sources import require_pyarrow

    return require_pyarrow()


def group_schema():
    pa = _pa()
    return pa.schema([("shard", pa.int64()), ("group", pa.int64()), ("index", pa.list_(pa.int64())),
                      ("id", pa.list_(pa.string())), ("prompt", pa.list_(pa.string())),
                      ("path", pa.list_(pa.string())), ("data", pa.list_(pa.binary())),
                      ("src_file", pa.list_(pa.string())), ("src_row", pa.list_(pa.int64())),
                      ("error", pa.list_(pa.string()))])


def decoded_schema():
    pa = _pa()
    return pa.schema([("shard", pa.int64()), ("group", pa.int64()), ("index", pa.list_(pa.int64())),
                      ("id", pa.list_(pa.string())), ("prompt", pa.list_(pa.string())),
                      ("width", pa.list_(pa.int32())), ("height", pa.list_(pa.int32())),
                      ("pixels", pa.list_(pa.binary())), ("pixel_width", pa.list_(pa.int32())),
                      ("pixel_height", pa.list_(pa.int32())), ("error", pa.list_(pa.string()))])


def output_schema(heatmaps: str = "none"):
    """Schema of the result shards. Scores are plain float columns so filters need no JSON."""
    pa = _pa()
    defect = pa.struct([("box", pa.list_(pa.float64())), ("label", pa.string()), ("reason", pa.string()),
                        ("importance", pa.int32())])
    fields = [("index", pa.int64()), ("id", pa.string()), ("prompt", pa.string()), ("width", pa.int32()),
              ("height", pa.int32())]
    fields += [(name, pa.float64()) for name in SCORE_NAMES]
    fields += [("n_defects", pa.int32()), ("defects", pa.list_(defect)), ("problems", pa.list_(pa.string())),
               ("diagnosis", pa.string())]
    if heatmaps != "none":
        fields += [(col, pa.binary()) for col in HEATMAP_COLUMNS.values()]
    fields += [("model", pa.string()), ("error", pa.string())]
    return pa.schema(fields)


# ----------------------------------------------------------------------------------------------
# groups
# ----------------------------------------------------------------------------------------------
def make_groups(manifest_table, shard: int, shard_size: int, batch_size: int):
    """The groups of shard ``shard`` (rows ``shard*shard_size`` ...) as a `group_schema` table."""
    pa = _pa()
    start = shard * shard_size
    part = manifest_table.slice(start, shard_size)
    cols = {c: part.column(c).to_pylist() for c in ("index", "id", "prompt", "path", "data", "src_file", "src_row",
                                                    "error")}
    out: dict[str, list] = {name: [] for name in group_schema().names}
    for g, lo in enumerate(range(0, part.num_rows, batch_size)):
        out["shard"].append(shard)
        out["group"].append(g)
        for c, values in cols.items():
            out[c].append(values[lo:lo + batch_size])
    return pa.Table.from_pydict(out, schema=group_schema())


# ----------------------------------------------------------------------------------------------
# decoding (CPU)
# ----------------------------------------------------------------------------------------------
class _ParquetImages:
    """Reads image cells of Parquet files by row, one row group at a time (cached)."""

    def __init__(self, image_column: str):
        self.image_column = image_column
        self.files: dict[str, tuple[Any, list[int]]] = {}
        self.cached: tuple[str, int, list] | None = None

    def get(self, file: str, row: int) -> Any:
        import pyarrow.parquet as pq

        if file not in self.files:
            pf = pq.ParquetFile(file)
            starts, n = [], 0
            for i in range(pf.metadata.num_row_groups):
                starts.append(n)
                n += pf.metadata.row_group(i).num_rows
            self.files[file] = (pf, starts)
        pf, starts = self.files[file]
        rg = int(np.searchsorted(starts, row, side="right")) - 1
        if self.cached is None or self.cached[:2] != (file, rg):
            values = pf.read_row_group(rg, columns=[self.image_column]).column(0).to_pylist()
            self.cached = (file, rg, values)
        return self.cached[2][row - starts[rg]]


def _open_source(path, data, src_file, src_row, parquet: _ParquetImages):
    """Something PIL can open: a file path or a BytesIO."""
    if data is not None:
        return io.BytesIO(data)
    if path is not None:
        return path
    if src_file is not None:
        cell = parquet.get(src_file, src_row)
        if isinstance(cell, dict):  # Hugging Face datasets' {bytes, path}
            if cell.get("bytes") is not None:
                return io.BytesIO(cell["bytes"])
            if cell.get("path"):
                p = Path(cell["path"])
                return str(p if p.is_absolute() else Path(src_file).parent / p)
            raise ValueError("the image cell has neither bytes nor a path")
        if cell is None:
            raise ValueError("the image cell is empty")
        return io.BytesIO(cell)
    raise ValueError("the row has no image")


class BadImage(ValueError):
    """An image the model cannot take; ``size`` is its (w, h) when it could be read."""

    def __init__(self, message: str, size: tuple[int, int] | None = None):
        super().__init__(message)
        self.size = size


def decode_image(source, image_area):
    """(RGB PIL image resized for the model, original (w, h)). Raises `BadImage` naming the problem.

    ``image_area``: an `ImagePolicy` (what `resolve_image_area` gives), or a pixel count (aspect
    kept, bicubic) / None (unchanged)."""
    from PIL import Image

    from ..images import to_rgb
    from ..prompts import ImagePolicy

    try:
        with Image.open(source) as im:
            im.load()
            rgb = to_rgb(im, str(source))
    except FileNotFoundError:
        raise BadImage(f"image file {source} does not exist") from None
    except Exception as exc:  # PIL raises many types for broken files
        raise BadImage(f"unreadable image ({type(exc).__name__}: {exc})") from None
    w, h = rgb.size
    if min(w, h) < MIN_SIDE:
        raise BadImage(f"image too small ({w}x{h}; each side needs at least {MIN_SIDE} px)", (w, h))
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise BadImage(f"image too thin ({w}x{h}; the aspect ratio must be at most {MAX_ASPECT})", (w, h))
    policy = image_area if isinstance(image_area, ImagePolicy) else ImagePolicy.from_area(image_area)
    rgb = policy.apply(rgb)  # the same call Diagnoser.build_inputs makes, so the model sees the same pixels
    return rgb, (w, h)


def decode_groups(batch, image_area, image_column: str = "image"):
    """`group_schema` table -> `decoded_schema` table (the CPU step). Never raises for a bad row."""
    pa = _pa()
    parquet = _ParquetImages(image_column)
    out: dict[str, list] = {name: [] for name in decoded_schema().names}
    for g in batch.to_pylist():
        cols: dict[str, list] = {k: [] for k in ("width", "height", "pixels", "pixel_width", "pixel_height", "error")}
        for i in range(len(g["index"])):
            error, img, size = g["error"][i], None, (None, None)
            prompt = g["prompt"][i]
            if error is None and (prompt is None or not prompt.strip()):
                error = "empty prompt"
            if error is None:
                try:
                    img, size = decode_image(_open_source(g["path"][i], g["data"][i], g["src_file"][i],
                                                          g["src_row"][i], parquet), image_area)
                except BadImage as exc:
                    error, size = str(exc), exc.size or (None, None)
                except (ValueError, OSError) as exc:  # the source (a Parquet cell, a path) is broken
                    error = str(exc)
            cols["width"].append(size[0])
            cols["height"].append(size[1])
            cols["pixels"].append(None if img is None else img.tobytes())
            cols["pixel_width"].append(None if img is None else img.width)
            cols["pixel_height"].append(None if img is None else img.height)
            cols["error"].append(error)
        for k in ("shard", "group", "index", "id", "prompt"):
            out[k].append(g[k])
        for k, v in cols.items():
            out[k].append(v)
    return pa.Table.from_pydict(out, schema=decoded_schema())


# ----------------------------------------------------------------------------------------------
# diagnosing (the model)
# ----------------------------------------------------------------------------------------------
def restore_size(d: Diagnosis, width: int, height: int) -> Diagnosis:
    """``d`` (made on the resized image) in pixels of the original ``width`` x ``height`` image.

    Boxes scale by the resize ratio (what `parse` does when given the original size); heatmaps
    are resized bilinearly.
    """
    if (d.width, d.height) == (width, height):
        return d
    from ..masks import resize_map

    sx, sy = width / d.width, height / d.height
    defects = [Defect(box=clamp_box((x.box[0] * sx, x.box[1] * sy, x.box[2] * sx, x.box[3] * sy), width, height),
                      label=x.label, reason=x.reason, importance=x.importance) for x in d.defects]
    maps = {n: None if m is None else resize_map(m, width, height) for n, m in d.heatmaps.items()}
    return Diagnosis(width=width, height=height, scores=d.scores, defects=defects, reasoning=d.reasoning,
                     heatmaps=maps, raw_text=d.raw_text, problems=list(d.problems), prompt=d.prompt, format=d.format)


def encode_heatmap(hm: np.ndarray | None, mode: str) -> bytes | None:
    """``png``: 8-bit grayscale PNG; ``f16``: little-endian float16, row-major (height, width)."""
    if hm is None:
        return None
    if mode == "f16":
        return np.ascontiguousarray(hm, dtype="<f2").tobytes()
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(hm, 0, 1) * 255).astype(np.uint8), mode="L").save(buf, format="PNG",
                                                                                         compress_level=1)
    return buf.getvalue()


def decode_heatmap(value: bytes | None, width: int, height: int, mode: str) -> np.ndarray | None:
    """Inverse of `encode_heatmap`: float32 (height, width) in [0, 1]."""
    if value is None:
        return None
    if mode == "f16":
        return np.frombuffer(value, dtype="<f2").astype(np.float32).reshape(height, width)
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(value)).convert("L"), dtype=np.float32) / 255.0


def result_row(index: int, id: str, prompt: str | None, width: int | None, height: int | None,
               d: Diagnosis | None, error: str | None, model: str, heatmaps: str) -> dict[str, Any]:
    row: dict[str, Any] = {"index": index, "id": id, "prompt": prompt, "width": width, "height": height}
    data = d.to_dict(heatmap_encoding=None) if d is not None else None
    for name in SCORE_NAMES:
        row[name] = None if d is None else getattr(d.scores, name)
    row["n_defects"] = None if d is None else len(d.defects)
    row["defects"] = None if d is None else data["defects"]
    row["problems"] = None if d is None else list(d.problems)
    row["diagnosis"] = None if d is None else d.to_json(heatmap_encoding=None, indent=None)
    if heatmaps != "none":
        for name, col in HEATMAP_COLUMNS.items():
            row[col] = None if d is None else encode_heatmap(d.heatmaps.get(name), heatmaps)
    row["model"] = model
    row["error"] = error
    return row


def _maybe_fault() -> None:
    marker = os.environ.get(FAULT_ENV)
    if not marker:
        return
    try:
        os.remove(marker)  # only one process wins the file
    except FileNotFoundError:
        return
    os._exit(137)  # as if the OS had killed the worker: no cleanup, no exception


class SystemicDiagnosisError(RuntimeError):
    """Every row of a group failed inside the model: the worker, not the data, is broken."""


class GroupDiagnoser:
    """A loaded diagnoser applied to `decoded_schema` tables; returns `output_schema` tables.

    Ray Data constructs one per actor (``map_batches(GroupDiagnoser, compute=ActorPoolStrategy(...))``);
    the local engine constructs one. Each group is one ``Diagnoser.diagnose`` call with the
    diagnoser's defaults (greedy). If that call raises, the group's rows are retried one by one so
    a single bad row cannot sink its neighbours; if every row fails alone too, the worker is
    broken (not the data) and `SystemicDiagnosisError` stops the job (finished shards stay).
    """

    def __init__(self, model: str, model_id: str | None = None, dtype: str = "auto", device: str | None = None,
                 max_new_tokens: int = 1024, think: bool = True, heatmaps: str = "none",
                 torch_threads: int | None = None, min_new_tokens: int = 0):
        if heatmaps not in HEATMAP_MODES:
            raise ValueError(f"heatmaps must be one of {list(HEATMAP_MODES)}, got {heatmaps!r}")
        if torch_threads:
            import torch

            torch.set_num_threads(int(torch_threads))
        from ..diagnoser import Diagnoser

        self.diagnoser = Diagnoser.from_pretrained(model, dtype=dtype, device=device)
        self.model_id = model_id or str(model)
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens
        self.think = think
        self.heatmaps = heatmaps

    def _diagnose(self, images: list, prompts: list[str]) -> list[Diagnosis]:
        out = self.diagnoser.diagnose(images, prompts, max_new_tokens=self.max_new_tokens,
                                      min_new_tokens=self.min_new_tokens, batch_size=len(images),
                                      heatmaps=self.heatmaps != "none", think=self.think, image_area=None)
        if len(out) != len(images):
            raise RuntimeError(f"the diagnoser returned {len(out)} diagnoses for {len(images)} images")
        return out

    def diagnose_group(self, g: dict[str, Any]) -> list[dict[str, Any]]:
        from PIL import Image

        n = len(g["index"])
        ok = [i for i in range(n) if g["error"][i] is None]
        diags: dict[int, Diagnosis] = {}
        errors: dict[int, str] = {i: g["error"][i] for i in range(n) if g["error"][i] is not None}
        images = {i: Image.frombytes("RGB", (g["pixel_width"][i], g["pixel_height"][i]), g["pixels"][i]) for i in ok}
        if ok:
            try:
                diags = dict(zip(ok, self._diagnose([images[i] for i in ok], [g["prompt"][i] for i in ok])))
            except Exception:
                for i in ok:  # isolate the row that broke the batch
                    try:
                        diags[i] = self._diagnose([images[i]], [g["prompt"][i]])[0]
                    except Exception as exc:
                        errors[i] = f"diagnosis failed ({type(exc).__name__}: {exc})"[:1000]
                if len(ok) > 1 and not diags:
                    raise SystemicDiagnosisError(
                        f"every row of shard {g['shard']} group {g['group']} failed in the model, e.g. "
                        f"{errors[ok[0]]}; fix the worker and rerun the same command (finished shards are kept)")
        rows = []
        for i in range(n):
            d = diags.get(i)
            if d is not None:
                d = restore_size(d, g["width"][i], g["height"][i])
            rows.append(result_row(g["index"][i], g["id"][i], g["prompt"][i], g["width"][i], g["height"][i], d,
                                   errors.get(i), self.model_id, self.heatmaps))
        return rows

    def __call__(self, batch):
        _maybe_fault()
        pa = _pa()
        rows = []
        for g in batch.to_pylist():
            rows.extend(self.diagnose_group(g))
        return pa.Table.from_pylist(rows, schema=output_schema(self.heatmaps))
