"""RichHF-18K reader: the published TFRecords (no TensorFlow) joined to Pick-a-Pic images.

Each ``tf.train.Example`` has (google-research-datasets/richhf-18k; read as in the authors'
google-research ``richhf_18k/parse_tfrecord_file.py``):

- ``filename`` (bytes): the Pick-a-Pic v1 image file name (its stem is the Pick-a-Pic
  ``image_0_uid`` / ``image_1_uid``);
- ``aesthetics_score``, ``artifact_score``, ``misalignment_score``, ``overall_score`` (float);
- ``artifact_map``, ``misalignment_map`` (bytes): encoded 8-bit images (512x512), decoded to one
  channel as ``tf.image.decode_image(x, channels=1)`` does (`decode_map_like_tf`);
- ``prompt_misalignment_label`` (bytes): space-separated 0/1 per prompt token (0 = misaligned).

Files may be plain, GZIP or ZLIB TFRecords (told apart by their first bytes); a Git LFS pointer
file raises `LFSPointerError` saying how to fetch the data.

Score mapping to `Scores`: aesthetics_score -> aesthetics, artifact_score -> plausibility,
misalignment_score -> alignment, overall_score -> overall (higher = better everywhere). Scores
are expected in ``score_range`` (default [0, 1]); pass ``score_range=(1, 5)`` for Likert-scaled
files, which are rescaled linearly to [0, 1]. A value outside the range skips the sample.

The records carry no prompt (the caption is in Pick-a-Pic: `export_pickapic`). Scores and
heatmaps need none; a prompt is needed to run a diagnoser and to check the token labels. It is
taken from a ``prompt`` / ``caption`` feature if present, else from ``prompts`` (a mapping or a
JSON / JSONL / TSV file keyed by file name, base name or uid), else from a ``<image stem>.txt``
file beside the image.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from ..diagnosis import Diagnosis, Scores
from .project import DatasetError, LoadReport, Sample, write_project_dataset
from .prompts_file import read_prompts_file
from .tfrecord import LFSPointerError, TFRecordError, parse_example, read_records

SCORE_FIELDS = {
    "misalignment_score": "alignment",
    "aesthetics_score": "aesthetics",
    "artifact_score": "plausibility",
    "overall_score": "overall",
}
MAP_FIELDS = {"misalignment_map": "misalignment", "artifact_map": "artifact"}
PROMPT_FIELDS = ("prompt", "caption")
KNOWN_FIELDS = frozenset(("filename", "prompt_misalignment_label") + tuple(SCORE_FIELDS) + tuple(MAP_FIELDS)
                         + PROMPT_FIELDS)
_TOKEN_SPLIT = re.compile(r'[,.?!":; ]')


def tokenize_prompt(prompt: str) -> list[str]:
    """RichHF prompt tokens: split on any of ``,.?!":;`` and space, empty pieces dropped."""
    return [t for t in _TOKEN_SPLIT.split(prompt) if t]


PROMPTS_FORMAT = ("a JSONL file with one {\"filename\": ..., \"prompt\": ...} object per line, a JSON object "
                  "{filename: prompt}, or a TSV file of filename<TAB>prompt lines; the filename may be the RichHF "
                  "filename, its base name or the Pick-a-Pic uid (imagedoctor.core.data.export_pickapic writes one "
                  "from Pick-a-Pic v1)")


@dataclass
class RichHFRecord:
    """One RichHF-18K example. Heatmaps are float32 (H, W) in [0, 1] at the file's resolution.

    ``prompt`` is None when no prompt source knows this example (then ``tokens`` is empty and
    the token labels are unchecked)."""

    filename: str
    image_path: Path | None
    prompt: str | None
    scores: Scores
    heatmaps: dict[str, np.ndarray]
    token_labels: list[int]
    tokens: list[str] = field(default_factory=list)


def pickapic_uid(filename: str) -> str:
    """The Pick-a-Pic image uid of a RichHF ``filename``: its base name without extension."""
    return filename.replace("\\", "/").rsplit("/", 1)[-1].split(".", 1)[0]


def _lookup_keys(filename: str) -> tuple[str, ...]:
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return tuple(dict.fromkeys((filename, base, pickapic_uid(filename))))


def _load_prompts(prompts: Any) -> dict[str, str]:
    if prompts is None:
        return {}
    if isinstance(prompts, Mapping):
        return {str(k): str(v) for k, v in prompts.items()}
    table = read_prompts_file(prompts, ("filename", "file_name", "image", "uid"), ("prompt", "caption"),
                              expected=PROMPTS_FORMAT)
    return {k: str(v) for k, v in table.items()}


def _one(features: Mapping[str, list], name: str, where: str) -> Any:
    values = features.get(name)
    if not values:
        raise DatasetError(f"{where}: missing feature {name!r}")
    if len(values) != 1:
        raise DatasetError(f"{where}: feature {name!r} has {len(values)} values, expected 1")
    return values[0]


#: libpng's fixed-point RGB -> gray weights for png_set_rgb_to_gray(..., 0.299, 0.587), as
#: TensorFlow's PNG decoder calls it for channels=1 (15-bit: red, green, and blue = the rest).
_GRAY_RC, _GRAY_GC = 29900 * 32768 // 100000, 58700 * 32768 // 100000
_GRAY_BC = 32768 - _GRAY_RC - _GRAY_GC


def _png_file_gamma(info: Mapping[str, Any]) -> int | None:
    """The PNG's gamma as libpng holds it (x 100000), or None when it has no gAMA/sRGB chunk."""
    if "srgb" in info:
        return 45455  # libpng's PNG_GAMMA_sRGB_INVERSE
    if "gamma" in info:
        return int(round(float(info["gamma"]) * 100000))
    return None


def _gamma_table(exponent_fixed: int) -> np.ndarray:
    """libpng's png_build_8bit_table: floor(255 * (i/255) ** gamma + .5), identity when not significant."""
    i = np.arange(256, dtype=np.float64)
    if abs(exponent_fixed - 100000) <= 5000:  # png_gamma_significant
        return i.astype(np.int64)
    out = np.floor(255 * (i / 255.0) ** (exponent_fixed * 1e-5) + 0.5)
    out[0], out[255] = 0, 255
    return out.astype(np.int64)


def rgb_to_gray_like_tf(rgb: np.ndarray, file_gamma: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) uint8 exactly as libpng's rgb_to_gray does inside
    ``tf.io.decode_png(..., channels=1)``: truncating 15-bit integer weights 0.299/0.587/0.114,
    and, when the file declares a significant gamma (gAMA or sRGB chunk), the mix done on
    linearised values through libpng's 8-bit gamma tables."""
    r, g, b = (rgb[..., k].astype(np.int64) for k in range(3))
    if file_gamma is None or abs(file_gamma - 100000) <= 5000:
        return ((_GRAY_RC * r + _GRAY_GC * g + _GRAY_BC * b) >> 15).astype(np.uint8)
    screen = (10 ** 10 + file_gamma // 2) // file_gamma  # png_reciprocal: libpng assumes screen = 1/file
    to_1, from_1 = _gamma_table((10 ** 10 + file_gamma // 2) // file_gamma), _gamma_table((10 ** 10 + screen // 2) // screen)
    mixed = from_1[(_GRAY_RC * to_1[r] + _GRAY_GC * to_1[g] + _GRAY_BC * to_1[b] + 16384) >> 15]
    return np.where((r == g) & (g == b), r, mixed).astype(np.uint8)


def decode_map_like_tf(raw: bytes) -> np.ndarray:
    """An encoded heatmap -> (H, W) uint8, as the RichHF authors read it:
    ``tf.image.decode_image(raw, channels=1)`` (their parse_tfrecord_file.py).

    PNG, as TensorFlow's libpng calls do it: alpha (or tRNS) dropped without compositing,
    palette expanded to RGB, colour mixed to gray by `rgb_to_gray_like_tf`, 16-bit samples cut
    to their high byte, 1/2/4-bit gray expanded to 0-255. JPEG: libjpeg's own grayscale output
    (the luma channel); TensorFlow's default fast integer IDCT can differ from PIL's accurate
    one by a level or two. Other formats PIL reads: the same RGB weights as PNG.
    16-bit colour PNGs are reduced to 8 bits before the mix (within one level of libpng's
    16-bit mix). Raises `PIL.UnidentifiedImageError` / `OSError` for undecodable data.
    """
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as img:
        if img.format == "JPEG" and img.mode == "RGB":
            img.draft("L", img.size)  # decode straight to libjpeg's grayscale, as TensorFlow does
        img.load()
        mode = img.mode
        if mode == "L":
            return np.asarray(img, dtype=np.uint8).copy()
        if mode == "1":
            return np.asarray(img.convert("L"), dtype=np.uint8)
        if mode in ("LA", "La"):
            return np.asarray(img, dtype=np.uint8)[..., 0].copy()
        if mode.startswith("I;16") or mode == "I":
            return (np.clip(np.asarray(img, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        if mode == "F":
            raise ValueError("a 32-bit float image; heatmaps are 8- or 16-bit images")
        file_gamma = _png_file_gamma(img.info) if img.format == "PNG" else None
        if mode not in ("RGB", "RGBA", "RGBX"):
            with warnings.catch_warnings():  # PIL's note on palette transparency: alpha is dropped anyway
                warnings.simplefilter("ignore")
                img = img.convert("RGB")
        return rgb_to_gray_like_tf(np.asarray(img, dtype=np.uint8)[..., :3], file_gamma)


def _decode_map(raw: Any, name: str, where: str) -> np.ndarray:
    from PIL import UnidentifiedImageError

    if not isinstance(raw, bytes):
        raise DatasetError(f"{where}: {name} must be an encoded image (bytes)")
    try:
        arr = decode_map_like_tf(raw)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"{where}: {name} does not decode as an image: {exc}") from exc
    return arr.astype(np.float32) / 255.0


def _decode_example(features: Mapping[str, list], where: str, score_range: tuple[float, float]) -> dict[str, Any]:
    raw_name = _one(features, "filename", where)
    if not isinstance(raw_name, bytes):
        raise DatasetError(f"{where}: filename must be bytes")
    filename = raw_name.decode("utf-8", errors="strict")
    lo, hi = score_range
    scores = {}
    for fname, dim in SCORE_FIELDS.items():
        value = _one(features, fname, where)
        if not isinstance(value, float) or not np.isfinite(value):
            raise DatasetError(f"{where}: {fname} must be a finite float, got {value!r}")
        if not lo - 1e-6 <= value <= hi + 1e-6:
            raise DatasetError(f"{where}: {fname} = {value} is outside the score range [{lo}, {hi}]")
        scores[dim] = float(min(max((value - lo) / (hi - lo), 0.0), 1.0))
    maps = {dim: _decode_map(_one(features, fname, where), fname, where) for fname, dim in MAP_FIELDS.items()}
    raw_labels = _one(features, "prompt_misalignment_label", where)
    try:
        text = raw_labels.decode("ascii") if isinstance(raw_labels, bytes) else str(raw_labels)
        labels = [int(t) for t in text.split()]
    except (UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"{where}: prompt_misalignment_label must be space-separated 0/1 values") from exc
    if any(v not in (0, 1) for v in labels):
        raise DatasetError(f"{where}: prompt_misalignment_label has values other than 0/1: {sorted(set(labels))}")
    prompt = None
    for pf in PROMPT_FIELDS:
        if features.get(pf):
            prompt = features[pf][0].decode("utf-8") if isinstance(features[pf][0], bytes) else str(features[pf][0])
            break
    return {"filename": filename, "scores": scores, "maps": maps, "labels": labels, "prompt": prompt}


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _find_image(images_dir: Path, filename: str) -> Path | None:
    """The Pick-a-Pic image of ``filename`` in ``images_dir``: by the full relative name, the base
    name, or ``<uid>.png/.jpg/.jpeg/.webp``."""
    candidates = [images_dir / filename, images_dir / filename.replace("\\", "/").rsplit("/", 1)[-1]]
    candidates += [images_dir / (pickapic_uid(filename) + suffix) for suffix in IMAGE_SUFFIXES]
    return next((c for c in candidates if c.is_file()), None)


def read_richhf(tfrecord: str | Path, images_dir: str | Path | None = None, prompts: Any = None,
                strict: bool = False, score_range: tuple[float, float] = (0.0, 1.0), verify_crc: bool = True,
                require_image: bool | None = None, report: LoadReport | None = None,
                require_prompt: bool = False) -> Iterator[RichHFRecord]:
    """Yield `RichHFRecord` s from one TFRecord file (or every ``*.tfrecord*`` in a folder).

    ``images_dir`` is the Pick-a-Pic image folder joined by file name (see `_find_image`);
    examples whose image is missing are skipped (``require_image`` defaults to True when
    ``images_dir`` is given). A prompt is optional unless ``require_prompt`` (needed to run a
    diagnoser); an example without one then is skipped as ``missing_prompt``. Examples that fail
    validation (missing feature, undecodable map, score out of range, token label count that
    does not match a known prompt) are skipped, counted in ``report`` and warned about at the
    end, or raise `DatasetError` when ``strict``. Unknown features are never an error: they are
    ignored and counted in ``report.ignored_fields``, strict or not. A corrupt TFRecord frame
    ends that file (counted, or raised when strict); a Git LFS pointer file always raises
    `LFSPointerError`.
    """
    lo, hi = (float(v) for v in score_range)
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(f"score_range must be (low, high) with high > low, got {tuple(score_range)}")
    src = Path(tfrecord)
    if not src.exists():
        raise FileNotFoundError(f"TFRecord file {src} does not exist")
    files = sorted(p for p in src.iterdir() if ".tfrecord" in p.name and p.is_file()) if src.is_dir() else [src]
    if not files:
        raise FileNotFoundError(f"no *.tfrecord* files in {src}")
    images_dir = Path(images_dir) if images_dir is not None else None
    if images_dir is not None and not images_dir.is_dir():
        raise FileNotFoundError(f"image folder {images_dir} does not exist")
    if require_image is None:
        require_image = images_dir is not None
    prompt_map = _load_prompts(prompts)
    report = report if report is not None else LoadReport()
    for f in files:
        records = read_records(f, verify_crc=verify_crc)
        index = 0
        while True:
            where = f"{f.name}#{index}"
            try:
                data = next(records)
            except StopIteration:
                break
            except LFSPointerError:
                raise  # not damage: the data was never fetched
            except TFRecordError as exc:
                report.skip("corrupt_file", f"{exc}; the rest of {f.name} is unreadable", strict)
                break
            index += 1
            reason = "invalid"
            try:
                features = parse_example(data)
                ex = _decode_example(features, where, (lo, hi))
                image_path = _find_image(images_dir, ex["filename"]) if images_dir is not None else None
                if require_image and image_path is None:
                    reason = "missing_image"
                    raise DatasetError(f"{where}: image {ex['filename']} not found in {images_dir}")
                prompt = ex["prompt"]
                for key in _lookup_keys(ex["filename"]):
                    if prompt is None:
                        prompt = prompt_map.get(key)
                if prompt is None and image_path is not None and image_path.with_suffix(".txt").is_file():
                    prompt = image_path.with_suffix(".txt").read_text(encoding="utf-8").strip()
                if prompt is None and require_prompt:
                    reason = "missing_prompt"
                    raise DatasetError(f"{where}: no prompt for {ex['filename']}: pass a prompts file, "
                                       f"{PROMPTS_FORMAT}")
                tokens = tokenize_prompt(prompt) if prompt is not None else []
                if prompt is not None and len(ex["labels"]) != len(tokens):
                    raise DatasetError(f"{where}: {len(ex['labels'])} token labels for {len(tokens)} prompt tokens "
                                       f"(is the prompt for {ex['filename']} the Pick-a-Pic caption?)")
            except (DatasetError, TFRecordError, UnicodeDecodeError) as exc:
                report.skip(reason, str(exc), strict)
                continue
            report.ignore_fields(set(features) - KNOWN_FIELDS, where, strict=False)
            report.kept += 1
            yield RichHFRecord(filename=ex["filename"], image_path=image_path, prompt=prompt,
                               scores=Scores(**ex["scores"]), heatmaps=ex["maps"], token_labels=ex["labels"],
                               tokens=tokens)
    report.warn(str(src))


def _resize(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    from ..metrics import resize_map

    return np.clip(resize_map(arr, (height, width)), 0.0, 1.0)


def richhf_to_samples(records: Iterator[RichHFRecord]) -> Iterator[Sample]:
    """Convert records to project `Sample` s; heatmaps are resized (bilinear) to the image size.

    Without an image the maps keep the file's resolution; a record without prompt gets ``""``."""
    from PIL import Image

    for r in records:
        if r.image_path is not None:
            with Image.open(r.image_path) as img:
                width, height = img.size
        else:
            height, width = next(iter(r.heatmaps.values())).shape
        maps = {k: _resize(v, width, height) for k, v in r.heatmaps.items()}
        diag = Diagnosis(width=width, height=height, scores=r.scores, heatmaps=maps, prompt=r.prompt or "",
                         format="ground_truth")
        sid = re.sub(r"[^A-Za-z0-9._-]", "_", pickapic_uid(r.filename)) or "sample"
        yield Sample(sid, r.image_path, r.prompt or "", diag,
                     meta={"source": "richhf-18k", "filename": r.filename, "token_labels": r.token_labels})


def convert_richhf(tfrecord: str | Path, images_dir: str | Path, out_dir: str | Path, prompts: Any = None,
                   strict: bool = False, overwrite: bool = False, **kwargs) -> Path:
    """RichHF-18K TFRecord(s) + Pick-a-Pic images + prompts -> a project data set folder
    (which needs a prompt for every sample: examples without one are skipped)."""
    kwargs.setdefault("require_prompt", True)
    return write_project_dataset(out_dir, richhf_to_samples(read_richhf(tfrecord, images_dir, prompts, strict,
                                                                        **kwargs)), overwrite=overwrite)


def richhf_filenames(tfrecord: str | Path) -> list[str]:
    """The ``filename`` of every example in a RichHF TFRecord file or folder (nothing else decoded)."""
    src = Path(tfrecord)
    files = sorted(p for p in src.iterdir() if ".tfrecord" in p.name and p.is_file()) if src.is_dir() else [src]
    names = []
    for f in files:
        for data in read_records(f):
            values = parse_example(data).get("filename") or []
            if values and isinstance(values[0], bytes):
                names.append(values[0].decode("utf-8"))
    return names


def _image_suffix(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    raise ValueError("the image bytes are neither PNG, JPEG nor WebP")


def export_pickapic(rows: Iterable[Mapping[str, Any]], tfrecord: str | Path, out_dir: str | Path,
                    images: bool = True) -> dict[str, Any]:
    """Write the prompts (and images) of a RichHF split from Pick-a-Pic v1 rows.

    ``rows`` are Pick-a-Pic v1 records (``yuvalkirstain/pickapic_v1``: ``caption``,
    ``image_0_uid``, ``image_1_uid``, ``jpg_0``, ``jpg_1``), e.g. a ``datasets`` split, streamed
    or not; the RichHF test split is in Pick-a-Pic's ``test`` split, train and dev in ``train``
    (as the RichHF authors join them). Writes ``out_dir/prompts.jsonl`` (``{"filename", "uid",
    "prompt"}`` per line, what ``--prompts`` reads) and, with ``images``, ``out_dir/images/<uid>.<ext>``
    (what ``--images`` reads). Stops reading rows once every uid is found. Returns
    ``{"prompts", "images", "found", "missing"}`` (``missing``: RichHF filenames not in ``rows``).
    """
    from ..commands import atomic_write

    wanted = {pickapic_uid(name): name for name in richhf_filenames(tfrecord)}
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    found: dict[str, str] = {}
    for row in rows:
        for side in ("0", "1"):
            uid = str(row.get(f"image_{side}_uid", ""))
            if uid not in wanted or uid in found:
                continue
            found[uid] = str(row["caption"])
            if images:
                data = row.get(f"jpg_{side}")
                if not isinstance(data, (bytes, bytearray)):
                    raise ValueError(f"Pick-a-Pic row for {uid} has no image bytes in 'jpg_{side}' "
                                     "(pass images=False to write the prompts only)")
                atomic_write(image_dir / (uid + _image_suffix(bytes(data))), bytes(data))
        if len(found) == len(wanted):
            break
    lines = [json.dumps({"filename": wanted[uid], "uid": uid, "prompt": caption}, ensure_ascii=False)
             for uid, caption in found.items()]
    atomic_write(out_dir / "prompts.jsonl", "".join(line + "\n" for line in lines))
    return {"prompts": out_dir / "prompts.jsonl", "images": image_dir if images else None, "found": len(found),
            "missing": sorted(name for uid, name in wanted.items() if uid not in found)}
