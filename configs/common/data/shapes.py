"""The embedded shapes dataset (retinafocal/data/shapes.py), generated under
``$DETECTRON2_DATASETS/shapes`` on first use: 128 px images, horizontal flip, 16 images per
batch, COCO AP on ``shapes_val``. CPU-sized: one loader worker."""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from omegaconf import OmegaConf

from retinafocal.data import RobustDatasetMapper
from retinafocal.engine import build_evaluator

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="shapes_train"),
    mapper=L(RobustDatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=(128,), sample_style="choice", max_size=128),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
        use_instance_mask=False,
        on_unreadable="error",
    ),
    total_batch_size=16,
    num_workers=1,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="shapes_val", filter_empty=False),
    mapper=L(RobustDatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=128, max_size=128)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=1,
)

dataloader.evaluator = L(build_evaluator)(
    dataset_name="${..test.dataset.names}", output_dir="${...train.output_dir}/inference"
)

# COCO-format datasets to register before the loaders are built, with no code:
# [[name, json_file, image_root], ...], the counterpart of the yacs key DATASETS.COCO_JSON.
datasets = dict(coco_json=[])
