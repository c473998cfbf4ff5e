"""The model on a CUDA GPU: the same losses and detections as on the CPU (also channels-last on
cuDNN), an AMP training step, the compiled (Triton) loss, the scripted model, and NCCL through
launch's worker. Marked ``gpu`` (``pytest -m gpu``; ``tools/gpu_check.sh`` runs them); each
test skips without CUDA.
"""
import copy
import os
import subprocess
import sys
import unittest

import pytest
import torch
from torch import Tensor

import retinafocal  # noqa: F401
from detectron2.export import scripting_with_instances
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage
from detectron2.utils.testing import assert_instances_allclose, convert_scripted_instances
from retinafocal.losses import FocalLoss

from ..modeling.common import make_inputs, small_retinanet_cfg

pytestmark = pytest.mark.gpu
needs_cuda = unittest.skipIf(not torch.cuda.is_available(), "needs a CUDA GPU")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _NoTF32:
    """fp32 convolutions and matmuls in full precision (cuDNN uses TF32 by default), so that GPU
    and CPU results agree to fp32 rounding."""

    def __enter__(self):
        self.saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.saved


def _cpu_and_cuda_models(memory_format="NCHW"):
    cfg = small_retinanet_cfg()
    cfg.MODEL.RETINAFOCAL.MEMORY_FORMAT = memory_format
    torch.manual_seed(0)
    cpu = build_model(cfg)
    with torch.no_grad():
        cpu.head.cls_score.bias.zero_()  # scores near 0.5: every level has candidates
    return cpu, copy.deepcopy(cpu).to("cuda")


def _losses(model, inputs):
    model.train()
    with EventStorage(0):
        return model(copy.deepcopy(inputs))


@needs_cuda
class TestDetectorOnCuda(unittest.TestCase):
    def _check(self, memory_format):
        cpu, gpu = _cpu_and_cuda_models(memory_format)
        inputs = make_inputs(num_images=2)
        with _NoTF32():
            expected, actual = _losses(cpu, inputs), _losses(gpu, inputs)
            for key in expected:
                torch.testing.assert_close(actual[key].cpu(), expected[key], rtol=1e-4,
                                           atol=1e-6, msg=key)  # fmt: skip
            sum(expected.values()).backward()
            sum(actual.values()).backward()
            name = "head.cls_subnet.0.weight"
            grad_cpu = dict(cpu.named_parameters())[name].grad
            grad_gpu = dict(gpu.named_parameters())[name].grad
            torch.testing.assert_close(grad_gpu.cpu(), grad_cpu, rtol=1e-3, atol=1e-7)
            cpu.eval(), gpu.eval()
            with torch.no_grad():
                out_cpu, out_gpu = cpu(inputs), gpu(inputs)
        for x, y in zip(out_cpu, out_gpu):
            x, y = x["instances"], y["instances"].to("cpu")
            self.assertEqual(len(x), len(y))
            self.assertGreater(len(x), 10)
            # The leading scores only: near-ties further down may resolve differently in NMS.
            torch.testing.assert_close(y.scores[:10], x.scores[:10], rtol=0, atol=1e-4)
        return gpu

    def test_same_losses_gradients_and_detections_as_cpu(self):
        self._check("NCHW")

    def test_channels_last_on_cudnn(self):
        gpu = self._check("NHWC")
        images = gpu.preprocess_image(make_inputs(num_images=1))
        with torch.no_grad():
            features = gpu.backbone(images.tensor)
        self.assertTrue(features["p3"].is_contiguous(memory_format=torch.channels_last))

    def test_amp_training_step(self):
        _, gpu = _cpu_and_cuda_models()
        inputs = make_inputs(num_images=2)
        reference = _losses(gpu, inputs)
        with torch.autocast("cuda", dtype=torch.float16):
            losses = _losses(gpu, inputs)
        self.assertEqual(losses["loss_cls"].dtype, torch.float32)  # the loss computes in fp32
        for key in reference:
            torch.testing.assert_close(losses[key], reference[key], rtol=5e-2, atol=1e-3,
                                       msg=key)  # fmt: skip
        sum(losses.values()).backward()
        grads = [p.grad for p in gpu.parameters() if p.grad is not None]
        self.assertTrue(grads and all(torch.isfinite(g).all() for g in grads))

    def test_scripted_model_equals_eager(self):
        _, gpu = _cpu_and_cuda_models()
        gpu.eval()
        scripted = scripting_with_instances(gpu, {"pred_boxes": Boxes, "scores": Tensor,
                                                  "pred_classes": Tensor})  # fmt: skip
        inputs = [{"image": x["image"]} for x in make_inputs(num_images=2)]  # tensors only
        with torch.no_grad():
            eager = gpu(inputs)[0]["instances"]
            ours = convert_scripted_instances(scripted(inputs)[0])
        ours = detector_postprocess(ours, *inputs[0]["image"].shape[1:])
        assert_instances_allclose(eager, ours)


@needs_cuda
class TestCompiledLossOnCuda(unittest.TestCase):
    def test_compiled_equals_eager(self):
        g = torch.Generator().manual_seed(0)
        logits = torch.randn(2, 20000, 80, generator=g).cuda()
        labels = torch.randint(-1, 81, (2, 20000), generator=g).cuda()
        eager, compiled = FocalLoss(compile=False), FocalLoss(compile=True)
        for dtype in (torch.float32, torch.float16):  # fp16: what AMP feeds it on CUDA
            with self.subTest(dtype=dtype):
                results = []
                for loss_fn in (eager, compiled):
                    x = logits.to(dtype).clone().requires_grad_()  # a fresh leaf each time
                    loss = loss_fn(x, labels)
                    loss.backward()
                    results.append((loss, x.grad.float()))
                (loss_e, grad_e), (loss_c, grad_c) = results
                self.assertEqual(loss_c.dtype, torch.float32)
                torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-3)
                torch.testing.assert_close(grad_c, grad_e, rtol=1e-3, atol=1e-6)
        # It really compiled (a failed compilation falls back to eager with a warning).
        self.assertTrue(compiled.runner._compiled)
        self.assertFalse(compiled.runner._compile_failed)


_NCCL_WORKER = """
import sys, torch, torch.distributed as dist
import retinafocal
from detectron2.engine import launch as _
from detectron2.utils import comm
worker = sys.modules["detectron2.engine.launch"]._distributed_worker

def main():
    assert dist.get_backend() == "nccl", dist.get_backend()
    x = torch.ones(3, device="cuda")
    dist.all_reduce(x)
    assert torch.cuda.current_device() == 0 and comm.get_local_size() == 1
    print("nccl ok", x.tolist())

worker(0, main, 1, 1, 0, sys.argv[1], ())
"""


@needs_cuda
class TestNcclThroughLaunch(unittest.TestCase):
    def test_one_worker_joins_with_nccl(self):
        # detectron2's launch runs a single process without a process group; its worker, which
        # it starts per GPU for more, is called here directly with world size 1.
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO_ROOT, os.environ.get(
            "PYTHONPATH", "")]))  # fmt: skip
        out = subprocess.run([sys.executable, "-c", _NCCL_WORKER, f"tcp://127.0.0.1:{port}"],
                             env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr[-3000:])
        self.assertIn("nccl ok [1.0, 1.0, 1.0]", out.stdout)


if __name__ == "__main__":
    unittest.main()
