import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

import torch

import retinafocal  # noqa: F401
import config_loading as loading
from config_loading import ToolError
from detections import Detections, compare_detections

from .common import load_script, write_tiny_config

#: tools/export_model.py as a module (the script holds the export's logic).
E = load_script("export_model")


def _images(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) * 255 for h, w in sizes]


def tiny_model_with_candidates(tmp: str):
    """A narrow R18 model whose class bias is set so that about 1% of the (anchor, class) pairs
    of the first test image pass the 0.05 threshold: a few dozen detections, a number that
    changes from image to image and from level to level, as a traced constant would not."""
    cfg = loading.load_config(write_tiny_config(os.path.join(tmp, "tiny.yaml")))
    cfg.TEST.DETECTIONS_PER_IMAGE = 100
    torch.manual_seed(0)
    model = loading.build_model(cfg, random_weights=True)
    image = _images([(96, 128)], seed=1)[0]
    with torch.no_grad():
        model.head.cls_score.bias.zero_()
        images = model.preprocess_image([{"image": image}])
        features = model.backbone(images.tensor)
        logits, _ = model.head([features[f] for f in model.head_in_features])
        values = torch.cat([x.flatten() for x in logits])
        cut = torch.quantile(values, 0.99).item()
        model.head.cls_score.bias.fill_(math.log(0.05 / 0.95) - cut)
    return model, image


class TestCompareDetections(unittest.TestCase):
    def dets(self, boxes, scores, classes):
        return Detections(torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores),
                            torch.tensor(classes))

    def test_tied_scores_match_in_any_order(self):
        a = self.dets([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2]], [0.9, 0.9, 0.5], [1, 2, 0])
        b = self.dets([[5, 5, 20, 20], [0, 0, 10, 10], [1, 1, 2, 2]], [0.9, 0.9, 0.5], [2, 1, 0])
        self.assertIsNone(compare_detections(a, b))

    def test_differences_are_named(self):
        a = self.dets([[0, 0, 10, 10], [1, 1, 2, 2]], [0.9, 0.5], [1, 0])
        moved = self.dets([[0, 0, 10, 10.5], [1, 1, 2, 2]], [0.9, 0.5], [1, 0])
        self.assertIn("detection 0", compare_detections(a, moved))
        relabelled = self.dets([[0, 0, 10, 10], [1, 1, 2, 2]], [0.9, 0.5], [1, 2])
        self.assertIn("detection 1 (class 0", compare_detections(a, relabelled))
        rescored = self.dets([[0, 0, 10, 10], [1, 1, 2, 2]], [0.9, 0.49], [1, 0])
        self.assertIn("scores differ", compare_detections(a, rescored))
        self.assertEqual(compare_detections(a, self.dets([[0, 0, 1, 1]], [0.9], [1])),
                         "1 detections instead of 2")


class TestExport(unittest.TestCase):
    """Exported and eager models agree on images other than the one traced, of other sizes."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.model, cls.trace_image = tiny_model_with_candidates(cls.tmp.name)
        cls.test_images = _images([(96, 128), (128, 96), (64, 160)], seed=2)
        cls.references = [E.eager_detections(cls.model, x) for x in cls.test_images]
        counts = [len(r) for r in cls.references]
        # Non-trivial and varying: a traced constant count would not pass.
        assert all(c > 0 for c in counts) and len(set(counts)) > 1, counts

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_torchscript_round_trip(self):
        path = E.export_torchscript(self.model, self.trace_image,
                                    os.path.join(self.tmp.name, "model.ts"))
        loaded = torch.jit.load(path)
        for image, reference in zip(self.test_images, self.references):
            self.assertIsNone(compare_detections(reference, E.run_torchscript(loaded, image)))

    def test_onnx_round_trip(self):
        import onnxruntime

        path = E.export_onnx(self.model, self.trace_image,
                             os.path.join(self.tmp.name, "model.onnx"))
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.assertEqual([o.name for o in session.get_outputs()], list(E.OUTPUT_NAMES))
        for image, reference in zip(self.test_images, self.references):
            self.assertIsNone(compare_detections(reference, E.run_onnx(session, image)))

    def test_scripted_round_trip(self):
        path = E.export_torchscript(self.model, self.trace_image,
                                    os.path.join(self.tmp.name, "scripted.ts"), method="scripting")
        loaded = torch.jit.load(path)
        for image, reference in zip(self.test_images, self.references):
            self.assertIsNone(compare_detections(reference, E.run_torchscript(loaded, image)))
        # The file stands alone: a process with torch and torchvision (whose nms it calls), but
        # without detectron2 or retinafocal, runs it.
        image_file = os.path.join(self.tmp.name, "image.pt")
        torch.save(self.test_images[0], image_file)
        code = (
            "import sys, torch, torchvision; m = torch.jit.load(sys.argv[1]); "
            "assert 'detectron2' not in sys.modules; "
            "print(len(m(torch.load(sys.argv[2]))[0]))"
        )
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        out = subprocess.run([sys.executable, "-c", code, path, image_file], env=env,
                             capture_output=True, text=True, check=True)
        self.assertEqual(int(out.stdout.strip()), len(self.references[0]))

    def test_rejects_batched_input(self):
        with self.assertRaisesRegex(ToolError, r"\(3, H, W\)"):
            E.eager_detections(self.model, torch.zeros(1, 3, 32, 32))


class TestExportScript(unittest.TestCase):
    def export(self, tmp, *flags):
        """Run the script on a tiny config into ``tmp``; returns (config, output folder,
        export_info.json) after checking that it wrote TorchScript and the info only."""
        config = write_tiny_config(os.path.join(tmp, "tiny.yaml"), prior_prob=0.6)
        out = os.path.join(tmp, "export")
        code = E.main(["--config-file", config, "--output", out, "--size", "64", "80",
                       "--random-weights", *flags])  # fmt: skip
        self.assertEqual(code, 0)
        self.assertEqual(sorted(os.listdir(out)), ["export_info.json", "model.ts"])
        with open(os.path.join(out, "export_info.json")) as f:
            return config, out, json.load(f)

    def test_writes_export_and_info(self):
        with tempfile.TemporaryDirectory() as tmp:
            _, _, info = self.export(tmp, "--format", "torchscript")
            self.assertEqual(info["input"]["channel_order"], "BGR")
            self.assertEqual(info["input"]["resize_before"]["max_size"], 256)
            self.assertEqual(info["sample_detections"], 5)
            self.assertEqual(list(info["outputs"]), list(E.OUTPUT_NAMES))

    def test_scripting_writes_torchscript_only(self):
        with tempfile.TemporaryDirectory() as tmp:
            config, out, info = self.export(tmp, "--export-method", "scripting")
            self.assertEqual(info["export_method"], "scripting")
            self.assertEqual(info["sample_detections"], 5)
            with self.assertRaisesRegex(ToolError, "scripting exports TorchScript only"):
                E.export_from_config(config_file=config, opts=[], output_dir=out,
                                     formats=["onnx"], export_method="scripting")

    def test_unknown_format_is_an_error(self):
        with self.assertRaisesRegex(ToolError, "unknown export format"):
            E.export_from_config(config_file="x.yaml", opts=[], output_dir="/nonexistent",
                                 formats=["caffe2"])


if __name__ == "__main__":
    unittest.main()
