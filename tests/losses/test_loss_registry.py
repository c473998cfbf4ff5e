"""Every registered loss builds from a config, honours its keys and the call contract."""

import unittest

import torch

# isort: off
import retinafocal  # noqa: F401  (compat before detectron2)
from detectron2.config import get_cfg

# isort: on
from retinafocal import add_retinafocal_config
from retinafocal.losses import (
    CLASSIFICATION_LOSS_REGISTRY,
    BalancedCELoss,
    FocalLoss,
    FocalLossStar,
    HingeLoss,
    OHEMLoss,
    build_classification_loss,
    label_focal_loss,
    label_focal_loss_star,
    label_hinge_loss,
)

EXPECTED = {
    "FocalLoss": (FocalLoss, False),
    "BalancedCELoss": (BalancedCELoss, False),
    "FocalLossStar": (FocalLossStar, False),
    "HingeLoss": (HingeLoss, False),
    "OHEMLoss": (OHEMLoss, True),
}


def _cfg(name):
    cfg = get_cfg()
    add_retinafocal_config(cfg)
    cfg.MODEL.RETINAFOCAL.LOSS.NAME = name
    return cfg


def _batch(seed=0, n=2, r=40, k=3):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, r, k, generator=gen) * 2
    labels = torch.randint(-1, k + 1, (n, r), generator=gen)
    labels[:, 0] = 0  # at least one positive per image
    xy = torch.rand(r, 2, generator=gen) * 100
    boxes = torch.cat([xy, xy + 10 + torch.rand(r, 2, generator=gen) * 20], dim=1)
    return logits, labels, boxes


class TestRegistry(unittest.TestCase):
    def test_every_name_is_registered(self):
        self.assertEqual({name for name, _ in CLASSIFICATION_LOSS_REGISTRY}, set(EXPECTED))

    def test_builds_each_loss_and_follows_the_contract(self):
        logits, labels, boxes = _batch()
        for name, (cls, self_normalizing) in EXPECTED.items():
            with self.subTest(name=name):
                loss_fn = build_classification_loss(_cfg(name))
                self.assertIs(type(loss_fn), cls)
                self.assertIs(loss_fn.self_normalizing, self_normalizing)
                x = logits.half().requires_grad_()
                loss = loss_fn(x, labels, anchor_boxes=boxes)
                self.assertEqual(loss.shape, ())
                self.assertEqual(loss.dtype, torch.float32)
                loss.backward()
                self.assertEqual(x.grad.dtype, torch.float16)
                self.assertTrue(torch.isfinite(x.grad).all())
                self.assertTrue((x.grad[labels < 0] == 0).all())
                # What the diagnostics read: each element's part of the value, summing to it.
                elements = loss_fn.elementwise_losses(x, labels, anchor_boxes=boxes)
                self.assertEqual(elements.shape, x.shape)
                self.assertEqual(elements.dtype, torch.float32)
                self.assertFalse(elements.requires_grad)
                self.assertTrue((elements[labels < 0] == 0).all())
                self.assertTrue((elements >= 0).all())
                torch.testing.assert_close(elements.sum(), loss.detach())
                per_anchor = loss_fn.anchor_losses(x, labels)
                self.assertEqual(per_anchor.shape, labels.shape)
                self.assertFalse(per_anchor.requires_grad)
                self.assertTrue((per_anchor[labels < 0] == 0).all())
                if not self_normalizing:
                    torch.testing.assert_close(per_anchor, elements.sum(-1))

    def test_config_values_reach_the_losses(self):
        logits, labels, _ = _batch(1)
        cfg = _cfg("FocalLoss")
        cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA = 0.6
        cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA = 1.5
        torch.testing.assert_close(
            build_classification_loss(cfg)(logits, labels),
            label_focal_loss(logits, labels, alpha=0.6, gamma=1.5),
        )
        cfg.MODEL.RETINAFOCAL.LOSS.NAME = "BalancedCELoss"
        torch.testing.assert_close(
            build_classification_loss(cfg)(logits, labels),
            label_focal_loss(logits, labels, alpha=0.6, gamma=0.0),
        )
        cfg.MODEL.RETINAFOCAL.LOSS.NAME = "FocalLossStar"
        cfg.MODEL.RETINAFOCAL.LOSS.FL_STAR_GAMMA = 3.0
        cfg.MODEL.RETINAFOCAL.LOSS.FL_STAR_BETA = -0.5
        torch.testing.assert_close(
            build_classification_loss(cfg)(logits, labels),
            label_focal_loss_star(logits, labels, gamma=3.0, beta=-0.5),
        )
        cfg.MODEL.RETINAFOCAL.LOSS.NAME = "HingeLoss"
        cfg.MODEL.RETINAFOCAL.LOSS.HINGE_MARGIN = 0.7
        torch.testing.assert_close(
            build_classification_loss(cfg)(logits, labels),
            label_hinge_loss(logits, labels, margin=0.7),
        )
        cfg.MODEL.RETINAFOCAL.LOSS.NAME = "OHEMLoss"
        cfg.MODEL.RETINAFOCAL.LOSS.OHEM_BATCH_SIZE_PER_IMAGE = 16
        cfg.MODEL.RETINAFOCAL.LOSS.OHEM_NEG_POS_RATIO = 3.0
        cfg.MODEL.RETINAFOCAL.LOSS.OHEM_NMS_THRESH = 0.7
        ohem = build_classification_loss(cfg)
        self.assertEqual(
            (ohem.batch_size_per_image, ohem.neg_pos_ratio, ohem.nms_thresh), (16, 3.0, 0.7)
        )

    def test_both_construction_paths_agree(self):
        logits, labels, boxes = _batch(2)
        cfg = _cfg("OHEMLoss")
        from_cfg = OHEMLoss(cfg)
        direct = OHEMLoss(batch_size_per_image=128, neg_pos_ratio=0.0, nms_thresh=0.5)
        torch.testing.assert_close(
            from_cfg(logits, labels, anchor_boxes=boxes), direct(logits, labels, anchor_boxes=boxes)
        )
        torch.testing.assert_close(
            FocalLoss(cfg)(logits, labels), FocalLoss(alpha=0.25, gamma=2.0)(logits, labels)
        )

    def test_bad_config_names_the_key(self):
        cfg = _cfg("FocalLos")
        with self.assertRaisesRegex(KeyError, r"LOSS.NAME='FocalLos'.*'FocalLoss'"):
            build_classification_loss(cfg)
        # (loss, config key, bad value): the error names the key.
        for name, key, bad in (
            ("FocalLoss", "MODEL.RETINANET.FOCAL_LOSS_GAMMA", -1.0),
            ("FocalLossStar", "MODEL.RETINAFOCAL.LOSS.FL_STAR_GAMMA", 0.0),
            ("HingeLoss", "MODEL.RETINAFOCAL.LOSS.HINGE_MARGIN", 0.0),
            ("OHEMLoss", "MODEL.RETINAFOCAL.LOSS.OHEM_NMS_THRESH", 0.0),
            ("OHEMLoss", "MODEL.RETINAFOCAL.LOSS.OHEM_NEG_POS_RATIO", -1.0),
        ):
            cfg = _cfg(name)
            cfg.merge_from_list([key, bad])
            with self.subTest(key), self.assertRaisesRegex(ValueError, key.rpartition(".")[2]):
                build_classification_loss(cfg)
        # B = 3 at 1:3 leaves floor(3 / 4) = 0 positives, so no anchor would ever be picked.
        cfg = _cfg("OHEMLoss")
        cfg.merge_from_list(["MODEL.RETINAFOCAL.LOSS.OHEM_BATCH_SIZE_PER_IMAGE", 3,
                             "MODEL.RETINAFOCAL.LOSS.OHEM_NEG_POS_RATIO", 3.0])  # fmt: skip
        with self.assertRaisesRegex(ValueError, r"SIZE_PER_IMAGE >= 1 \+ ratio; got 3.0 and 3"):
            build_classification_loss(cfg)
        cfg.merge_from_list(["MODEL.RETINAFOCAL.LOSS.OHEM_BATCH_SIZE_PER_IMAGE", 4])
        self.assertEqual(build_classification_loss(cfg).batch_size_per_image, 4)


class TestPrintedSettings(unittest.TestCase):
    """What ``print(model)`` shows of each loss: its parameters as configured."""

    def test_reprs(self):
        self.assertEqual(repr(FocalLoss(alpha=0.5, gamma=1.0, compile=True)),
                         "FocalLoss(alpha=0.5, gamma=1.0, compile=True)")  # fmt: skip
        self.assertEqual(repr(BalancedCELoss(alpha=0.75)),
                         "BalancedCELoss(alpha=0.75, gamma=0.0, compile=False)")  # fmt: skip
        self.assertEqual(repr(FocalLossStar(gamma=3.0, beta=0.5)),
                         "FocalLossStar(gamma=3.0, beta=0.5, compile=False)")  # fmt: skip
        self.assertEqual(repr(HingeLoss(margin=0.3)), "HingeLoss(margin=0.3, compile=False)")
        self.assertEqual(
            repr(OHEMLoss(batch_size_per_image=64, neg_pos_ratio=3, nms_thresh=0.7, compile=True)),
            "OHEMLoss(batch_size_per_image=64, neg_pos_ratio=3.0, nms_thresh=0.7, compile=True)",
        )


if __name__ == "__main__":
    unittest.main()
