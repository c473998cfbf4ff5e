"""Both forms of every recipe describe the same run.

Each recipe in configs/ that has a yacs ``.yaml`` and a LazyConfig ``.py`` form is built both
ways, as ``train_net.py`` would build it (model, optimizer, LR schedule, data loaders), and the
two descriptions of :mod:`.recipe_forms` must be equal except for the keys it allows to differ.
New pairs are found by :func:`recipe_pairs` and tested without any change here.
"""
import copy
import os
import unittest

from detectron2.config import LazyConfig

from retinafocal.losses import FocalLoss

from .common import CONFIG_DIR
from .recipe_forms import (
    ALLOWED_TO_DIFFER,
    describe_lazy,
    describe_pair,
    describe_yacs,
    differences,
    load_lazy,
    load_yacs,
    recipe_pairs,
    schedule_iterations,
)

EMBEDDED = "Embedded/retinanet_R18_FPN_shapes"

#: Values that recipes must keep, by stem prefix: the box loss chosen per recipe (Detectron's
#: 0.11 for COCO; the embedded recipe keeps the 0.1 its seeded `make train` AP was measured
#: with) and the memory layout (NCHW: results bit-identical to detectron2's RetinaNet).
PINNED = {
    "COCO/": {"model.smooth_l1_beta": 0.11, "model.memory_format": "NHWC"},
    "Embedded/": {"model.smooth_l1_beta": 0.1, "model.memory_format": "NCHW"},
}


class TestRecipeForms(unittest.TestCase):
    """One test per recipe with both forms (added below)."""

    def _check_pair(self, stem: str) -> None:
        yacs, lazy = describe_pair(stem)
        diffs = differences(yacs, lazy)
        if diffs:
            shown = "\n".join(diffs[:40]) + ("\n..." if len(diffs) > 40 else "")
            self.fail(f"{stem}.yaml and {stem}.py differ in {len(diffs)} place(s):\n{shown}")
        for prefix, pinned in PINNED.items():
            if stem.startswith(prefix):
                for key, value in pinned.items():
                    self.assertEqual(yacs[key], value, f"{stem}: {key}")

    def test_recipes_are_found(self):
        stems = recipe_pairs()
        expected = (EMBEDDED, "COCO/retinanet_R50_FPN_1x", "COCO/scales/retinanet_R50_FPN_1x_400")
        for stem in expected:
            self.assertIn(stem, stems)
        self.assertTrue(all(any(s.startswith(p) for p in PINNED) for s in stems), stems)

    def test_every_recipe_has_both_forms(self):
        """A recipe that exists in one form only would escape the comparison. Bases (Base-*.yaml)
        and the LazyConfig fragments in configs/common are not recipes."""
        lonely = []
        for dirpath, _, files in os.walk(CONFIG_DIR):
            rel_dir = os.path.relpath(dirpath, CONFIG_DIR)
            if rel_dir.split(os.sep)[0] == "common":
                continue
            for name in files:
                stem, ext = os.path.splitext(name)
                twin = {".yaml": ".py", ".py": ".yaml"}.get(ext)
                if twin and not name.startswith("Base-") and stem + twin not in files:
                    lonely.append(os.path.normpath(os.path.join(rel_dir, name)))
        self.assertEqual(lonely, [], "recipes with one form only")


def _add_pair_tests() -> None:
    for stem in recipe_pairs():
        name = "test_" + stem.replace(os.sep, "__").replace("-", "_").replace(".", "_")
        setattr(TestRecipeForms, name, lambda self, s=stem: self._check_pair(s))


_add_pair_tests()


class _RenamedFocalLoss(FocalLoss):
    """The focal loss under another class: a loss of another type with the same arguments."""


def _swap_loss_class(cfg) -> None:
    cfg.model.classification_loss._target_ = _RenamedFocalLoss


_CONV = "backbone.bottom_up.stem.conv1.weight"
_NORM = "backbone.bottom_up.stem.conv1.norm.weight"

#: Changes to the .py form of the embedded recipe, one per compared item, and the key(s) under
#: which the comparison must report them: proof that each item is compared at all. A bare
#: override must be reported under its own key.
PERTURBATIONS = {
    "box loss beta": "model.smooth_l1_beta=0.0",
    "box loss type": "model.box_reg_loss_type=giou",
    "box-transform weights": "model.box2box_transform.weights=[1.0,1.0,2.0,2.0]",
    "anchor sizes": ("model.anchor_generator.sizes=[[12],[24],[48]]", "buffer anchor_generator"),
    "anchor ratios": ("model.anchor_generator.aspect_ratios=[1.0]", "buffer anchor_generator"),
    "anchor strides": "model.anchor_generator.strides=[8,16,64]",
    "anchor offset": "model.anchor_generator.offset=0.5",
    "matcher thresholds": "model.anchor_matcher.thresholds=[0.3,0.5]",
    "matcher labels": "model.anchor_matcher.labels=[0,0,1]",
    "low-quality matches": "model.anchor_matcher.allow_low_quality_matches=false",
    "loss type": (_swap_loss_class, "type classification_loss"),
    "focal gamma": (
        "model.classification_loss.gamma=1.0",
        "model.classification_loss.runner.terms.gamma",
    ),
    "focal alpha": (
        "model.classification_loss.alpha=0.5",
        "model.classification_loss.runner.terms.alpha",
    ),
    "score threshold": "model.test_score_thresh=0.1",
    "top-k": "model.test_topk_candidates=500",
    "NMS": "model.test_nms_thresh=0.6",
    "detections per image": "model.max_detections_per_image=50",
    "classes": "model.num_classes=6",
    "head convs": ("model.head.conv_dims=[64,64,64]", "param head.cls_subnet"),
    "head norm": ("model.head.norm=GN", "type head.cls_subnet"),
    "prior probability": ("model.head.prior_prob=0.02", "init head.cls_score.bias"),
    "frozen stages": (
        "model.backbone.bottom_up.freeze_at=2",
        "param backbone.bottom_up.stem.conv1.weight.requires_grad",
    ),
    "backbone depth": ("model.backbone.bottom_up.stages.depth=34", "state_dict"),
    "pixel mean": ("model.pixel_mean=[0.0,0.0,0.0]", "buffer pixel_mean"),
    "pixel std": ("model.pixel_std=[1.0,1.0,1.0]", "buffer pixel_std"),
    "memory layout": (
        "model.memory_format=NHWC",
        ["model.memory_format", "param backbone.bottom_up.stem.conv1.weight.stride"],
    ),
    "precision": ("model.precision=bf16", "model.precision"),
    "frozen BN folding": ("model.fold_frozen_bn=true", "model.fold_frozen_bn"),
    "LR": ("optimizer.lr=0.01", f"optimizer group of {_CONV}.lr"),
    "momentum": ("optimizer.momentum=0.8", f"optimizer group of {_CONV}.momentum"),
    "weight decay": ("optimizer.weight_decay=0.0005", f"optimizer group of {_CONV}.weight_decay"),
    "norm weight decay": (
        "optimizer.params.weight_decay_norm=0.0001",
        f"optimizer group of {_NORM}.weight_decay",
    ),
    "bias weight decay": (
        "optimizer.params.weight_decay_bias=0.0",
        "optimizer group of head.cls_score.bias.weight_decay",
    ),
    "warm-up": ("lr_multiplier.warmup_length=0.2", "schedule lr@"),
    "schedule shape": ("lr_multiplier.scheduler.end_value=0.1", "schedule lr@"),
    # Changes that land on distinct keys are made together, to save builds.
    "data": (
        [
            "dataloader.train.total_batch_size=8",
            "dataloader.train.mapper.augmentations.0.short_edge_length=[96,128]",
            "dataloader.train.mapper.augmentations.1.horizontal=false",
            "dataloader.train.mapper.augmentations.1.vertical=true",
            "dataloader.train.dataset.names=shapes_val",
            "dataloader.train.dataset.filter_empty=false",
            "dataloader.test.mapper.augmentations.0.max_size=256",
            "dataloader.test.dataset.names=shapes_train",
        ],
        [
            "data.train total_batch_size",
            "data.train mapper.augmentations.augs[0].short_edge_length",
            "data.train mapper.augmentations.augs[1].horizontal",
            "data.train datasets",
            "data.train images",
            "data.test[0] mapper.augmentations.augs[0].max_size",
            "data.test[0] datasets",
        ],
    ),
    "run settings": (
        [
            "train.max_iter=900",
            "train.init_checkpoint=weights.pkl",
            "train.checkpointer.period=100",
            "train.checkpointer.max_to_keep=2",
            "train.eval_period=100",
            "train.seed=1",
            "train.amp.enabled=true",
        ],
        [
            "run SOLVER.MAX_ITER",
            "run MODEL.WEIGHTS",
            "run SOLVER.CHECKPOINT_PERIOD",
            "run checkpoints all kept",
            "run TEST.EVAL_PERIOD",
            "run SEED",
            "run SOLVER.AMP.ENABLED",
        ],
    ),
}


class TestComparisonCatchesChanges(unittest.TestCase):
    """The comparison itself: a change to any compared item of one form is reported."""

    @classmethod
    def setUpClass(cls):
        cls.yacs_cfg = load_yacs(os.path.join(CONFIG_DIR, EMBEDDED + ".yaml"))
        cls.iterations = schedule_iterations(cls.yacs_cfg, cls.yacs_cfg.SOLVER.MAX_ITER)
        cls.yacs = describe_yacs(cls.yacs_cfg, cls.iterations)
        cls.lazy_cfg = load_lazy(os.path.join(CONFIG_DIR, EMBEDDED + ".py"))

    def _lazy(self, change=None):
        """The description of the embedded .py form after ``change``: a function of the config,
        an override (``key=value``) or a list of them."""
        cfg = copy.deepcopy(self.lazy_cfg)
        if callable(change):
            change(cfg)
        elif change is not None:
            cfg = LazyConfig.apply_overrides(cfg, [change] if isinstance(change, str) else change)
        return describe_lazy(cfg, self.iterations)

    def test_unchanged_forms_agree(self):
        self.assertEqual(differences(self.yacs, self._lazy()), [])

    def test_each_change_is_reported(self):
        for item, entry in PERTURBATIONS.items():
            change, keys = (entry, entry.split("=")[0]) if isinstance(entry, str) else entry
            with self.subTest(item):
                diffs = differences(self.yacs, self._lazy(change))
                for key in [keys] if isinstance(keys, str) else keys:
                    self.assertTrue(any(d.startswith(key) for d in diffs), f"{key!r}: {diffs}")

    def test_allowed_differences_are_not_reported(self):
        for key in ALLOWED_TO_DIFFER:
            self.assertIn(key, self.yacs)  # the allowance names a key that exists
        lazy = self._lazy("train.output_dir=elsewhere")
        self.assertEqual(lazy["run OUTPUT_DIR"], "elsewhere")
        self.assertEqual(differences(self.yacs, lazy), [])

    def test_float_rounding_is_not_a_difference(self):
        # yacs builds the LR steps as 0.1 ** k; a LazyConfig writes 0.01.
        self.assertEqual(differences({"x": 0.1**2}, {"x": 0.01}), [])
        self.assertEqual(len(differences({"x": 0.1}, {"x": 0.11})), 1)
        self.assertEqual(len(differences({"x": True}, {"x": 1})), 1)


if __name__ == "__main__":
    unittest.main()
