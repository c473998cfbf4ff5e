#!/usr/bin/env python
"""Train or evaluate retinafocal's RetinaNet.

    python train_net.py --config-file configs/Embedded/retinanet_R18_FPN_shapes.yaml
    python train_net.py --config-file <yaml> --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file configs/COCO/retinanet_R50_FPN_1x.py --num-gpus 8 \
        train.max_iter=1000
    python train_net.py --config-file <config> --resume

``.yaml`` configs take ``KEY VALUE`` overrides, ``.py`` (LazyConfig) configs ``key=value``.
Every run writes ``<output dir>/results.json`` (schema in :mod:`retinafocal.engine.results`).
"""
import retinafocal  # noqa: F401  (first: makes detectron2 importable and registers our parts)
from detectron2.config import LazyConfig, get_cfg
from detectron2.engine import default_argument_parser, launch
from retinafocal import add_retinafocal_config
from retinafocal.checkpoint import AtomicDetectionCheckpointer
from retinafocal.config_overrides import (
    apply_lazy_overrides,
    merge_yacs_file,
    merge_yacs_overrides,
)
from retinafocal.data import register_coco_json_datasets
from retinafocal.engine import (
    Trainer,
    build_lazy_model,
    default_setup,
    evaluation_results,
    lazy_test,
    lazy_train,
    log_bbox_ap,
    register_lazy_datasets,
    write_results,
)


def setup(args):
    """Load the config (yacs or LazyConfig), apply overrides, register its datasets."""
    if args.config_file.endswith(".py"):
        cfg = apply_lazy_overrides(LazyConfig.load(args.config_file), args.opts)
        register_lazy_datasets(cfg)
    else:
        cfg = get_cfg()
        add_retinafocal_config(cfg)
        merge_yacs_file(cfg, args.config_file)
        merge_yacs_overrides(cfg, args.opts)
        register_coco_json_datasets(cfg.DATASETS.COCO_JSON)
        cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    lazy = args.config_file.endswith(".py")
    if args.eval_only:
        model = build_lazy_model(cfg) if lazy else Trainer.build_model(cfg)
        weights = cfg.train.init_checkpoint if lazy else cfg.MODEL.WEIGHTS
        output_dir = cfg.train.output_dir if lazy else cfg.OUTPUT_DIR
        # With --resume: the last checkpoint of the output directory, else the given weights.
        AtomicDetectionCheckpointer(model, output_dir).resume_or_load(weights, resume=args.resume)
        results = lazy_test(cfg, model) if lazy else Trainer.test(cfg, model)
        write_results(output_dir, evaluation_results(results))
    # Training writes results.json itself (Trainer.train, lazy_train).
    elif lazy:
        results = lazy_train(cfg, resume=args.resume)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
    log_bbox_ap(results)
    return results


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
