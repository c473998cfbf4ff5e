#!/usr/bin/env python
"""Check a COCO-format detection dataset and print every problem found, with counts.

    python tools/validate_dataset.py --json annotations/instances_train.json --image-root images/

By default every image is fully decoded (slow on big datasets, but it also finds corrupt data in
the middle of a file); ``--quick`` checks image headers and end markers only, as training does on
a dataset's first use; ``--no-images`` checks the json alone.

Exit code: 1 when the dataset has fatal problems (it cannot be loaded as it is), and also when
images cannot be read if ``--strict`` is given; 0 otherwise. See
:mod:`retinafocal.data.validation` for the kinds of problems and what training does with each.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from retinafocal.data.validation import validate_coco_json  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="COCO instances json file")
    parser.add_argument("--image-root", required=True, help="folder the file_name are relative to")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="check image headers, do not decode")
    mode.add_argument("--no-images", action="store_true", help="check the json only")
    parser.add_argument(
        "--strict", action="store_true", help="also exit with 1 when some images cannot be read"
    )
    parser.add_argument("--workers", type=int, default=8, help="threads that open images")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    report = validate_coco_json(
        args.json,
        args.image_root,
        check_images=not args.no_images,
        full_decode=not args.quick,
        num_workers=args.workers,
    )
    print(report.format())
    print(f"(checked in {time.perf_counter() - start:.1f} s)")
    if report.has_fatal or (args.strict and report.num_unreadable_images):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
