"""tools/gpu_check.sh, the prepared GPU check, run on the CPU (GPU_CHECK_DEVICE=cpu) in
miniature: its steps run, the GPU tests skip, training goes through launch's worker (gloo here),
and the report has the tables README takes."""
import os
import shlex
import subprocess
import sys
import tempfile
import unittest

from ..engine.common import tiny_shapes, yacs_tiny_overrides
from .common import REPO


class TestGpuCheckOnCpu(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.out = os.path.join(cls._tmp.name, "out")
        data = tiny_shapes(os.path.join(cls._tmp.name, "data"))
        train_opts = yacs_tiny_overrides(data, os.path.join(cls.out, "train_nccl"), iters=1) + [
            "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]  # fmt: skip
        env = dict(
            os.environ,
            PYTHON=sys.executable,
            GPU_CHECK_DEVICE="cpu",
            GPU_CHECK_ITERS="1",
            GPU_CHECK_TRAIN_OPTS=shlex.join(train_opts),
            GPU_CHECK_BENCH_ARGS="--size 64 64 --iters 1 1 1 --warmup 0 --no-memory "
            "--train-batch 1 --throughput-batch 1 --detectors retinafocal",
        )
        cls.proc = subprocess.run(["bash", os.path.join(REPO, "tools", "gpu_check.sh"), cls.out],
                                  env=env, capture_output=True, text=True, timeout=600)

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def test_steps_ran(self):
        self.assertEqual(self.proc.returncode, 0, self.proc.stdout + self.proc.stderr[-3000:])
        with open(os.path.join(self.out, "steps.tsv")) as f:
            steps = {line.split("\t")[0]: line.split("\t")[1] for line in f if line.strip()}
        # bf16 but no fp16, AMP or compiled-loss runs on a CPU; every step that ran succeeded.
        self.assertEqual(steps, {"env": "0", "tests": "0", "train_nccl": "0", "train_bf16": "0",
                                 "bench": "0"})  # fmt: skip
        with open(os.path.join(self.out, "tests.log")) as f:
            tests_log = f.read()
        self.assertRegex(tests_log, r"\d+ skipped")  # the GPU tests were found, and skipped
        self.assertNotIn("passed", tests_log)
        with open(os.path.join(self.out, "train_nccl", "log.txt")) as f:
            self.assertIn("Starting training from iteration 0", f.read())

    def test_report_has_the_tables(self):
        with open(os.path.join(self.out, "GPU_CHECK.md")) as f:
            report = f.read()
        self.assertIn("# GPU check, ", report)
        row = r"\| train_nccl \| [^|]+ \| 1 \| [^|]+ \| \d+\.\d\d \| completed \|"
        self.assertRegex(report, row)  # 1 iteration, a number for AP
        # bf16 trained (and, with this test's datasets, evaluated) in its own folder.
        self.assertRegex(report, r"\| train_bf16 \| MODEL.RETINAFOCAL.PRECISION bf16 \| 1 \| "
                         r"[^|]+ \| \d+\.\d\d \| completed \|")
        self.assertIn("Benchmark (tools/benchmark_detectors.py), 64 x 64, cpu", report)
        self.assertIn("| training iteration, batch 1", report)


if __name__ == "__main__":
    unittest.main()
