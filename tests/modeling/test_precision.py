"""MODEL.RETINAFOCAL.PRECISION: bf16 autocast of the backbone and head, float32 loss and
decoding, the fallback where bf16 is emulated, and the rule tying it to SOLVER.AMP.ENABLED.
(fp16 needs CUDA: tests/gpu/test_precision.py; the scripted model: test_scripting.py.)"""
import copy
import errno
import logging
import os
import tempfile
import unittest
from unittest import mock

import torch

import retinafocal  # noqa: F401
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import pairwise_iou
from retinafocal.engine import checked_trainer
from retinafocal.modeling import precision

from .common import make_inputs, small_retinanet_cfg
from .test_retinanet import build, train_losses


def spread_logits(model, inputs, candidates: int = 400) -> None:
    """Give a random model distinct scores, as a trained one has: scale the last class conv so
    its logits have std 2 and shift its bias so that about ``candidates`` (anchor, class) pairs
    of the batch score above 0.05. (At the prior init every score is ~0.01 and tied.)"""
    outputs = []
    hook = model.head.cls_score.register_forward_hook(lambda m, i, o: outputs.append(o))
    model.eval()
    with torch.no_grad():
        model(copy.deepcopy(inputs))
        hook.remove()
        raw = torch.cat([(o - model.head.cls_score.bias.view(1, -1, 1, 1)).flatten()
                         for o in outputs])
        scale = 2.0 / raw.std()
        model.head.cls_score.weight.mul_(scale)
        kth = (raw * scale).topk(candidates).values[-1]
        model.head.cls_score.bias.fill_(float(torch.logit(torch.tensor(0.05)) - kth))


def fp32_and_bf16_models():
    fp32 = build(small_retinanet_cfg())
    cfg = small_retinanet_cfg()
    cfg.MODEL.RETINAFOCAL.PRECISION = "bf16"
    bf16 = build(cfg, seed=1)
    spread_logits(fp32, make_inputs())
    bf16.load_state_dict(fp32.state_dict())
    return fp32, bf16


def matched(reference, other, score_atol: float) -> torch.Tensor:
    """(len(reference),) bool: whether each reference detection has a twin in ``other``: same
    class, IoU above 0.97 and a score within ``score_atol``."""
    iou = pairwise_iou(reference.pred_boxes, other.pred_boxes)
    close = (reference.scores[:, None] - other.scores[None, :]).abs() <= score_atol
    same_class = reference.pred_classes[:, None] == other.pred_classes[None, :]
    return ((iou > 0.97) & close & same_class).any(dim=1)


# bf16 runs on any CPU (oneDNN emulates it where the CPU lacks it), so the tests exercise the
# bf16 path everywhere by declaring native support; the fallback test declares its absence.
native_bf16 = mock.patch.object(precision, "cpu_has_native_bf16", return_value=True)


@native_bf16
class TestBF16(unittest.TestCase):
    def setUp(self):
        precision.autocast_dtype.cache_clear()
        self.addCleanup(precision.autocast_dtype.cache_clear)

    def test_backbone_and_head_compute_in_bf16_and_predictions_reach_the_loss_in_fp32(self, _):
        fp32, bf16 = fp32_and_bf16_models()
        seen = []
        # (A forward hook that returns something replaces the output: append returns None.)
        bf16.head.cls_score.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        captured = {}
        original = bf16.classification_loss.forward

        def record(logits, labels, **kwargs):
            captured["logits"] = logits.dtype
            return original(logits, labels, **kwargs)

        with mock.patch.object(bf16.classification_loss, "forward", side_effect=record):
            losses = train_losses(bf16, make_inputs())
        self.assertEqual(set(seen), {torch.bfloat16})
        self.assertEqual(captured["logits"], torch.float32)
        expected = train_losses(fp32, make_inputs())
        for key, value in losses.items():
            self.assertEqual(value.dtype, torch.float32, key)
            # bf16 keeps 8 bits of mantissa: the losses agree to about a percent.
            self.assertTrue(torch.allclose(value, expected[key], rtol=0.03), (key, value))
        sum(losses.values()).backward()
        grad = bf16.head.cls_score.weight.grad
        self.assertEqual(grad.dtype, torch.float32)  # float32 master weights
        self.assertTrue(torch.isfinite(grad).all())

    def test_bf16_detections_match_fp32(self, _):
        fp32, bf16 = fp32_and_bf16_models()
        inputs = make_inputs()
        fp32.eval(), bf16.eval()
        with torch.no_grad():
            expected = fp32(copy.deepcopy(inputs))
            actual = bf16(copy.deepcopy(inputs))
        twins = 0
        confident_total = 0
        for exp, act in zip(expected, actual):
            exp, act = exp["instances"], act["instances"]
            self.assertGreater(len(exp), 20)
            self.assertEqual(act.scores.dtype, torch.float32)
            self.assertEqual(act.pred_boxes.tensor.dtype, torch.float32)
            confident = exp[exp.scores > 0.1]
            self.assertGreater(len(confident), 5)
            twins += int(matched(confident, act, score_atol=0.02).sum())
            confident_total += len(confident)
        # Nearly every confident fp32 detection has a bf16 twin: same class, nearly the same
        # box and score. (A random model has many overlapping near-tied boxes: rounding may let
        # NMS keep a neighbour instead of one of them.)
        self.assertGreaterEqual(twins / confident_total, 0.95, (twins, confident_total))

    def test_emulated_bf16_falls_back_to_fp32_with_a_warning(self, native):
        native.return_value = False
        fp32, bf16 = fp32_and_bf16_models()
        inputs = make_inputs()
        fp32.eval(), bf16.eval()
        with self.assertLogs("retinafocal.modeling.precision", logging.WARNING) as logs:
            with torch.no_grad():
                actual = bf16(copy.deepcopy(inputs))
        self.assertIn("AVX512-BF16", "\n".join(logs.output))
        self.assertIn("MODEL.RETINAFOCAL.PRECISION", "\n".join(logs.output))
        with torch.no_grad():
            expected = fp32(copy.deepcopy(inputs))
        for exp, act in zip(expected, actual):
            self.assertTrue(torch.equal(exp["instances"].scores, act["instances"].scores))


class TestPrecisionKey(unittest.TestCase):
    def test_unknown_value_names_the_key_in_both_forms(self):
        cfg = small_retinanet_cfg()
        cfg.MODEL.RETINAFOCAL.PRECISION = "float16"
        with self.assertRaisesRegex(ValueError, r"MODEL.RETINAFOCAL.PRECISION \(LazyConfig: "
                                    r"model.precision\) must be one of .*'float16'"):
            build(cfg)
        lazy = LazyConfig.load("configs/common/models/retinanet.py").model
        lazy.precision = "half"
        with self.assertRaisesRegex(ValueError, "model.precision.*'half'"):
            instantiate(lazy)

    def test_a_dense_detector_built_without_a_precision_is_fp32(self):
        cfg = small_retinanet_cfg()
        model = build(cfg)
        detector = precision.PrecisionDenseDetector(
            model.backbone, model.head, model.head_in_features,
            pixel_mean=cfg.MODEL.PIXEL_MEAN, pixel_std=cfg.MODEL.PIXEL_STD,
        )
        self.assertEqual(detector.precision, "fp32")

    def test_fp16_on_cpu_is_an_error_that_points_to_bf16(self):
        cfg = small_retinanet_cfg()
        cfg.MODEL.RETINAFOCAL.PRECISION = "fp16"
        model = build(cfg)
        with self.assertRaisesRegex(ValueError, "PRECISION.*'fp16' needs a CUDA device.*bf16"):
            train_losses(model, make_inputs())

    def test_amp_agrees_with_the_precision(self):
        # fp16 needs AMP's gradient scaler; AMP with fp32 is detectron2's own AMP.
        for value, amp in (("fp32", False), ("bf16", False), ("fp16", True), ("fp32", True)):
            precision.check_precision_and_amp(value, amp)
        expected = {
            ("fp16", False): r"PRECISION \(LazyConfig: model.precision\) = 'fp16' trains with "
            r"gradient scaling.*set SOLVER.AMP.ENABLED \(LazyConfig: train.amp.enabled\) = True",
            ("bf16", True): r"SOLVER.AMP.ENABLED \(LazyConfig: train.amp.enabled\) = True is "
            r"detectron2's fp16 mixed precision, but MODEL.RETINAFOCAL.PRECISION .* = 'bf16': "
            r"set AMP to False for bf16, or the precision to 'fp16' \(or 'fp32'\) for AMP$",
        }
        for (value, amp), message in expected.items():
            with self.subTest(value=value, amp=amp):
                with self.assertRaisesRegex(ValueError, message):
                    precision.check_precision_and_amp(value, amp)
        with self.assertRaisesRegex(ValueError, "PRECISION.*'fp8'"):
            precision.check_precision_and_amp("fp8", True)

    def test_the_trainer_checks_the_models_precision(self):
        cfg = small_retinanet_cfg()
        cfg.MODEL.RETINAFOCAL.PRECISION = "bf16"
        model = build(cfg)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        with self.assertRaisesRegex(ValueError, "SOLVER.AMP.ENABLED.*'bf16'"):
            checked_trainer(model, [], optimizer, amp=True)
        # Wrapped (as DDP wraps it), the model inside is checked.
        with self.assertRaisesRegex(ValueError, "SOLVER.AMP.ENABLED.*'bf16'"):
            checked_trainer(_Wrapper(model), [], optimizer, amp=True)
        self.assertIs(checked_trainer(model, [], optimizer, amp=False).model, model)
        model.precision = "fp16"
        with self.assertRaisesRegex(ValueError, "'fp16' trains with gradient scaling"):
            checked_trainer(model, [], optimizer, amp=False)


# /proc/cpuinfo as Linux writes it, one block per core, with bytes that are not ASCII in a model
# name (some vendors write a registered sign in Latin-1, or a broken UTF-8 one).
CPUINFO = (
    b"processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Fake\xae CPU \xe2\x84 @ 2.0GHz\n"
    b"flags\t\t: fpu vme avx512f avx512_bf16 amx_tile\nvmx flags\t: vnmi\n\n"
    b"processor\t: 1\nflags\t\t: fpu\n"
)


class TestCpuinfoFallback(unittest.TestCase):
    """Where PyTorch lacks the CPU feature probes (torch.cpu._is_avx512_bf16_supported and
    _is_amx_tile_supported: older releases that the package still allows), native bf16 is read
    from the flags of /proc/cpuinfo."""

    def setUp(self):
        precision.cpu_has_native_bf16.cache_clear()
        self.addCleanup(precision.cpu_has_native_bf16.cache_clear)
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
            probe = mock.patch.object(torch.cpu, name, None, create=True)
            probe.start()
            self.addCleanup(probe.stop)

    def cpuinfo(self, content):
        """The precision module's open() reads ``content`` (bytes) as /proc/cpuinfo; without
        content, or for any other path, the file does not exist (as on macOS)."""
        folder = tempfile.TemporaryDirectory()
        self.addCleanup(folder.cleanup)
        path = os.path.join(folder.name, "cpuinfo")
        with open(path, "wb") as f:
            f.write(content or b"")

        def fake_open(file, *args, **kwargs):
            if content is None or file != "/proc/cpuinfo":
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", file)
            return open(path, *args, **kwargs)

        return mock.patch.object(precision, "open", fake_open, create=True)

    def test_flags_of_the_first_core(self):
        with self.cpuinfo(CPUINFO):
            flags = precision._cpuinfo_flags()
        self.assertEqual(flags, {"fpu", "vme", "avx512f", "avx512_bf16", "amx_tile"})

    def test_native_bf16_from_the_flags(self):
        cases = {b"avx512f avx512_bf16": True, b"amx_tile amx_bf16": True, b"avx512f": False}
        for flags, native in cases.items():
            with self.subTest(flags=flags), self.cpuinfo(b"flags\t\t: fpu " + flags + b"\n"):
                precision.cpu_has_native_bf16.cache_clear()
                self.assertIs(precision.cpu_has_native_bf16(), native)

    def test_no_cpuinfo_means_no_native_bf16(self):
        with self.cpuinfo(None):
            self.assertEqual(precision._cpuinfo_flags(), set())
            self.assertFalse(precision.cpu_has_native_bf16())
        with self.cpuinfo(b"processor\t: 0\n"):  # no flags line (another architecture)
            self.assertEqual(precision._cpuinfo_flags(), set())


class _Wrapper(torch.nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module


if __name__ == "__main__":
    unittest.main()
