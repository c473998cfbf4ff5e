import contextlib
import io
import json
import math
import os
import tempfile
import unittest

import numpy as np
import torch

import retinafocal  # noqa: F401
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data.catalog import Metadata
from detectron2.structures import Boxes, Instances
import config_loading as loading
from coco_results import category_id_map, instances_to_coco
from config_loading import ToolError

from .common import (
    CATEGORY_IDS,
    REPO,
    load_script,
    random_image,
    write_images,
    write_tiny_config,
    write_tiny_dataset,
)

#: tools/demo.py as a module (the script holds the demo's logic).
demo = load_script("demo")


class TestDemoHelpers(unittest.TestCase):
    def test_instances_to_coco_xywh_and_category_mapping(self):
        inst = Instances((50, 60))
        inst.pred_boxes = Boxes(torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 5.5, 1.0]]))
        inst.scores = torch.tensor([0.9, 0.25])
        inst.pred_classes = torch.tensor([1, 0])
        entries = instances_to_coco(inst, 42, category_ids={0: 3, 1: 7}, extra={"file_name": "a"})
        self.assertEqual(
            entries,
            [
                {"image_id": 42, "category_id": 7, "bbox": [10.0, 20.0, 20.0, 40.0],
                 "score": entries[0]["score"], "file_name": "a"},
                {"image_id": 42, "category_id": 3, "bbox": [0.0, 0.0, 5.5, 1.0],
                 "score": entries[1]["score"], "file_name": "a"},
            ],
        )
        self.assertAlmostEqual(entries[0]["score"], 0.9, places=6)
        # Without a mapping the contiguous index is written.
        self.assertEqual(instances_to_coco(inst, 0)[0]["category_id"], 1)

    def test_unmapped_class_is_an_error_naming_it(self):
        inst = Instances((5, 5))
        inst.pred_boxes = Boxes(torch.zeros(1, 4))
        inst.scores = torch.ones(1)
        inst.pred_classes = torch.tensor([4])
        with self.assertRaisesRegex(ToolError, "class index 4"):
            instances_to_coco(inst, 0, category_ids={0: 1})

    def test_category_id_map_from_metadata_or_json(self):
        meta = Metadata(name="m", thing_dataset_id_to_contiguous_id={5: 1, 2: 0})
        self.assertEqual(category_id_map(meta), {0: 2, 1: 5})
        # detectron2's COCO loader orders classes by category id.
        coco = {"categories": [{"id": 9, "name": "b"}, {"id": 4, "name": "a"}]}
        self.assertEqual(category_id_map(Metadata(name="n"), coco), {0: 4, 1: 9})
        self.assertIsNone(category_id_map(Metadata(name="n"), None))

    def test_collect_inputs(self):
        with tempfile.TemporaryDirectory() as d:
            write_images(d, ["b.png", "a.jpg"])
            with open(os.path.join(d, "notes.txt"), "w") as f:
                f.write("not an image")
            inputs = demo.collect_inputs(d)
            self.assertEqual(inputs.kind, "images")
            self.assertEqual([os.path.basename(p) for p in inputs.paths], ["a.jpg", "b.png"])
            self.assertEqual(demo.collect_inputs(os.path.join(d, "a.jpg")).paths,
                             [os.path.join(d, "a.jpg")])
            open(os.path.join(d, "clip.MP4"), "wb").close()
            self.assertEqual(demo.collect_inputs(os.path.join(d, "clip.MP4")).kind, "video")
            with self.assertRaisesRegex(ToolError, "does not exist"):
                demo.collect_inputs(os.path.join(d, "missing.png"))
            with self.assertRaisesRegex(ToolError, "unknown extension '.txt'"):
                demo.collect_inputs(os.path.join(d, "notes.txt"))
            empty = os.path.join(d, "empty")
            os.makedirs(empty)
            with self.assertRaisesRegex(ToolError, "contains no images"):
                demo.collect_inputs(empty)


class TestDemoRuns(unittest.TestCase):
    """End to end on a narrow R18 model whose anchors all score ~0.6 (prior 0.6)."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        root = cls.tmp.name
        cls.images = os.path.join(root, "images")
        # 72 x 96 images, resized to 64 x 85 for the model: boxes must come back at 72 x 96.
        write_images(cls.images, ["im0.png", "im1.jpg", "im2.png"])
        cls.coco_json = write_tiny_dataset(os.path.join(root, "tiny.json"), {"im1.jpg": 500})
        cls.config = write_tiny_config(
            os.path.join(root, "tiny.yaml"), prior_prob=0.6, coco_json=cls.coco_json,
            image_root=cls.images,
        )

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def demo(self, input_path, **kwargs):
        """run_demo on a random model unless ``random_weights=False`` is given."""
        kwargs.setdefault("random_weights", True)
        out = tempfile.mkdtemp(dir=self.tmp.name)
        summary = demo.run_demo(config_file=kwargs.pop("config", self.config), opts=[],
                           input_path=input_path, output_dir=out, progress=False, **kwargs)
        with open(summary["results_json"]) as f:
            return summary, json.load(f), out

    def test_folder_gives_drawings_and_coco_results(self):
        summary, results, out = self.demo(self.images, confidence_threshold=0.5)
        self.assertEqual(summary["failures"], [])
        self.assertEqual(sorted(os.listdir(out)),
                         ["im0.png", "im1.png", "im2.png", "results.json"])
        # TEST.DETECTIONS_PER_IMAGE = 5 and every anchor passes 0.5.
        self.assertEqual(len(results), 15)
        by_name = {}
        for r in results:
            by_name.setdefault(r["file_name"], []).append(r)
            self.assertIn(r["category_id"], CATEGORY_IDS)
            self.assertGreater(r["score"], 0.5)
            x, y, w, h = r["bbox"]
            self.assertGreaterEqual(min(x, y), 0)
            self.assertGreater(w * h, 0)
            self.assertLessEqual(x + w, 96 + 1e-3)
            self.assertLessEqual(y + h, 72 + 1e-3)
        # im1.jpg has id 500 in the dataset json; the others are numbered after it.
        self.assertEqual({n: {r["image_id"] for r in rs} for n, rs in by_name.items()},
                         {"im0.png": {501}, "im1.jpg": {500}, "im2.png": {503}})
        # Boxes are in input pixels (72 x 96), not in the model's resized 64 x 85 frame.
        self.assertGreater(max(r["bbox"][0] + r["bbox"][2] for r in results), 86)
        drawn = __import__("cv2").imread(os.path.join(out, "im0.png"))
        self.assertEqual(drawn.shape, (72, 96, 3))
        self.assertFalse(np.array_equal(drawn, random_image(72, 96, seed=0)))

    def test_threshold_above_every_score_gives_nothing(self):
        summary, results, _ = self.demo(os.path.join(self.images, "im0.png"),
                                        confidence_threshold=0.9)
        self.assertEqual(summary["num_inputs"], 1)
        self.assertEqual(results, [])

    def test_video_written_by_opencv(self):
        import cv2

        path = os.path.join(self.tmp.name, "clip.avi")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (96, 72))
        self.assertTrue(writer.isOpened())
        for i in range(3):
            writer.write(random_image(72, 96, seed=10 + i))
        writer.release()

        summary, results, out = self.demo(path, confidence_threshold=0.5)
        self.assertEqual(sorted({r["frame"] for r in results}), [0, 1, 2])
        self.assertEqual(len(results), 15)
        self.assertEqual(len(summary["outputs"]), 1)
        capture = cv2.VideoCapture(summary["outputs"][0])
        frames = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
        capture.release()
        self.assertEqual(len(frames), 3)
        self.assertEqual(frames[0].shape, (72, 96, 3))

    def test_weights_are_loaded(self):
        # A checkpoint whose class bias scores every anchor ~0.6, under a config whose prior
        # (0.01) gives no detection above 0.5: detections appear only if the weights load.
        config = write_tiny_config(os.path.join(self.tmp.name, "prior.yaml"))
        cfg = loading.load_config(config)
        model = loading.build_model(cfg, random_weights=True)
        with torch.no_grad():
            model.head.cls_score.bias.fill_(math.log(0.6 / 0.4))
        ckpt_dir = tempfile.mkdtemp(dir=self.tmp.name)
        DetectionCheckpointer(model, save_dir=ckpt_dir).save("ckpt")
        image = os.path.join(self.images, "im0.png")
        _, without, _ = self.demo(image, config=config, confidence_threshold=0.5)
        self.assertEqual(without, [])
        weighted = write_tiny_config(os.path.join(self.tmp.name, "weighted.yaml"),
                                     weights=os.path.join(ckpt_dir, "ckpt.pth"))
        _, with_weights, _ = self.demo(image, config=weighted, confidence_threshold=0.5,
                                       random_weights=False)
        self.assertEqual(len(with_weights), 5)

    def test_predictor_matches_model_on_resized_input(self):
        cfg = loading.load_config(self.config)
        predictor = demo.Predictor.from_config(cfg, random_weights=True)
        image = random_image(72, 96, seed=3)
        got = predictor(image)
        resized = predictor.augmentation.get_transform(image).apply_image(image)
        self.assertEqual(resized.shape[:2], (64, 85))
        with torch.no_grad():
            ref = predictor.model([{"image": torch.as_tensor(resized.transpose(2, 0, 1).copy()),
                                    "height": 72, "width": 96}])[0]["instances"]
        self.assertTrue(torch.allclose(got.pred_boxes.tensor, ref.pred_boxes.tensor))
        self.assertEqual(got.image_size, (72, 96))

    def test_script_reports_unreadable_files_without_traceback(self):
        script = demo
        folder = os.path.join(self.tmp.name, "with_bad")
        write_images(folder, ["good.png"])
        with open(os.path.join(folder, "broken.jpg"), "wb") as f:
            f.write(b"this is not a jpeg")
        out = os.path.join(self.tmp.name, "script_out")
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = script.main(["--config-file", self.config, "--input", folder, "--output", out,
                                "--no-progress", "--random-weights"])
        self.assertEqual(code, 1)
        self.assertIn("broken.jpg: cannot read image", err.getvalue())
        self.assertNotIn("Traceback", err.getvalue())
        self.assertTrue(os.path.isfile(os.path.join(out, "good.png")))

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = script.main(["--config-file", self.config, "--input",
                                os.path.join(folder, "nope.png"), "--output", out])
        self.assertEqual(code, 2)
        self.assertIn("nope.png' does not exist", err.getvalue())

    def test_lazy_config(self):
        path = os.path.join(self.tmp.name, "tiny_lazy.py")
        repo_model = os.path.join(REPO, "configs", "common", "models", "retinanet.py")
        with open(path, "w") as f:
            f.write(
                "from detectron2.config import LazyConfig\n"
                f"model = LazyConfig.load({repo_model!r}).model\n"
                "model.backbone.bottom_up.stages.depth = 18\n"
                "del model.backbone.bottom_up.stages.stride_in_1x1\n"
                "model.backbone.top_block.in_channels = 512\n"
                "from detectron2.layers import ShapeSpec\n"
                "model.backbone.out_channels = 32\n"
                "model.head.input_shape = [ShapeSpec(channels=32)] * 5\n"
                "model.head.conv_dims = [32] * 4\n"
                "model.num_classes = 3\n"
                "model.max_detections_per_image = 4\n"
                "model.diagnostics_period = 0\n"
                "train = dict(device='cpu', init_checkpoint='')\n"
                "from omegaconf import OmegaConf\n"
                "import detectron2.data.transforms as T\n"
                "from detectron2.config import LazyCall as L\n"
                "dataloader = OmegaConf.create()\n"
                "dataloader.test = dict(mapper=dict(augmentations=[\n"
                "    L(T.ResizeShortestEdge)(short_edge_length=64, max_size=256)]))\n"
            )
        cfg = loading.load_config(path)
        aug = loading.test_augmentation(cfg)
        self.assertEqual((aug.short_edge_length, aug.max_size), ((64, 64), 256))
        loading.set_score_threshold(cfg, 0.25)
        self.assertEqual(cfg.model.test_score_thresh, 0.25)
        # Threshold 0: every candidate passes, so exactly max_detections_per_image remain.
        summary, results, _ = self.demo(os.path.join(self.images, "im2.png"), config=path,
                                        confidence_threshold=0.0)
        self.assertEqual(len(results), 4)
        self.assertEqual({r["category_id"] for r in results} - {0, 1, 2}, set())


if __name__ == "__main__":
    unittest.main()
