"""A ready-to-run model from a yacs (``.yaml``) or LazyConfig (``.py``) config, for the tools.

Both kinds of config are accepted everywhere a tool takes ``--config-file``: ``.yaml`` files are
merged into detectron2's defaults plus :func:`retinafocal.add_retinafocal_config` and take
``KEY VALUE`` overrides; ``.py`` files are LazyConfigs and take ``key=value`` overrides. The
functions here hide the difference (where the weights, device, input format, test-time resize
and test dataset are written) from the tools.
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Optional, Sequence

import retinafocal  # noqa: F401  (first: compat for old detectron2, registers FocalRetinaNet)
import detectron2.data.transforms as T
from detectron2.config import CfgNode, LazyConfig, get_cfg, instantiate
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model as build_yacs_model
from retinafocal.checkpoint import load_inference_weights
from retinafocal.config_overrides import (
    apply_lazy_overrides,
    merge_yacs_file,
    merge_yacs_overrides,
)
from retinafocal.data import register_coco_json_datasets
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "ToolError",
    "load_config",
    "is_lazy",
    "set_score_threshold",
    "set_device",
    "build_model",
    "add_weights_arguments",
    "add_overrides_argument",
    "weights_path",
    "input_format",
    "test_augmentation",
    "test_dataset_name",
    "dataset_metadata",
]


class ToolError(Exception):
    """A problem with what the user asked for (missing file, unreadable image, bad option).

    The scripts print its message, which names the file or option at fault, and exit with a
    non-zero status instead of showing a traceback.
    """


def load_config(config_file: str, opts: Optional[Sequence[str]] = None) -> Any:
    """Load ``config_file`` and apply command-line overrides.

    Returns:
        a yacs ``CfgNode`` (not frozen: tools still adjust it) for ``.yaml``/``.yml`` files, an
        omegaconf ``DictConfig`` for ``.py`` LazyConfig files.

    Raises:
        ToolError: the file does not exist or has another extension.
    """
    if not os.path.isfile(config_file):
        raise ToolError(f"config file {config_file!r} does not exist")
    ext = os.path.splitext(config_file)[1].lower()
    if ext == ".py":
        cfg = apply_lazy_overrides(LazyConfig.load(config_file), list(opts or []))
    elif ext in (".yaml", ".yml"):
        cfg = get_cfg()
        retinafocal.add_retinafocal_config(cfg)
        merge_yacs_file(cfg, config_file)
        merge_yacs_overrides(cfg, list(opts or []))
    else:
        raise ToolError(
            f"config file {config_file!r}: expected a .yaml (yacs) or .py (LazyConfig) file"
        )
    _register_config_datasets(cfg)
    return cfg


def _register_config_datasets(cfg: Any) -> None:
    """Register the COCO json datasets the config lists, for their metadata (class names and
    category ids). A tool that only runs the model does not need the files, so a missing one
    is a warning, not an error."""
    entries = (
        (cfg.get("datasets", None) or {}).get("coco_json", None)
        if is_lazy(cfg)
        else cfg.DATASETS.COCO_JSON
    )
    try:
        register_coco_json_datasets(entries or [])
    except FileNotFoundError as e:
        logger.warning(f"dataset metadata unavailable, class names will not be shown: {e}")


def is_lazy(cfg: Any) -> bool:
    """True for a LazyConfig (omegaconf), False for a yacs ``CfgNode``."""
    return not isinstance(cfg, CfgNode)


def set_score_threshold(cfg: Any, threshold: float) -> None:
    """Make the model keep detections scoring above ``threshold`` (the test-time threshold of
    RetinaNet-style models; both retinafocal's and detectron2's read the same keys)."""
    if not 0.0 <= threshold < 1.0:
        raise ToolError(f"the confidence threshold must be in [0, 1), got {threshold}")
    if is_lazy(cfg):
        if "test_score_thresh" not in cfg.model:
            raise ToolError("this LazyConfig's model has no 'test_score_thresh' to set")
        cfg.model.test_score_thresh = threshold
    else:
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = threshold


def set_device(cfg: Any, device: str) -> None:
    """Run the model on ``device`` ("cpu", "cuda", "cuda:1", ...)."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ToolError(f"--device {device}: CUDA is not available on this machine")
    if is_lazy(cfg):
        cfg.train.device = device
    else:
        cfg.MODEL.DEVICE = device


def weights_path(cfg: Any) -> str:
    """The checkpoint the config names ("" for none): ``MODEL.WEIGHTS`` or
    ``train.init_checkpoint``."""
    if is_lazy(cfg):
        return str(cfg.train.get("init_checkpoint", "") or "")
    return cfg.MODEL.WEIGHTS


def build_model(
    cfg: Any,
    load_weights: bool = True,
    *,
    random_weights: bool = False,
    trust_weights_file: bool = False,
) -> nn.Module:
    """Build the config's model on its device, in eval mode, with its weights loaded.

    The weights must fit the model, and a config without weights is an error unless
    ``random_weights`` (see :func:`retinafocal.checkpoint.load_inference_weights`).
    ``load_weights=False`` keeps the random initialisation without asking (for analyses that
    do not depend on the weights).

    Raises:
        ToolError: the weights file is a local path that does not exist.
        retinafocal.weights_file.WeightsFileError: no weights, or weights that cannot be used
            (unsafe, TorchScript, mismatched, damaged); the message names the file.
    """
    if is_lazy(cfg):
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
    else:
        model = build_yacs_model(cfg)
    weights = weights_path(cfg)
    if load_weights:
        if weights and "://" not in weights and not os.path.isfile(weights):
            raise ToolError(f"weights file {weights!r} does not exist")
        load_inference_weights(
            model,
            weights,
            weights_key="train.init_checkpoint" if is_lazy(cfg) else "MODEL.WEIGHTS",
            random_weights=random_weights,
            trust_weights_file=trust_weights_file,
        )
    model.eval()
    return model


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """``--random-weights`` and ``--trust-weights-file``, as ``train_net.py`` has them."""
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="run a randomly initialised model when the config names no weights",
    )
    parser.add_argument(
        "--trust-weights-file",
        action="store_true",
        help="read the weights file with full unpickling, which runs any code it holds: only "
        "for files from a source you trust",
    )


def add_overrides_argument(parser: argparse.ArgumentParser) -> None:
    """``--opts``, config overrides in either form. Add it last: it takes the rest of the
    command line."""
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides: KEY VALUE pairs (yacs) or key=value (LazyConfig)",
    )


def input_format(cfg: Any) -> str:
    """Channel order the model expects: "BGR" or "RGB"."""
    if is_lazy(cfg):
        return str(cfg.model.get("input_format", "BGR"))
    return cfg.INPUT.FORMAT


def test_augmentation(cfg: Any) -> Optional[T.Augmentation]:
    """The test-time resize of the config, None for none.

    yacs: ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST`` (as detectron2's ``DefaultPredictor``;
    ``MIN_SIZE_TEST`` 0 means no resize).
    LazyConfig: the first augmentation of ``dataloader.test.mapper.augmentations`` when there is
    one, else the paper's 800 / 1333.
    """
    if not is_lazy(cfg):
        if cfg.INPUT.MIN_SIZE_TEST == 0:
            return None
        return T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
    try:
        augs = cfg.dataloader.test.mapper.augmentations
    except (AttributeError, KeyError):
        augs = None
    if augs:
        return instantiate(augs[0])
    return T.ResizeShortestEdge([800, 800], 1333)


def test_dataset_name(cfg: Any) -> Optional[str]:
    """Name of the config's (first) test dataset, or None when it names none."""
    if is_lazy(cfg):
        try:
            names = cfg.dataloader.test.dataset.names
        except (AttributeError, KeyError):
            return None
        if isinstance(names, str):
            return names
        return names[0] if names else None
    return cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None


def dataset_metadata(cfg: Any):
    """detectron2 ``Metadata`` of the config's test dataset (class names, COCO category ids);
    an empty one when the config names no dataset."""
    name = test_dataset_name(cfg)
    return MetadataCatalog.get(name if name else "__retinafocal_tools_unnamed")
