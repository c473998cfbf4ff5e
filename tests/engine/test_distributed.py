"""Multi-process training on CPU: ``train_net.py --num-gpus 2`` runs two gloo workers (DDP,
per-rank data, evaluation gathered on rank 0, checkpoints and metrics from rank 0 only,
``--resume``), and one DDP step's gradients are the mean of the per-process gradients, each
process normalising its loss by its own positive anchors.

Each case starts processes (about 5 s of imports each on 2 cores), so the runs are few and tiny:
64 px images, 2 images per process, a handful of iterations.
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import torch
import torch.distributed as dist

import retinafocal  # noqa: F401  (compat first)
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from retinafocal.engine import leave_process_group

from .common import CONFIG_DIR, REPO_ROOT, lazy_tiny_overrides, tiny_shapes, yacs_tiny_overrides
from .ddp_worker import tiny_cfg

YAML = os.path.join(CONFIG_DIR, "Embedded", "retinanet_R18_FPN_shapes.yaml")
LAZY = os.path.join(CONFIG_DIR, "Embedded", "retinanet_R18_FPN_shapes.py")
NUM_VAL = 4  # 2 per process: the evaluation sees all 4 only if it gathers both ranks


def _run(args, timeout=300):
    """Run a script of the repository with ``args``; returns its stdout + stderr."""
    path = os.pathsep.join([REPO_ROOT, os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"{args[0]} exited with {proc.returncode}:\n{output[-6000:]}")
    return output


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _metrics_iterations(output_dir):
    """Iterations of the training lines of detectron2's metrics.json, in file order."""
    lines = _read(os.path.join(output_dir, "metrics.json")).splitlines()
    return [m["iteration"] for m in map(json.loads, lines) if "total_loss" in m]


class TestTrainNetTwoProcesses(unittest.TestCase):
    """``train_net.py --num-gpus 2 --dist-url auto`` on the embedded yacs config, then
    ``--resume`` for one more iteration, then the LazyConfig form."""

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.mkdtemp(prefix="rf_ddp_")
        cls.data = tiny_shapes(os.path.join(cls._tmp, "data"), num_train=4, num_val=NUM_VAL)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls._tmp, ignore_errors=True)

    @staticmethod
    def _logs(out):
        """The logs of rank 0 and rank 1 (detectron2 gives each process its own file)."""
        return _read(os.path.join(out, "log.txt")), _read(os.path.join(out, "log.txt.rank1"))

    def _yacs(self, out, iters, flags=(), extra_opts=()):
        opts = yacs_tiny_overrides(self.data, out, iters=iters) + [
            "SOLVER.IMS_PER_BATCH", "4",  # 2 images per process
            "SOLVER.CHECKPOINT_PERIOD", "100",  # model_final.pth only
            "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",  # every detection: AP is a number
        ]  # fmt: skip
        args = ["train_net.py", "--config-file", YAML, "--num-gpus", "2", "--dist-url", "auto"]
        return _run(args + list(flags) + opts + list(extra_opts))

    def test_yacs_train_evaluate_resume(self):
        out = os.path.join(self._tmp, "yacs")
        output = self._yacs(out, 2)
        # One AP line, from rank 0, after an evaluation of every validation image.
        ap_lines = re.findall(r"bbox AP = (\S+)", output)
        self.assertEqual(len(ap_lines), 1, output[-3000:])
        self.assertTrue(math.isfinite(float(ap_lines[0])), ap_lines)
        results = json.loads(_read(os.path.join(out, "results.json")))
        self.assertEqual(results["iterations"], 2)
        self.assertEqual(float(ap_lines[0]), round(results["bbox"]["AP"], 2))
        detections = os.path.join(out, "inference", self.data["val"][0],
                                  "coco_instances_results.json")  # fmt: skip
        image_ids = {d["image_id"] for d in json.loads(_read(detections))}
        self.assertEqual(len(image_ids), NUM_VAL)
        # Both ranks ran: rank 1 logs to its own file. Only rank 0 saves and writes metrics.
        rank0, rank1 = self._logs(out)
        self.assertIn("Starting training from iteration 0", rank1)
        self.assertEqual(rank0.count("Saving checkpoint to"), 1)
        self.assertNotIn("Saving checkpoint to", rank1)
        self.assertEqual(_metrics_iterations(out), [1])

        # Resume: both ranks load the last checkpoint (DDP does not broadcast weights after its
        # construction) and go on from iteration 2.
        self._yacs(out, 3, ["--resume"], ["DATASETS.TEST", "()"])  # no second evaluation
        rank0, rank1 = self._logs(out)
        for log in (rank0, rank1):
            self.assertIn("Starting training from iteration 2", log)
        self.assertEqual(_metrics_iterations(out), [1, 2])
        self.assertEqual(json.loads(_read(os.path.join(out, "results.json")))["iterations"], 3)

    def test_lazy_config(self):
        out = os.path.join(self._tmp, "lazy")
        opts = lazy_tiny_overrides(self.data, out, iters=1) + [
            "dataloader.train.total_batch_size=4",
            "model.test_score_thresh=0.0",
        ]
        args = ["train_net.py", "--config-file", LAZY, "--num-gpus", "2", "--dist-url", "auto"]
        output = _run(args + opts)
        ap_lines = re.findall(r"bbox AP = (\S+)", output)
        self.assertEqual(len(ap_lines), 1, output[-3000:])
        self.assertTrue(math.isfinite(float(ap_lines[0])), ap_lines)
        rank0, rank1 = self._logs(out)
        self.assertIn("Starting training from iteration 0", rank1)
        self.assertEqual(rank0.count("Saving checkpoint to"), 1)
        self.assertNotIn("Saving checkpoint to", rank1)
        self.assertEqual(json.loads(_read(os.path.join(out, "results.json")))["iterations"], 1)


class TestDDPGradients(unittest.TestCase):
    """One DDP step of 2 processes x 4 images (``ddp_worker.py``) against one process."""

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.mkdtemp(prefix="rf_ddp_grad_")
        _run([os.path.join("tests", "engine", "ddp_worker.py"), cls._tmp])
        cls.ranks = [
            torch.load(os.path.join(cls._tmp, f"rank{r}.pth"), weights_only=False) for r in (0, 1)
        ]

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls._tmp, ignore_errors=True)

    def test_dataset_generated_once_by_rank_0(self):
        # Rank 1 waited for rank 0's files; had it not, it would have generated them too.
        self.assertEqual(_read(os.path.join(self._tmp, "generated.txt")), "0\n")

    def _per_half_grads(self):
        """Per half of the 8 images, in this one process, from the weights the DDP step started
        from: the gradients of that half's loss (as the model normalises it)."""
        torch.manual_seed(1)  # other initial weights, replaced below
        model = build_model(tiny_cfg())
        model.load_state_dict(self.ranks[0]["initial"])
        model.train()
        grads = []
        for rank in self.ranks:
            model.zero_grad()
            with EventStorage(0):
                sum(model(rank["inputs"]).values()).backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        return grads

    def _assert_grads_close(self, expected, actual):
        for name, exp in expected.items():
            scale = exp.abs().max().item()
            torch.testing.assert_close(actual[name], exp, rtol=1e-4, atol=1e-5 * scale, msg=name)

    def test_gradients_are_the_mean_of_per_process_normalised_losses(self):
        rank0, rank1 = self.ranks
        # The halves differ in positive anchors, so the choice of normaliser shows.
        counts = (rank0["num_pos"], rank1["num_pos"])
        self.assertGreater(min(counts), 0)
        self.assertNotEqual(*counts)
        # DDP's all-reduce leaves the same gradients in both processes.
        self._assert_grads_close(rank0["grads"], rank1["grads"])

        # Each half's loss is normalised by its own positives (in the model); DDP averages.
        half_a, half_b = self._per_half_grads()
        expected = {n: (half_a[n] + half_b[n]) / 2 for n in half_a}
        self._assert_grads_close(expected, rank0["grads"])

        # The check can fail: normalising by the positives of both halves (an all-reduced
        # count) weights each half by its share of them instead, and the gradients differ.
        w_a, w_b = (c / sum(counts) for c in counts)
        name = "head.cls_score.weight"
        pooled = w_a * half_a[name] + w_b * half_b[name]
        diff = (pooled - rank0["grads"][name]).abs().max().item()
        self.assertGreater(diff, 1e-2 * rank0["grads"][name].abs().max().item())


class TestNonFiniteLossInOneProcess(unittest.TestCase):
    """Process 1's loss becomes NaN (``nan_worker.py``): both processes stop at that iteration
    with the error, before the step, and process 0 writes results.json."""

    def test_every_process_stops_and_results_are_written(self):
        tmp = tempfile.mkdtemp(prefix="rf_ddp_nan_")
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        _run([os.path.join("tests", "engine", "nan_worker.py"), tmp], timeout=120)
        for rank in (0, 1):
            record = json.loads(_read(os.path.join(tmp, f"rank{rank}.json")))
            self.assertEqual((record["iteration"], record["terms"]), (1, ["loss_scaled"]))
            self.assertIn("process 1's losses", record["message"])
            # One step of SGD (lr 0.1) on loss_plain + loss_scaled at batch 1: the NaN
            # gradients DDP averaged into every process were not applied.
            self.assertAlmostEqual(record["weight"], 1 - 0.1 * (2 + 1), places=6)
        results = json.loads(_read(os.path.join(tmp, "results.json")))
        self.assertEqual(results["status"], "non_finite_loss")
        expected = {"iteration": 1, "terms": ["loss_scaled"], "checkpoint": None}
        self.assertEqual(results["non_finite"], expected)


class TestLeaveProcessGroup(unittest.TestCase):
    """``leave_process_group`` (the end of ``train_net.py``'s main): the groups are destroyed
    after a barrier, and their gloo worker threads have ended when it returns, so none is left
    to abort the process at interpreter exit."""

    @staticmethod
    def _threads():
        return set(os.listdir("/proc/self/task"))

    @unittest.skipUnless(os.path.isdir("/proc/self/task"), "counts threads in /proc (Linux)")
    def test_destroys_the_groups_and_ends_their_threads(self):
        tmp = tempfile.mkdtemp(prefix="rf_pg_")
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        before = self._threads()
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", world_size=1, rank=0)
        self.addCleanup(lambda: dist.is_initialized() and dist.destroy_process_group())
        # What a run leaves in detectron2's comm: launch's local group, all_gather's cached group.
        comm._LOCAL_PROCESS_GROUP = dist.new_group([0])
        comm._get_global_gloo_group()
        self.assertTrue(self._threads() - before)  # gloo's worker threads
        leave_process_group()
        self.assertFalse(dist.is_initialized())
        self.assertIsNone(comm._LOCAL_PROCESS_GROUP)
        self.assertEqual(self._threads() - before, set())
        leave_process_group()  # a single process, or a second call: nothing to do
        self.assertFalse(dist.is_initialized())


if __name__ == "__main__":
    unittest.main()
