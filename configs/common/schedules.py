"""LR multipliers: linear warm-up, then steps of 10x (COCO) or a cosine decay (embedded data)."""
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler, MultiStepParamScheduler


def step_schedule(max_iter: int, steps, warmup_iters: int = 1000, warmup_factor: float = 0.001):
    """LR x1 until steps[0], x0.1 until steps[1], x0.01 until max_iter; linear warm-up first."""
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[1.0, 0.1, 0.01], milestones=[steps[0], steps[1], max_iter]
        ),
        warmup_length=warmup_iters / max_iter,
        warmup_method="linear",
        warmup_factor=warmup_factor,
    )


def cosine_schedule(max_iter: int, warmup_iters: int, warmup_factor: float = 0.001):
    """LR from x1 down to x0 along a half cosine over the run; linear warm-up first."""
    return L(WarmupParamScheduler)(
        scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
        warmup_length=warmup_iters / max_iter,
        warmup_method="linear",
        warmup_factor=warmup_factor,
    )


# Paper, Sec. 4.1: 90k iterations, LR / 10 at 60k and 80k.
lr_multiplier_1x = step_schedule(90000, (60000, 80000))
# 270k iterations, LR / 10 at 210k and 250k.
lr_multiplier_3x = step_schedule(270000, (210000, 250000))
