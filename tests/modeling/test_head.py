"""RetinaFocalHead built from a config: its norms, depth, output shapes and config errors."""
import unittest

import torch
from torch import nn

import retinafocal  # noqa: F401
from detectron2.layers import CycleBatchNormList, ShapeSpec
from retinafocal.modeling import build_retinafocal_head

from .common import small_retinanet_cfg

LEVELS = [ShapeSpec(channels=32, stride=s) for s in (8, 16, 32, 64, 128)]  # GN: 32 groups


def head(norm: str = "", num_convs: int = 2, num_classes: int = 3):
    cfg = small_retinanet_cfg(num_classes=num_classes)
    cfg.MODEL.RETINANET.NORM = norm
    cfg.MODEL.RETINANET.NUM_CONVS = num_convs
    return build_retinafocal_head(cfg, LEVELS)


class TestRetinaFocalHead(unittest.TestCase):
    def test_output_shapes_per_level(self):
        h = head(num_convs=3, num_classes=4)
        feats = [torch.randn(2, 32, 16 // 2**i + 1, 12 // 2**i + 1) for i in range(5)]
        logits, deltas = h(feats)
        self.assertEqual([tuple(x.shape) for x in logits],
                         [(2, 9 * 4) + tuple(f.shape[2:]) for f in feats])  # fmt: skip
        self.assertEqual([tuple(x.shape) for x in deltas],
                         [(2, 9 * 4) + tuple(f.shape[2:]) for f in feats])  # fmt: skip
        convs = [m for m in h.cls_subnet if isinstance(m, nn.Conv2d)]
        self.assertEqual([(c.in_channels, c.out_channels) for c in convs], [(32, 32)] * 3)
        self.assertEqual(sum(isinstance(m, nn.ReLU) for m in h.bbox_subnet), 3)

    def test_batch_norm_is_kept_per_level_group_norm_shared(self):
        bn = head("BN")
        norms = [m for m in bn.cls_subnet if isinstance(m, CycleBatchNormList)]
        self.assertEqual(len(norms), 2)
        self.assertEqual([len(n) for n in norms], [5, 5])
        self.assertTrue(all(isinstance(b, nn.BatchNorm2d) for b in norms[0]))
        sync = head("SyncBN")
        norm = next(m for m in sync.cls_subnet if isinstance(m, CycleBatchNormList))
        self.assertIsInstance(norm[0], nn.SyncBatchNorm)
        gn = head("GN")
        self.assertEqual(sum(isinstance(m, nn.GroupNorm) for m in gn.cls_subnet), 2)
        plain = head("")
        self.assertEqual([type(m) for m in plain.cls_subnet],
                         [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU])  # fmt: skip

    def test_level_batch_norm_equals_detectron2s_cycle_list(self):
        """LevelBatchNorm (scriptable) normalises as detectron2's CycleBatchNormList does: call
        i uses the statistics of level i % length, then the shared affine, in training (batch
        statistics, running ones updated per level) and in evaluation (running statistics)."""
        from retinafocal.modeling.head import LevelBatchNorm

        torch.manual_seed(0)
        for affine in (True, False):
            ours = LevelBatchNorm(length=3, bn_class=nn.BatchNorm2d, num_features=4, affine=affine)
            ref = CycleBatchNormList(length=3, bn_class=nn.BatchNorm2d, num_features=4,
                                     affine=affine)  # fmt: skip
            if affine:
                for m in (ours, ref):
                    m.weight.data = torch.tensor([0.5, 2.0, -1.0, 3.0])
                    m.bias.data = torch.tensor([1.0, 0.0, -2.0, 0.25])
            levels = [torch.randn(2, 4, 5, 5) * (i + 1) + i for i in range(3)]
            for mode in ("train", "eval"):
                getattr(ours, mode)(), getattr(ref, mode)()
                for step in range(7):  # more calls than levels: the cycle wraps around
                    x = levels[step % 3]
                    with self.subTest(affine=affine, mode=mode, step=step):
                        torch.testing.assert_close(ours(x), ref(x))
            for i in range(3):  # per-level running statistics, not shared ones
                torch.testing.assert_close(ours[i].running_mean, ref[i].running_mean)
            self.assertFalse(torch.allclose(ours[0].running_mean, ours[2].running_mean))

    def test_wrong_number_of_levels_is_named(self):
        with self.assertRaisesRegex(ValueError, "head built for 5 levels, got 2"):
            head()([torch.randn(1, 32, 4, 4)] * 2)

    def test_unequal_anchors_per_level_are_refused(self):
        cfg = small_retinanet_cfg()
        cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[1.0]] * 4 + [[0.5, 1.0]]
        with self.assertRaises(ValueError) as ctx:
            build_retinafocal_head(cfg, LEVELS)
        self.assertEqual(str(ctx.exception), (
            "MODEL.ANCHOR_GENERATOR gives a different number of anchors per level "
            "([3, 3, 3, 3, 6]); the shared head needs the same number on every level"))  # fmt: skip

    def test_single_level_head(self):
        """One feature level (sizes given once, for every level): A = 2 anchors per location."""
        cfg = small_retinanet_cfg(num_classes=4)
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64]]
        cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[1.0]]
        h = build_retinafocal_head(cfg, LEVELS[:1])
        logits, deltas = h([torch.randn(1, 32, 5, 6)])
        self.assertEqual([tuple(logits[0].shape), tuple(deltas[0].shape)],
                         [(1, 2 * 4, 5, 6), (1, 2 * 4, 5, 6)])  # fmt: skip

    def test_unequal_channels_and_bad_prior_are_refused(self):
        cfg = small_retinanet_cfg()
        with self.assertRaisesRegex(ValueError, "equal channels"):
            build_retinafocal_head(cfg, LEVELS[:4] + [ShapeSpec(channels=4)])
        cfg.MODEL.RETINANET.PRIOR_PROB = 1.0
        with self.assertRaisesRegex(ValueError, "prior_prob"):
            build_retinafocal_head(cfg, LEVELS)


if __name__ == "__main__":
    unittest.main()
