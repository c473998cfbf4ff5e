"""Unknown config keys fail before anything runs, with an error that names the key."""
import os
import shutil
import tempfile
import unittest

from .common import CONFIG_DIR, run_train_net

YAML = os.path.join(CONFIG_DIR, "Embedded", "retinanet_R18_FPN_shapes.yaml")
LAZY = os.path.join(CONFIG_DIR, "Embedded", "retinanet_R18_FPN_shapes.py")


class TestUnknownKeys(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.mkdtemp(prefix="rf_keys_")

    def tearDown(self):
        shutil.rmtree(self._tmp, ignore_errors=True)

    def test_yacs_override(self):
        with self.assertRaises(KeyError) as caught:
            run_train_net(["--config-file", YAML, "SOLVER.MAX_ITERS", "2"])
        self.assertIn("SOLVER.MAX_ITERS", str(caught.exception))
        self.assertIn("SOLVER.MAX_ITER", str(caught.exception).replace("SOLVER.MAX_ITERS", ""))

    def test_yacs_file(self):
        bad = os.path.join(self._tmp, "bad.yaml")
        with open(bad, "w") as f:
            f.write(f'_BASE_: "{YAML}"\nMODEL:\n  RETINANET:\n    NUM_CLASS: 3\n')
        with self.assertRaises(KeyError) as caught:
            run_train_net(["--config-file", bad])
        self.assertIn("MODEL.RETINANET.NUM_CLASS", str(caught.exception))

    def test_lazy_override(self):
        with self.assertRaises(KeyError) as caught:
            run_train_net(["--config-file", LAZY, "train.max_iters=2"])
        self.assertIn("train.max_iters", str(caught.exception))
        self.assertIn("train.max_iter", str(caught.exception).replace("train.max_iters", ""))

    def test_nothing_was_written(self):
        # The error comes before default_setup: no output directory is created.
        output_dir = os.path.join(self._tmp, "out")
        with self.assertRaises(KeyError):
            run_train_net(["--config-file", YAML, "OUTPUT_DIR", output_dir, "SOLVER.LR", "0.1"])
        self.assertFalse(os.path.exists(output_dir))


if __name__ == "__main__":
    unittest.main()
