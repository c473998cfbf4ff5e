"""Config keys that retinafocal adds to detectron2's defaults.

The standard ``cfg.MODEL.RETINANET.*`` keys keep their detectron2 meaning and are read as they
are (anchors, IoU thresholds, focal-loss alpha/gamma, prior, test-time settings). Everything that
detectron2's RetinaNet has no key for lives under ``cfg.MODEL.RETINAFOCAL``, plus one data-loading
key under ``cfg.DATALOADER``.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_retinafocal_config"]


def add_retinafocal_config(cfg: CN) -> None:
    """Add retinafocal's keys to ``cfg`` in place. Calling it twice is harmless."""
    if "RETINAFOCAL" in cfg.MODEL:
        return
    _C = cfg
    _C.MODEL.RETINAFOCAL = CN()
    # Name of the head in retinafocal.modeling.RETINAFOCAL_HEAD_REGISTRY.
    _C.MODEL.RETINAFOCAL.HEAD_NAME = "RetinaFocalHead"
    # Name of the anchor matcher in retinafocal.modeling.ANCHOR_MATCHER_REGISTRY.
    _C.MODEL.RETINAFOCAL.MATCHER_NAME = "ChunkedIoUMatcher"
    # Max number of IoU values (GT x anchors) the matcher materialises at once; bounds its memory.
    _C.MODEL.RETINAFOCAL.MATCHER_CHUNK_ELEMENTS = 4 * 1024 * 1024
    # Also match each GT to its highest-IoU anchors when those fall below the fg threshold
    # (detectron2's allow_low_quality_matches; the paper does not use it, detectron2 does).
    _C.MODEL.RETINAFOCAL.ALLOW_LOW_QUALITY_MATCHES = True
    # What the summed classification and box losses are divided by:
    # "num_pos": the number of positive anchors in the batch (the paper, Sec. 4);
    # "ema": detectron2's exponential moving average of that number (momentum below, init 100).
    _C.MODEL.RETINAFOCAL.LOSS_NORMALIZER = "num_pos"
    _C.MODEL.RETINAFOCAL.LOSS_NORMALIZER_MOMENTUM = 0.9
    # Record imbalance diagnostics (anchors per image, share of loss from easy/hard negatives) in
    # detectron2's EventStorage every this many iterations; 0 disables them.
    _C.MODEL.RETINAFOCAL.DIAGNOSTICS_PERIOD = 20
    # Layout of the model's 4-d weights and of its input batch: "NCHW" (PyTorch's default, and
    # results identical to detectron2's RetinaNet) or "NHWC" (channels-last: faster convolutions
    # with oneDNN on CPU and cuDNN on GPU; equal results up to float rounding).
    _C.MODEL.RETINAFOCAL.MEMORY_FORMAT = "NCHW"
    # Set MODEL.RETINANET.NUM_CLASSES to the number of categories of the DATASETS.TRAIN datasets
    # before the model is built. Off, NUM_CLASSES must equal that number (checked before
    # training and evaluation).
    _C.MODEL.RETINAFOCAL.NUM_CLASSES_FROM_DATASET = False
    # Compute precision of the backbone and head in training and inference, through
    # torch.autocast: "fp32", "bf16" (CPUs with AVX512-BF16/AMX, GPUs; float32 with a warning
    # elsewhere) or "fp16" (GPU; training it needs SOLVER.AMP.ENABLED True, which bf16 refuses).
    # The loss and box decoding stay float32. A TorchScript-scripted model runs in float32.
    _C.MODEL.RETINAFOCAL.PRECISION = "fp32"
    # Compute each backbone conv followed by a frozen BatchNorm (FrozenBN backbones, e.g. the
    # COCO recipes' R50) as one conv with the norm folded into its weight and bias: same
    # parameters and checkpoints, equal results up to float rounding, faster.
    _C.MODEL.RETINAFOCAL.FOLD_FROZEN_BN = False

    _C.MODEL.RETINAFOCAL.LOSS = CN()
    # Name in retinafocal.losses.CLASSIFICATION_LOSS_REGISTRY: "FocalLoss" (alpha and gamma from
    # MODEL.RETINANET.FOCAL_LOSS_ALPHA/GAMMA), "BalancedCELoss" (alpha-balanced CE, alpha from
    # FOCAL_LOSS_ALPHA), "FocalLossStar", "HingeLoss", "OHEMLoss".
    _C.MODEL.RETINAFOCAL.LOSS.NAME = "FocalLoss"
    # Run the fused loss through torch.compile (C++/OpenMP on CPU, Triton on GPU); falls back to
    # eager when compilation is unavailable. The first call pays the compile time.
    _C.MODEL.RETINAFOCAL.LOSS.COMPILE = False
    # FL* (paper, Appendix A): p*_t = sigmoid(GAMMA * x_t + BETA), loss = -log(p*_t) / GAMMA.
    _C.MODEL.RETINAFOCAL.LOSS.FL_STAR_GAMMA = 2.0
    _C.MODEL.RETINAFOCAL.LOSS.FL_STAR_BETA = 1.0
    # Hinge loss (paper, Sec. 5.1 / Appendix A): zero once p_t exceeds this margin.
    _C.MODEL.RETINAFOCAL.LOSS.HINGE_MARGIN = 0.5
    # OHEM for the dense detector (paper, Sec. 5.1 and Table 1d).
    _C.MODEL.RETINAFOCAL.LOSS.OHEM_BATCH_SIZE_PER_IMAGE = 128
    # Negatives per positive in each image's batch (3 = the paper's 1:3); 0 = no ratio, pure loss.
    _C.MODEL.RETINAFOCAL.LOSS.OHEM_NEG_POS_RATIO = 0.0
    # IoU threshold of the NMS run over anchor boxes scored by their loss before selection.
    _C.MODEL.RETINAFOCAL.LOSS.OHEM_NMS_THRESH = 0.5

    # COCO-format datasets to register by name, with no code: a list of
    # [name, json_file, image_root] triples; the names can then be used in DATASETS.TRAIN/TEST.
    _C.DATASETS.COCO_JSON = []

    # What to do with images that cannot be read (missing, corrupt, truncated, of another size
    # than the json says), in training and test sets: "error" (stop before training or
    # evaluation starts, naming them) or "skip" (leave out those the start-up check finds, counted;
    # during training, skip any other that fails to decode, and log the running count every
    # DATALOADER.LOG_SKIPPED_PERIOD images mapped, per data-loader worker).
    _C.DATALOADER.ON_UNREADABLE_IMAGE = "error"
    _C.DATALOADER.LOG_SKIPPED_PERIOD = 20
