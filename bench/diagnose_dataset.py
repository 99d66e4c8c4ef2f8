"""diagnose-dataset throughput: the local engine vs Ray Data with 1 and 2 workers. Prints JSON.

    python bench/diagnose_dataset.py                          # tiny model on the CPU
    python bench/diagnose_dataset.py --full-3b --images 256   # with a GPU: Qwen2.5-VL-3B architecture, random weights

Each run is a fresh job (its own --out) timed end to end as a user sees it: reading the input,
loading the model in every worker, diagnosing, writing the shards. Starting the local Ray
session is timed separately (``ray_init_s``; on a cluster it is already running). Every run
must produce the same table (``identical_outputs``). Every image gets exactly --tokens new tokens
(``min_new_tokens``, as in bench/diagnose_throughput.py) so runs do equal work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_images(root: Path, n: int, size: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    prompts = {}
    for i in range(n):
        name = f"img{i:05d}.png"
        Image.fromarray((rng.random((size * 3 // 4, size, 3)) * 255).astype("uint8")).save(root / name)
        prompts[name] = f"a red cube left of a blue ball, number {i}"
    (root / "prompts.json").write_text(json.dumps(prompts))
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", type=int, default=128, help="image width (height is 3/4 of it)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16, help="new tokens per image")
    ap.add_argument("--image-area", type=int, default=64 * 64,
                    help="model input area (tiny model); 512*512 with --full-3b")
    ap.add_argument("--heatmaps", default="png")
    ap.add_argument("--workers", default="1,2", help="Ray worker counts to run")
    ap.add_argument("--full-3b", action="store_true", help="the published 3B architecture, random weights (GPU)")
    ap.add_argument("--model", default=None, help="use this diagnoser folder instead of building one")
    args = ap.parse_args()

    import torch

    gpu = torch.cuda.is_available()
    if args.full_3b and not gpu:
        sys.exit("--full-3b needs a GPU (the 3B model on 2 CPU cores takes minutes per image)")
    work_dir = Path(tempfile.mkdtemp(prefix="bench-dsd-"))
    if args.model:
        model = Path(args.model)
    elif args.full_3b:
        sys.path.insert(0, str(Path(__file__).parent))
        from diagnose_throughput import build_full_3b

        model = build_full_3b(work_dir)
        args.image_area = 512 * 512 if args.image_area == 64 * 64 else args.image_area
    else:
        from imagedoctor.core.tiny import build_tiny_diagnoser

        model = build_tiny_diagnoser(work_dir / "tiny")
    images = make_images(work_dir / "images", args.images, args.size)

    import ray

    from imagedoctor.core.scale import DiagnoseDatasetConfig, diagnose_dataset, read_results

    common = dict(model=str(model), input=str(images), batch_size=args.batch_size, shard_size=args.batch_size * 4,
                  max_new_tokens=args.tokens, min_new_tokens=args.tokens, image_area=args.image_area,
                  heatmaps=args.heatmaps, progress=False)
    result: dict = {"device": torch.cuda.get_device_name(0) if gpu else f"cpu ({os.cpu_count()} cores)",
                    "model": "qwen2.5-vl-3b architecture, random weights" if args.full_3b else "tiny (untrained)",
                    "images": args.images, "image_size": [args.size, args.size * 3 // 4],
                    "batch_size": args.batch_size, "tokens_per_image": args.tokens, "heatmaps": args.heatmaps,
                    "python": platform.python_version(), "ray": ray.__version__, "torch": torch.__version__,
                    "load_average_1m": os.getloadavg()[0]}
    runs = {}
    t = time.perf_counter()
    diagnose_dataset(DiagnoseDatasetConfig(out=str(work_dir / "local"), **common))
    secs = time.perf_counter() - t
    runs["local"] = {"seconds": round(secs, 2), "images_per_s": round(args.images / secs, 3),
                     "torch_threads": torch.get_num_threads()}
    cpus = os.cpu_count() or 2
    t = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    result["ray_init_s"] = round(time.perf_counter() - t, 2)
    same = True
    for w in [int(x) for x in args.workers.split(",")]:
        out = work_dir / f"ray{w}"
        # Leave one CPU's worth for the decode tasks; with GPUs, the workers share them evenly.
        cpw = max(0.25, (cpus - 1) / w) if not gpu else 1.0
        gpw = min(1.0, torch.cuda.device_count() / w) if gpu else 0.0
        t = time.perf_counter()
        r = diagnose_dataset(DiagnoseDatasetConfig(out=str(out), engine="ray", workers=w, cpus_per_worker=cpw,
                                                   decode_cpus=min(1.0, cpus / 2),
                                                   gpus_per_worker=gpw, **common))
        secs = time.perf_counter() - t
        runs[f"ray_{w}_workers"] = {"seconds": round(secs, 2), "images_per_s": round(args.images / secs, 3),
                                    "cpus_per_worker": cpw, "gpus_per_worker": gpw,
                                    "torch_threads_per_worker": max(1, int(cpw)),
                                    "failed": r.failed}
        same = same and read_results(out).equals(read_results(work_dir / "local"))
    ray.shutdown()
    result["runs"] = runs
    for name, run in runs.items():
        if name != "local":
            run["ratio_to_local"] = round(run["images_per_s"] / runs["local"]["images_per_s"], 3)
    result["identical_outputs"] = same
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
