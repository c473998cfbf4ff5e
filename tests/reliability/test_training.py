"""End to end through train_net.py, in subprocesses: training on a broken dataset with the skip
switch, a fatal dataset stopping with its report, and SIGKILL during a checkpoint save followed
by --resume. Tiny inputs (64x48 images, a few iterations) keep each test well under a minute.
"""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import torch

import retinafocal  # noqa: F401  (applies retinafocal.compat before detectron2 is imported)

from .broken_coco import HEIGHT, WIDTH, write_broken_coco

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
TRAIN_NET = os.path.join(REPO_ROOT, "train_net.py")
CONFIG = os.path.join(REPO_ROOT, "configs", "Embedded", "retinanet_R18_FPN_shapes.yaml")


def tiny_overrides(json_file, image_root, output_dir, **extra):
    """yacs overrides: the broken dataset, no evaluation, tiny images and batches, CPU."""
    opts = {
        "DATASETS.COCO_JSON": f"[['broken_train', '{json_file}', '{image_root}']]",
        "DATASETS.TRAIN": "('broken_train',)",
        "DATASETS.TEST": "()",
        "DATALOADER.NUM_WORKERS": "0",
        "INPUT.MIN_SIZE_TRAIN": f"({HEIGHT},)",
        "INPUT.MAX_SIZE_TRAIN": str(WIDTH),
        "MODEL.RETINANET.NUM_CLASSES": "2",
        "MODEL.DEVICE": "cpu",
        "OUTPUT_DIR": output_dir,
    }
    opts.update(extra)
    return [item for pair in opts.items() for item in pair]


class _TrainNetTest(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="retinafocal_train_")
        self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)
        self.output_dir = os.path.join(self.root, "output")
        self.env = dict(os.environ, RETINAFOCAL_CACHE_DIR=os.path.join(self.root, "cache"))

    def train_net(self, opts, *flags, timeout=300):
        return subprocess.run(
            [sys.executable, TRAIN_NET, "--config-file", CONFIG, *flags, *opts],
            capture_output=True, text=True, timeout=timeout, cwd=self.root, env=self.env,
        )


class TestTrainOnBrokenDataset(_TrainNetTest):
    def test_skip_switch_trains_evaluates_and_reports_what_it_left_out(self):
        """Issue 13, items 1 and 8: the unreadable images of the training and the test set are
        left out before work starts, counted; the run trains, evaluates the rest and says so.
        Its output, redirected here as a user's log would be, has no colour codes, no
        torch.jit warnings, and each box-fix warning once."""
        json_file, image_root, _ = write_broken_coco(self.root)
        # The test set without the malformed boxes, which COCO evaluation cannot read.
        with open(json_file) as f:
            data = json.load(f)
        data["annotations"] = [a for a in data["annotations"] if a["id"] not in (106, 107)]
        test_json = os.path.join(self.root, "broken_test.json")
        with open(test_json, "w") as f:
            json.dump(data, f)
        datasets = [["broken_train", json_file, image_root], ["broken_test", test_json, image_root]]
        opts = tiny_overrides(
            json_file, image_root, self.output_dir,
            **{"DATALOADER.ON_UNREADABLE_IMAGE": "skip", "DATASETS.TEST": "('broken_test',)",
               "DATASETS.COCO_JSON": repr(datasets),
               "INPUT.MIN_SIZE_TEST": str(HEIGHT), "INPUT.MAX_SIZE_TEST": str(WIDTH),
               "SOLVER.MAX_ITER": "2", "SOLVER.IMS_PER_BATCH": "4"},
        )
        proc = self.train_net(opts)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        log = proc.stdout + proc.stderr
        self.assertIn("missing_file", log)  # the dataset report, logged on first use
        left_out = "4 of 10 image(s) cannot be read (missing_file 1, unreadable_image 2, "
        self.assertIn(left_out, log)
        self.assertIn("they are left out of training", log)
        self.assertIn("they are left out of evaluation", log)
        self.assertIn("covers the 6 images evaluated, of 10", log)
        self.assertNotIn("Skipped unreadable image", log)  # none reached the mapper
        self.assertIn("iter: 1", log)
        final = torch.load(os.path.join(self.output_dir, "model_final.pth"), weights_only=False)
        self.assertEqual(final["iteration"], 1)
        with open(os.path.join(self.output_dir, "results.json")) as f:
            self.assertIsNotNone(json.load(f)["bbox"]["AP"])
        with open(os.path.join(self.output_dir, "log.txt")) as f:
            log_file = f.read()
        for text in (proc.stdout, proc.stderr, log_file):
            self.assertNotIn("\x1b[", text)
        self.assertNotIn("torch.jit", proc.stderr)
        self.assertEqual(log_file.count("box(es): clipped ones are kept"), 2)  # once per dataset
        self.assertNotIn("match to images in the file", log_file)  # detectron2's, per load

    def test_fatal_dataset_stops_with_its_report(self):
        json_file, image_root, _ = write_broken_coco(self.root, fatal=True)
        opts = tiny_overrides(json_file, image_root, self.output_dir, **{"SOLVER.MAX_ITER": "1"})
        proc = self.train_net(opts)
        self.assertNotEqual(proc.returncode, 0)
        for kind in ("duplicate_image_id", "duplicate_annotation_id", "unknown_category_id"):
            self.assertIn(kind, proc.stderr)
        self.assertFalse(glob.glob(os.path.join(self.output_dir, "*.pth")))


class TestKillDuringCheckpointThenResume(_TrainNetTest):
    def test_sigkill_mid_save_then_resume(self):
        json_file, image_root, _ = write_broken_coco(self.root)
        # Checkpoints after iterations 1 and 3 (model_0000001, model_0000003); the run is killed
        # while writing model_0000003. Warmup spans all 6 iterations, so the LR differs at
        # every iteration and a schedule restarted from scratch would show.
        opts = tiny_overrides(
            json_file, image_root, self.output_dir,
            **{"DATALOADER.ON_UNREADABLE_IMAGE": "skip", "SOLVER.MAX_ITER": "6",
               "SOLVER.IMS_PER_BATCH": "2", "SOLVER.CHECKPOINT_PERIOD": "2",
               "SOLVER.WARMUP_ITERS": "100"},
        )
        signal_file = os.path.join(self.root, "saving")
        child = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "train_and_stall.py"), "model_0000003.pth",
             signal_file, "--", "--config-file", CONFIG, *opts],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.root, env=self.env,
        )
        self.addCleanup(child.kill)
        deadline = time.monotonic() + 240
        while not os.path.exists(signal_file):
            self.assertIsNone(child.poll(), "training ended before reaching the checkpoint")
            self.assertLess(time.monotonic(), deadline, "training never reached the checkpoint")
            time.sleep(0.1)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)

        with open(os.path.join(self.output_dir, "last_checkpoint")) as f:
            self.assertEqual(f.read(), "model_0000001.pth")
        self.assertFalse(os.path.exists(os.path.join(self.output_dir, "model_0000003.pth")))
        self.assertTrue(glob.glob(os.path.join(self.output_dir, ".model_0000003.pth.*.tmp")))

        proc = self.train_net(opts, "--resume")
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        self.assertIn("Starting training from iteration 2", proc.stdout + proc.stderr)
        for path in glob.glob(os.path.join(self.output_dir, "*.pth")):
            torch.load(path, weights_only=False)  # every checkpoint is whole
        self.assertFalse(glob.glob(os.path.join(self.output_dir, ".*.tmp")))
        final = torch.load(os.path.join(self.output_dir, "model_final.pth"), weights_only=False)
        self.assertEqual(final["iteration"], 5)
        # The LR schedule went on from the checkpoint: 2 steps before it, 4 after.
        self.assertEqual(final["trainer"]["hooks"]["LRScheduler"]["last_epoch"], 6)
        with open(os.path.join(self.output_dir, "metrics.json")) as f:
            metrics = [json.loads(line) for line in f if line.strip()]
        lr_at_5 = [m["lr"] for m in metrics if m.get("iteration") == 5][-1]
        self.assertAlmostEqual(lr_at_5, self.expected_lr_after(5, opts), places=12)
        # The optimizer (momentum buffers, current LR) is part of every checkpoint.
        optimizer = final["trainer"]["_trainer"]["optimizer"]
        self.assertTrue(optimizer["state"])
        self.assertAlmostEqual(
            optimizer["param_groups"][0]["lr"], self.expected_lr_after(6, opts), places=12
        )

    def expected_lr_after(self, steps, opts):
        """The LR of an uninterrupted run after ``steps`` scheduler steps."""
        from detectron2.config import get_cfg
        from detectron2.solver import build_lr_scheduler

        cfg = get_cfg()
        retinafocal.add_retinafocal_config(cfg)
        cfg.merge_from_file(CONFIG)
        cfg.merge_from_list(opts)
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.SOLVER.BASE_LR)
        scheduler = build_lr_scheduler(cfg, optimizer)
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
        return optimizer.param_groups[0]["lr"]


if __name__ == "__main__":
    unittest.main()
