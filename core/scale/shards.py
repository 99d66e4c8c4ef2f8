"""The output folder: one Parquet file per shard, written whole and atomically, and the job record.

    OUT/_job.json              what produced the shards (input fingerprint, model, settings)
    OUT/part-000000.parquet    rows index 0 .. shard_size-1, sorted by index
    OUT/part-000001.parquet    ...
    OUT/_summary.json          counts after the last run

Shard ``k`` holds exactly the input rows ``k*shard_size .. (k+1)*shard_size-1``. A shard file
exists only once all its rows are written (temporary file, fsync, rename), so after a crash or a
kill every file present is complete; a rerun writes the missing shards and nothing twice.
Readers (``pyarrow.parquet.read_table(OUT)``, pandas, DuckDB, Spark, Ray) skip the ``_`` and
``.`` files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..fileio import atomic_write

JOB_FILE = "_job.json"
SUMMARY_FILE = "_summary.json"
SCHEMA_ID = "imagedoctor.dataset-diagnosis/1"


def shard_name(k: int) -> str:
    return f"part-{k:06d}.parquet"


class ShardStore:
    """Where shards go. `open` checks (or records) the job, `done` lists the complete shards."""

    def __init__(self, out: str | Path, job: dict[str, Any], n_rows: int, shard_size: int):
        self.out = Path(out)
        self.job = job
        self.n_rows = n_rows
        self.shard_size = shard_size

    @property
    def n_shards(self) -> int:
        return (self.n_rows + self.shard_size - 1) // self.shard_size

    def rows_in(self, k: int) -> int:
        return min(self.shard_size, self.n_rows - k * self.shard_size)

    def open(self, overwrite: bool = False) -> None:
        """Create OUT, or check that it holds shards of this very job; remove stale temporary files."""
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"--out {self.out} is a file; give a folder")
        self.out.mkdir(parents=True, exist_ok=True)
        job_path = self.out / JOB_FILE
        if overwrite:
            for f in self.out.iterdir():
                if f.is_file() and (f.name.startswith("part-") or f.name in (JOB_FILE, SUMMARY_FILE)
                                    or f.name.startswith(".part-")):
                    f.unlink()
        if job_path.is_file():
            try:
                old = json.loads(job_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{job_path} is not valid JSON ({exc}); remove it or use --overwrite") from exc
            diff = sorted(k for k in set(old) | set(self.job) if old.get(k) != self.job.get(k))
            if diff:
                detail = "; ".join(f"{k}: was {old.get(k)!r}, now {self.job.get(k)!r}" for k in diff[:6])
                raise ValueError(f"{self.out} holds results of another job ({detail}). Rerun with the same input "
                                 "and settings to resume, use another --out, or pass --overwrite to start over")
        else:
            if any(f.name.startswith("part-") for f in self.out.iterdir()):
                raise ValueError(f"{self.out} has part-*.parquet files but no {JOB_FILE}; use another --out "
                                 "or --overwrite")
            atomic_write(job_path, json.dumps(self.job, indent=2, sort_keys=True), fsync=True)
        for f in self.out.iterdir():  # left by a killed run; their shards are redone
            if f.name.startswith(".part-") and ".tmp-" in f.name:
                f.unlink()

    def done(self) -> set[int]:
        """Shards whose file is present, readable and holds the expected number of rows."""
        import pyarrow.parquet as pq

        done = set()
        for k in range(self.n_shards):
            p = self.out / shard_name(k)
            if not p.is_file():
                continue
            try:
                meta = pq.read_metadata(p)
                ok = meta.num_rows == self.rows_in(k) and \
                    (meta.metadata or {}).get(b"imagedoctor.job") == self.job["fingerprint"].encode()
            except Exception:  # not a Parquet file: cannot be ours (we rename only complete files)
                ok = False
            if ok:
                done.add(k)
        return done

    def write(self, k: int, table) -> Path:
        """Write shard ``k`` (rows sorted by index) atomically."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if table.num_rows != self.rows_in(k):
            raise RuntimeError(f"shard {k} has {table.num_rows} rows, expected {self.rows_in(k)}")
        table = table.sort_by("index")
        index = table.column("index").to_pylist()
        expected = list(range(k * self.shard_size, k * self.shard_size + self.rows_in(k)))
        if index != expected:
            raise RuntimeError(f"shard {k} does not hold rows {expected[0]}..{expected[-1]} exactly once")
        meta = dict(table.schema.metadata or {})
        meta.update({b"imagedoctor.schema": SCHEMA_ID.encode(), b"imagedoctor.job": self.job["fingerprint"].encode(),
                     b"imagedoctor.heatmaps": str(self.job["heatmaps"]).encode()})
        table = table.replace_schema_metadata(meta)
        path = self.out / shard_name(k)
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, compression="zstd")
        atomic_write(path, buf.getvalue().to_pybytes(), fsync=True)
        return path

    def count_errors(self) -> tuple[int, int]:
        """(rows, rows with an error) over all shard files (reads the ``error`` column only)."""
        import pyarrow.parquet as pq

        rows = errors = 0
        for k in sorted(self.done()):
            col = pq.read_table(self.out / shard_name(k), columns=["error"]).column("error")
            rows += len(col)
            errors += len(col) - col.null_count
        return rows, errors

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write(self.out / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True), fsync=True)


class ShardCollector:
    """Buffers result rows until a shard is complete, then writes it (rows may arrive in any order)."""

    def __init__(self, store: ShardStore, on_rows=None):
        self.store = store
        self.parts: dict[int, list] = {}
        self.counts: dict[int, int] = {}
        self.on_rows = on_rows
        self.written: list[int] = []
        self.ok = 0
        self.failed = 0

    def add(self, table) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        if table.num_rows == 0:
            return
        errors = table.column("error")
        self.failed += len(errors) - errors.null_count
        self.ok += errors.null_count
        shards = pc.divide(table.column("index"), pa.scalar(self.store.shard_size, pa.int64()))
        for k in pc.unique(shards).to_pylist():
            part = table.filter(pc.equal(shards, k))
            self.parts.setdefault(k, []).append(part)
            self.counts[k] = self.counts.get(k, 0) + part.num_rows
            if self.counts[k] > self.store.rows_in(k):
                raise RuntimeError(f"shard {k} received {self.counts[k]} rows, more than its {self.store.rows_in(k)}")
            if self.counts[k] == self.store.rows_in(k):
                self.store.write(k, pa.concat_tables(self.parts.pop(k)))
                self.written.append(k)
        if self.on_rows is not None:
            self.on_rows(table.num_rows, len(errors) - errors.null_count)

    def check_complete(self, expected: set[int]) -> None:
        missing = sorted(expected - set(self.written))
        if missing:
            raise RuntimeError(f"the pipeline ended with shards {missing[:10]} incomplete "
                               f"({sum(self.counts.get(k, 0) for k in missing)} rows buffered); rerun to finish them")
