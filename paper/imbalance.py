"""How imbalanced a detection dataset is for a RetinaNet config: binary terms per positive anchor.

The sigmoid classification loss has one binary term per (anchor, class) pair of every anchor
that is not ignored; the paper's imbalance is the number of such terms per positive anchor (the
normaliser of the loss). On COCO, with about 100k anchors and 80 classes per image, it is about
1e5 (paper, Sec. 1 and 4). Here it is measured, not estimated: the anchors come from the config's
own anchor generator, and each image's labels from the model's own ``label_anchors`` (the
config's matcher, thresholds and low-quality matches) on the dataset's boxes after the
training-time resize.

    terms per positive = sum over images of (anchors - ignored) x classes
                         / sum over images of positive anchors
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["ImbalanceStats", "count_anchor_labels", "measure_imbalance", "imbalance_of_config"]


@dataclass(frozen=True)
class ImbalanceStats:
    """Anchor statistics of a dataset under a config, summed over its images.

    Attributes:
        dataset: what was measured (a registered name, or a description).
        num_images: images measured.
        num_classes: K, the config's foreground classes.
        anchors: anchors over all images (per image: ``anchors / num_images``).
        positives: foreground anchors (label in [0, K)) over all images.
        ignored: anchors labelled -1 (IoU between the thresholds) over all images.
        objects: ground-truth boxes over all images.
    """

    dataset: str
    num_images: int
    num_classes: int
    anchors: int
    positives: int
    ignored: int
    objects: int

    @property
    def anchors_per_image(self) -> float:
        return self.anchors / self.num_images if self.num_images else math.nan

    @property
    def positives_per_image(self) -> float:
        return self.positives / self.num_images if self.num_images else math.nan

    @property
    def objects_per_image(self) -> float:
        return self.objects / self.num_images if self.num_images else math.nan

    @property
    def terms(self) -> int:
        """Binary classification terms: one per (non-ignored anchor, class) pair."""
        return (self.anchors - self.ignored) * self.num_classes

    @property
    def terms_per_positive(self) -> float:
        """Binary terms per positive anchor; inf when nothing is positive."""
        return self.terms / self.positives if self.positives else math.inf

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "ImbalanceStats":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def count_anchor_labels(labels: Tensor, num_classes: int) -> Tuple[int, int, int]:
    """Count an image's anchors by label.

    Args:
        labels: (R,) or (N, R) int64 anchor labels as ``label_anchors`` returns them: [0, K) =
            class of the matched object, K = background, -1 = ignored.
        num_classes: K.

    Returns:
        (anchors, positives, ignored), summed over all images.
    """
    if labels.numel() and (int(labels.min()) < -1 or int(labels.max()) > num_classes):
        raise ValueError(f"anchor labels must lie in [-1, {num_classes}], got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")  # fmt: skip
    positives = int(((labels >= 0) & (labels < num_classes)).sum())
    ignored = int((labels == -1).sum())
    return labels.numel(), positives, ignored


def _instances(record: Dict[str, Any], augmentations: Sequence[Any]) -> Tuple[Any, Tuple[int, int]]:
    """The ground truth of a dataset dict as training sees it, after the deterministic part of
    the training-time augmentation (the resize), without reading the image: the transforms
    only need its size."""
    from detectron2.data import detection_utils as utils
    from detectron2.data import transforms as T

    height, width = int(record["height"]), int(record["width"])
    aug_input = T.AugInput(np.zeros((height, width, 1), dtype=np.uint8))
    transforms = T.AugmentationList(list(augmentations))(aug_input)
    size = aug_input.image.shape[:2]
    annos = [utils.transform_instance_annotations(a, transforms, size)
             for a in record.get("annotations", []) if a.get("iscrowd", 0) == 0]  # fmt: skip
    return utils.annotations_to_instances(annos, size), size


@torch.no_grad()
def measure_imbalance(cfg: Any, dataset_dicts: Iterable[Dict[str, Any]], *,
                      dataset: str = "") -> ImbalanceStats:  # fmt: skip
    """Count anchors, positives and ignored anchors of ``dataset_dicts`` under ``cfg``.

    The model is built from ``cfg`` (randomly initialised; only its anchor generator and its
    ``label_anchors`` are used, on the features of an empty image of each size). Augmentations
    other than the resize (the random flip) are left out: they move boxes by a pixel or two
    against the anchor grid, which does not change the counts' order of magnitude.

    Args:
        cfg: a yacs config of :class:`~retinafocal.modeling.FocalRetinaNet` (or any model with
            ``anchor_generator``, ``head_in_features``, ``backbone`` and ``label_anchors``).
        dataset_dicts: detectron2 dataset dicts with ``height``, ``width``, ``annotations``.
        dataset: a name for the result.
    """
    threads = torch.get_num_threads()
    # The per-image tensors are tiny (boxes x anchors): one thread avoids waking a pool per op,
    # which costs more than the op itself, badly so on a shared machine.
    torch.set_num_threads(1)
    try:
        return _measure(cfg, dataset_dicts, dataset)
    finally:
        torch.set_num_threads(threads)


def _measure(cfg: Any, dataset_dicts: Iterable[Dict[str, Any]], dataset: str) -> ImbalanceStats:
    from detectron2.data.transforms import ResizeShortestEdge
    from detectron2.modeling import build_model
    from detectron2.structures import ImageList

    model = build_model(cfg).eval()
    num_classes = int(cfg.MODEL.RETINANET.NUM_CLASSES)
    # The training resize, without its randomness: the first of MIN_SIZE_TRAIN (the embedded
    # recipes have one size). Sampling sizes would change the counts from run to run.
    resize = ResizeShortestEdge(int(cfg.INPUT.MIN_SIZE_TRAIN[0]), cfg.INPUT.MAX_SIZE_TRAIN)
    anchors_by_size: Dict[Tuple[int, int], List[Any]] = {}
    totals = np.zeros(4, dtype=np.int64)  # anchors, positives, ignored, objects
    num_images = 0
    for record in dataset_dicts:
        instances, size = _instances(record, [resize])
        if size not in anchors_by_size:
            padded = ImageList.from_tensors(
                [torch.zeros(3, *size, device=model.device)], model.backbone.size_divisibility
            )
            features = model.backbone(padded.tensor)
            anchors_by_size[size] = model.anchor_generator(
                [features[f] for f in model.head_in_features]
            )
        (labels,), _ = model.label_anchors(anchors_by_size[size], [instances.to(model.device)])
        totals += (*count_anchor_labels(labels, num_classes), len(instances))
        num_images += 1
    anchors, positives, ignored, objects = (int(v) for v in totals)
    return ImbalanceStats(dataset=dataset, num_images=num_images, num_classes=num_classes,
                          anchors=anchors, positives=positives, ignored=ignored,
                          objects=objects)  # fmt: skip


def imbalance_of_config(config_file: str, opts: Sequence[str], *,
                        max_images: Optional[int] = None) -> ImbalanceStats:  # fmt: skip
    """:func:`measure_imbalance` of the first training set of a yacs config with ``KEY VALUE``
    overrides (a run of the grid), registering its ``DATASETS.COCO_JSON`` first."""
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog

    from retinafocal.config import add_retinafocal_config
    from retinafocal.config_overrides import merge_yacs_file, merge_yacs_overrides
    from retinafocal.data import register_coco_json_datasets

    cfg = get_cfg()
    add_retinafocal_config(cfg)
    merge_yacs_file(cfg, config_file)
    merge_yacs_overrides(cfg, list(opts))
    register_coco_json_datasets(cfg.DATASETS.COCO_JSON)
    cfg.MODEL.DEVICE = "cpu"
    name = cfg.DATASETS.TRAIN[0]
    dicts = DatasetCatalog.get(name)
    if max_images is not None:
        dicts = dicts[:max_images]
    return measure_imbalance(cfg, dicts, dataset=name)
