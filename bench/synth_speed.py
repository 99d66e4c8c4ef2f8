"""Measure `imagedoctor synth` throughput: ``python bench/synth_speed.py [--n 1000] [--size 512]``.

Writes to a temporary folder (deleted afterwards) and prints samples/second for each worker count.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from imagedoctor.core.synth import generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, min(2, os.cpu_count() or 1)])
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    for workers in dict.fromkeys(args.workers):
        for _ in range(args.repeats):
            tmp = Path(tempfile.mkdtemp(prefix="synth-bench-"))
            try:
                stats = generate(tmp / "ds", args.n, seed=0, size=args.size, workers=workers)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            print(f"n={args.n} size={args.size} workers={workers}: {stats['seconds']:.2f} s, "
                  f"{stats['samples_per_second']:.1f} samples/s (load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
