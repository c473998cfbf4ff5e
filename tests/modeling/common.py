"""Small configs and inputs shared by the modeling tests."""
from typing import List

import torch

import retinafocal
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances


def small_retinanet_cfg(meta_architecture: str = "FocalRetinaNet", num_classes: int = 3):
    """detectron2's Base-RetinaNet with a narrow R18-FPN, so a test builds and runs it in a
    fraction of a second."""
    cfg = get_cfg()
    retinafocal.add_retinafocal_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("Base-RetinaNet.yaml"))
    cfg.MODEL.META_ARCHITECTURE = meta_architecture
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    cfg.MODEL.RETINAFOCAL.DIAGNOSTICS_PERIOD = 0
    return cfg


def make_inputs(num_images: int = 2, size=(96, 128), with_boxes: bool = True, seed: int = 0):
    """Images (0-255 float, CHW) with a few random ground-truth boxes each."""
    g = torch.Generator().manual_seed(seed)
    inputs: List[dict] = []
    for _ in range(num_images):
        h, w = size
        image = torch.rand(3, h, w, generator=g) * 255
        inst = Instances((h, w))
        n = 3 if with_boxes else 0
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = 12 + torch.rand(n, 2, generator=g) * 30
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        inst.gt_classes = torch.randint(0, 3, (n,), generator=g)
        inputs.append({"image": image, "instances": inst, "height": h, "width": w})
    return inputs


def spy_on_classification_loss(model):
    """The values the model's classification loss returns, recorded as it trains."""
    calls = []
    original = model.classification_loss.forward

    def spy(*args, **kwargs):
        calls.append(original(*args, **kwargs))
        return calls[-1]

    model.classification_loss.forward = spy
    return calls
