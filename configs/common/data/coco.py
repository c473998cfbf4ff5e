"""COCO 2017 detection data (``$DETECTRON2_DATASETS/coco``, see datasets/README.md): shorter
side 800 px, horizontal flip (paper, Sec. 4.1), 16 images per batch, COCO AP on val."""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from omegaconf import OmegaConf

from retinafocal.data import RobustDatasetMapper, checked_dataset_dicts
from retinafocal.engine import build_evaluator

dataloader = OmegaConf.create()

# checked_dataset_dicts: detectron2's get_detection_dataset_dicts once the datasets are checked
# (retinafocal.data.check_datasets); unreadable images are handled as the mapper says.
dataloader.train = L(build_detection_train_loader)(
    # Images without objects train as background, as DATALOADER.FILTER_EMPTY_ANNOTATIONS False
    # in Base-RetinaNet.yaml (detectron2's default would drop them).
    dataset=L(checked_dataset_dicts)(
        names="coco_2017_train", filter_empty=False, on_unreadable="${..mapper.on_unreadable}"
    ),
    mapper=L(RobustDatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=(800,), sample_style="choice", max_size=1333),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
        use_instance_mask=False,
        on_unreadable="error",
    ),
    total_batch_size=16,
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    # Unreadable test images stop evaluation before it starts, or are left out (and AP covers
    # the others), as the training mapper's on_unreadable says.
    dataset=L(checked_dataset_dicts)(
        names="coco_2017_val",
        filter_empty=False,
        on_unreadable="${...train.mapper.on_unreadable}",
        purpose="evaluation",
    ),
    mapper=L(RobustDatasetMapper)(
        is_train=False,
        # "choice" as the yacs form builds it; with one size, either style resizes to 800.
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333, sample_style="choice")
        ],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)

# COCO AP with per-category AP in the log; pycocotools when detectron2's C++ ops are absent.
dataloader.evaluator = L(build_evaluator)(
    dataset_name="${..test.dataset.names}", output_dir="${...train.output_dir}/inference"
)

# COCO-format datasets to register before the loaders are built, with no code:
# [[name, json_file, image_root], ...], the counterpart of the yacs key DATASETS.COCO_JSON.
# num_classes_from_dataset=True sets model.num_classes to the number of classes of the training
# datasets (MODEL.RETINAFOCAL.NUM_CLASSES_FROM_DATASET); off, they must be equal.
datasets = dict(coco_json=[], num_classes_from_dataset=False)
