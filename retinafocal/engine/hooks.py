"""Training hooks: a PNG of the model's predictions on a few validation images."""
from __future__ import annotations

import itertools
import logging
import os
from typing import Any, Callable, Dict, List, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from ..data import check_datasets

__all__ = ["draw_predictions", "PredictionImageWriter"]

logger = logging.getLogger(__name__)

Mapper = Callable[[Dict[str, Any]], Dict[str, Any]]  # a dataset dict to the model's input


def _tile(rows: Sequence[Sequence[np.ndarray]], pad: int = 4) -> np.ndarray:
    """Tile rows of (H, W, 3) uint8 images into one image, in cells ``pad`` white pixels apart."""
    h = max(img.shape[0] for row in rows for img in row) + pad
    w = max(img.shape[1] for row in rows for img in row) + pad
    out = np.full((len(rows) * h - pad, max(map(len, rows)) * w - pad, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            out[r * h : r * h + img.shape[0], c * w : c * w + img.shape[1]] = img
    return out


@torch.no_grad()
def draw_predictions(
    model: torch.nn.Module,
    dataset_dicts: Sequence[Dict[str, Any]],
    mapper: Mapper,
    metadata: Any,
    *,
    score_thresh: float = 0.5,
    scale: float = 2.0,
) -> np.ndarray:
    """One (H, W, 3) uint8 RGB figure: ground truth of ``dataset_dicts`` on top, ``model``'s
    predictions with score >= ``score_thresh`` below (model run in eval mode through the
    test-time ``mapper``, then put back in its mode; ``metadata`` labels the boxes)."""
    was_training = model.training
    model.eval()
    truths, preds = [], []
    try:
        for d in dataset_dicts:
            rgb = read_image(d["file_name"], format="RGB")
            truths.append(Visualizer(rgb, metadata, scale=scale).draw_dataset_dict(d).get_image())
            instances = model([mapper(dict(d))])[0]["instances"].to("cpu")
            instances = instances[instances.scores >= score_thresh]
            vis = Visualizer(rgb, metadata, scale=scale)
            preds.append(vis.draw_instance_predictions(instances).get_image())
    finally:
        model.train(was_training)
    return _tile([truths, preds])


class PredictionImageWriter(HookBase):
    """After a completed training, write :func:`draw_predictions` of the first ``num_images``
    readable images of ``dataset_name`` to the PNG ``output_path`` (main process only)."""

    num_images = 4
    score_thresh = 0.5

    def __init__(self, *, dataset_name: str, mapper: Mapper, output_path: str) -> None:
        self._dataset_name = dataset_name
        self._mapper = mapper
        self._output_path = output_path

    def after_train(self) -> None:
        # Like detectron2's EvalHook: nothing to show after a run that stopped early.
        if self.trainer.iter + 1 < self.trainer.max_iter or not comm.is_main_process():
            return
        # DistributedDataParallel wraps the detector; draw with the detector itself.
        model = getattr(self.trainer.model, "module", self.trainer.model)
        name, thresh = self._dataset_name, self.score_thresh
        reports = check_datasets(name, purpose="evaluation").values()  # a test set
        unreadable = {f for r in reports for f in r.unreadable_files}
        readable = (d for d in DatasetCatalog.get(name) if d["file_name"] not in unreadable)
        dicts: List[Dict[str, Any]] = list(itertools.islice(readable, self.num_images))
        metadata = MetadataCatalog.get(name)
        figure = draw_predictions(model, dicts, self._mapper, metadata, score_thresh=thresh)
        os.makedirs(os.path.dirname(self._output_path) or ".", exist_ok=True)
        Image.fromarray(figure).save(self._output_path)
        logger.info(
            f"Wrote predictions on {len(dicts)} images of {name} (top: ground truth, bottom: "
            f"score >= {thresh}) to {self._output_path}"
        )
