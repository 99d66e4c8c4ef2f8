"""RichHF-18K reading speed: ``python bench/richhf_read.py [--records 955] [--json]``.

Builds a TFRecord file shaped like the RichHF test split (955 examples, two 512x512 PNG heatmaps
with 0-2 soft blobs; about 12 MB, the real file is 10.1 MB) in a temporary folder, then measures:

- CRC-32C throughput (MB/s) of every implementation available: the pure-Python fallback and
  the optional compiled packages (``google-crc32c``, ``crc32c``);
- ``read_records`` throughput (MB/s of file) with the data CRC checked by each implementation,
  and unchecked, for a plain and a GZIP-compressed file;
- ``read_richhf`` examples/s (records framed, Examples parsed, both maps decoded).

Prints one JSON object. Timings are the best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _map_png(rng: np.random.Generator, size: int = 512) -> bytes:
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    heat = np.zeros((size, size), np.float32)
    for _ in range(rng.integers(0, 3)):  # many RichHF maps are empty
        cx, cy, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(10, 60)
        heat = np.maximum(heat, np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))
    buf = io.BytesIO()
    Image.fromarray(np.round(heat * 255).astype(np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def build(path: Path, n: int, compression: str = "none") -> None:
    from imagedoctor.core.data.tfrecord import encode_example, write_records

    rng = np.random.default_rng(0)
    records = [encode_example({
        "filename": f"{i:08x}-uid.png", "aesthetics_score": float(rng.random()), "artifact_score": float(rng.random()),
        "misalignment_score": float(rng.random()), "overall_score": float(rng.random()),
        "artifact_map": _map_png(rng), "misalignment_map": _map_png(rng),
        "prompt_misalignment_label": " ".join("1" for _ in range(int(rng.integers(4, 20))))}) for i in range(n)]
    if compression == "none":
        write_records(path, records)  # also runs against code from before compression support
    else:
        write_records(path, records, compression=compression)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def crc_backends() -> dict:
    from imagedoctor.core.data import tfrecord

    out = {"python": getattr(tfrecord, "crc32c_python", tfrecord.crc32c)}
    try:
        import google_crc32c

        if google_crc32c.implementation == "c":
            out["google-crc32c"] = google_crc32c.value
    except ImportError:
        pass
    try:
        import crc32c

        out["crc32c"] = crc32c.crc32c
    except ImportError:
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=955)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from imagedoctor.core.data import read_richhf
    from imagedoctor.core.data import tfrecord

    result: dict = {"load_average": round(os.getloadavg()[0], 2), "default_backend": getattr(tfrecord, "CRC32C_BACKEND", "python")}
    backends = crc_backends()
    data = np.random.default_rng(1).integers(0, 256, 4 << 20, dtype=np.uint8).tobytes()
    result["crc32c_MBps"] = {}
    for name, fn in backends.items():
        chunk = data[: 1 << 20] if name == "python" else data
        secs = best_of(lambda: fn(chunk), args.repeats)
        result["crc32c_MBps"][name] = round(len(chunk) / secs / 1e6, 1)

    with tempfile.TemporaryDirectory(prefix="richhf-bench-") as tmp:
        plain, gz = Path(tmp) / "test.tfrecord", Path(tmp) / "test.tfrecord.gz"
        build(plain, args.records)
        result["file_MB"] = round(plain.stat().st_size / 1e6, 2)
        variants = [("plain", plain)]
        if "compression" in tfrecord.write_records.__code__.co_varnames:
            build(gz, args.records, "gzip")
            result["gzip_file_MB"] = round(gz.stat().st_size / 1e6, 2)
            variants.append(("gzip", gz))
        result["read_records_MBps"] = {}
        result["read_richhf_examples_per_s"] = {}
        default_impl = getattr(tfrecord, "_crc32c_impl", None)
        for name, fn in list(backends.items()) + [("no-crc", None)]:
            if default_impl is None and name not in ("python", "no-crc"):
                continue  # code without pluggable CRC: only its own (Python) one
            if default_impl is not None and fn is not None:
                tfrecord._crc32c_impl = fn
            verify = fn is not None
            for kind, path in variants:
                secs = best_of(lambda: sum(1 for _ in tfrecord.read_records(path, verify_crc=verify)), args.repeats)
                result["read_records_MBps"][f"{kind}/{name}"] = round(plain.stat().st_size / secs / 1e6, 1)
            secs = best_of(lambda: sum(1 for _ in read_richhf(plain, verify_crc=verify)), 1)
            result["read_richhf_examples_per_s"][name] = round(args.records / secs, 1)
        if default_impl is not None:
            tfrecord._crc32c_impl = default_impl
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
