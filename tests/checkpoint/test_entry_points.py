"""Every way a user gives weights (training init, ``--eval-only``, the demo, export) refuses
files that would run code, weights that do not fit the model, and missing weights."""
import contextlib
import io
import os
import shutil
import tempfile
import unittest

import numpy as np
import torch

import retinafocal  # noqa: F401  (compat before detectron2)
from detectron2.modeling import build_model
from retinafocal.checkpoint import AtomicDetectionCheckpointer
from retinafocal.data import register_coco_json_datasets
from retinafocal.engine import Trainer
from retinafocal.weights_file import TorchScriptWeightsError, UnsafeWeightsFileError
from retinafocal.weights_fit import MissingWeightsError, WeightsMismatchError

from ..engine.common import (
    CONFIG_DIR,
    EMBEDDED_YAML,
    embedded_yacs_cfg,
    lazy_tiny_overrides,
    run_train_net,
    tiny_shapes,
    yacs_tiny_overrides,
)
from ..tools.common import load_script, write_images, write_tiny_config
import config_loading as loading  # noqa: E402  (tools/, on sys.path through tests.tools)
from .files import malicious_pkl, malicious_pth, marker_path, zoo_pkl

LAZY = os.path.join(CONFIG_DIR, "Embedded", "retinanet_R18_FPN_shapes.py")
demo = load_script("demo")
export = load_script("export_model")


def save_model(cfg, folder, name):
    """The weights of ``cfg``'s model (random init), saved as ``<folder>/<name>.pth``."""
    AtomicDetectionCheckpointer(build_model(cfg), folder).save(name)
    return os.path.join(folder, f"{name}.pth")


class _Files(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="rf_entry_")
        cls.marker = marker_path(cls.tmp)
        cls.evil = [
            malicious_pkl(os.path.join(cls.tmp, "evil.pkl"), cls.marker),
            malicious_pth(os.path.join(cls.tmp, "evil.pth"), cls.marker),
        ]

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def assert_refused(self, path, run):
        with self.assertRaises(UnsafeWeightsFileError) as ctx:
            run()
        self.assertIn(path, str(ctx.exception))
        self.assertEqual(ctx.exception.global_name, "io.open")
        self.assertFalse(os.path.exists(self.marker), "the weights file's code ran")


class TestTrainNet(_Files):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.data = tiny_shapes(os.path.join(cls.tmp, "data"))
        cls.opts = yacs_tiny_overrides(cls.data, os.path.join(cls.tmp, "out"))
        cls.fits = save_model(embedded_yacs_cfg(cls.opts), cls.tmp, "fits")
        classes3 = embedded_yacs_cfg(cls.opts + ["MODEL.RETINANET.NUM_CLASSES", "3"])
        cls.classes3 = save_model(classes3, cls.tmp, "classes3")
        r34 = embedded_yacs_cfg(cls.opts + ["MODEL.RESNETS.DEPTH", "34"])
        cls.r34 = save_model(r34, cls.tmp, "r34")

    def run_yacs(self, *args, weights=""):
        args = ["--config-file", EMBEDDED_YAML, *args, *self.opts, "MODEL.WEIGHTS", weights]
        return run_train_net(args)

    def test_malicious_initial_weights(self):
        for path in self.evil:
            with self.subTest(path=path):
                self.assert_refused(path, lambda: self.run_yacs(weights=path))
                lazy = lazy_tiny_overrides(self.data, os.path.join(self.tmp, "lazy"))
                self.assert_refused(path, lambda: run_train_net(
                    ["--config-file", LAZY, *lazy, f"train.init_checkpoint='{path}'"]))

    def test_malicious_weights_to_evaluate(self):
        for path in self.evil:
            with self.subTest(path=path):
                self.assert_refused(path, lambda: self.run_yacs("--eval-only", weights=path))

    def test_mismatched_weights_fail_the_evaluation(self):
        with self.assertRaises(WeightsMismatchError) as ctx:
            self.run_yacs("--eval-only", weights=self.classes3)
        message = str(ctx.exception)
        self.assertIn(self.classes3, message)
        # 9 anchors x 3 classes in the file, x 5 in the model (64 channels).
        self.assertIn("head.cls_score.weight (27, 64, 3, 3) in the file, (45, 64, 3, 3) in the "
                      "model", message)
        with self.assertRaisesRegex(WeightsMismatchError, r"model does not have: .*res2\.2\."):
            self.run_yacs("--eval-only", weights=self.r34)

    def test_missing_weights_need_random_weights(self):
        with self.assertRaises(MissingWeightsError) as ctx:
            self.run_yacs("--eval-only")
        self.assertIn("MODEL.WEIGHTS is empty", str(ctx.exception))
        self.assertIn("--random-weights", str(ctx.exception))
        results = self.run_yacs("--eval-only", "--random-weights")
        self.assertIn("AP", results["bbox"])
        with self.assertRaisesRegex(ValueError, "--random-weights applies to --eval-only"):
            self.run_yacs("--random-weights")

    def test_torchscript_file_is_named(self):
        path = os.path.join(self.tmp, "model.ts")
        torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)).save(path)
        with self.assertRaisesRegex(TorchScriptWeightsError, "is a TorchScript archive"):
            self.run_yacs("--eval-only", weights=path)

    def test_initial_backbone_weights_still_load(self):
        # An ImageNet backbone as detectron2's converters write it: no FPN, no head.
        prefix = "backbone.bottom_up."
        rng = np.random.default_rng(0)
        reference = torch.load(self.fits, weights_only=True)["model"]
        weights = {k[len(prefix):]: rng.standard_normal(v.shape).astype(np.float32)
                   for k, v in reference.items()
                   if k.startswith(prefix) and v.dtype == torch.float32}
        path = zoo_pkl(os.path.join(self.tmp, "backbone.pkl"), weights, protocol=4,
                       matching_heuristics=True)
        cfg = embedded_yacs_cfg(self.opts + ["MODEL.WEIGHTS", path])
        register_coco_json_datasets(cfg.DATASETS.COCO_JSON)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        loaded = trainer.model.state_dict()
        np.testing.assert_array_equal(loaded[prefix + "res3.0.conv1.weight"].numpy(),
                                      weights["res3.0.conv1.weight"])


class TestTools(_Files):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.config = write_tiny_config(os.path.join(cls.tmp, "tiny.yaml"))
        cls.image = write_images(os.path.join(cls.tmp, "images"), ["im.png"])[0]
        model = loading.build_model(loading.load_config(cls.config), load_weights=False)
        cls.fits = os.path.join(cls.tmp, "tiny.pth")
        AtomicDetectionCheckpointer(model, cls.tmp).save("tiny")

    def run_demo(self, *opts, **kwargs):
        out = tempfile.mkdtemp(dir=self.tmp)
        return demo.run_demo(config_file=self.config, opts=list(opts), input_path=self.image,
                             output_dir=out, progress=False, **kwargs)

    def run_export(self, *opts, **kwargs):
        out = tempfile.mkdtemp(dir=self.tmp)
        return export.export_from_config(config_file=self.config, opts=list(opts), output_dir=out,
                                         formats=["torchscript"], height=64, width=80, **kwargs)

    def main(self, script, *argv):
        """(exit status, stderr) of a tool's main."""
        err = io.StringIO()
        out = tempfile.mkdtemp(dir=self.tmp)
        with contextlib.redirect_stderr(err):
            code = script.main(["--config-file", self.config, "--output", out, *argv])
        return code, err.getvalue()

    def test_malicious_weights(self):
        for path in self.evil:
            with self.subTest(path=path):
                self.assert_refused(path, lambda: self.run_demo("MODEL.WEIGHTS", path))
                self.assert_refused(path, lambda: self.run_export("MODEL.WEIGHTS", path))
                for script, argv in ((demo, ["--input", self.image]), (export, [])):
                    code, err = self.main(script, *argv, "--opts", "MODEL.WEIGHTS", path)
                    self.assertEqual(code, 2)
                    self.assertIn(f"error: Refusing to load {path}", err)
                    self.assertNotIn("Traceback", err)
                self.assertFalse(os.path.exists(self.marker))

    def test_mismatched_weights(self):
        for opts, expected in (
            (["MODEL.RETINANET.NUM_CLASSES", "2"], "head.cls_score.weight (27, 32, 3, 3) in the "
                                                   "file, (18, 32, 3, 3) in the model"),
            (["MODEL.RESNETS.DEPTH", "34"], "missing from the file: backbone.bottom_up.res2.2."),
        ):
            with self.subTest(opts=opts):
                weights = ["MODEL.WEIGHTS", self.fits, *opts]
                with self.assertRaises(WeightsMismatchError) as ctx:
                    self.run_demo(*weights)
                self.assertIn(expected, str(ctx.exception))
                with self.assertRaisesRegex(WeightsMismatchError, "does not fit the model"):
                    self.run_export(*weights)
        # The same weights with their own config run.
        self.assertEqual(self.run_demo("MODEL.WEIGHTS", self.fits)["failures"], [])

    def test_missing_weights(self):
        for script, argv in ((demo, ["--input", self.image]), (export, [])):
            code, err = self.main(script, *argv)
            self.assertEqual(code, 2)
            self.assertIn("MODEL.WEIGHTS is empty", err)
            self.assertIn("--random-weights", err)
            self.assertNotIn("Traceback", err)
        self.assertEqual(self.main(demo, "--input", self.image, "--random-weights")[0], 0)

    def test_export_without_detections_fails_its_check(self):
        # Prior 0.01 and random weights: every score is near 0.01, far below 0.9.
        threshold = ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.9"]
        result = self.run_export(*threshold, random_weights=True)
        self.assertEqual(result["info"]["sample_detections"], 0)
        self.assertIn("detects nothing on the sample image", result["checks"]["torchscript"])
        code, _ = self.main(export, "--size", "64", "80", "--format", "torchscript",
                            "--random-weights", "--opts", *threshold)
        self.assertEqual(code, 1)  # tests/tools/test_export.py: 0 when there are detections


if __name__ == "__main__":
    unittest.main()
