"""The environment retinafocal runs in: detectron2 importable through the compat layer."""
import importlib
import sys
import unittest

import retinafocal  # noqa: F401  (applies retinafocal.compat before detectron2 is imported)
from retinafocal import compat


class TestEnvironment(unittest.TestCase):
    def test_detectron2_packages_import(self):
        for name in ("detectron2.evaluation", "detectron2.data", "detectron2.model_zoo"):
            with self.subTest(module=name):
                module = importlib.import_module(name)
                self.assertIs(sys.modules[name], module)

    def test_report_which_detectron2(self):
        import detectron2

        line = compat.describe()
        print(f"\n[environment] {line}")
        self.assertIn(detectron2.__version__, line)
        # Exactly one of: a compiled _C, or our stub for the pure-Python v0.6 build.
        self.assertNotEqual(compat.HAS_D2_C, compat.D2_C_STUBBED)

    def test_model_zoo_config_files_shipped(self):
        from detectron2 import model_zoo

        path = model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml")
        self.assertTrue(path.endswith("retinanet_R_50_FPN_1x.yaml"))

    def test_missing_compiled_op_names_itself(self):
        """With the stub, a compiled op raises naming itself; a real build has the op."""
        from detectron2 import _C

        if not compat.D2_C_STUBBED:
            self.assertTrue(callable(_C.deform_conv_forward))
            return
        with self.assertRaisesRegex(RuntimeError, "deform_conv_forward.*compiled ops"):
            _C.deform_conv_forward  # noqa: B018

    def test_pil_linear_alias_only_where_needed(self):
        from PIL import Image

        import detectron2.data.transforms  # noqa: F401

        if "Image.LINEAR" in compat._detectron2_source("data/transforms/transform.py"):
            self.assertEqual(Image.LINEAR, Image.BILINEAR)  # v0.6's default argument resolves
        else:
            self.assertFalse(compat.PIL_LINEAR_ALIASED)  # current detectron2: untouched

    def test_apply_is_idempotent(self):
        before = (compat.HAS_D2_C, compat.D2_C_STUBBED, compat.PIL_LINEAR_ALIASED)
        stub = sys.modules.get("detectron2._C")
        compat.apply()
        self.assertEqual(before, (compat.HAS_D2_C, compat.D2_C_STUBBED, compat.PIL_LINEAR_ALIASED))
        self.assertIs(stub, sys.modules.get("detectron2._C"))
