#!/usr/bin/env python
"""Cost of the dataset check per mode: json only, the loader's check (header, size and end
marker: what training runs on every dataset it loads, one thread), and the two modes of
tools/validate_dataset.py (quick, the same check on a thread pool, and full decode).

    python tools/benchmark_dataset_check.py [--num-images 300] [--workers 8]

Writes a synthetic COCO dataset (PNG and JPEG copies, at 128x128 and 640x480) to a temporary
folder and prints a table; the ratio column compares each mode with full decoding.
"""
import argparse
import json
import os
import shutil
import tempfile
import time
from typing import Callable, Tuple

import numpy as np
from PIL import Image

from dataset_inspection import validate_coco_json
from retinafocal.data import check_coco_json


def write_dataset(root: str, num_images: int, size: Tuple[int, int], fmt: str) -> str:
    """``num_images`` photo-like images of ``size`` (w, h) in format ``fmt``, one box each;
    returns the json's path (the images lie beside it)."""
    w, h = size
    image_dir = os.path.join(root, f"{fmt}_{w}x{h}")
    os.makedirs(image_dir)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    images, annotations = [], []
    for i in range(num_images):
        # Smooth gradients plus mild noise: compresses like a photo, not like pure noise.
        base = np.stack([(xx * (i + 1)) % 256, (yy * 3) % 256, (xx + yy) % 256], axis=-1)
        pixels = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
        name = f"{i:06d}.{fmt}"
        Image.fromarray(pixels).save(os.path.join(image_dir, name), quality=90)
        images.append({"id": i, "file_name": name, "width": w, "height": h})
        box = {"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 10, 10], "iscrowd": 0}
        annotations.append(dict(box, area=100))
    json_file = os.path.join(image_dir, "instances.json")
    categories = [{"id": 1, "name": "a"}]
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_file


def best_time(fn: Callable[[], object], repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=300)
    parser.add_argument("--workers", type=int, default=8, help="threads of the tool's modes")
    args = parser.parse_args()
    modes = {
        "json only": lambda j, r: check_coco_json(j, r, inspect=None),
        "loader": lambda j, r: check_coco_json(j, r),
        "quick": lambda j, r: validate_coco_json(j, r, num_workers=args.workers),
        "full decode": lambda j, r: validate_coco_json(
            j, r, full_decode=True, num_workers=args.workers
        ),
    }
    root = tempfile.mkdtemp(prefix="retinafocal_bench_dataset_check_")
    try:
        print(f"{'images':<16} {'mode':<12} {'seconds':>8} {'images/s':>9} {'ratio to full':>14}")
        for size in ((128, 128), (640, 480)):
            for fmt in ("png", "jpg"):
                json_file = write_dataset(root, args.num_images, size, fmt)
                image_root = os.path.dirname(json_file)
                times = {
                    mode: best_time(lambda check=check: check(json_file, image_root))
                    for mode, check in modes.items()
                }
                label = f"{fmt} {size[0]}x{size[1]}"
                for mode, seconds in times.items():
                    print(
                        f"{label:<16} {mode:<12} {seconds:>8.3f} "
                        f"{args.num_images / seconds:>9.0f} "
                        f"{seconds / times['full decode']:>14.3f}"
                    )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
