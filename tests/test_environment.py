"""The environment retinafocal runs in: detectron2 importable through the compat layer."""
import importlib
import sys
import unittest

import retinafocal  # noqa: F401  (applies retinafocal.compat before detectron2 is imported)
import torch
from retinafocal import compat


def _plus_one(x: torch.Tensor) -> torch.Tensor:
    return x + 1


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
        self.assertNotEqual(compat.HAS_D2_C, "d2_c_stub" in compat.ACTIVE)

    def test_model_zoo_config_files_shipped(self):
        from detectron2 import model_zoo

        path = model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml")
        self.assertTrue(path.endswith("retinanet_R_50_FPN_1x.yaml"))

    def test_missing_compiled_op_names_itself(self):
        """With the stub, a compiled op raises naming itself; a real build has the op."""
        from detectron2 import _C

        if "d2_c_stub" not in compat.ACTIVE:
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
            self.assertNotIn("pil_linear", compat.ACTIVE)  # current detectron2: untouched

    def test_jit_script_warnings_silenced_only_where_torch_deprecates_it(self):
        import inspect
        import subprocess
        import warnings

        deprecated = "`torch.jit.script` is deprecated" in inspect.getsource(torch.jit.script)
        self.assertEqual("jit_script_warnings" in compat.ACTIVE, deprecated)
        self.assertEqual("torch.jit.script deprecation" in compat.describe(), deprecated)
        # Importing retinafocal shows no warning meant for fvcore or detectron2 (issue 13).
        code = "import warnings; warnings.simplefilter('error', FutureWarning); import retinafocal"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        # Later calls warn as torch says (only the import-time ones are filtered).
        if deprecated:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.jit.script(_plus_one)
            self.assertTrue(any("torch.jit.script" in str(w.message) for w in caught))

    def test_registered_jit_builtins_outlive_their_other_references(self):
        """A dropped op's id() must not be reused while TorchScript's table still names it
        (retinafocal.compat._keep_registered_builtins_alive)."""
        import gc
        import inspect
        import weakref

        import torch.jit._builtins as builtins

        register = builtins._register_builtin
        needed = "_builtin_ops" not in inspect.getsource(getattr(register, "__wrapped__", register))
        self.assertEqual("jit_builtins" in compat.ACTIVE, needed)
        self.assertEqual("builtin ops kept alive" in compat.describe(), needed)

        def dropped_op():
            pass

        alive = weakref.ref(dropped_op)
        builtins._register_builtin(dropped_op, "aten::retinafocal_dropped_op")
        del dropped_op
        gc.collect()
        self.assertIsNotNone(alive())

    def test_launch_and_ddp_fixes_only_where_needed(self):
        import detectron2.engine
        from detectron2.engine import defaults

        launch = importlib.import_module("detectron2.engine.launch")
        asserts_cuda = "cuda is not available" in compat._detectron2_source("engine/launch.py")
        # v0.6's worker asserts CUDA and is replaced; current detectron2's picks gloo itself.
        self.assertEqual("launch_gloo" in compat.ACTIVE, asserts_cuda)
        self.assertEqual(launch._distributed_worker is compat._distributed_worker, asserts_cuda)
        self.assertEqual("launch uses gloo" in compat.describe(), asserts_cuda)
        # Both give a CPU model device_ids, which DDP rejects; one function serves both names.
        gives_ids = 'kwargs["device_ids"] = [comm.get_local_rank()]' in compat._detectron2_source(
            "engine/defaults.py")  # fmt: skip
        self.assertEqual("ddp_cpu" in compat.ACTIVE, gives_ids)
        self.assertIs(detectron2.engine.create_ddp_model, defaults.create_ddp_model)
        self.assertEqual(defaults.create_ddp_model.__module__ == compat.__name__, gives_ids)

    def test_apply_is_idempotent(self):
        before = (compat.HAS_D2_C, dict(compat.ACTIVE))
        stub = sys.modules.get("detectron2._C")
        compat.apply()
        self.assertEqual(before, (compat.HAS_D2_C, compat.ACTIVE))
        self.assertIs(stub, sys.modules.get("detectron2._C"))
