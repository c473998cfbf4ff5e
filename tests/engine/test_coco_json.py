"""A COCO-format json written here is registered and trained on from the command line alone."""
import json
import os
import shutil
import tempfile
import unittest

import retinafocal  # noqa: F401  (compat first, before detectron2)
from detectron2.data import DatasetCatalog, MetadataCatalog

from .common import CONFIG_DIR, TINY_SIZE, run_train_net, write_coco_json


class TestCocoJsonFromCommandLine(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.mkdtemp(prefix="rf_cocojson_")
        self.entry = write_coco_json(os.path.join(self._tmp, "data"))
        self.name = self.entry[0]

    def tearDown(self):
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _check(self, output_dir, results):
        self.assertIn(self.name, DatasetCatalog.list())
        self.assertEqual(MetadataCatalog.get(self.name).thing_classes, ["red", "blue"])
        self.assertEqual(len(DatasetCatalog.get(self.name)), 3)
        self.assertTrue(os.path.isfile(os.path.join(output_dir, "model_final.pth")))
        self.assertIn("AP-red", results["bbox"])  # per-category AP of this dataset's classes

    def test_yacs(self):
        output_dir = os.path.join(self._tmp, "yacs")
        results = run_train_net([
            "--config-file", os.path.join(CONFIG_DIR, "Embedded", "retinanet_R18_FPN_shapes.yaml"),
            "DATASETS.COCO_JSON", repr([self.entry]),
            "DATASETS.TRAIN", repr((self.name,)),
            "DATASETS.TEST", repr((self.name,)),
            "MODEL.RETINANET.NUM_CLASSES", "2",
            # Keep every detection of the barely trained model, so that AP is computed.
            "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
            "INPUT.MIN_SIZE_TRAIN", f"({TINY_SIZE},)", "INPUT.MAX_SIZE_TRAIN", str(TINY_SIZE),
            "INPUT.MIN_SIZE_TEST", str(TINY_SIZE), "INPUT.MAX_SIZE_TEST", str(TINY_SIZE),
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "DATALOADER.NUM_WORKERS", "0",
            "OUTPUT_DIR", output_dir,
        ])  # fmt: skip
        self._check(output_dir, results)

    def test_lazy(self):
        output_dir = os.path.join(self._tmp, "lazy")
        results = run_train_net([
            "--config-file", os.path.join(CONFIG_DIR, "Embedded", "retinanet_R18_FPN_shapes.py"),
            f"datasets.coco_json={[self.entry]!r}",
            f"dataloader.train.dataset.names={self.name}",
            f"dataloader.test.dataset.names={self.name}",
            "model.num_classes=2",
            "model.test_score_thresh=0.0",
            f"dataloader.train.mapper.augmentations.0.short_edge_length=[{TINY_SIZE}]",
            f"dataloader.train.mapper.augmentations.0.max_size={TINY_SIZE}",
            f"dataloader.test.mapper.augmentations.0.short_edge_length={TINY_SIZE}",
            f"dataloader.test.mapper.augmentations.0.max_size={TINY_SIZE}",
            "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
            "dataloader.test.num_workers=0", "train.max_iter=2",
            f"train.output_dir='{output_dir}'",
        ])  # fmt: skip
        self._check(output_dir, results)

    def test_image_list_as_test_set_gets_predictions(self):
        """A test set whose json has no annotations (COCO test-dev's image info): detectron2's
        COCOEvaluator writes the predictions for an evaluation server, with no AP, after
        training and with --eval-only."""
        with open(self.entry[1]) as f:
            data = json.load(f)
        del data["annotations"]
        image_list = os.path.join(self._tmp, "image_info_test.json")
        with open(image_list, "w") as f:
            json.dump(data, f)
        test = [f"{self.name}_dev", image_list, self.entry[2]]
        output_dir = os.path.join(self._tmp, "dev")
        opts = [
            "--config-file", os.path.join(CONFIG_DIR, "Embedded", "retinanet_R18_FPN_shapes.yaml"),
            "DATASETS.COCO_JSON", repr([self.entry, test]),
            "DATASETS.TRAIN", repr((self.name,)), "DATASETS.TEST", repr((test[0],)),
            "MODEL.RETINANET.NUM_CLASSES", "2", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
            "INPUT.MIN_SIZE_TRAIN", f"({TINY_SIZE},)", "INPUT.MAX_SIZE_TRAIN", str(TINY_SIZE),
            "INPUT.MIN_SIZE_TEST", str(TINY_SIZE), "INPUT.MAX_SIZE_TEST", str(TINY_SIZE),
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "DATALOADER.NUM_WORKERS", "0",
            "OUTPUT_DIR", output_dir,
        ]  # fmt: skip
        predictions = os.path.join(output_dir, "inference", test[0], "coco_instances_results.json")
        weights = ["MODEL.WEIGHTS", os.path.join(output_dir, "model_final.pth")]
        for run in ([], ["--eval-only"]):
            with self.subTest(run=run):
                results = run_train_net(opts[:2] + run + opts[2:] + (weights if run else []))
                self.assertNotIn("bbox", results)
                self.assertEqual(results["inference"]["images"], 3.0)
                with open(predictions) as f:
                    self.assertEqual({p["image_id"] for p in json.load(f)}, {1, 2, 3})
                os.remove(predictions)
        self.assertTrue(os.path.isfile(os.path.join(output_dir, "predictions.png")))

if __name__ == "__main__":
    unittest.main()
