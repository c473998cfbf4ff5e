#!/usr/bin/env python
"""Check a COCO-format detection dataset and print every problem found, with counts.

    python tools/validate_dataset.py --json annotations/instances_train.json --image-root images/

By default every image is fully decoded (slow on big datasets, but it also finds corrupt data in
the middle of a file); ``--quick`` checks image headers and end markers only; ``--no-images``
checks the json alone. ``--cache`` reuses the report of an earlier ``--cache`` run on the same
json, image folder and mode (see tools/dataset_inspection.py).

The verdict follows the rules training applies (retinafocal.data.report). Exit code: 1 when
training could not run on the dataset: when it has fatal problems, and also when images cannot
be read if ``--strict`` is given (training with DATALOADER.ON_UNREADABLE_IMAGE 'error'); 0
otherwise.
"""
import argparse
import sys
import time
from typing import List, Optional

from dataset_inspection import cached_validate_coco_json, validate_coco_json, verdict


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="COCO instances json file")
    parser.add_argument("--image-root", required=True, help="folder the file_name are relative to")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="check image headers, do not decode")
    mode.add_argument("--no-images", action="store_true", help="check the json only")
    parser.add_argument(
        "--strict", action="store_true", help="also exit with 1 when some images cannot be read"
    )
    parser.add_argument("--cache", action="store_true", help="reuse / store the report")
    parser.add_argument("--workers", type=int, default=8, help="threads that open images")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    options = dict(
        check_images=not args.no_images, full_decode=not args.quick, num_workers=args.workers
    )
    if args.cache:
        report, cached = cached_validate_coco_json(args.json, args.image_root, **options)
    else:
        report, cached = validate_coco_json(args.json, args.image_root, **options), False
    print(report.format())
    print("  " + verdict(report))
    how = "report from the cache" if cached else "checked"
    print(f"({how} in {time.perf_counter() - start:.1f} s)")
    return 0 if report.usable("error" if args.strict else "skip") else 1


if __name__ == "__main__":
    sys.exit(main())
