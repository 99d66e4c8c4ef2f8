"""`diagnose_dataset`: run a diagnoser over a whole data set into resumable Parquet shards.

    from imagedoctor.core.scale import DiagnoseDatasetConfig, diagnose_dataset
    result = diagnose_dataset(DiagnoseDatasetConfig(model="GYX97/ImageDoctor", input="images/", out="scores/"))
    result.diagnosed, result.failed, result.skipped

Two engines run the same two steps (`work.decode_groups` on a CPU, `work.GroupDiagnoser` on the
model) over the same groups of rows:

- ``local`` (default): one process, one loaded diagnoser; the next batch is decoded in a
  thread while the model runs. Needs pyarrow, not Ray.
- ``ray``: Ray Data's batch-inference pattern. The pending groups become a dataset; decoding runs
  as Ray tasks on any CPU of the cluster; ``map_batches`` with an actor pool
  (``ActorPoolStrategy(size=workers)``, ``num_gpus=gpus_per_worker``) holds one loaded diagnoser
  per worker; results stream back to this process, which writes each shard once it is complete.
  A worker process that dies is restarted and its batch retried (``max_restarts`` /
  ``max_task_retries``).

Both write shards through `shards.ShardStore` (atomic, resumable; see its docstring).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from .shards import SCHEMA_ID, ShardCollector, ShardStore
from .sources import INPUT_FORMATS, Manifest, read_manifest, require_pyarrow
from .work import HEATMAP_MODES, GroupDiagnoser, decode_groups, make_groups

logger = logging.getLogger("imagedoctor")
ENGINES = ("local", "ray")


@dataclass
class DiagnoseDatasetConfig:
    """Settings of one ``diagnose-dataset`` job. The CLI flags are these fields (``--batch-size`` ...)."""

    model: str = field(default="", metadata={"help": "Diagnoser folder or cached hub id (as for `diagnose`)."})
    input: str = field(default="", metadata={"help": "Image folder (+ prompts file), project data set folder, "
                                                     "JSONL file, or Parquet file/folder."})
    out: str = field(default="", metadata={"help": "Output folder of Parquet shards; rerun with the same one to "
                                                   "resume."})
    format: str = field(default="auto", metadata={"help": f"Input format, one of {list(INPUT_FORMATS)}."})
    prompts: str | None = field(default=None, metadata={"help": "Image folder only: prompts file (JSON, JSONL, TSV, "
                                                                "CSV); default: prompts.* in the folder."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column/field that holds the prompt."})
    image_column: str = field(default="image", metadata={"help": "Column/field that holds the image path, bytes or "
                                                                 "data URI."})
    id_column: str = field(default="id", metadata={"help": "Column/field that holds the row id (default: row number)."})
    engine: str = field(default="local", metadata={"help": "'local' (one process, no Ray) or 'ray' (Ray Data)."})
    ray_address: str | None = field(default=None, metadata={"help": "Ray only: cluster to join (e.g. 'auto' or "
                                                                    "'ray://head:10001'); default: start a local one."})
    workers: int | None = field(default=None, metadata={"help": "Ray only: diagnoser workers (default: one per GPU, "
                                                                "or 1 without GPUs)."})
    gpus_per_worker: float | None = field(default=None, metadata={"help": "Ray only: GPUs per worker (default: 1 if "
                                                                          "the cluster has GPUs, else 0)."})
    cpus_per_worker: float = field(default=1.0, metadata={"help": "Ray only: CPUs reserved per diagnoser worker (also "
                                                                  "its torch threads)."})
    decode_cpus: float = field(default=1.0, metadata={"help": "Ray only: CPUs reserved per decode task."})
    batch_size: int = field(default=8, metadata={"help": "Images per model call."})
    shard_size: int = field(default=256, metadata={"help": "Rows per output file (the unit of resuming)."})
    heatmaps: str = field(default="none", metadata={"help": "Heatmap columns: 'none', 'png' (8-bit PNG bytes) or "
                                                            "'f16' (raw little-endian float16)."})
    max_new_tokens: int = field(default=1024, metadata={"help": "Longest answer generated per image."})
    min_new_tokens: int = field(default=0, metadata={"help": "Force at least this many new tokens (benchmarks)."})
    think: bool = field(default=True, metadata={"help": "Ask for the reasoning block (ImageDoctor); off = scores "
                                                        "only, faster."})
    image_area: int | None | str = field(default="auto", metadata={"help": "Resize images to about this many pixels "
                                                                           "('auto': the model's own policy; None: keep)."})
    dtype: str = field(default="auto", metadata={"help": "auto | bf16 | fp16 | fp32."})
    device: str | None = field(default=None, metadata={"help": "Local only: torch device (default: cuda if "
                                                               "available)."})
    max_retries: int = field(default=3, metadata={"help": "Ray only: restarts of a dead worker and retries of its "
                                                          "batch (and of a failed decode task)."})
    overwrite: bool = field(default=False, metadata={"help": "Delete the shards of another job in --out first."})
    progress: bool = field(default=True, metadata={"help": "Draw a progress bar (images/s) on stderr."})

    def __post_init__(self) -> None:
        for name in ("model", "input", "out"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required (--{name})")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {list(ENGINES)}, got {self.engine!r}")
        if self.format not in INPUT_FORMATS:
            raise ValueError(f"format must be one of {list(INPUT_FORMATS)}, got {self.format!r}")
        if self.heatmaps not in HEATMAP_MODES:
            raise ValueError(f"heatmaps must be one of {list(HEATMAP_MODES)}, got {self.heatmaps!r}")
        for name in ("batch_size", "shard_size", "max_new_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be between 0 and max_new_tokens, got {self.min_new_tokens}")
        if self.shard_size < self.batch_size:
            raise ValueError(f"shard_size ({self.shard_size}) must be at least batch_size ({self.batch_size}): a "
                             "model batch never spans two shards")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        if self.cpus_per_worker <= 0 or self.decode_cpus <= 0:
            raise ValueError("cpus_per_worker and decode_cpus must be positive")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.engine == "local":
            ray_only = [n for n in ("ray_address", "workers", "gpus_per_worker") if getattr(self, n) is not None]
            if ray_only:
                raise ValueError(f"{', '.join('--' + n.replace('_', '-') for n in ray_only)} only apply to "
                                 "--engine ray; add --engine ray or drop them")
        elif self.device is not None:
            raise ValueError("--device applies to --engine local; Ray places workers by --gpus-per-worker")
        if isinstance(self.image_area, str) and self.image_area != "auto":
            raise ValueError(f"image_area must be 'auto', None or a pixel count, got {self.image_area!r}")
        if isinstance(self.image_area, int) and self.image_area < 28 * 28:
            raise ValueError(f"image_area must be at least {28 * 28} pixels, got {self.image_area}")


@dataclass
class DiagnoseDatasetResult:
    """What one run did (``diagnosed``/``failed``/``skipped`` are rows) and the state of ``out``."""

    out: str
    engine: str
    total: int
    diagnosed: int
    failed: int
    skipped: int
    shards_written: int
    seconds: float
    images_per_s: float
    output_rows: int
    output_errors: int
    complete: bool
    workers: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return (f"{self.diagnosed} diagnosed, {self.failed} failed, {self.skipped} skipped (already done) of "
                f"{self.total} rows in {self.seconds:.1f} s ({self.images_per_s:.2f} images/s, {self.engine}); "
                f"{self.out}: {self.output_rows}/{self.total} rows, {self.output_errors} with errors"
                + ("" if self.complete else " -- INCOMPLETE, rerun to finish"))


# ----------------------------------------------------------------------------------------------
def model_identity(model: str) -> tuple[str, str]:
    """(output format of the checkpoint, sha256 of its config.json and weight file names/sizes)."""
    from ..diagnoser import FAMILIES, _resolve_folder

    folder = _resolve_folder(model, local_files_only=True)
    h = hashlib.sha256()
    config_path = folder / "config.json"
    if not config_path.is_file():  # a LoRA adapter folder: its base is resolved at load time
        cfg = json.loads((folder / "adapter_config.json").read_text())
        h.update((folder / "adapter_config.json").read_bytes())
        fmt = None
    else:
        cfg = json.loads(config_path.read_text())
        h.update(config_path.read_bytes())
        family = cfg.get("model_type")
        if family not in FAMILIES:
            raise ValueError(f"{folder}: model_type {family!r} is not supported; expected one of {sorted(FAMILIES)}")
        fmt = cfg.get("imagedoctor_format") or FAMILIES[family][1]
    for f in sorted(folder.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return fmt or "imagedoctor", h.hexdigest()


def resolve_image_area(model: str, image_area, fmt: str, think: bool = True):
    """The resize policy (`ImagePolicy`) the decode step applies: the one `Diagnoser.diagnose` would
    apply. ``image_area`` if not "auto"; else the checkpoint's config.json (``imagedoctor_image_area``,
    else its ``imagedoctor_prompt_variant``'s policy); else the format's default prompt variant's
    (``think=False``: the score-only variant's, 512x512 for ImageDoctor)."""
    from ..diagnoser import _resolve_folder
    from ..prompts import ImagePolicy, get_variant, resolve_image_policy, resolve_variant

    if image_area != "auto":
        return ImagePolicy.from_area(None if image_area is None else int(image_area))
    config_path = _resolve_folder(model, local_files_only=True) / "config.json"
    cfg = json.loads(config_path.read_text()) if config_path.is_file() else {}  # an adapter: its base decides
    variant = cfg.get("imagedoctor_prompt_variant") if think else None
    if variant is not None and get_variant(variant).format != fmt:
        variant = None  # Diagnoser.from_pretrained ignores a variant of another format too
    return resolve_image_policy(resolve_variant(fmt, think, variant), "auto", cfg.get("imagedoctor_image_area", "auto"))


def policy_record(policy) -> int | None | dict:
    """JSON form of an image policy in the job record: a pixel count (aspect kept, bicubic), None
    (unchanged), or the policy's fields; earlier job records (pixel count or None) still match."""
    import dataclasses

    if policy is None or isinstance(policy, int):
        return policy
    if policy.kind == "keep":
        return None
    if policy.kind == "area" and policy.resample == "bicubic":
        return policy.area
    return dataclasses.asdict(policy)


def job_record(cfg: DiagnoseDatasetConfig, manifest: Manifest, fmt: str, model_sha: str, area) -> dict:
    """Everything that decides the output's content; a rerun must match it to resume."""
    job = {
        "schema": SCHEMA_ID, "input_format": manifest.format, "n_rows": len(manifest),
        "input_sha256": manifest.fingerprint(), "image_column": cfg.image_column, "model": cfg.model,
        "model_sha256": model_sha, "format": fmt, "dtype": cfg.dtype, "max_new_tokens": cfg.max_new_tokens,
        "min_new_tokens": cfg.min_new_tokens,
        "think": cfg.think, "image_area": policy_record(area), "heatmaps": cfg.heatmaps, "batch_size": cfg.batch_size,
        "shard_size": cfg.shard_size,
    }
    job["fingerprint"] = hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:32]
    return job


class _Progress:
    """tqdm bar in images (its rate is images/s) with the failure count."""

    def __init__(self, total: int, enabled: bool):
        self.failed = 0
        self.rows = 0
        self.t0 = time.perf_counter()
        self.bar = None
        if enabled and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="diagnose-dataset", unit="img", file=sys.stderr, dynamic_ncols=True)

    def __call__(self, rows: int, failed: int) -> None:
        self.failed += failed
        self.rows += rows
        if self.bar is not None:
            rate = self.rows / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"{rate:.2f} images/s, failed={self.failed}", refresh=False)
            self.bar.update(rows)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------------
# engines
# ----------------------------------------------------------------------------------------------
def _worker_kwargs(cfg: DiagnoseDatasetConfig) -> dict[str, Any]:
    return dict(model=cfg.model, model_id=cfg.model, dtype=cfg.dtype, max_new_tokens=cfg.max_new_tokens,
                min_new_tokens=cfg.min_new_tokens, think=cfg.think, heatmaps=cfg.heatmaps)


def run_local(cfg: DiagnoseDatasetConfig, manifest: Manifest, pending: list[int], area,
              collector: ShardCollector) -> int:
    """One process: decode group i+1 in a thread while the model diagnoses group i."""
    worker = GroupDiagnoser(device=cfg.device, **_worker_kwargs(cfg))
    groups = (tbl.slice(i, 1) for k in pending
              for tbl in [make_groups(manifest.table, k, cfg.shard_size, cfg.batch_size)] for i in range(tbl.num_rows))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        decode = lambda g: decode_groups(g, area, cfg.image_column)  # noqa: E731
        nxt = next(groups, None)
        future = pool.submit(decode, nxt) if nxt is not None else None
        while future is not None:
            decoded = future.result()
            nxt = next(groups, None)
            future = pool.submit(decode, nxt) if nxt is not None else None
            collector.add(worker(decoded))
    return 1


def _import_ray():
    try:
        import ray
        import ray.data
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("--engine ray needs Ray Data: pip install 'imagedoctor[scale]' "
                                  "(or pip install 'ray[data]')") from exc
    return ray


def plan_workers(cfg: DiagnoseDatasetConfig, cluster: dict[str, float]) -> tuple[int, float]:
    """(workers, gpus per worker): one worker per GPU of the cluster unless told otherwise."""
    total_gpus = float(cluster.get("GPU", 0))
    gpus = cfg.gpus_per_worker if cfg.gpus_per_worker is not None else (1.0 if total_gpus else 0.0)
    if gpus > 0:
        if total_gpus == 0:
            logger.warning("the Ray cluster reports no GPUs now; workers wait for GPU nodes (autoscaling)")
        workers = cfg.workers or max(1, int(total_gpus // gpus))
    else:
        workers = cfg.workers or 1
    return workers, gpus


def _map_diagnoser(ray, ds, kwargs: dict, retries: int):
    """``map_batches(GroupDiagnoser, ...)`` with a bounded number of worker restarts and batch retries.

    A dead worker (OOM kill, lost node, preemption) is restarted and its batch resent, at most
    ``retries`` times, so a batch that kills every worker ends the job instead of looping (Ray
    Data's own default is to retry forever). Ray takes these as remote args; a Ray release that
    no longer accepts them falls back to its default, with a warning.
    """
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated", category=Warning)
            return ds.map_batches(GroupDiagnoser, max_restarts=retries, max_task_retries=retries, **kwargs)
    except TypeError as exc:
        if "max_restarts" not in str(exc) and "max_task_retries" not in str(exc):
            raise
        logger.warning("this Ray takes no max_restarts/max_task_retries for map_batches; using Ray Data's "
                       "default (restart dead workers and resend their batches without limit)")
        return ds.map_batches(GroupDiagnoser, **kwargs)


def run_ray(cfg: DiagnoseDatasetConfig, manifest: Manifest, pending: list[int], area,
            collector: ShardCollector) -> int:
    """Ray Data: from_arrow(groups) -> map_batches(decode) tasks -> map_batches(GroupDiagnoser) actors -> driver."""
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        ray.init(address=cfg.ray_address, log_to_driver=False)
        started = True
    elif cfg.ray_address:
        logger.warning("Ray is already initialised in this process; using that session, not %s", cfg.ray_address)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours counts images; Ray's would draw a second set
        workers, gpus = plan_workers(cfg, ray.cluster_resources())
        # One block per shard, one row per group: Ray never re-batches a group, so every engine
        # and worker count gives the model the same batches.
        blocks = [make_groups(manifest.table, k, cfg.shard_size, cfg.batch_size) for k in pending]
        ds = ray.data.from_arrow(blocks)
        # Decode tasks keep Ray's default retries of a task whose worker died (3).
        ds = ds.map_batches(decode_groups, batch_size=1, batch_format="pyarrow", num_cpus=cfg.decode_cpus,
                            fn_kwargs=dict(image_area=area, image_column=cfg.image_column))
        ds = _map_diagnoser(ray, ds, dict(
            batch_size=1, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers),
            num_gpus=gpus or None, num_cpus=cfg.cpus_per_worker,
            fn_constructor_kwargs=dict(torch_threads=max(1, int(cfg.cpus_per_worker)), **_worker_kwargs(cfg))),
            cfg.max_retries)
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            collector.add(batch)
    finally:
        if started:
            ray.shutdown()
    return workers


# ----------------------------------------------------------------------------------------------
def diagnose_dataset(cfg: DiagnoseDatasetConfig, manifest: Manifest | None = None,
                     engine_fn: Callable | None = None) -> DiagnoseDatasetResult:
    """Run ``cfg`` (resuming whatever ``cfg.out`` already holds); returns the run's counts.

    Bad rows become rows with ``error`` set and never stop the job. Raises ValueError for bad
    settings or an ``out`` that holds another job's shards.
    """
    require_pyarrow()
    t0 = time.perf_counter()
    manifest = manifest if manifest is not None else read_manifest(
        cfg.input, cfg.format, cfg.prompts, cfg.prompt_column, cfg.image_column, cfg.id_column)
    fmt, model_sha = model_identity(cfg.model)
    area = resolve_image_area(cfg.model, cfg.image_area, fmt, cfg.think)
    store = ShardStore(cfg.out, job_record(cfg, manifest, fmt, model_sha, area), len(manifest), cfg.shard_size)
    store.open(overwrite=cfg.overwrite)
    done = store.done()
    pending = [k for k in range(store.n_shards) if k not in done]
    skipped = sum(store.rows_in(k) for k in done)
    progress = _Progress(len(manifest) - skipped, cfg.progress)
    collector = ShardCollector(store, on_rows=progress)
    workers = 0
    try:
        if pending:
            run = engine_fn or (run_ray if cfg.engine == "ray" else run_local)
            workers = run(cfg, manifest, pending, area, collector)
            collector.check_complete(set(pending))
    finally:
        progress.close()
        seconds = time.perf_counter() - t0
        rows, errors = store.count_errors()
        result = DiagnoseDatasetResult(
            out=str(cfg.out), engine=cfg.engine, total=len(manifest), diagnosed=collector.ok, failed=collector.failed,
            skipped=skipped, shards_written=len(collector.written), seconds=round(seconds, 3),
            images_per_s=round((collector.ok + collector.failed) / seconds, 3) if seconds > 0 else 0.0,
            output_rows=rows, output_errors=errors, complete=rows == len(manifest), workers=workers)
        store.write_summary(result.to_dict())
    return result


# ----------------------------------------------------------------------------------------------
# reading results back
# ----------------------------------------------------------------------------------------------
def read_results(out: str | Path, columns: list[str] | None = None, filters=None):
    """All shards of ``out`` as one Arrow table, sorted by input row (``filters`` as in pyarrow)."""
    require_pyarrow()
    import pyarrow.parquet as pq

    out = Path(out)
    if not any(out.glob("part-*.parquet")):
        raise FileNotFoundError(f"{out} has no result shards (part-*.parquet)")
    cols = None if columns is None else list(dict.fromkeys(["index", *columns]))
    table = pq.read_table(out, columns=cols, filters=filters)
    return table.sort_by("index")


def row_to_diagnosis(row: dict[str, Any], heatmaps: str = "png"):
    """The `Diagnosis` of a result row (a dict, e.g. from ``table.to_pylist()``), heatmaps included.

    None for an error row. ``heatmaps`` is the job's ``--heatmaps`` mode (also in the shard's
    metadata under ``imagedoctor.heatmaps``).
    """
    from ..diagnosis import Diagnosis
    from .work import HEATMAP_COLUMNS, decode_heatmap

    if row.get("diagnosis") is None:
        return None
    d = Diagnosis.from_json(row["diagnosis"])
    for name, col in HEATMAP_COLUMNS.items():
        if row.get(col) is not None:
            d.heatmaps[name] = decode_heatmap(row[col], d.width, d.height, heatmaps)
    return d


def config_fields() -> list:
    return list(fields(DiagnoseDatasetConfig))
