"""SGD with momentum 0.9 and weight decay 1e-4 (paper, Sec. 4.1); no decay on norm layers."""
import torch
from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params

SGD = L(torch.optim.SGD)(
    # params.model is filled in with the model by the training loop.
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=0.01,
    momentum=0.9,
    weight_decay=1e-4,
)
