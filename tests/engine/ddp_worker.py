"""Two gloo processes take one DDP training step on a tiny embedded dataset (for
``test_distributed``)::

    python tests/engine/ddp_worker.py OUT_DIR

The processes start through detectron2's ``launch`` (as ``train_net.py --num-gpus 2`` does) and
prepare the dataset as training does (:func:`retinafocal.engine.defaults.prepare_datasets`): an
8-image embedded shapes split, generated under ``OUT_DIR/data`` on its first use. Each
generation appends the generating rank to ``OUT_DIR/generated.txt``. Rank r then takes images
4r .. 4r + 3, wraps the model with ``create_ddp_model`` as ``DefaultTrainer`` does, and runs one
forward and backward pass. It writes ``OUT_DIR/rank<r>.pth``: its inputs, the weights before the
step, its positive-anchor count and the parameter gradients after DDP's all-reduce.
"""
import os
import sys

import retinafocal  # noqa: F401  (compat first: the gloo launch on detectron2 v0.6)
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import create_ddp_model, launch
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from retinafocal import add_retinafocal_config
from retinafocal.config_overrides import merge_yacs_file, merge_yacs_overrides
from retinafocal.data import RobustDatasetMapper, register_shapes, shapes
from retinafocal.engine.defaults import leave_process_group, prepare_datasets
from tests.engine.common import CONFIG_DIR, TINY_SIZE, TINY_SPEC

DATASET_PREFIX = "ddp_shapes"
IMAGES_PER_PROCESS = 4


def tiny_cfg(dataset_name: str = f"{DATASET_PREFIX}_train"):
    """The embedded yacs recipe on 64 px images, without random flips (the test process maps the
    same images to the same inputs)."""
    cfg = get_cfg()
    add_retinafocal_config(cfg)
    merge_yacs_file(cfg, os.path.join(CONFIG_DIR, "Embedded", "retinanet_R18_FPN_shapes.yaml"))
    merge_yacs_overrides(cfg, [
        "DATASETS.TRAIN", repr((dataset_name,)),
        "DATASETS.TEST", "()",
        "INPUT.MIN_SIZE_TRAIN", f"({TINY_SIZE},)",
        "INPUT.MAX_SIZE_TRAIN", str(TINY_SIZE),
        "INPUT.RANDOM_FLIP", "none",
        "MODEL.DEVICE", "cpu",
    ])  # fmt: skip
    return cfg


def _record_generations(path: str) -> None:
    """Make every generation of a shapes split append this process's rank to ``path``."""
    generate = shapes.generate_shapes_split

    def recorded(*args, **kwargs):
        with open(path, "a") as f:
            f.write(f"{comm.get_rank()}\n")
        return generate(*args, **kwargs)

    shapes.generate_shapes_split = recorded  # ensure_shapes_split calls it by this name


def step(out_dir: str) -> None:
    rank = comm.get_rank()
    (name,) = register_shapes(
        os.path.join(out_dir, "data"), DATASET_PREFIX, {"train": (8, TINY_SPEC)}
    )
    cfg = tiny_cfg(name)
    _record_generations(os.path.join(out_dir, "generated.txt"))
    prepare_datasets(cfg)
    dicts = DatasetCatalog.get(name)
    first = rank * IMAGES_PER_PROCESS
    mapper = RobustDatasetMapper(cfg, is_train=True)
    inputs = [mapper(d) for d in dicts[first : first + IMAGES_PER_PROCESS]]

    torch.manual_seed(0)
    model = build_model(cfg)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ddp = create_ddp_model(model, broadcast_buffers=False)  # DefaultTrainer's call
    with EventStorage(0) as storage:
        losses = ddp(inputs)
        sum(losses.values()).backward()
        num_pos = storage.history("num_pos_anchors").latest() * len(inputs)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    torch.save(
        {
            "inputs": inputs,
            "initial": initial,
            "num_pos": round(num_pos),
            "losses": {k: v.item() for k, v in losses.items()},
            "grads": grads,
        },
        os.path.join(out_dir, f"rank{rank}.pth"),
    )
    leave_process_group()


if __name__ == "__main__":
    launch(step, 2, dist_url="auto", args=(sys.argv[1],))
