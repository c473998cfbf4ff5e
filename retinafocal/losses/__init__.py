"""The focal loss, a torchvision-compatible functional form, and the paper's alternatives
(alpha-balanced CE, FL*, hinge, OHEM), registered by name in :data:`CLASSIFICATION_LOSS_REGISTRY`.
"""

from .build import CLASSIFICATION_LOSS_REGISTRY, build_classification_loss
from .classification import BalancedCELoss, FocalLoss, FocalLossStar, HingeLoss
from .functional import (
    label_focal_loss,
    label_focal_loss_star,
    label_hinge_loss,
    sigmoid_focal_loss,
)
from .ohem import OHEMLoss, ohem_select

# As detectron2.data and detectron2.engine: the public names are those imported above.
__all__ = [k for k in globals().keys() if not k.startswith("_")]
