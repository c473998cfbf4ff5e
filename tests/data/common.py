"""Helpers shared by the tests of the generated datasets (embedded shapes, paper's sparse set)
and of dataset reports."""
import numpy as np

from retinafocal.data import ValidationReport


def black_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A stand-in for ``textured_background``: all black, so that every non-black pixel of a
    drawn image belongs to an object."""
    return np.zeros((size, size, 3), dtype=np.float32)


def report_with(*kinds: str) -> ValidationReport:
    """A report of 3 images, 2 with boxes, with one problem of each of ``kinds``."""
    report = ValidationReport("a.json", "img", num_images=3, num_images_with_boxes=2)
    for kind in kinds:
        report.add(kind, 1, "example")
        if kind in ("missing_file", "size_mismatch"):
            report.unreadable_files.append(f"img/{kind}.jpg")
    return report
