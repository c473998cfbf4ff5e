"""The set-up the checkpoint tests share: a temporary save folder and a small seeded model with
its optimizer and LR scheduler."""
import shutil
import tempfile
import unittest

import torch


class CheckpointTestCase(unittest.TestCase):
    """``self.dir`` (removed after the test), ``self.model`` (Linear 4 -> 3, seed 0),
    ``self.optimizer`` (SGD with momentum) and ``self.scheduler`` (StepLR)."""

    PREFIX = "retinafocal_ckpt_"

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix=self.PREFIX)
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 3)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.5)
