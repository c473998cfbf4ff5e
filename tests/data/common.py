"""Helpers shared by the tests of the generated datasets (embedded shapes, paper's sparse set)."""
import numpy as np


def black_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A stand-in for ``textured_background``: all black, so that every non-black pixel of a
    drawn image belongs to an object."""
    return np.zeros((size, size, 3), dtype=np.float32)
