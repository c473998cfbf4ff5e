"""Dataset registration: COCO-format json by name, the embedded splits; detectron2's names are
left as they are."""
import json
import os
import subprocess
import sys
import tempfile
import unittest
import uuid
from unittest import mock

import retinafocal  # noqa: F401  (compat first)
from detectron2.data import DatasetCatalog, MetadataCatalog
from retinafocal.data import datasets as rf_datasets
from retinafocal.data import register_coco_json_datasets, register_shapes
from retinafocal.data.shapes import SHAPE_CLASSES, ShapesSpec, generate_shapes_split

_SPEC = ShapesSpec(image_size=48, min_object_size=6, max_object_size=16)


def _unique(prefix: str) -> str:
    # DatasetCatalog is process-global: every test registers names of its own.
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


class TestRegisterCocoJson(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.root = cls._tmp.name
        cls.json_file = generate_shapes_split(cls.root, "val", 4, _SPEC, progress=False)
        cls.image_root = os.path.join(cls.root, "val")

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def test_registered_dataset_loads_with_metadata(self):
        name = _unique("json")
        self.assertEqual(
            register_coco_json_datasets([[name, self.json_file, self.image_root]]), [name]
        )
        dicts = DatasetCatalog.get(name)
        self.assertEqual(len(dicts), 4)
        self.assertTrue(all(d["file_name"].startswith(self.image_root) for d in dicts))
        self.assertGreater(sum(len(d["annotations"]) for d in dicts), 4)
        meta = MetadataCatalog.get(name)
        self.assertEqual(meta.thing_classes, list(SHAPE_CLASSES))
        self.assertEqual(meta.json_file, self.json_file)
        self.assertEqual(meta.evaluator_type, "coco")

    def test_registers_through_the_checked_loader(self):
        name = _unique("checked")
        register_coco_json_datasets([(name, self.json_file, self.image_root)])
        with mock.patch.object(rf_datasets, "load_coco_json_checked", return_value=[]) as load:
            self.assertEqual(DatasetCatalog.get(name), [])
        load.assert_called_once_with(self.json_file, self.image_root, name)

    def test_same_registration_twice_is_harmless_conflict_is_an_error(self):
        name = _unique("twice")
        entry = [name, self.json_file, self.image_root]
        register_coco_json_datasets([entry])
        register_coco_json_datasets([entry])
        with self.assertRaisesRegex(ValueError, name):
            register_coco_json_datasets([[name, self.json_file, self.root]])
        with self.assertRaisesRegex(ValueError, "coco_2017_val"):
            register_coco_json_datasets([["coco_2017_val", self.json_file, self.image_root]])

    def test_bad_entries_name_what_is_wrong(self):
        entries = [[_unique("ok"), self.json_file, self.image_root], ["only_two", self.json_file]]
        with self.assertRaisesRegex(ValueError, r"COCO_JSON\[1\].*\[name, json_file, image_root\]"):
            register_coco_json_datasets(entries)
        with self.assertRaisesRegex(FileNotFoundError, "missing.json"):
            register_coco_json_datasets([["x", os.path.join(self.root, "missing.json"), "."]])
        with self.assertRaisesRegex(FileNotFoundError, "no_such_dir"):
            missing_dir = os.path.join(self.root, "no_such_dir")
            register_coco_json_datasets([["x", self.json_file, missing_dir]])


class TestRegisterShapes(unittest.TestCase):
    def test_split_is_generated_on_first_load(self):
        with tempfile.TemporaryDirectory() as root:
            prefix = _unique("shapes")
            names = register_shapes(root, prefix, splits={"train": (3, _SPEC), "val": (2, _SPEC)})
            self.assertEqual(names, [f"{prefix}_train", f"{prefix}_val"])
            self.assertEqual(os.listdir(root), [])  # registering generates nothing
            self.assertEqual(len(DatasetCatalog.get(f"{prefix}_val")), 2)
            self.assertTrue(os.path.isfile(os.path.join(root, "annotations", "instances_val.json")))
            self.assertFalse(os.path.exists(os.path.join(root, "train")))
            meta = MetadataCatalog.get(f"{prefix}_train")
            self.assertEqual(meta.thing_classes, list(SHAPE_CLASSES))

    def test_default_splits_are_registered(self):
        for name in ("shapes_train", "shapes_val"):
            self.assertIn(name, DatasetCatalog.list())
            meta = MetadataCatalog.get(name)
            shapes_root = os.path.join(rf_datasets.datasets_root(), "shapes")
            self.assertTrue(meta.json_file.startswith(shapes_root))


class TestDetectron2NamesUntouched(unittest.TestCase):
    def test_coco_2017_loads_through_detectron2s_loader(self):
        for name in ("coco_2017_train", "coco_2017_val"):
            meta = MetadataCatalog.get(name)
            loader = "detectron2.data.datasets.coco.load_coco_json"
            with mock.patch(loader, return_value=[]) as load:
                self.assertEqual(DatasetCatalog.get(name), [])
            load.assert_called_once_with(meta.json_file, meta.image_root, name)
            self.assertEqual(len(meta.thing_classes), 80)

    def test_import_registers_only_retinafocal_names(self):
        # A fresh process: other tests register names of their own.
        code = (
            "import json, retinafocal\n"
            "from detectron2.data import DatasetCatalog\n"
            "print(json.dumps({n: DatasetCatalog[n].__module__ for n in DatasetCatalog.list()}))"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        modules = json.loads(proc.stdout.strip().splitlines()[-1])
        ours = sorted(n for n, m in modules.items() if m.startswith("retinafocal"))
        self.assertEqual(ours, ["shapes_train", "shapes_val"])
        for split in ("train", "val", "test", "test-dev", "val_100"):
            self.assertEqual(modules[f"coco_2017_{split}"], "detectron2.data.datasets.coco")
        for name in set(modules) - set(ours):
            self.assertTrue(modules[name].startswith("detectron2."), (name, modules[name]))


if __name__ == "__main__":
    unittest.main()
