"""CLI commands of the core engine: ``diagnose``, ``parse``, ``tiny-model``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .fileio import atomic_write
from .formats import FORMATS


def check_output_dir(path: str | Path) -> Path:
    """Make sure ``path`` is (or can be created as) a writable folder, before any work is done."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} is a file, not a folder: give a folder for the outputs")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".imagedoctor-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"--out {str(out)!r} is not a writable folder ({exc.strerror or exc})") from exc
    return out


def save_png(image, path: Path) -> None:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write(path, buf.getvalue())


def write_outputs(out_dir: Path, stem: str, image, diagnosis) -> dict[str, str]:
    """<stem>.json, <stem>_overlay.png and heatmap PNGs; returns the written file names."""
    import numpy as np
    from PIL import Image

    from .render import overlay

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": f"{stem}.json", "overlay": f"{stem}_overlay.png"}
    atomic_write(out_dir / files["json"], diagnosis.to_json())
    save_png(overlay(image, diagnosis), out_dir / files["overlay"])
    for name, hm in diagnosis.heatmaps.items():
        if hm is not None:
            files[name] = f"{stem}_{name}.png"
            save_png(Image.fromarray(np.round(np.clip(hm, 0, 1) * 255).astype(np.uint8), "L"), out_dir / files[name])
    return files


def load_image(path: str | Path):
    """An image file as 8-bit RGB (16-bit and float images scaled, see `images.to_rgb`); every
    failure is a ValueError/FileNotFoundError naming the file."""
    from PIL import Image, UnidentifiedImageError

    from .images import to_rgb

    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a folder, not an image: give the image files (e.g. {p}/*.png)")
    if not p.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    try:
        with Image.open(p) as im:
            return to_rgb(im, str(path))
    except UnidentifiedImageError as exc:
        raise ValueError(f"{str(path)!r} is not an image PIL can read") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or damaged data, found while decoding
        raise ValueError(f"{str(path)!r} could not be decoded (truncated or damaged file?): {exc}") from exc


def _read_text(file: str) -> str:
    """The text of FILE (or of standard input for ``-``), which must be UTF-8."""
    where = "standard input" if file == "-" else repr(file)
    raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}): "
                         "give the model's raw text output") from None


def cmd_diagnose(args) -> int:
    from tqdm import tqdm

    from .diagnoser import Diagnoser

    out = check_output_dir(args.out)  # before the model loads and generates
    images = [load_image(p) for p in args.images]
    stems = [Path(p).stem for p in args.images]
    if len(set(stems)) != len(stems):
        raise ValueError("two input images share a file name stem; their outputs would overwrite each other")
    dg = Diagnoser.from_pretrained(args.model, dtype=args.dtype, device=args.device,
                                   local_files_only=not args.allow_download)
    bar = tqdm(total=1, desc="diagnosing", unit="step", disable=args.quiet)

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    diags = dg.diagnose(images, args.prompt, format=args.format, max_new_tokens=args.max_new_tokens,
                        batch_size=args.batch_size, seed=args.seed, think=not args.no_think, progress=progress)
    bar.close()
    for stem, img, d in zip(stems, images, diags):
        files = write_outputs(out, stem, img, d)
        s = d.scores
        print(f"{stem}: overall={s.overall} alignment={s.alignment} aesthetics={s.aesthetics} "
              f"plausibility={s.plausibility} defects={len(d.defects)} -> {out / files['json']}"
              + (f" ({len(d.problems)} parse problems)" if d.problems else ""))
    return 0


def cmd_parse(args) -> int:
    from .formats import DiagnosisParseError, parse

    text = _read_text(args.file)
    try:
        d = parse(text, args.format, args.width, args.height, strict=args.strict, prompt=args.prompt)
    except DiagnosisParseError as exc:
        print(f"imagedoctor parse: {exc}", file=sys.stderr)
        return 1
    print(d.to_json())
    return 0


def cmd_tiny_model(args) -> int:
    from .tiny import build_tiny_diagnoser

    path = build_tiny_diagnoser(args.dir, family=args.family, seed=args.seed, with_head=not args.no_head)
    print(f"wrote a tiny UNTRAINED {args.family} diagnoser to {path} (random outputs; for tests and offline tries)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diagnose", help="diagnose images: scores, defects, heatmaps -> JSON + overlays")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", required=True, help="model folder or hub id (GYX97/ImageDoctor, P1n3/sdg-detector-grpo)")
    p.add_argument("--prompt", required=True, help="the text-to-image prompt (same for all images)")
    p.add_argument("--format", choices=FORMATS, default=None, help="output format (default: the checkpoint's)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--no-think", action="store_true", help="ImageDoctor: scores without reasoning (faster)")
    p.add_argument("--allow-download", action="store_true", help="allow downloading a hub id that is not cached")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("parse", help="parse a raw model output into Diagnosis JSON")
    p.add_argument("file", metavar="FILE|-")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--width", type=int, required=True, help="original image width in pixels")
    p.add_argument("--height", type=int, required=True, help="original image height in pixels")
    p.add_argument("--prompt", default="")
    p.add_argument("--strict", action="store_true", help="exit 1 with the problems instead of a partial result")
    p.set_defaults(func=cmd_parse)

    p = sub.add_parser("tiny-model", help="build a tiny random diagnoser offline (tests, demos)")
    p.add_argument("dir")
    p.add_argument("--family", choices=["qwen2_5_vl", "qwen3_vl"], default="qwen2_5_vl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-head", action="store_true", help="no heatmap head (SDG detector layout)")
    p.set_defaults(func=cmd_tiny_model)
