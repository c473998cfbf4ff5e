#!/usr/bin/env python
"""retinafocal's RetinaNet against detectron2's built-in RetinaNet and torchvision's
retinanet_resnet50_fpn, side by side in one run (R50-FPN, random init, same images, sizes and
batch). See retinafocal/tools/benchmark.py for what is measured and how.

    # CPU, 2 threads, 512 x 683 images (finishes in minutes):
    python tools/benchmark_detectors.py --profile --output benchmark_cpu.json
    # GPU, the paper's 800 px and 600 px scales:
    python tools/benchmark_detectors.py --device cuda --output benchmark_gpu.json

Prints one table per image size (a ratio column against each peer), whether the issue's
targets are met, optionally torch.profiler's top operators, and writes everything to --output.
"""
import sys

import retinafocal  # noqa: F401  (first: makes detectron2 importable and registers our parts)
from retinafocal.tools.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
