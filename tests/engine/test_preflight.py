"""Checks before work: the batch size, and the model's number of classes against its datasets'
(with the opt-in that takes it from them), for yacs configs and LazyConfigs."""
import logging
import os
import shutil
import tempfile
import unittest

import retinafocal  # noqa: F401  (compat first, before detectron2)
from detectron2.config import LazyConfig, get_cfg
from retinafocal import add_retinafocal_config
from retinafocal.data import NumClassesError, register_coco_dataset
from retinafocal.engine import (
    check_batch_size,
    check_model_num_classes,
    default_setup,
    resolve_num_classes,
)

from ..reliability import scenarios
from .common import CONFIG_DIR, train_net


class TestBatchSize(unittest.TestCase):
    def test_hand_picked(self):
        check_batch_size(4, "K", world_size=2)
        check_batch_size(1, "K", world_size=1)
        cases = [
            (0, 1, "K is 0: it is the number of images per training iteration, summed over all "
                   "1 process(es), so it must be a positive integer (e.g. 2)."),
            (-4, 2, "must be a positive integer (e.g. 4)"),
            (True, 1, "must be a positive integer"),
            ("8", 1, "K is '8'"),
            (6, 4, "summed over all 4 process(es), so it must be a multiple of 4 (e.g. 8)."),
            (3, 4, "must be a multiple of 4 (e.g. 4)."),
        ]  # fmt: skip
        for total, world, expected in cases:
            with self.subTest(total=total, world=world):
                with self.assertRaises(ValueError) as ctx:
                    check_batch_size(total, "K", world_size=world)
                self.assertIn(expected, str(ctx.exception))


class TestNumClasses(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="rf_preflight_")
        cls.three = scenarios.categories_1_5_90(os.path.join(cls.root, "three"))
        cls.two = scenarios.good(os.path.join(cls.root, "two"))
        for name, json_file, image_root in (cls.three, cls.two):
            register_coco_dataset(name, json_file, image_root)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def yacs(self, num_classes: int, from_dataset: bool, train=None):
        cfg = get_cfg()
        add_retinafocal_config(cfg)
        cfg.MODEL.META_ARCHITECTURE = "FocalRetinaNet"
        cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
        cfg.MODEL.RETINAFOCAL.NUM_CLASSES_FROM_DATASET = from_dataset
        cfg.DATASETS.TRAIN = tuple(train or (self.three[0],))
        cfg.freeze()
        return cfg

    def test_yacs_opt_in(self):
        cfg = self.yacs(80, True)
        resolve_num_classes(cfg)
        self.assertEqual(cfg.MODEL.RETINANET.NUM_CLASSES, 3)
        self.assertTrue(cfg.is_frozen())
        check_model_num_classes(cfg, [self.three[0]])
        cfg = self.yacs(80, False)
        resolve_num_classes(cfg)
        self.assertEqual(cfg.MODEL.RETINANET.NUM_CLASSES, 80)
        with self.assertRaisesRegex(NumClassesError, "differ"):
            resolve_num_classes(self.yacs(80, True, train=(self.three[0], self.two[0])))

    def test_lazy_opt_in(self):
        cfg = LazyConfig.load(os.path.join(CONFIG_DIR, "Embedded", "retinanet_R18_FPN_shapes.py"))
        self.assertFalse(cfg.datasets.num_classes_from_dataset)
        cfg.dataloader.train.dataset.names = self.three[0]
        resolve_num_classes(cfg)
        self.assertEqual(cfg.model.num_classes, 5)
        cfg.datasets.num_classes_from_dataset = True
        resolve_num_classes(cfg)
        self.assertEqual(cfg.model.num_classes, 3)
        self.assertEqual(cfg.model.head.num_classes, 3)  # an interpolation of model.num_classes

    def test_mismatch_both_ways_names_both_numbers_and_the_key(self):
        with self.assertRaises(NumClassesError) as ctx:
            check_model_num_classes(self.yacs(5, False), [self.three[0], self.two[0]])
        message = str(ctx.exception)
        self.assertIn("MODEL.RETINANET.NUM_CLASSES is 5", message)
        self.assertIn(f"dataset '{self.three[0]}' has 3 classes (categories): the model would "
                      "predict 2 class(es) it does not have", message)  # fmt: skip
        self.assertIn(f"dataset '{self.two[0]}' has 2 classes", message)
        self.assertIn("Set MODEL.RETINANET.NUM_CLASSES to 2, 3", message)
        cfg = LazyConfig.load(os.path.join(CONFIG_DIR, "Embedded", "retinanet_R18_FPN_shapes.py"))
        with self.assertRaises(NumClassesError) as ctx:
            check_model_num_classes(cfg, [self.two[0]])
        self.assertIn("model.num_classes is 5", str(ctx.exception))
        self.assertIn("or set datasets.num_classes_from_dataset True", str(ctx.exception))

    def test_the_saved_config_has_the_resolved_number(self):
        # detectron2's default_setup logs the config and saves it as <output dir>/config.yaml.
        cfg = self.yacs(80, True)
        cfg.defrost()
        cfg.OUTPUT_DIR = os.path.join(self.root, "out")
        cfg.freeze()
        args = train_net().argument_parser().parse_args([])  # no config file to log
        loggers = [logging.getLogger(n) for n in ("detectron2", "fvcore", "retinafocal")]
        before = {logger: list(logger.handlers) for logger in loggers}
        try:
            default_setup(cfg, args)
        finally:  # the handlers default_setup adds for this output directory
            for logger in loggers:
                for handler in [h for h in logger.handlers if h not in before[logger]]:
                    logger.removeHandler(handler)
                    handler.close()
        self.assertEqual(cfg.MODEL.RETINANET.NUM_CLASSES, 3)
        saved = get_cfg()
        add_retinafocal_config(saved)
        saved.merge_from_file(os.path.join(cfg.OUTPUT_DIR, "config.yaml"))
        self.assertEqual(saved.MODEL.RETINANET.NUM_CLASSES, 3)

    def test_other_models_are_not_checked(self):
        cfg = self.yacs(5, True)
        cfg.defrost()
        cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
        check_model_num_classes(cfg, [self.three[0]])
        resolve_num_classes(cfg)
        self.assertEqual(cfg.MODEL.RETINANET.NUM_CLASSES, 5)


if __name__ == "__main__":
    unittest.main()
