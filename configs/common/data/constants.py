"""Pixel statistics shared by the configs (BGR order, 0-255 scale)."""
constants = dict(
    # ImageNet mean, as detectron2's MSRA ResNet weights expect (with std 1).
    imagenet_bgr256_mean=[103.530, 116.280, 123.675],
    imagenet_bgr256_std=[1.0, 1.0, 1.0],
    # Unit-variance inputs for models trained from scratch.
    unit_bgr256_std=[57.375, 57.120, 58.395],
)
