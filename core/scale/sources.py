"""Inputs of ``diagnose-dataset``: every supported source becomes one `Manifest`.

A manifest is an Arrow table with one row per input row, in input order (``index`` 0..N-1):

    index    int64    position in the input (shards are ranges of it)
    id       string   the row's id (``--id-column``, the project ``id``, or the image's relative path)
    prompt   string   null when the source has none for this row
    path     string   image file to read (absolute), or null
    data     binary   image bytes held inline (JSONL data URIs), or null
    src_file string   Parquet file that holds the image bytes, or null
    src_row  int64    row of those bytes in ``src_file``
    error    string   why this row cannot be diagnosed, known before any image is opened (else null)

Only ids, prompts and references are read here (on the driver); image bytes are read by the
decode step, where a cluster reads them in parallel. A row the source cannot describe (a JSONL
line that is not JSON, a duplicate id, a prompt whose image is missing) still becomes a row,
with ``error`` set: nothing in the input is dropped silently.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INPUT_FORMATS = ("auto", "folder", "project", "jsonl", "parquet")
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
PROMPT_FILE_NAMES = ("prompts.jsonl", "prompts.json", "prompts.tsv", "prompts.csv")
#: Column names tried for the image file of a prompts-file entry (after ``--image-column``).
IMAGE_KEYS = ("image", "file_name", "filename", "file", "path", "image_path")
COLUMNS = ("index", "id", "prompt", "path", "data", "src_file", "src_row", "error")


def require_pyarrow():
    try:
        import pyarrow
    except ModuleNotFoundError as exc:  # the scale extra is optional
        raise ModuleNotFoundError(
            "diagnose-dataset writes Parquet and needs pyarrow: pip install 'imagedoctor[scale]' "
            "(or pip install pyarrow)") from exc
    return pyarrow


def manifest_schema():
    pa = require_pyarrow()
    return pa.schema([("index", pa.int64()), ("id", pa.string()), ("prompt", pa.string()), ("path", pa.string()),
                      ("data", pa.binary()), ("src_file", pa.string()), ("src_row", pa.int64()),
                      ("error", pa.string())])


@dataclass
class Manifest:
    """The rows to diagnose (`table`, see the module docstring) and where they came from."""

    table: Any
    format: str
    source: str
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.table.num_rows

    def fingerprint(self) -> str:
        """sha256 over every row's index, id, prompt and image reference (not the image bytes).

        Stable across pyarrow versions (hashes Python values, not Arrow buffers) and paths are
        taken relative to the input, so a resumed job can tell that it reads the same input.
        """
        import os

        root = Path(self.source)
        root = root if root.is_dir() else root.parent
        rel = lambda p: None if p is None else os.path.relpath(p, root)  # noqa: E731 (the input may move)
        h = hashlib.sha256()
        cols = {c: self.table.column(c).to_pylist() for c in ("index", "id", "prompt", "path", "src_file", "src_row")}
        data = self.table.column("data").to_pylist()
        for i in range(self.table.num_rows):
            ref = (rel(cols["path"][i]), rel(cols["src_file"][i]), cols["src_row"][i],
                   None if data[i] is None else hashlib.sha256(data[i]).hexdigest())
            h.update(json.dumps([cols["index"][i], cols["id"][i], cols["prompt"][i], ref]).encode())
        return h.hexdigest()


class _Rows:
    """Column lists that become the manifest table; `add` keeps ids unique (later copies get an error)."""

    def __init__(self):
        self.cols: dict[str, list] = {c: [] for c in COLUMNS}
        self.first: dict[str, int] = {}

    def add(self, id: str, prompt: Any = None, path: str | None = None, data: bytes | None = None,
            src_file: str | None = None, src_row: int | None = None, error: str | None = None) -> None:
        index = len(self.cols["index"])
        id = str(id)
        if error is None:
            if id in self.first:
                error = f"duplicate id {id!r} (first at row {self.first[id]})"
            elif prompt is None:
                error = "no prompt for this row"
            elif not isinstance(prompt, str):
                error = f"prompt must be text, got {type(prompt).__name__}"
        self.first.setdefault(id, index)
        if prompt is not None and not isinstance(prompt, str):
            prompt = None
        for k, v in zip(COLUMNS, (index, id, prompt, path, data, src_file, src_row, error)):
            self.cols[k].append(v)

    def table(self):
        pa = require_pyarrow()
        return pa.Table.from_pydict(self.cols, schema=manifest_schema())


# ----------------------------------------------------------------------------------------------
def detect_input_format(path: str | Path) -> str:
    """folder | project | jsonl | parquet, from what ``path`` is (pass ``--format`` to override)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input {p} does not exist")
    if p.is_dir():
        if (p / "data.jsonl").is_file():
            return "project"
        if any(p.glob("*.parquet")):
            return "parquet"
        return "folder"
    if p.name == "data.jsonl":
        return "project"
    if p.suffix == ".parquet":
        return "parquet"
    if p.suffix in (".jsonl", ".json"):
        return "jsonl"
    raise ValueError(f"cannot tell the format of {p}; pass --format folder|project|jsonl|parquet")


def read_manifest(path: str | Path, format: str = "auto", prompts: str | Path | None = None,
                  prompt_column: str = "prompt", image_column: str = "image", id_column: str = "id") -> Manifest:
    """Read any supported input into a `Manifest` (see `INPUT_FORMATS`)."""
    if format not in INPUT_FORMATS:
        raise ValueError(f"unknown input format {format!r}; use one of {list(INPUT_FORMATS)}")
    path = Path(path).expanduser()
    fmt = detect_input_format(path) if format == "auto" else format
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if prompts is not None and fmt != "folder":
        raise ValueError(f"--prompts is for an image folder; a {fmt} input carries its own prompts "
                         f"(choose the column with --prompt-column)")
    if fmt == "folder":
        m = _read_folder(path, prompts, prompt_column, image_column)
    elif fmt == "project":
        m = _read_project(path)
    elif fmt == "jsonl":
        m = _read_jsonl(path, prompt_column, image_column, id_column)
    else:
        m = _read_parquet(path, prompt_column, image_column, id_column)
    if len(m) == 0:
        raise ValueError(f"{path}: no rows to diagnose")
    return m


# -- image folder + prompts file ------------------------------------------------------------------
def load_prompts_file(path: str | Path, prompt_column: str = "prompt", image_column: str = "image") -> dict[str, Any]:
    """A prompts file as ``{image name: prompt}`` (formats: `imagedoctor.core.data.prompts_file`):
    the image name is ``--image-column`` or one of `IMAGE_KEYS`, the prompt ``--prompt-column``.
    Names are matched to images by relative path, then file name, then stem.
    """
    from ..data.prompts_file import read_prompts_file

    keys = (image_column,) + tuple(k for k in IMAGE_KEYS if k != image_column)
    return read_prompts_file(path, keys, (prompt_column,))


def _read_folder(root: Path, prompts: str | Path | None, prompt_column: str, image_column: str) -> Manifest:
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    if prompts is None:
        found = [root / n for n in PROMPT_FILE_NAMES if (root / n).is_file()]
        if not found:
            raise FileNotFoundError(f"{root}: no prompts file; put one of {list(PROMPT_FILE_NAMES)} in the folder "
                                    "or pass --prompts FILE")
        prompts = found[0]
    table = load_prompts_file(prompts, prompt_column, image_column)
    images = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*")
                    if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    used: set[str] = set()
    entries: list[tuple[str, Any, str | None, str | None]] = []
    for rel, p in images:
        key = next((k for k in (rel, p.name, p.stem) if k in table), None)
        if key is not None:
            used.add(key)
        entries.append((rel, table.get(key) if key is not None else None, str(p.resolve()), None))
    for key in table:  # prompts whose image is not there are rows too: reported, not dropped
        if key not in used:
            entries.append((key, table[key], None, f"image {key!r} named in {Path(prompts).name} is not in {root}"))
    entries.sort(key=lambda e: e[0])
    rows = _Rows()
    for rel, prompt, path, error in entries:
        rows.add(rel, prompt, path=path, error=error)
    return Manifest(rows.table(), "folder", str(root))


# -- project data set -------------------------------------------------------------------------
def _read_project(path: Path) -> Manifest:
    """The project format's ``data.jsonl`` (id, image, prompt); ground truth is not needed here."""
    data_file = path / "data.jsonl" if path.is_dir() else path
    base = data_file.parent
    if not data_file.is_file():
        raise FileNotFoundError(f"no data.jsonl in {path}; is this a project data set folder?")
    rows = _Rows()
    with open(data_file, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.add(f"line-{lineno}", error=f"{data_file.name}:{lineno} is not valid JSON ({exc})")
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), str) or not isinstance(rec.get("image"), str):
                rows.add(f"line-{lineno}", error=f"{data_file.name}:{lineno} needs string 'id' and 'image' fields")
                continue
            rows.add(rec["id"], rec.get("prompt"), path=str((base / rec["image"]).resolve()))
    return Manifest(rows.table(), "project", str(data_file))


# -- JSONL ------------------------------------------------------------------------------------
def _image_ref(value: Any, base: Path) -> tuple[str | None, bytes | None, str | None]:
    """(path, data, error) for a JSONL image value: a path (relative to the file) or a data URI."""
    if not isinstance(value, str) or not value:
        return None, None, f"image must be a path or a data URI, got {value!r}"[:200]
    if value.startswith("data:"):
        head, _, payload = value.partition(",")
        if ";base64" not in head:
            return None, None, "a data URI image must be base64 (data:image/png;base64,...)"
        try:
            return None, base64.b64decode(payload, validate=True), None
        except (binascii.Error, ValueError) as exc:
            return None, None, f"image data URI is not valid base64 ({exc})"
    p = Path(value).expanduser()
    return str((p if p.is_absolute() else base / p).resolve()), None, None


def _read_jsonl(path: Path, prompt_column: str, image_column: str, id_column: str) -> Manifest:
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    rows = _Rows()
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            index = len(rows.cols["index"])
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.add(str(index), error=f"{path.name}:{lineno} is not valid JSON ({exc})")
                continue
            if not isinstance(rec, dict):
                rows.add(str(index), error=f"{path.name}:{lineno} is not a JSON object")
                continue
            rid = rec.get(id_column, index)
            if image_column not in rec:
                rows.add(rid, rec.get(prompt_column), error=f"no {image_column!r} field (--image-column)")
                continue
            p, data, err = _image_ref(rec[image_column], path.parent)
            rows.add(rid, rec.get(prompt_column), path=p, data=data, error=err)
    return Manifest(rows.table(), "jsonl", str(path))


# -- Parquet ----------------------------------------------------------------------------------
def parquet_files(path: Path) -> list[Path]:
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    files = [f for f in files if not any(part.startswith(("_", ".")) for part in f.relative_to(path).parts)] \
        if path.is_dir() else files
    if not files:
        raise FileNotFoundError(f"no .parquet files in {path}")
    return files


def image_column_kind(field) -> str:
    """'path' (string), 'bytes' (binary) or 'struct' (Hugging Face ``{bytes, path}``) for an Arrow field."""
    import pyarrow as pa

    t = field.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "path"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "bytes"
    if pa.types.is_struct(t) and any(t.field(i).name in ("bytes", "path") for i in range(t.num_fields)):
        return "struct"
    raise ValueError(f"image column {field.name!r} has type {t}; expected paths (string), bytes (binary) or "
                     "a {bytes, path} struct")


def _read_parquet(path: Path, prompt_column: str, image_column: str, id_column: str) -> Manifest:
    require_pyarrow()
    import pyarrow.parquet as pq

    rows = _Rows()
    for f in parquet_files(path):
        schema = pq.read_schema(f)
        names = set(schema.names)
        if image_column not in names:
            raise ValueError(f"{f}: no image column {image_column!r} (--image-column); columns: {schema.names}")
        if prompt_column not in names:
            raise ValueError(f"{f}: no prompt column {prompt_column!r} (--prompt-column); columns: {schema.names}")
        kind = image_column_kind(schema.field(image_column))
        cols = [prompt_column] + ([id_column] if id_column in names else []) + ([image_column] if kind == "path" else [])
        t = pq.read_table(f, columns=cols)
        prompts = t.column(prompt_column).to_pylist()
        ids = t.column(id_column).to_pylist() if id_column in names else [None] * t.num_rows
        paths = t.column(image_column).to_pylist() if kind == "path" else None
        for r in range(t.num_rows):
            index = len(rows.cols["index"])
            rid = ids[r] if ids[r] is not None else index
            if kind == "path":
                p, data, err = _image_ref(paths[r], f.parent)
                rows.add(rid, prompts[r], path=p, data=data, error=err)
            else:
                rows.add(rid, prompts[r], src_file=str(f.resolve()), src_row=r)
    return Manifest(rows.table(), "parquet", str(path))
