#!/usr/bin/env python
"""Train or evaluate retinafocal's RetinaNet.

    python train_net.py --config-file configs/Embedded/retinanet_R18_FPN_shapes.yaml
    python train_net.py --config-file <yaml> --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file configs/COCO/retinanet_R50_FPN_1x.py --num-gpus 8 \
        train.max_iter=1000
    python train_net.py --config-file <config> --resume

``.yaml`` configs take ``KEY VALUE`` overrides, ``.py`` (LazyConfig) configs ``key=value``.
Every run writes ``<output dir>/results.json`` (schema in :mod:`retinafocal.engine.results`).
Weights files are read without running their code (``--trust-weights-file`` opts out); an
evaluation needs weights that fit the model (``--random-weights`` evaluates a random one).
"""
import retinafocal  # noqa: F401  (first: makes detectron2 importable and registers our parts)
from detectron2.config import LazyConfig, get_cfg
from detectron2.engine import default_argument_parser, launch
from retinafocal import add_retinafocal_config
from retinafocal.checkpoint import load_inference_weights
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
    discard_results,
    evaluation_results,
    lazy_test,
    lazy_train,
    leave_process_group,
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


def argument_parser():
    """detectron2's ``default_argument_parser`` plus retinafocal's weights options."""
    parser = default_argument_parser()
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="with --eval-only and no weights: evaluate a random model on purpose",
    )
    parser.add_argument(
        "--trust-weights-file",
        action="store_true",
        help="read the weights file with full unpickling, which runs any code it holds: only "
        "for files from a source you trust",
    )
    return parser


def main(args):
    if args.random_weights and not args.eval_only:
        raise ValueError(
            "--random-weights applies to --eval-only; training from scratch needs no flag "
            "(empty MODEL.WEIGHTS / train.init_checkpoint)"
        )
    cfg = setup(args)
    lazy = args.config_file.endswith(".py")
    if args.eval_only:
        model = build_lazy_model(cfg) if lazy else Trainer.build_model(cfg)
        output_dir = cfg.train.output_dir if lazy else cfg.OUTPUT_DIR
        discard_results(output_dir)  # an evaluation that crashes leaves no earlier results
        # With --resume: the last checkpoint of the output directory, else the given weights.
        load_inference_weights(
            model,
            cfg.train.init_checkpoint if lazy else cfg.MODEL.WEIGHTS,
            weights_key="train.init_checkpoint" if lazy else "MODEL.WEIGHTS",
            save_dir=output_dir,
            resume=args.resume,
            random_weights=args.random_weights,
            trust_weights_file=args.trust_weights_file,
        )
        results = lazy_test(cfg, model) if lazy else Trainer.test(cfg, model)
        write_results(output_dir, evaluation_results(results))
    # Training writes results.json itself (Trainer.train, lazy_train).
    elif lazy:
        results = lazy_train(cfg, resume=args.resume, trust_weights_file=args.trust_weights_file)
    else:
        trainer = Trainer(cfg, trust_weights_file=args.trust_weights_file)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
    log_bbox_ap(results)
    leave_process_group()  # every rank exits after the others are done (several processes)
    return results


if __name__ == "__main__":
    args = argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
