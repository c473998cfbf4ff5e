#!/usr/bin/env python
"""Write one split of the embedded shapes dataset (retinafocal.data.shapes) somewhere else, or
of another size, than the registered ``shapes_train`` / ``shapes_val``:

    python tools/generate_shapes.py --root /tmp/shapes --split val --num-images 50

Prints the path of the split's COCO json.
"""
import argparse
import os
from typing import Optional, Sequence

from retinafocal.data.shapes import DEFAULT_SPLITS, ShapesSpec, generate_shapes_split


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.path.join("datasets", "shapes"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--num-images", type=int, default=DEFAULT_SPLITS["train"][0])
    parser.add_argument("--image-size", type=int, default=ShapesSpec.image_size)
    parser.add_argument("--seed", type=int, default=ShapesSpec.seed)
    args = parser.parse_args(argv)
    spec = ShapesSpec(image_size=args.image_size, seed=args.seed)
    print(generate_shapes_split(args.root, args.split, args.num_images, spec))


if __name__ == "__main__":
    main()
