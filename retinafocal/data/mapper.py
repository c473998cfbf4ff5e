"""A dataset mapper that survives bad images, which detectron2's ``DatasetMapper`` raises on deep
in a data-loader worker (corrupt files) or turns white (16-bit PNGs, clipped to 8 bits)."""
from __future__ import annotations

import logging
from typing import List, Optional

import numpy as np
from PIL import Image

from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.utils.file_io import PathManager

from .. import compat

__all__ = ["UnreadableImageError", "read_image_converted", "RobustDatasetMapper"]

logger = logging.getLogger(__name__)


class UnreadableImageError(OSError):
    """An image file cannot be used for training; the message names the file and the cause."""


def _to_8bit(image: Image.Image) -> Image.Image:
    """Rescale 16-bit ("I;16*", "I") and float ("F") images to 8-bit "L": integers / 257 unless all
    fit in 8 bits, floats * 255 unless some exceeds 1; then rounded and clipped to [0, 255]."""
    mode = image.mode
    if not (mode.startswith("I") or mode == "F"):
        return image
    array = np.asarray(image).astype(np.float64)
    if mode == "F":
        scale = 255.0 if array.size and array.max() <= 1.0 else 1.0
    else:
        scale = 1.0 / 257.0 if array.size and array.max() > 255 else 1.0
    array = np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(array)  # 2-D uint8: mode "L"


def read_image_converted(file_name: str, format: Optional[str] = None) -> np.ndarray:
    """detectron2's ``read_image(file_name, format)`` for any Pillow mode (16-bit / float rescaled
    by :func:`_to_8bit`, alpha dropped): (H, W, C) uint8 in ``format``, (H, W) for one channel and
    format None. Raises :class:`UnreadableImageError`, naming the file, if absent or undecodable."""
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            image.load()  # decode now, while the file is open, so errors surface here
    except Exception as e:  # noqa: BLE001 -- every decoding failure means the same to a user
        raise UnreadableImageError(f"Cannot read image {file_name}: {type(e).__name__}: {e}") from e
    image = _to_8bit(utils._apply_exif_orientation(image))  # read_image's own (broken EXIF: kept)
    if image.mode == "P" and format is not None:
        # Through RGBA, as Pillow asks (a palette with transparency warns when converted straight
        # to RGB); convert_PIL_to_numpy then drops the alpha channel of every alpha mode.
        image = image.convert("RGBA")
    return utils.convert_PIL_to_numpy(image, format)


class RobustDatasetMapper(DatasetMapper):
    """detectron2's ``DatasetMapper`` reading images with :func:`read_image_converted`, plus
    ``on_unreadable`` (``DATALOADER.ON_UNREADABLE_IMAGE``): "error" raises
    :class:`UnreadableImageError`, "skip" (training only: no image is evaluated twice) returns None,
    and ``MapDataset`` draws another. Per worker, the first skipped image is logged by name, later
    ones counted at most every ``log_skipped_period`` (``DATALOADER.LOG_SKIPPED_PERIOD``) images."""

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        on_unreadable: str = "error",
        log_skipped_period: int = 20,
        **kwargs,
    ):
        if on_unreadable not in ("error", "skip"):
            raise ValueError(
                "on_unreadable (DATALOADER.ON_UNREADABLE_IMAGE) must be one of ('error', 'skip'), "
                f"got {on_unreadable!r}"
            )
        if log_skipped_period < 1:
            raise ValueError(
                f"log_skipped_period (DATALOADER.LOG_SKIPPED_PERIOD) must be >= 1, "
                f"got {log_skipped_period}"
            )
        super().__init__(is_train, **kwargs)
        self.on_unreadable = on_unreadable if is_train else "error"
        self._configured_policy = on_unreadable  # what the user set, for the error's advice
        self.log_skipped_period = log_skipped_period
        self.num_skipped = 0  #: images skipped so far by this process
        self._num_mapped = 0
        self._last_summary_at = 0
        self._skipped_since_summary: List[str] = []

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        ret["on_unreadable"] = cfg.DATALOADER.ON_UNREADABLE_IMAGE
        ret["log_skipped_period"] = cfg.DATALOADER.LOG_SKIPPED_PERIOD
        return ret

    def _advice(self) -> str:
        """What to do about an unreadable image, without suggesting an option already set."""
        find_all = "tools/validate_dataset.py decodes every image and lists all such files"
        if self._configured_policy == "skip":
            return (
                "DATALOADER.ON_UNREADABLE_IMAGE is 'skip', but an evaluation cannot leave out an "
                "image once it has started (the images that the start-up check finds are left "
                f"out before). Fix or remove it; {find_all}."
            )
        return (
            f"Fix or remove it ({find_all}), or set DATALOADER.ON_UNREADABLE_IMAGE to 'skip' to "
            "go on without unreadable images."
        )

    def _skip(self, file_name: str, error: Exception) -> None:
        self.num_skipped += 1
        if self.num_skipped == 1:
            logger.warning(
                f"Skipped unreadable image {file_name} ({error.__cause__ or error}). "
                "DATALOADER.ON_UNREADABLE_IMAGE is 'skip': training goes on with other images; "
                f"the count is logged at most every {self.log_skipped_period} images."
            )
            self._last_summary_at = self._num_mapped
        else:
            self._skipped_since_summary.append(file_name)

    def _log_skipped_summary(self) -> None:
        due = self._num_mapped - self._last_summary_at >= self.log_skipped_period
        if not self._skipped_since_summary or not due:
            return
        files = self._skipped_since_summary
        shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        logger.warning(
            f"{self.num_skipped} unreadable image(s) skipped so far by this data loader process "
            f"(out of {self._num_mapped} mapped); since the last report: {shown}"
        )
        self._skipped_since_summary = []
        self._last_summary_at = self._num_mapped

    def __call__(self, dataset_dict: dict) -> Optional[dict]:
        """A dataset dict (not modified) -> the model's input (``image``: (C, H, W) uint8 tensor,
        ``instances`` in training), or None for an unreadable image under "skip"."""
        self._num_mapped += 1
        file_name = dataset_dict["file_name"]
        try:
            image = read_image_converted(file_name, format=self.image_format)
            # detectron2's own __call__ does the rest (size check, augmentation, annotations).
            return compat.dataset_mapper_call(self, dataset_dict, image)
        except (UnreadableImageError, utils.SizeMismatchError) as e:
            if self.on_unreadable == "error":
                if isinstance(e, UnreadableImageError):
                    message = str(e)
                else:
                    message = f"Image {file_name} does not match its annotation: {e}"
                raise UnreadableImageError(f"{message}. {self._advice()}") from e
            self._skip(file_name, e)
            return None
        finally:
            self._log_skipped_summary()
