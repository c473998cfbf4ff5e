"""Paper recipe, ResNet-50-FPN, 1x: 90k iterations at 16 images, LR 0.01 / 10 at 60k and 80k,
SGD momentum 0.9, weight decay 1e-4, shorter side 800 px, horizontal flip (paper, Sec. 4.1).
The LazyConfig form of retinanet_R50_FPN_1x.yaml."""
from ..common.data.coco import dataloader, datasets  # noqa: F401
from ..common.models.retinanet import model
from ..common.optim import SGD as optimizer  # noqa: F401
from ..common.schedules import lr_multiplier_1x as lr_multiplier  # noqa: F401
from ..common.train import train

# ImageNet weights, fetched by detectron2's checkpointer as for its own model zoo; the stem and
# res2 stay frozen, as detectron2 does with them.
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
model.backbone.bottom_up.freeze_at = 2
train.max_iter = 90000
train.checkpointer.period = 5000
train.output_dir = "output/coco/retinanet_R50_FPN_1x"
