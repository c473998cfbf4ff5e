"""Figure 4 of the focal-loss paper for any checkpoint and dataset: the cumulative distribution of
the normalised loss of positive and negative samples, scored with the focal loss at each gamma.

    python -m paper.analyze_loss --config-file configs/Embedded/retinanet_R18_FPN_shapes.yaml \\
        MODEL.WEIGHTS output/shapes_R18_FPN/model_final.pth --output output/loss_cdf
    python -m paper.analyze_loss --config-file configs/COCO/retinanet_R50_FPN_1x.py \\
        train.init_checkpoint=model.pth --dataset coco_2017_val --num-images 500 --output out

Writes ``loss_cdf.png`` (two panels: positives, negatives) and ``loss_cdf.json`` (the curves and,
per gamma, the fraction of samples that carries half of the loss) under ``--output``.
Config overrides (``KEY VALUE`` for .yaml, ``key=value`` for .py) may come anywhere.
:func:`analyze_model` is the same from Python (``python -m paper`` calls it for Figure 4).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Dict, Optional, Sequence, Tuple

import retinafocal  # noqa: F401  (first: compat, registries)
import detectron2.data.transforms as T
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model
from retinafocal.checkpoint import load_inference_weights
from retinafocal.config import add_retinafocal_config
from retinafocal.config_overrides import (
    apply_lazy_overrides,
    merge_yacs_file,
    merge_yacs_overrides,
)
from retinafocal.data import register_coco_json_datasets
from retinafocal.data.datasets import ensure_dataset_files
from retinafocal.engine import build_lazy_model, register_lazy_datasets

from .loss_analysis import (
    DEFAULT_GAMMAS,
    analyze_loss_samples,
    collect_loss_samples,
    write_analysis,
)


def _load_config(config_file: str, opts: Sequence[str]) -> Tuple[Any, bool]:
    """(cfg, is_lazy) for a yacs ``.yaml`` or LazyConfig ``.py`` file with overrides, and its
    COCO-json datasets registered (as ``train_net.py`` does)."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file!r} does not exist")
    if config_file.endswith(".py"):
        cfg = apply_lazy_overrides(LazyConfig.load(config_file), list(opts))
        register_lazy_datasets(cfg)
        return cfg, True
    cfg = get_cfg()
    add_retinafocal_config(cfg)
    merge_yacs_file(cfg, config_file)
    merge_yacs_overrides(cfg, list(opts))
    register_coco_json_datasets(cfg.DATASETS.COCO_JSON)
    cfg.freeze()
    return cfg, False


def analyze_model(config_file: str, opts: Sequence[str] = (), *, dataset: Optional[str] = None,
                  num_images: int = 200, gammas: Sequence[float] = DEFAULT_GAMMAS,
                  max_negatives: int = 10_000_000, seed: int = 0) -> Dict[str, Any]:  # fmt: skip
    """Build the model of a config (weights from ``MODEL.WEIGHTS`` / ``train.init_checkpoint``),
    run it over the first ``num_images`` images of ``dataset`` (default: the config's first
    test set) at the config's test size, and analyse the loss (:func:`analyze_loss_samples`).
    The result also names the config, weights and dataset."""
    cfg, lazy = _load_config(config_file, opts)
    if lazy:
        model = build_lazy_model(cfg)
        weights = cfg.train.init_checkpoint
        names = cfg.dataloader.test.dataset.names
        default_dataset = names if isinstance(names, str) else names[0]
        test_mapper = cfg.dataloader.test.mapper
        augmentations = [instantiate(a) for a in test_mapper.augmentations]
        image_format = test_mapper.image_format
    else:
        model = build_model(cfg)
        weights = cfg.MODEL.WEIGHTS
        if not cfg.DATASETS.TEST:
            raise ValueError(f"{config_file}: DATASETS.TEST is empty; pass --dataset")
        default_dataset = cfg.DATASETS.TEST[0]
        augmentations = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)]
        image_format = cfg.INPUT.FORMAT
    if not weights:
        raise ValueError(
            f"{config_file}: no weights to analyse; give MODEL.WEIGHTS (yacs) or "
            "train.init_checkpoint (LazyConfig)"
        )
    # The analysis is of these weights: they must fit the model exactly.
    load_inference_weights(
        model, weights, weights_key="train.init_checkpoint" if lazy else "MODEL.WEIGHTS"
    )
    dataset = dataset or default_dataset
    if dataset not in DatasetCatalog.list():
        raise KeyError(f"dataset {dataset!r} is not registered (e.g. through DATASETS.COCO_JSON)")
    ensure_dataset_files(dataset)
    dicts = DatasetCatalog.get(dataset)[:num_images]
    # is_train=True keeps the annotations; the test resize and no flip keep it an evaluation.
    mapper = DatasetMapper(is_train=True, augmentations=augmentations, image_format=image_format)
    inputs = (mapper(dict(d)) for d in dicts)
    samples = collect_loss_samples(model, inputs, num_images=len(dicts),
                                   max_negatives=max_negatives, seed=seed)  # fmt: skip
    analysis = analyze_loss_samples(samples, gammas)
    analysis.update(config_file=config_file, weights=weights, dataset=dataset)
    return analysis


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])  # fmt: skip
    p.add_argument("--config-file", required=True, help="yacs .yaml or LazyConfig .py")
    p.add_argument("--dataset", help="registered dataset (default: the config's first test set)")
    p.add_argument("--num-images", type=int, default=200, help="first N images of the dataset")
    # Strings here: nargs="+" also swallows config overrides given after the gammas, which
    # are split off below.
    p.add_argument("--gammas", nargs="+", default=[str(g) for g in DEFAULT_GAMMAS])
    p.add_argument("--max-negatives", type=int, default=10_000_000,
                   help="subsample negatives uniformly beyond this many (paper: ~1e7)")
    p.add_argument("--seed", type=int, default=0, help="seed of the negative subsampling")
    p.add_argument("--output", required=True, help="directory for loss_cdf.png/json")
    args, opts = p.parse_known_args(argv)
    gammas = []
    for i, token in enumerate(args.gammas):
        try:
            gammas.append(float(token))
        except ValueError:
            opts = args.gammas[i:] + opts
            break
    if not gammas:
        p.error(f"--gammas needs at least one number, got {args.gammas}")
    args.gammas = gammas
    unknown = [o for o in opts if o.startswith("--")]
    if unknown:
        p.error(f"unknown option(s) {unknown}; config overrides are KEY VALUE or key=value")
    if args.num_images < 1:
        p.error(f"--num-images must be >= 1, got {args.num_images}")
    if any(g < 0 for g in args.gammas):
        p.error(f"--gammas must be >= 0, got {args.gammas}")
    args.opts = opts
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[analyze_loss] %(message)s")
    analysis = analyze_model(
        args.config_file,
        args.opts,
        dataset=args.dataset,
        num_images=args.num_images,
        gammas=args.gammas,
        max_negatives=args.max_negatives,
        seed=args.seed,
    )
    paths = write_analysis(analysis, args.output, title=f"{analysis['weights']}")
    summary = {
        kind: {g: f"{100 * f:.3g}%" for g, f in analysis["half_loss_fraction"][kind].items()}
        for kind in ("positives", "negatives")
    }
    print(json.dumps({"half_loss_fraction": summary, **paths}, indent=1))
    return analysis


if __name__ == "__main__":
    main(sys.argv[1:])
