import json
import math
import unittest

import torch
from torch import nn

import retinafocal  # noqa: F401
from detectron2.layers import FrozenBatchNorm2d
import benchmark_measure as measure
import benchmark_models as models
import benchmark_report as report
from benchmark_setup import DETECTORS, BenchmarkSettings, make_samples
from torchvision_retinanet import torchvision_retinanet

from .common import load_script


class TestBenchmarkParts(unittest.TestCase):
    def test_calibration_normalises_every_frozen_bn_input(self):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 8, 3), FrozenBatchNorm2d(8), nn.ReLU(),
                            nn.Conv2d(8, 4, 3), FrozenBatchNorm2d(4))
        x = torch.randn(2, 3, 12, 12) * 50 + 7
        self.assertEqual(models.calibrate_frozen_batchnorm(net, lambda: net(x)), 2)
        with torch.no_grad():
            first = net[:2](x)
            out = net(x)
        for y in (first, out):
            self.assertTrue(torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(y.shape[1]),
                                           atol=1e-4))
            self.assertTrue(torch.allclose(y.var(dim=(0, 2, 3), unbiased=False),
                                           torch.ones(y.shape[1]), atol=1e-3))

    def test_rounds_rotate_and_warmup_is_dropped(self):
        calls = []
        tasks = {name: (lambda r, n=name: calls.append((r, n))) for name in "abc"}
        times = measure.time_interleaved(tasks, warmup=1, iters=3)
        self.assertEqual([n for _, n in calls],
                         list("abc") + list("bca") + list("cab") + list("abc"))
        for clock in ("wall", "cpu"):
            self.assertEqual({n: len(t) for n, t in times[clock].items()},
                             {"a": 3, "b": 3, "c": 3})

    def test_same_detections_ignores_the_order_of_ties(self):
        dets = {"boxes": torch.tensor([[0.0, 0, 4, 4], [1, 1, 5, 5], [2, 2, 3, 3]]),
                "scores": torch.tensor([0.7, 0.7, 0.6]), "classes": torch.tensor([1, 0, 2])}
        swapped = {k: v[[1, 0, 2]] for k, v in dets.items()}
        self.assertTrue(measure.same_detections(dets, swapped))
        other = dict(dets, classes=torch.tensor([2, 0, 2]))
        self.assertFalse(measure.same_detections(dets, other))
        moved = dict(dets, boxes=dets["boxes"] + torch.tensor([[0.0, 0, 0, 1], [0, 0, 0, 0],
                                                                [0, 0, 0, 0]]))
        self.assertFalse(measure.same_detections(dets, moved))
        # At the lowest kept score, which near-tied candidate made the cut is arbitrary.
        other_last = dict(dets, boxes=dets["boxes"].clone(), scores=dets["scores"] + 3e-6)
        other_last["boxes"][2] += 5
        self.assertTrue(measure.same_detections(dets, other_last))
        self.assertFalse(measure.same_detections(dets, {k: v[:2] for k, v in dets.items()}))

    def test_full_float32_turns_tf32_off_and_restores_the_flags(self):
        flags = lambda: (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        saved = flags()
        try:
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
            with self.assertRaises(KeyError):
                with measure.full_float32():
                    self.assertEqual(flags(), (False, False))
                    raise KeyError("the flags come back after an error too")
            self.assertEqual(flags(), (True, True))
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

    def test_a_failing_task_is_recorded_and_the_others_run_on(self):
        calls = []

        def fails(r):
            raise RuntimeError("CUDA error: out of memory\nmore lines")

        tasks = {"a": lambda r: calls.append(r), "b": fails}
        errors = {}
        times = measure.time_interleaved(tasks, warmup=1, iters=3, errors=errors)
        self.assertEqual(errors, {"b": "RuntimeError: CUDA error: out of memory"})
        self.assertEqual(calls, [0, 1, 2, 3])
        self.assertEqual((len(times["wall"]["a"]), len(times["wall"]["b"])), (3, 0))
        with self.assertRaisesRegex(RuntimeError, "out of memory"):  # unguarded: raises
            measure.time_interleaved(tasks, warmup=0, iters=1)

    def test_table_rows_per_precision_ratios_and_targets(self):
        settings = BenchmarkSettings(precisions=("fp32", "bf16"))
        fp32 = {
            "train_iter_s": {"retinafocal": 0.8, "detectron2": 1.0, "torchvision": 0.5},
            "latency_ms": {"retinafocal": 90.0, "detectron2": 100.0, "torchvision": 180.0},
            "train_peak_mib": {"retinafocal": 700.0, "detectron2": 1000.0, "torchvision": 800.0},
        }
        bf16 = {
            "train_iter_s": {"retinafocal": 0.6, "detectron2": 0.5},
            "latency_ms": {"retinafocal": 55.0, "detectron2": 50.0},
        }
        errors = {"bf16": {"torchvision": "RuntimeError: no bf16 kernel"}}
        table = report.format_table({"fp32": fp32, "bf16": bf16}, settings, errors)
        lines = table.splitlines()
        header = [c.strip() for c in lines[0].split("|")[1:-1]]
        # Ours runs the repository's paper config, which sets the channels-last layout.
        self.assertEqual(header, ["figure", "precision", "retinafocal (NHWC)", "detectron2",
                                  "torchvision", "ours/detectron2", "ours/torchvision"])
        train = [[c.strip() for c in line.split("|")[1:-1]] for line in lines
                 if "training iteration" in line]  # fmt: skip
        # Each ratio against the peer at the same precision; a failed peer says so.
        self.assertEqual(train[0][1:], ["fp32", "0.8", "1", "0.5", "0.80x", "1.60x"])
        self.assertEqual(train[1][1:], ["bf16", "0.6", "0.5", "failed", "1.20x", "nanx"])
        self.assertIn("- torchvision, bf16: RuntimeError: no bf16 kernel", table)
        checks = {(c["precision"], c["figure"], c["peer"]): c
                  for c in report.check_targets({"fp32": fp32, "bf16": bf16})}  # fmt: skip
        self.assertTrue(checks[("fp32", "train_iter_s", "detectron2")]["met"])  # 0.80 <= 0.8
        self.assertFalse(checks[("fp32", "latency_ms", "detectron2")]["met"])  # 0.90 > 0.8
        self.assertTrue(checks[("fp32", "train_peak_mib", "detectron2")]["met"])  # 0.70 <= 0.75
        self.assertFalse(checks[("fp32", "train_iter_s", "torchvision")]["met"])  # 1.6: behind
        self.assertAlmostEqual(checks[("fp32", "train_peak_mib", "torchvision")]["ratio"], 0.875)
        # bf16 targets: ours in bf16 against detectron2 in float32.
        self.assertAlmostEqual(checks[("bf16", "train_iter_s", "detectron2")]["ratio"], 0.6)
        self.assertTrue(checks[("bf16", "train_iter_s", "detectron2")]["met"])  # 0.6 <= 0.7
        self.assertTrue(checks[("bf16", "latency_ms", "detectron2")]["met"])  # 0.55 <= 0.6
        self.assertEqual([c["precision"] for c in report.check_targets({"fp32": {}})],
                         ["fp32"] * 6)  # fmt: skip
        self.assertIsNone(report.check_targets({"fp32": {}})[0]["met"])

    def test_memory_figures_are_medians_of_fresh_processes(self):
        settings = BenchmarkSettings(detectors=("retinafocal", "detectron2"))
        timing = {"wall": {"retinafocal": [1.0], "detectron2": [2.0]},
                  "cpu": {"retinafocal": [1.5], "detectron2": [3.0]}}
        def runs(*peaks):
            return [{"start_rss_mib": 100.0, "peak_rss_mib": p} for p in peaks]
        times = {"train_iter_s": timing, "latency_s": timing, "throughput_batch_s": timing,
                 "detections_per_image": {"retinafocal": 100, "detectron2": 100}, "errors": {}}
        memory = {"retinafocal": {"train": runs(900.0, 700.0, 800.0),
                                  "inference": runs(500.0, 520.0, 510.0)},
                  "detectron2": {"train": runs(1000.0, 1300.0, 1100.0),
                                 "inference": runs(600.0, 600.0, 600.0)}}  # fmt: skip
        figures = report.summarize(times, memory, settings)
        self.assertEqual(figures["train_peak_mib"], {"retinafocal": 800.0, "detectron2": 1100.0})
        self.assertEqual(figures["train_peak_above_start_mib"]["retinafocal"], 700.0)
        self.assertEqual(figures["inference_peak_mib"]["retinafocal"], 510.0)
        self.assertIn("median of 3 processes", report.format_table({"fp32": figures}, settings))
        with self.assertRaisesRegex(ValueError, "memory_repeats"):
            BenchmarkSettings(memory_repeats=0)
        # A detector that failed has no figures.
        failed = report.summarize(dict(times, errors={"detectron2": "E: x"}), memory, settings)
        self.assertEqual(set(failed["latency_ms"]), {"retinafocal"})

    def test_settings_are_validated(self):
        with self.assertRaisesRegex(ValueError, "unknown detector"):
            BenchmarkSettings(detectors=("retinafocal", "yolo"))
        with self.assertRaisesRegex(ValueError, "iters must be 3 numbers >= 1"):
            BenchmarkSettings(iters=(0, 5, 2))
        with self.assertRaisesRegex(ValueError, "iters must be 3 numbers"):
            BenchmarkSettings(iters=(3, 5))
        with self.assertRaisesRegex(ValueError, "warmup must be >= 0"):
            BenchmarkSettings(warmup=-1)
        with self.assertRaisesRegex(ValueError, "regimes must be a non-empty selection"):
            BenchmarkSettings(regimes=("trained",))
        with self.assertRaisesRegex(ValueError, "precisions must be a non-empty selection"):
            BenchmarkSettings(precisions=())
        with self.assertRaisesRegex(ValueError, "'amp' precision .* needs a CUDA device"):
            BenchmarkSettings(precisions=("fp32", "amp"))

    def test_command_line_regimes_and_precisions(self):
        script = load_script("benchmark_detectors")
        parse = script.get_parser().parse_args
        (settings,) = script.settings_from_args(parse([]))
        self.assertEqual((settings.regimes, settings.precisions), (("realistic",), ("fp32",)))
        (settings,) = script.settings_from_args(parse(["--regime", "all", "--precision", "bf16",
                                                       "fp32", "bf16"]))  # fmt: skip
        self.assertEqual(settings.regimes, ("realistic", "all-candidates", "prior"))
        self.assertEqual(settings.precisions, ("bf16", "fp32"))



class TestTorchvisionPeer(unittest.TestCase):
    """torchvision's RetinaNet, built from its public parts as its builder makes it with
    pretrained weights: frozen BatchNorm, stem and layer1 frozen, nothing replaced afterwards."""

    @classmethod
    def setUpClass(cls):
        from torchvision.models.detection import retinanet_resnet50_fpn

        torch.manual_seed(0)
        cls.model = torchvision_retinanet(num_classes=80)
        torch.manual_seed(0)
        cls.reference = retinanet_resnet50_fpn(weights=None, weights_backbone=None,
                                               num_classes=80)  # fmt: skip

    def test_same_weights_as_torchvisions_builder(self):
        ours = self.model.state_dict()
        # Plain BatchNorm counts its batches; FrozenBatchNorm2d has no such buffer.
        ref = {k: v for k, v in self.reference.state_dict().items()
               if not k.endswith("num_batches_tracked")}  # fmt: skip
        self.assertEqual(list(ours), list(ref))
        for name, value in ours.items():
            self.assertTrue(torch.equal(value, ref[name]), name)

    def test_frozen_batchnorm_and_frozen_stem(self):
        from torchvision.ops.misc import FrozenBatchNorm2d as TVFrozenBN

        body, ref_body = self.model.backbone.body, self.reference.backbone.body
        self.assertFalse(any(isinstance(m, nn.BatchNorm2d) for m in body.modules()))
        num_bn = sum(isinstance(m, nn.BatchNorm2d) for m in ref_body.modules())
        self.assertEqual(sum(isinstance(m, TVFrozenBN) for m in body.modules()), num_bn)
        trainable = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad}
        self.assertEqual(trainable, {"layer2", "layer3", "layer4"})
        frozen = {n for n, p in self.model.named_parameters() if not p.requires_grad}
        self.assertTrue(all(n.startswith("backbone.body.") for n in frozen))
        self.assertIn("backbone.body.conv1.weight", frozen)
        self.assertEqual(self.model.head.classification_head.num_classes, 80)

    def test_benchmark_model_keeps_torchvisions_resize_at_factor_1(self):
        model = models.build_detector("torchvision", BenchmarkSettings(height=64, width=96)).model
        self.assertNotIn("resize", vars(model.transform))  # the class's own method runs
        image = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(0))
        model.eval()
        with torch.no_grad():
            batch, _ = model.transform([image])
        mean = torch.tensor(model.transform.image_mean).view(3, 1, 1)
        std = torch.tensor(model.transform.image_std).view(3, 1, 1)
        self.assertEqual(batch.image_sizes, [(64, 96)])
        self.assertTrue(torch.equal(batch.tensors[0, :, :64, :96], (image - mean) / std))


class TestBenchmarkRun(unittest.TestCase):
    """A whole (tiny) run of tools/benchmark_detectors.py: the three R50 RetinaNets on 64 x 96
    images in the realistic regime, float32 and bf16, one round each."""

    @classmethod
    def setUpClass(cls):
        cls.settings = BenchmarkSettings(
            height=64, width=96, train_batch=2, throughput_batch=2, warmup=0, iters=(1, 2, 1),
            memory=False, precisions=("fp32", "bf16"),
        )
        script = load_script("benchmark_detectors")
        cls.result = script.run_benchmark(cls.settings, log=lambda m: None)

    def test_ours_runs_channels_last_from_the_paper_config(self):
        model = models.build_detector("retinafocal", self.settings).model
        self.assertEqual(model.memory_format, "NHWC")
        stem = model.backbone.bottom_up.stem.conv1.weight
        self.assertTrue(stem.is_contiguous(memory_format=torch.channels_last))
        self.assertFalse(stem.is_contiguous())

    def test_ours_gives_detectron2s_detections(self):
        times = self.result["raw"]["times"]
        self.assertTrue(times["same_detections_as_detectron2"])
        self.assertTrue(all(n > 50 for n in times["detections_per_image"].values()))

    def test_realistic_regime_is_not_saturated_and_has_trained_candidate_counts(self):
        for name, stats in self.result["regimes"]["realistic"]["statistics"].items():
            with self.subTest(name):
                # The median image gets the regime's 600 candidates; logits spread as trained.
                self.assertEqual(stats["candidates_per_image"], 600)
                self.assertAlmostEqual(stats["logit_std"], 0.638, places=3)
                self.assertLess(stats["logit_max"], 5)
                self.assertGreater(stats["logit_min"], -15)

    def test_every_precision_ran_without_errors(self):
        runs = self.result["raw"]["runs"]["realistic"]
        self.assertEqual(list(runs), ["fp32", "bf16"])
        for precision, times in runs.items():
            self.assertEqual(times["errors"], {}, precision)
        table = self.result["table"]
        self.assertIn("Regime: realistic; candidates above the score threshold", table)
        self.assertEqual(len([line for line in table.splitlines()
                              if line.startswith("| training iteration, batch 2")]), 2)

    def test_training_steps_are_finite(self):
        losses = self.result["raw"]["times"]["train_losses"]
        self.assertEqual(set(losses), set(DETECTORS))
        self.assertTrue(all(math.isfinite(v) for vs in losses.values() for v in vs))

    def test_figures_ratios_and_json(self):
        figures = self.result["figures"]
        for figure in ("train_iter_s", "latency_ms", "throughput_img_s"):
            self.assertEqual(set(figures[figure]), set(DETECTORS))
            self.assertTrue(all(v > 0 for v in figures[figure].values()))
        ratio = self.result["ratios"]["ours/detectron2"]["latency_ms"]
        self.assertAlmostEqual(
            ratio, figures["latency_ms"]["retinafocal"] / figures["latency_ms"]["detectron2"])
        self.assertEqual(len(self.result["raw"]["times"]["latency_s"]["wall"]["torchvision"]), 2)
        json.dumps(self.result)  # the report is json-ready

    def test_training_runs_ordinary_iterations(self):
        det = models.build_detector("retinafocal", self.settings)
        inputs = det.training_inputs(make_samples(self.settings, 2, 0))
        for _ in range(3):
            det.train_step(inputs)
        self.assertEqual(det.iteration, 3)
        # Imbalance diagnostics at the configured period (20): in iteration 0 only.
        self.assertEqual(det.model.diagnostics_period, 20)
        histories = {k: v for k, v in det.storage.histories().items()
                     if k.startswith("imbalance/")}  # fmt: skip
        self.assertTrue(histories)
        self.assertTrue(all([it for _, it in h.values()] == [0] for h in histories.values()))
        self.assertEqual([it for _, it in det.storage.history("num_pos_anchors").values()],
                         [0, 1, 2])  # fmt: skip

    def test_memory_measured_in_a_fresh_process(self):
        mem = measure.measure_memory("detectron2", "inference", self.settings)
        model = models.build_detector("detectron2", self.settings).model
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        # The subprocess's peak holds at least the model, on top of what it held before.
        self.assertGreater(mem["peak_rss_mib"] - mem["start_rss_mib"], weights / 2**20)


class TestHeadFusionBenchmark(unittest.TestCase):
    """tools/benchmark_head_fusion.py: its fused heads give the per-level head's outputs, so its
    table compares equal work. (Weights of N(0, 0.3): every conv changes the outputs.
    Differences are relative to the largest output.)"""

    def setUp(self):
        import benchmark_head_fusion as fusion

        self.fusion = fusion
        self.variants, self.features = fusion.build(1, 70, 100, channels=8, num_classes=3,
                                                    num_anchors=2, weight_std=0.3)  # fmt: skip
        with torch.no_grad():
            logits, deltas = self.variants[fusion.VARIANTS[0]](self.features)
        self.scale = max(o.abs().max().item() for o in logits + deltas)

    def test_fused_forms_match_the_per_level_head(self):
        self.assertEqual([tuple(f.shape[-2:]) for f in self.features],
                         [(9, 13), (5, 7), (3, 4), (2, 2), (1, 1)])
        for name, difference in self.fusion.max_difference(self.variants, self.features).items():
            self.assertLess(difference / self.scale, 1e-5, name)

    def test_canvas_levels_do_not_leak_into_each_other(self):
        canvas = self.fusion.Canvas(self.fusion.level_sizes(70, 100))
        # P3 9x13 at the left, one zero column, then P4..P7 stacked with one zero row between.
        self.assertEqual(canvas.places, [(0, 0), (0, 14), (6, 14), (10, 14), (13, 14)])
        self.assertEqual((canvas.height, canvas.width), (14, 21))
        self.assertEqual(int(canvas.mask.sum()), sum(h * w for h, w in canvas.sizes))
        # Without the mask after each ReLU, a level's border sees its neighbours' activations.
        canvas.mask = torch.ones_like(canvas.mask)
        head = self.variants[self.fusion.VARIANTS[0]]
        with torch.no_grad():
            got = self.fusion.canvas_head(head, canvas)(self.features)[0]
            want = head(self.features)[0]
        leak = max((a - b).abs().max().item() for a, b in zip(got, want))
        self.assertGreater(leak / self.scale, 1e-2)


class TestCompiledParts(unittest.TestCase):
    """tools/benchmark_compile.py swaps compiled backbone and head in and always back."""

    def test_swaps_in_and_restores(self):
        from benchmark_compile import CompiledParts

        class Det:
            model = nn.Module()

        det = Det()
        det.model.backbone, det.model.head = nn.Identity(), nn.ReLU()
        eager = (det.model.backbone, det.model.head)
        parts = CompiledParts(det)
        with parts.active(True):
            self.assertIs(det.model.backbone, parts.compiled["backbone"])
            self.assertIs(det.model.head, parts.compiled["head"])
            self.assertIsNot(det.model.head, eager[1])
        self.assertEqual((det.model.backbone, det.model.head), eager)
        with self.assertRaises(RuntimeError), parts.active(True):
            raise RuntimeError("a failing compiled call")
        self.assertEqual((det.model.backbone, det.model.head), eager)
        with parts.active(False):
            self.assertEqual((det.model.backbone, det.model.head), eager)


if __name__ == "__main__":
    unittest.main()
