"""MODEL.RETINAFOCAL.PRECISION on a CUDA GPU: fp16 and bf16 detections match float32, and fp16
trains in detectron2's AMPTrainer (gradient scaling) with the loss in float32. Marked ``gpu``
(``tools/gpu_check.sh`` runs them); each test skips without CUDA."""
import copy
import unittest
from unittest import mock

import pytest
import torch

import retinafocal  # noqa: F401
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from retinafocal.engine import checked_trainer

from ..modeling.common import make_inputs, small_retinanet_cfg
from ..modeling.test_precision import matched, spread_logits

pytestmark = pytest.mark.gpu
needs_cuda = unittest.skipIf(not torch.cuda.is_available(), "needs a CUDA GPU")


def _fp32_and_reduced(precision: str):
    """A float32 model on the GPU, with spread scores, and its twin at ``precision``."""
    cfg = small_retinanet_cfg()
    cfg.MODEL.DEVICE = "cuda"
    torch.manual_seed(0)
    fp32 = build_model(cfg)
    spread_logits(fp32, make_inputs())
    cfg.MODEL.RETINAFOCAL.PRECISION = precision
    reduced = build_model(cfg)
    reduced.load_state_dict(fp32.state_dict())
    return fp32, reduced


@needs_cuda
class TestReducedPrecisionOnCuda(unittest.TestCase):
    def _check_detections(self, precision: str, score_atol: float):
        fp32, reduced = _fp32_and_reduced(precision)
        inputs = make_inputs()
        fp32.eval(), reduced.eval()
        with torch.no_grad():
            expected, actual = fp32(copy.deepcopy(inputs)), reduced(copy.deepcopy(inputs))
        for exp, act in zip(expected, actual):
            exp, act = exp["instances"].to("cpu"), act["instances"].to("cpu")
            self.assertEqual(act.scores.dtype, torch.float32)
            confident = exp[exp.scores > 0.1]
            self.assertGreater(len(confident), 5)
            share = matched(confident, act, score_atol=score_atol).float().mean().item()
            self.assertGreaterEqual(share, 0.95)

    def test_fp16_detections_match_fp32(self):
        self._check_detections("fp16", score_atol=0.01)

    def test_bf16_detections_match_fp32(self):
        if not torch.cuda.is_bf16_supported():
            self.skipTest("this GPU lacks bf16")
        self._check_detections("bf16", score_atol=0.02)

    def test_fp16_trains_in_amp_trainer_with_the_loss_in_fp32(self):
        _, fp16 = _fp32_and_reduced("fp16")
        fp16.train()
        optimizer = torch.optim.SGD(fp16.parameters(), lr=1e-4)
        data = [copy.deepcopy(make_inputs()) for _ in range(8)]
        trainer = checked_trainer(fp16, data, optimizer, amp=True)
        self.assertTrue(hasattr(trainer, "grad_scaler"))  # detectron2's AMPTrainer
        seen = []
        original = fp16.classification_loss.forward

        def record(logits, labels, **kwargs):
            seen.append(logits.dtype)
            return original(logits, labels, **kwargs)

        before = fp16.head.cls_score.weight.detach().clone()
        with mock.patch.object(fp16.classification_loss, "forward", side_effect=record):
            with EventStorage(0) as storage:
                trainer.storage = storage
                # The scaler starts at 2**16 and skips the steps whose scaled gradients
                # overflow, halving its scale each time: a few steps reach an applied one.
                for trainer.iter in range(8):
                    trainer.run_step()
                    if not torch.equal(before, fp16.head.cls_score.weight.detach()):
                        break
        self.assertEqual(set(seen), {torch.float32})
        self.assertFalse(torch.equal(before, fp16.head.cls_score.weight.detach()))
        self.assertTrue(torch.isfinite(fp16.head.cls_score.weight).all())


if __name__ == "__main__":
    unittest.main()
