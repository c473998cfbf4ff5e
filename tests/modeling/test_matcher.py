import json
import os
import subprocess
import sys
import textwrap
import unittest
from unittest import mock

import torch

import retinafocal  # noqa: F401
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, pairwise_iou
from retinafocal.modeling.matcher import ANCHOR_MATCHER_REGISTRY, ChunkedIoUMatcher

from .common import small_retinanet_cfg


def paper_matcher(**kwargs) -> ChunkedIoUMatcher:
    kwargs.setdefault("allow_low_quality_matches", True)
    return ChunkedIoUMatcher(thresholds=[0.4, 0.5], labels=[0, -1, 1], **kwargs)


def random_boxes(n: int, g: torch.Generator, scale: float = 100.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * scale
    return torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g) * scale / 2], dim=1)


class TestChunkedIoUMatcher(unittest.TestCase):
    def test_hand_computed(self):
        gt = torch.tensor([[0.0, 0, 10, 10], [100, 100, 130, 130]])
        anchors = torch.tensor(
            [
                [0.0, 0, 10, 10],  # IoU 1.0 with gt0 -> fg
                [0, 0, 10, 12],  # IoU 100/120 = 0.83 -> fg
                [0, 0, 10, 22],  # IoU 100/220 = 0.45 -> ignored
                [50, 50, 60, 60],  # IoU 0 -> bg
                [100, 100, 160, 160],  # IoU 900/3600 = 0.25 with gt1: bg, but gt1's best -> fg
            ]
        )
        matched, labels = paper_matcher()(gt, anchors)
        self.assertEqual(labels.tolist(), [1, 1, -1, 0, 1])
        self.assertEqual(matched[[0, 1, 2, 4]].tolist(), [0, 0, 0, 1])
        _, labels = paper_matcher(allow_low_quality_matches=False)(gt, anchors)
        self.assertEqual(labels.tolist(), [1, 1, -1, 0, 0])

    def test_thresholds_are_lower_bounds(self):
        """IoU exactly 0.5 is foreground and exactly 0.4 ignored (each interval includes its
        lower threshold), as in detectron2."""
        gt = torch.tensor([[0.0, 0, 10, 10]])
        # IoU 0.5, 0.4 and just below 0.4:
        anchors = torch.tensor([[0.0, 0, 10, 20], [0, 0, 10, 25], [0, 0, 10, 26]])
        matcher = paper_matcher(allow_low_quality_matches=False)
        self.assertEqual(matcher(gt, anchors)[1].tolist(), [1, -1, 0])
        labels = ChunkedIoUMatcher(thresholds=[0.4, 0.5], labels=[-1, 0, 1])(gt, anchors)[1]
        self.assertEqual(labels.tolist(), [1, 0, -1])
        self.assertEqual(labels.dtype, torch.int8)

    def test_equals_detectron2_matcher(self):
        g = torch.Generator().manual_seed(0)
        for trial in range(12):  # 36 comparisons; tests/reliability/test_properties.py adds more
            gt = random_boxes(int(torch.randint(1, 30, (1,), generator=g)), g)
            anchors = random_boxes(int(torch.randint(1, 400, (1,), generator=g)), g)
            # Every GT overlaps some anchor (where it does not, we differ from detectron2 on
            # purpose: see test_gt_overlapping_nothing_gets_no_anchor).
            jitter = torch.rand(gt.shape, generator=g) * 0.4  # boxes are >= 1 wide
            anchors = torch.cat([anchors, gt + jitter])
            ref_idx, ref_labels = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)(
                pairwise_iou(Boxes(gt), Boxes(anchors))
            )
            for chunk in (1, 7, 10**9):  # one anchor per chunk, ragged chunks, no chunking
                with self.subTest(trial=trial, chunk=chunk):
                    idx, labels = paper_matcher(chunk_elements=chunk)(gt, anchors)
                    self.assertTrue(torch.equal(idx, ref_idx))
                    self.assertTrue(torch.equal(labels, ref_labels))

    def test_no_gt_all_background(self):
        idx, labels = paper_matcher()(torch.zeros(0, 4), random_boxes(5, torch.Generator()))
        self.assertEqual(labels.tolist(), [0] * 5)
        self.assertEqual(idx.shape, (5,))

    def test_no_anchors(self):
        idx, labels = paper_matcher()(torch.tensor([[0.0, 0, 5, 5]]), torch.zeros(0, 4))
        self.assertEqual(idx.shape, (0,))
        self.assertEqual(labels.shape, (0,))

    def test_gt_overlapping_nothing_gets_no_anchor(self):
        # detectron2 would make every anchor foreground here (all tie at IoU 0).
        gt = torch.tensor([[1000.0, 1000, 1010, 1010]])
        anchors = random_boxes(6, torch.Generator().manual_seed(1))
        _, labels = paper_matcher()(gt, anchors)
        self.assertEqual(labels.tolist(), [0] * 6)

    def test_invalid_arguments(self):
        with self.assertRaisesRegex(ValueError, "increasing"):
            ChunkedIoUMatcher(thresholds=[0.5, 0.4], labels=[0, -1, 1])
        with self.assertRaisesRegex(ValueError, "labels"):
            ChunkedIoUMatcher(thresholds=[0.4, 0.5], labels=[0, 1])

    def test_chunks_hold_at_most_chunk_elements_ious(self):
        """Each chunk of anchors times the M boxes stays within chunk_elements IoU values (one
        anchor at least), and the chunks cover every anchor once."""
        matcher = paper_matcher(chunk_elements=10)
        self.assertEqual(matcher._chunks(3, 7), [(0, 3), (3, 6), (6, 7)])
        self.assertEqual(matcher._chunks(1, 25), [(0, 10), (10, 20), (20, 25)])
        self.assertEqual(matcher._chunks(0, 12), [(0, 10), (10, 12)])
        self.assertEqual(matcher._chunks(15, 3), [(0, 1), (1, 2), (2, 3)])
        self.assertEqual(matcher._chunks(3, 0), [])

    def test_every_iou_block_holds_at_most_chunk_elements(self):
        """Both passes over the anchors (best match of each, then each ground truth's best
        anchors) compute (M, C) IoU blocks of at most chunk_elements values, and see every
        anchor once; the results are detectron2's."""
        g = torch.Generator().manual_seed(3)
        gt = random_boxes(7, g)
        anchors = torch.cat([random_boxes(60, g), gt + 0.1])  # 67 anchors
        block_sizes = []

        def counting_iou(boxes1, boxes2):
            block_sizes.append((len(boxes1), len(boxes2)))
            return pairwise_iou(boxes1, boxes2)

        with mock.patch("retinafocal.modeling.matcher.pairwise_iou", counting_iou):
            idx, labels = paper_matcher(chunk_elements=70)(gt, anchors)
        # 70 // 7 = 10 anchors per block: 7 blocks per pass, the last one of 7 anchors.
        self.assertEqual(block_sizes, 2 * ([(7, 10)] * 6 + [(7, 7)]))
        ref_idx, ref_labels = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)(
            pairwise_iou(Boxes(gt), Boxes(anchors))
        )
        self.assertTrue(torch.equal(idx, ref_idx))
        self.assertTrue(torch.equal(labels, ref_labels))

    def test_results_on_the_anchors_device_not_the_default_device(self):
        """Every output tensor is made on the anchors' device, whatever torch's default device
        is (a user may have set it to a GPU while the anchors are elsewhere). Here the default
        is "meta", the one other device a CPU has: a tensor made there would hold no data."""
        gt = torch.tensor([[0.0, 0, 10, 10], [100, 100, 130, 130]])
        anchors = torch.tensor([[0.0, 0, 10, 12], [0, 0, 10, 22], [50, 50, 60, 60],
                                [100, 100, 160, 160]])  # fmt: skip
        expected = {2: ([0, 0, 0, 1], [1, -1, 0, 1]), 0: ([0, 0, 0, 0], [0, 0, 0, 0])}
        for low_quality in (True, False):
            matcher = paper_matcher(allow_low_quality_matches=low_quality, chunk_elements=4)
            for num_gt, (want_idx, want_labels) in expected.items():
                with self.subTest(low_quality=low_quality, num_gt=num_gt):
                    with torch.device("meta"):
                        idx, labels = matcher(gt[:num_gt], anchors)
                    self.assertEqual((idx.device.type, labels.device.type), ("cpu", "cpu"))
                    self.assertEqual((idx.dtype, labels.dtype), (torch.int64, torch.int8))
                    if not low_quality and num_gt:
                        want_labels = [1, -1, 0, 0]  # IoU 0.25: background without the pass
                    self.assertEqual(idx.tolist(), want_idx)
                    self.assertEqual(labels.tolist(), want_labels)

    def test_built_from_registry(self):
        cfg = small_retinanet_cfg()
        cfg.MODEL.RETINAFOCAL.MATCHER_CHUNK_ELEMENTS = 123
        matcher = ANCHOR_MATCHER_REGISTRY.get(cfg.MODEL.RETINAFOCAL.MATCHER_NAME)(cfg)
        self.assertEqual(matcher.chunk_elements, 123)
        self.assertEqual(matcher.thresholds, [0.4, 0.5])


_MEMORY_PROBE = textwrap.dedent(
    """
    import json, torch
    import retinafocal
    from retinafocal.modeling.matcher import ChunkedIoUMatcher
    def status_kib(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key))
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    def boxes(n):
        xy = torch.rand(n, 2, generator=g) * 1000
        return torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=g) * 200], 1)
    gt, anchors = boxes(500), boxes(250_000)
    m = ChunkedIoUMatcher(thresholds=[0.4, 0.5], labels=[0, -1, 1],
                          allow_low_quality_matches=True, chunk_elements=CHUNK)
    m(gt[:2], anchors[:1000])  # warm up allocator and kernels
    before = status_kib("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) restarts from the current size
    idx, labels = m(gt, anchors)
    peak = status_kib("VmHWM:") - before
    print(json.dumps({"peak_kib": peak, "fg": int((labels == 1).sum())}))
    """
)


class TestMatcherMemoryBound(unittest.TestCase):
    def test_500_gt_250k_anchors_within_bound(self):
        chunk = 1 << 20
        # The growth of the peak resident size during one call, from the size just before it
        # (not from the process's earlier peak, which import-time spikes set). A fixed glibc
        # mmap threshold returns each freed IoU block to the system, so the peak is what the
        # matcher holds at once, not what glibc's dynamic threshold kept cached in its heap.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE.replace("CHUNK", str(chunk))],
            check=True, capture_output=True, text=True, env=env,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        # Docstring bound: 32 bytes per IoU value of a chunk, plus O(R) outputs (idx int64,
        # labels int8, best IoU float32: 13 bytes per anchor).
        bound_kib = (32 * chunk + 13 * 250_000) / 1024
        self.assertGreater(result["fg"], 0)
        self.assertLessEqual(result["peak_kib"], bound_kib)
        # The unchunked IoU matrix alone would be 500 MB.
        self.assertLess(result["peak_kib"], 500e6 / 1024 / 10)
