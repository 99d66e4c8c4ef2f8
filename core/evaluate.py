"""``python -m imagedoctor eval``: every metric of the two papers over a data set.

Two ways to run it:

- ``eval --pred PRED --gt GT [--format auto|project|richhf|sdg]`` compares saved predictions with
  ground truth. PRED is a JSONL file (one `Diagnosis` JSON per line with an extra ``"id"``), a
  JSON list (same order as GT, or with ids) or a project data set folder. GT is a project data
  set folder, a RichHF-18K TFRecord file/folder or an SDG-30K JSONL file.
- ``eval --model M --data D`` first runs the diagnoser over data set D (batched, progress bar),
  optionally saves the predictions (``--save-pred``), then evaluates them against D.

Prints a table (``--json`` prints the JSON result instead; ``--out FILE`` also writes it).
Sections: ``scores`` (PLCC/SRCC), ``heatmaps`` (per map), ``sdg`` (box F1, DetTypeF1, ClnAcc,
ImpAcc, DescCos); a section is present when the ground truth carries that kind of annotation.
Each section names the protocol that produced its numbers (``protocol``). For SDG-30K ground
truth the ``sdg`` section defaults to ``sdg-release`` (the SDG authors' released evaluator,
number for number); ``--protocol pixel`` selects our pixel-space variant (``--matching``).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .diagnosis import HEATMAP_NAMES, LABELS, SCORE_NAMES, Defect, Diagnosis
from .geometry import clamp_box
from .metrics import MATCHINGS, SDG_PROTOCOLS, heatmap_metrics, score_correlations, sdg_eval, to_jsonable

GT_FORMATS = ("auto", "project", "richhf", "sdg")
#: Protocols of the scores and heatmap sections (named in every report).
SCORES_PROTOCOL = "plcc-srcc"
HEATMAPS_PROTOCOL = "richhf"


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------
def detect_format(path: str | Path) -> str:
    """Guess the ground-truth format from a path: project folder, TFRecord or SDG JSONL."""
    path = Path(path)
    if path.is_dir():
        if (path / "data.jsonl").is_file():
            return "project"
        if any(".tfrecord" in p.name for p in path.iterdir()):
            return "richhf"
    elif ".tfrecord" in path.name:
        return "richhf"
    elif path.name == "data.jsonl":
        return "project"
    elif path.suffix == ".jsonl":
        return "sdg"
    elif path.is_file():
        from .data.tfrecord import sniff_tfrecord

        if sniff_tfrecord(path) in ("none", "gzip", "zlib", "lfs-pointer"):
            return "richhf"  # a TFRecord (or its LFS pointer) under another name
    raise ValueError(f"cannot tell the format of {path}; pass --format project|richhf|sdg")


def load_ground_truth(path: str | Path, format: str = "auto", images: str | Path | None = None,
                      prompts: Any = None, strict: bool = False, limit: int | None = None,
                      score_range: tuple[float, float] | None = None,
                      ) -> tuple[list[str], list[Diagnosis], dict[str, Any]]:
    """Ground truth as ``(ids, diagnoses, info)``; ``info`` has the format and reader report.

    Heatmaps are loaded (float arrays). RichHF maps stay at the file's resolution unless
    ``images`` is given (then they are resized to each image's size); RichHF needs no prompts
    here, and its scores are read on ``score_range`` (default (0, 1)).
    """
    from .data import load_project_dataset, read_richhf, read_sdg30k, richhf_to_samples
    from .data.project import LoadReport

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ground truth {path} does not exist")
    if format not in GT_FORMATS:
        raise ValueError(f"unknown ground-truth format {format!r}; use one of {list(GT_FORMATS)}")
    fmt = detect_format(path) if format == "auto" else format
    report = LoadReport()
    if fmt == "project":
        ds = load_project_dataset(path, strict=strict)
        samples = list(ds)
        report = ds.report
    elif fmt == "richhf":
        samples = richhf_to_samples(read_richhf(path, images, prompts, strict=strict, report=report,
                                                score_range=score_range or (0.0, 1.0)))
    else:
        samples = read_sdg30k(path, images, strict=strict, report=report, default_size=(1000, 1000))
    ids, diags, sources = [], [], set()
    for s in samples:
        ids.append(s.id)
        diags.append(s.diagnosis)
        sources.add(s.meta.get("source", fmt))
        if limit is not None and len(ids) >= limit:
            break
    info = {"format": fmt, "n": len(ids), "skipped": dict(report.skipped), "sources": sorted(sources)}
    return ids, diags, info


def _diagnosis_from_obj(obj: Any, where: str) -> tuple[str | None, Diagnosis]:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: a prediction must be a JSON object, got {type(obj).__name__}")
    if "diagnosis" in obj and isinstance(obj["diagnosis"], dict):
        return (str(obj["id"]) if "id" in obj else None), Diagnosis.from_dict(obj["diagnosis"])
    return (str(obj["id"]) if "id" in obj else None), Diagnosis.from_dict(obj)


def load_predictions(path: str | Path) -> tuple[list[str | None], list[Diagnosis]]:
    """Predictions as ``(ids, diagnoses)``; ids are None when the file has none (order pairing).

    Accepts a JSONL file (a Diagnosis object per line, with ``"id"``, or ``{"id", "diagnosis"}``),
    a JSON list of such objects, a JSON object ``{id: diagnosis}`` or a project data set folder.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"predictions {path} do not exist")
    if path.is_dir():
        from .data import load_project_dataset

        ds = load_project_dataset(path)
        return [s.id for s in ds], [s.diagnosis for s in ds]
    text = path.read_text(encoding="utf-8")
    ids: list[str | None] = []
    diags: list[Diagnosis] = []
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
            sid, d = _diagnosis_from_obj(obj, f"{path}:{lineno}")
            ids.append(sid)
            diags.append(d)
        return ids, diags
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(data, dict) and "schema" not in data:
        for sid, obj in data.items():
            ids.append(str(sid))
            diags.append(_diagnosis_from_obj(obj, f"{path}[{sid!r}]")[1])
    else:
        for k, obj in enumerate(data if isinstance(data, list) else [data]):
            sid, d = _diagnosis_from_obj(obj, f"{path}[{k}]")
            ids.append(sid)
            diags.append(d)
    return ids, diags


def pair_predictions(pred_ids: Sequence[str | None], preds: Sequence[Diagnosis], gt_ids: Sequence[str],
                     ) -> tuple[list[Diagnosis | None], dict[str, int]]:
    """Order predictions like the ground truth: by id when every prediction has one, else by
    position (then the counts must match). Missing predictions are None; extra ones are counted."""
    if all(i is not None for i in pred_ids) and pred_ids:
        table: dict[str, Diagnosis] = {}
        for i, d in zip(pred_ids, preds):
            if i in table:
                raise ValueError(f"prediction id {i!r} appears twice")
            table[i] = d
        out = [table.get(i) for i in gt_ids]
        extra = len(set(table) - set(gt_ids))
        return out, {"missing": sum(d is None for d in out), "extra": extra}
    if len(preds) != len(gt_ids):
        raise ValueError(f"{len(preds)} predictions without ids for {len(gt_ids)} ground-truth samples; "
                         "add an 'id' to each prediction or give one per sample in the same order")
    return list(preds), {"missing": 0, "extra": 0}


def to_frame(pred: Diagnosis, width: int, height: int) -> Diagnosis:
    """``pred`` with boxes scaled to a ``width`` x ``height`` image (heatmaps are resized by the metrics)."""
    if (pred.width, pred.height) == (width, height):
        return pred
    sx, sy = width / pred.width, height / pred.height
    defects = [Defect(box=clamp_box((d.box[0] * sx, d.box[1] * sy, d.box[2] * sx, d.box[3] * sy), width, height),
                      label=d.label, reason=d.reason, importance=d.importance) for d in pred.defects]
    return Diagnosis(width=width, height=height, scores=pred.scores, defects=defects, reasoning=pred.reasoning,
                     prompt=pred.prompt, format=pred.format)


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------
def evaluate(preds: Sequence[Diagnosis | None], gts: Sequence[Diagnosis], matching: str = "hungarian",
             embed: Callable[[list[str]], Any] | None = None, sections: Sequence[str] | None = None,
             protocol: str = "pixel") -> dict[str, Any]:
    """All metrics for aligned lists of predictions (None = missing) and ground truths.

    ``sections`` defaults to those the ground truth supports: ``scores`` when any GT score is
    present, ``heatmaps`` when any GT heatmap is present, ``sdg`` always (pass a subset to
    choose, e.g. without ``sdg`` for RichHF which has no boxes). ``protocol`` is the SDG-Eval
    protocol (`imagedoctor.core.metrics.SDG_PROTOCOLS`); ``matching`` applies to ``pixel``.
    ``result["protocols"]`` names the protocol of each section.
    """
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions for {len(gts)} ground-truth samples")
    if matching not in MATCHINGS:
        raise ValueError(f"unknown matching {matching!r}; use one of {list(MATCHINGS)}")
    if protocol not in SDG_PROTOCOLS:
        raise ValueError(f"unknown SDG-Eval protocol {protocol!r}; use one of {list(SDG_PROTOCOLS)}")
    if sections is None:
        sections = []
        if any(v is not None for g in gts for v in g.scores.as_dict().values()):
            sections.append("scores")
        if any(h is not None for g in gts for h in g.heatmaps.values()):
            sections.append("heatmaps")
        sections.append("sdg")
    result: dict[str, Any] = {"n_images": len(gts), "n_missing": sum(p is None for p in preds),
                              "n_parse_problems": sum(1 for p in preds if p is not None and p.problems)}
    protocols: dict[str, str] = {}
    if "scores" in sections:
        result["scores"] = score_correlations([None if p is None else p.scores for p in preds],
                                              [g.scores for g in gts])
        protocols["scores"] = result["scores"]["protocol"] = SCORES_PROTOCOL
    if "heatmaps" in sections:
        result["heatmaps"] = {
            name: heatmap_metrics([None if p is None else p.heatmaps.get(name) for p in preds],
                                  [g.heatmaps.get(name) for g in gts])
            for name in HEATMAP_NAMES
        }
        protocols["heatmaps"] = HEATMAPS_PROTOCOL
    if "sdg" in sections:
        if protocol == "sdg-release":  # raw outputs against raw ground truth: no rescaling, no clamping
            result["sdg"] = sdg_eval(list(preds), list(gts), embed=embed, protocol="sdg-release")
        else:
            aligned = [None if p is None else to_frame(p, g.width, g.height) for p, g in zip(preds, gts)]
            result["sdg"] = sdg_eval(aligned, gts, matching=matching, embed=embed)
        protocols["sdg"] = protocol
    result["protocols"] = protocols
    return result


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of an `evaluate` result."""
    lines = [f"images: {result['n_images']}  missing predictions: {result['n_missing']}  "
             f"with parse problems: {result.get('n_parse_problems', 0)}"]
    if "scores" in result:
        s = result["scores"]
        lines += ["", f"Scores (protocol: {s.get('protocol', SCORES_PROTOCOL)})",
                  "                  PLCC     SRCC        n  missing"]
        for dim in SCORE_NAMES:
            d = s["per_dim"][dim]
            lines.append(f"  {dim:<14}{_fmt(d['plcc']):>8} {_fmt(d['srcc']):>8} {d['n']:>8} {d['n_missing']:>8}")
        lines.append(f"  {'average':<14}{_fmt(s['average']['plcc']):>8} {_fmt(s['average']['srcc']):>8}")
    if "heatmaps" in result:
        keys = ("mse", "mse_gt_empty", "cc", "kld", "sim", "nss", "auc_judd")
        lines += ["", f"Heatmaps (protocol: {result.get('protocols', {}).get('heatmaps', HEATMAPS_PROTOCOL)})",
                  "             " + "".join(f"{k:>13}" for k in keys) + "   n(empty/non-empty)"]
        for name, h in result["heatmaps"].items():
            lines.append(f"  {name:<11}" + "".join(f"{_fmt(h[k]):>13}" for k in keys)
                         + f"   {h['n_gt_empty']}/{h['n_gt_nonempty']}")
    if "sdg" in result:
        s = result["sdg"]
        lines += ["", f"Structured defects (protocol: {s.get('protocol', 'pixel')}; matching: {s['matching']})"]
        lines.append(f"  {'':<14}" + "".join(f"{'BoxF1@' + t:>12}" for t in s["box_f1"]) + f"{'DetTypeF1':>12}")
        for lab in LABELS:
            lines.append(f"  {lab:<14}" + "".join(f"{_fmt(b['per_label'][lab]['f1']):>12}" for b in s["box_f1"].values())
                         + f"{_fmt(s['det_type_f1']['per_label'][lab]['f1']):>12}")
        lines.append(f"  {'overall':<14}" + "".join(f"{_fmt(b['overall']['f1']):>12}" for b in s["box_f1"].values())
                     + f"{_fmt(s['det_type_f1']['overall']):>12}")
        if s.get("protocol") == "sdg-release":
            lines.append(f"  ClnAcc {_fmt(s['cln_acc'])} (n={s['n_clean']})   ImpAcc n/a (not in the released "
                         f"evaluator)   DescCos@{s['desc_iou_threshold']:g} {_fmt(s['desc_cos'])} "
                         f"(pairs={s['desc_pairs']}; token F1 {_fmt(s['desc_token_f1'])})   "
                         f"parse failures {s['n_parse_failures']}")
        else:
            lines.append(f"  ClnAcc {_fmt(s['cln_acc'])} (n={s['n_clean']})   ImpAcc {_fmt(s['imp_acc'])} "
                         f"(pairs={s['imp_pairs']}, buckets={s['imp_buckets']})   DescCos {_fmt(s['desc_cos'])} "
                         f"(pairs={s['desc_pairs']})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# running a model
# ----------------------------------------------------------------------------------------------
def _progress_bar(total: int, enabled: bool):
    """A ``progress(done, total)`` callable drawing a tqdm bar on stderr (no-op when disabled)."""
    if not enabled:
        return lambda done, total_: None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc="diagnose", unit="img", file=sys.stderr)

    def update(done: int, _total: int) -> None:
        bar.update(max(0, done - bar.n))

    return update, bar.close


def run_model(model: str | Path, data: str | Path, format: str = "auto", batch_size: int = 8,
              max_new_tokens: int = 1024, device: str | None = None, dtype: str = "auto",
              diagnose_format: str | None = None, limit: int | None = None, progress: bool = True,
              images: str | Path | None = None, strict: bool = False, chunk: int = 64,
              prompts: Any = None, score_range: tuple[float, float] | None = None,
              ) -> tuple[list[str], list[Diagnosis], list[Diagnosis], dict[str, Any]]:
    """Run the diagnoser at ``model`` over data set ``data``; returns ``(ids, preds, gts, info)``.

    Images are fed ``chunk`` at a time (bounded memory), in batches of ``batch_size``; the
    diagnoser reports progress in decode steps, which the bar converts to images. RichHF data
    needs ``images`` (the Pick-a-Pic images) and ``prompts`` (their captions).
    """
    from .data import load_project_dataset, read_sdg30k
    from .diagnoser import Diagnoser  # the model stack is imported only here

    fmt = detect_format(data) if format == "auto" else format
    if fmt == "project":
        samples = list(load_project_dataset(data, strict=strict))
    elif fmt == "sdg":
        samples = list(read_sdg30k(data, images, strict=strict))
    else:
        samples = _richhf_samples_to_diagnose(data, images, prompts, strict, score_range)
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise ValueError(f"no samples in {data}")
    dg = Diagnoser.from_pretrained(str(model), dtype=dtype, device=device)
    update, close = _progress_bar(len(samples), progress)
    preds: list[Diagnosis] = []
    try:
        for start in range(0, len(samples), chunk):
            part = samples[start:start + chunk]
            out = dg.diagnose([s.load_image() for s in part], [s.prompt for s in part], format=diagnose_format,
                              max_new_tokens=max_new_tokens, batch_size=batch_size,
                              progress=lambda done, total, _o=start, _n=len(part):
                              update(_o + int(_n * done / max(total, 1)), len(samples)))
            if len(out) != len(part):
                raise RuntimeError(f"the diagnoser returned {len(out)} diagnoses for {len(part)} images")
            preds.extend(out)
            update(start + len(part), len(samples))
    finally:
        close()
    gts = [s.diagnosis for s in samples]
    return [s.id for s in samples], preds, gts, {"format": fmt, "n": len(samples)}


def _richhf_samples_to_diagnose(data: str | Path, images: str | Path | None, prompts: Any, strict: bool,
                                score_range: tuple[float, float] | None) -> list:
    """RichHF samples that a diagnoser can run on: each needs its image and its prompt."""
    from .data import read_richhf, richhf_to_samples
    from .data.project import LoadReport
    from .data.richhf import PROMPTS_FORMAT

    if images is None:
        raise ValueError("--model over RichHF needs --images: the folder of Pick-a-Pic v1 images the records name "
                         "(imagedoctor.core.data.export_pickapic writes them, with the prompts, from Pick-a-Pic v1)")
    report = LoadReport()
    samples = list(richhf_to_samples(read_richhf(data, images, prompts, strict=strict, report=report,
                                                 score_range=score_range or (0.0, 1.0), require_prompt=True)))
    if not samples and report.skipped.get("missing_prompt"):
        where = "--prompts was not given" if prompts is None else f"none is in {prompts} (matched by filename, " \
                                                                  "base name or uid)"
        raise ValueError(f"{data}: no example has a prompt, and the diagnoser needs one per image: the RichHF records "
                         f"carry none and {where}. Pass --prompts FILE: {PROMPTS_FORMAT}")
    return samples


def save_predictions(path: str | Path, ids: Sequence[str], preds: Sequence[Diagnosis]) -> None:
    """Write predictions as JSONL (Diagnosis JSON + ``"id"``), readable by `load_predictions`."""
    with open(path, "w", encoding="utf-8") as fh:
        for sid, d in zip(ids, preds):
            obj = d.to_dict("png8")
            obj["id"] = sid
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate predictions (or a model) against ground truth",
                              description=__doc__.splitlines()[0])
    p.add_argument("--pred", help="predictions: JSONL/JSON of diagnoses with ids, or a project folder")
    p.add_argument("--gt", help="ground truth: project folder, RichHF TFRecord(s) or SDG-30K JSONL")
    p.add_argument("--format", choices=GT_FORMATS, default="auto", help="ground-truth format (default: guess)")
    p.add_argument("--model", help="diagnoser checkpoint to run over --data first")
    p.add_argument("--data", help="data set to run --model over (its ground truth is used)")
    p.add_argument("--images", help="image folder for RichHF / SDG-30K ground truth")
    p.add_argument("--prompts", help="RichHF prompts (needed only with --model): JSONL lines {\"filename\", \"prompt\"}, "
                                      "a JSON object filename -> prompt, or TSV filename<TAB>prompt")
    p.add_argument("--score-range", nargs=2, type=float, metavar=("LOW", "HIGH"), default=None,
                   help="RichHF: the scale the file's scores are on, rescaled to [0, 1] (default: 0 1; e.g. 1 5)")
    p.add_argument("--protocol", choices=("auto",) + SDG_PROTOCOLS, default="auto",
                   help="SDG-Eval protocol: sdg-release (the SDG authors' released evaluator; default for SDG-30K "
                        "ground truth) or pixel (parsed diagnoses in pixels, --matching; default otherwise)")
    p.add_argument("--matching", choices=MATCHINGS, default=None,
                   help="box matching of the pixel protocol: hungarian on 1-DIoU (default) or greedy by IoU")
    p.add_argument("--embed-model", help="text encoder for DescCos: with sdg-release a transformers model mean-pooled "
                                         "as the released evaluator does (it uses Qwen/Qwen3-Embedding-0.6B); with "
                                         "pixel a sentence-transformers model (optional dependency)")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the table")
    p.add_argument("--out", help="also write the JSON result to this file")
    p.add_argument("--save-pred", help="with --model: write the predictions as JSONL here")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--diagnose-format", default=None, help="output format the model writes (default: its own)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples")
    p.add_argument("--strict", action="store_true", help="fail on the first invalid sample instead of skipping")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.score_range is not None:
        source = args.gt or args.data
        fmt = args.format if args.format != "auto" or not source else detect_format(source)
        if fmt != "richhf":
            raise ValueError(f"--score-range applies to RichHF ground truth only (this is {fmt!r} ground truth, "
                             "whose scores are always in [0, 1])")
    if args.model or args.data:
        if not (args.model and args.data):
            raise ValueError("--model and --data go together")
        if args.pred:
            raise ValueError("give either --pred/--gt or --model/--data, not both")
        ids, preds, gts, info = run_model(args.model, args.data, args.format, args.batch_size, args.max_new_tokens,
                                          args.device, args.dtype, args.diagnose_format, args.limit,
                                          not args.no_progress, args.images, args.strict,
                                          prompts=args.prompts, score_range=args.score_range)
        if args.save_pred:
            save_predictions(args.save_pred, ids, preds)
        paired = list(preds)
        pairing = {"missing": 0, "extra": 0}
    else:
        if not (args.pred and args.gt):
            raise ValueError("give --pred and --gt (or --model and --data)")
        gt_ids, gts, info = load_ground_truth(args.gt, args.format, args.images, args.prompts, args.strict, args.limit,
                                              score_range=args.score_range)
        pred_ids, preds = load_predictions(args.pred)
        if args.limit is not None and not all(i is not None for i in pred_ids):
            pred_ids, preds = pred_ids[:args.limit], preds[:args.limit]
        paired, pairing = pair_predictions(pred_ids, preds, gt_ids)
    if not gts:
        skipped = info.get("skipped") or {}
        hint = f" (skipped: {skipped}; the warning above names the first reason)" if skipped else ""
        if info.get("format") == "richhf" and skipped.get("invalid") and args.score_range is None:
            hint += "; if the scores are on another scale than [0, 1], pass --score-range LOW HIGH"
        raise ValueError("no ground-truth samples to evaluate" + hint)
    sections = None
    if info["format"] == "richhf" or info.get("sources") == ["richhf-18k"]:
        sections = ["scores", "heatmaps"]  # RichHF has no boxes
    protocol = args.protocol
    if protocol == "auto":
        protocol = "sdg-release" if info["format"] == "sdg" or info.get("sources") == ["sdg-30k"] else "pixel"
    if protocol == "sdg-release" and args.matching is not None:
        raise ValueError("--matching applies to --protocol pixel; the sdg-release protocol always matches greedily "
                         "by IoU as the released evaluator does")
    embed = None
    if args.embed_model:
        from .metrics import mean_pool_embedder, sentence_transformer_embedder

        # The released evaluator mean-pools a transformers encoder (Qwen3-Embedding-0.6B).
        embed = (mean_pool_embedder if protocol == "sdg-release" else sentence_transformer_embedder)(args.embed_model)
    result = evaluate(paired, gts, matching=args.matching or "hungarian", embed=embed, sections=sections,
                      protocol=protocol)
    result["ground_truth"] = info
    result["pairing"] = pairing
    result = to_jsonable(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0
