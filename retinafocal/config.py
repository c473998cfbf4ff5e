"""Config keys that retinafocal adds to detectron2's defaults. ``cfg.MODEL.RETINANET.*`` keeps its
detectron2 meaning; what detectron2's RetinaNet has no key for lives under
``cfg.MODEL.RETINAFOCAL``, plus ``DATASETS.COCO_JSON`` and two ``DATALOADER`` keys."""
from detectron2.config import CfgNode as CN

__all__ = ["add_retinafocal_config"]


def add_retinafocal_config(cfg: CN) -> None:
    """Add retinafocal's keys to ``cfg`` in place. Calling it twice is harmless."""
    if "RETINAFOCAL" in cfg.MODEL:
        return
    cfg.MODEL.RETINAFOCAL = CN()
    # Name of the head in retinafocal.modeling.RETINAFOCAL_HEAD_REGISTRY.
    cfg.MODEL.RETINAFOCAL.HEAD_NAME = "RetinaFocalHead"
    # Name of the anchor matcher in retinafocal.modeling.ANCHOR_MATCHER_REGISTRY.
    cfg.MODEL.RETINAFOCAL.MATCHER_NAME = "ChunkedIoUMatcher"
    # Max number of IoU values (GT x anchors) the matcher materialises at once; bounds its memory.
    cfg.MODEL.RETINAFOCAL.MATCHER_CHUNK_ELEMENTS = 4 * 1024 * 1024
    # Also match each GT to its best anchors below the fg threshold (as detectron2; not the paper).
    cfg.MODEL.RETINAFOCAL.ALLOW_LOW_QUALITY_MATCHES = True
    # Divisor of the summed losses: "num_pos" (positive anchors in the batch, the paper) or "ema"
    # (detectron2's moving average of it, with this momentum, init 100).
    cfg.MODEL.RETINAFOCAL.LOSS_NORMALIZER = "num_pos"
    cfg.MODEL.RETINAFOCAL.LOSS_NORMALIZER_MOMENTUM = 0.9
    # Log imbalance diagnostics (anchors per image, loss share of easy/hard negatives) to the
    # EventStorage every this many iterations; 0 = never.
    cfg.MODEL.RETINAFOCAL.DIAGNOSTICS_PERIOD = 20
    # Layout of the 4-d weights and the input batch: "NCHW" (results identical to detectron2's
    # RetinaNet) or "NHWC" (channels-last: faster convolutions; equal up to float rounding).
    cfg.MODEL.RETINAFOCAL.MEMORY_FORMAT = "NCHW"
    # Set MODEL.RETINANET.NUM_CLASSES from the DATASETS.TRAIN categories before the model is
    # built; off, the two must agree (checked before training and evaluation).
    cfg.MODEL.RETINAFOCAL.NUM_CLASSES_FROM_DATASET = False
    # Autocast precision of backbone and head: "fp32", "bf16" (float32 with a warning where the
    # hardware lacks it; refuses SOLVER.AMP) or "fp16" (GPU; training needs SOLVER.AMP.ENABLED).
    # Loss and box decoding stay float32, and so does a TorchScript-scripted model.
    cfg.MODEL.RETINAFOCAL.PRECISION = "fp32"
    # Fold each frozen BatchNorm of the backbone into the conv before it: same parameters and
    # checkpoints, equal results up to float rounding, faster.
    cfg.MODEL.RETINAFOCAL.FOLD_FROZEN_BN = False

    cfg.MODEL.RETINAFOCAL.LOSS = CN()
    # Name in retinafocal.losses.CLASSIFICATION_LOSS_REGISTRY: FocalLoss (alpha and gamma from
    # MODEL.RETINANET.FOCAL_LOSS_*), BalancedCELoss (alpha), FocalLossStar, HingeLoss, OHEMLoss.
    cfg.MODEL.RETINAFOCAL.LOSS.NAME = "FocalLoss"
    # Run the fused loss through torch.compile (eager where unavailable); the first call compiles.
    cfg.MODEL.RETINAFOCAL.LOSS.COMPILE = False
    # FL* (paper, Appendix A): p*_t = sigmoid(GAMMA * x_t + BETA), loss = -log(p*_t) / GAMMA.
    cfg.MODEL.RETINAFOCAL.LOSS.FL_STAR_GAMMA = 2.0
    cfg.MODEL.RETINAFOCAL.LOSS.FL_STAR_BETA = 1.0
    # Hinge loss (paper, Sec. 5.1 / Appendix A): zero once p_t exceeds this margin.
    cfg.MODEL.RETINAFOCAL.LOSS.HINGE_MARGIN = 0.5
    # OHEM for the dense detector (paper, Sec. 5.1 and Table 1d).
    cfg.MODEL.RETINAFOCAL.LOSS.OHEM_BATCH_SIZE_PER_IMAGE = 128
    # Negatives per positive in each image's batch (3 = the paper's 1:3); 0 = no ratio, pure loss.
    cfg.MODEL.RETINAFOCAL.LOSS.OHEM_NEG_POS_RATIO = 0.0
    # IoU threshold of the NMS run over anchor boxes scored by their loss before selection.
    cfg.MODEL.RETINAFOCAL.LOSS.OHEM_NMS_THRESH = 0.5

    # COCO-format datasets to register by name: a list of [name, json_file, image_root].
    cfg.DATASETS.COCO_JSON = []
    # Images that cannot be read (missing, corrupt, of another size than the json says): "error"
    # (stop before training or evaluation, naming them) or "skip" (leave them out, counted).
    cfg.DATALOADER.ON_UNREADABLE_IMAGE = "error"
    # With "skip": log the count of skipped images every this many images mapped, per worker.
    cfg.DATALOADER.LOG_SKIPPED_PERIOD = 20
