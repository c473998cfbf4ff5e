"""The fused losses refuse inputs that do not fit, with a message naming the loss and the
problem, and accept every valid edge case (no anchors, the extreme labels -1 and K)."""

import math
import unittest
from unittest import mock

import torch

import retinafocal  # noqa: F401  (compat before detectron2)
from retinafocal.losses import (
    BalancedCELoss,
    FocalLoss,
    label_focal_loss,
    label_focal_loss_star,
    label_hinge_loss,
)

FUSED_LOSSES = (label_focal_loss, label_focal_loss_star, label_hinge_loss)


class TestLabelChecks(unittest.TestCase):
    def test_logits_must_be_floating_with_a_class_dimension(self):
        labels = torch.zeros(2, dtype=torch.long)
        with self.assertRaisesRegex(TypeError, "FocalLoss: logits must be a floating tensor, "
                                               "got torch.int64"):  # fmt: skip
            FocalLoss()(torch.zeros(2, 3, dtype=torch.long), labels)
        with self.assertRaisesRegex(ValueError, r"FocalLoss: logits must have a class dimension"):
            FocalLoss()(torch.tensor(1.0), torch.tensor(0))

    def test_labels_must_be_integers(self):
        logits = torch.zeros(1, 2, 3)
        for dtype in (torch.float32, torch.bool, torch.complex64):
            with self.subTest(dtype=dtype), self.assertRaisesRegex(
                TypeError, f"integer class indices .*got dtype {dtype}"
            ):
                label_focal_loss(logits, torch.zeros(1, 2, dtype=dtype))
        for dtype in (torch.int8, torch.int32, torch.int64):
            label_focal_loss(logits, torch.zeros(1, 2, dtype=dtype))

    def test_labels_on_another_device(self):
        with self.assertRaisesRegex(ValueError, "labels on meta, logits on cpu"):
            label_focal_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long,
                                                                device="meta"))  # fmt: skip

    def test_a_single_label_out_of_range_is_refused(self):
        for bad in (-2, 4):
            with self.subTest(bad=bad), self.assertRaisesRegex(
                ValueError, rf"\[-1, K=3\].*got values in \[{bad}, {bad}\]"
            ):
                label_focal_loss(torch.zeros(1, 1, 3), torch.tensor([[bad]]))

    def test_out_of_range_messages_in_full(self):
        """Above K the message says where K comes from in a detector; below -1 it does not."""
        logits = torch.zeros(1, 3, 3)
        with self.assertRaises(ValueError) as ctx:
            label_focal_loss(logits, torch.tensor([[0, 4, 3]]))
        self.assertEqual(str(ctx.exception), (
            "label_focal_loss: labels must lie in [-1, K=3] (-1 ignored, K background), got "
            "values in [0, 4]. K is the number of classes, the logits' last dimension: in a "
            "detector, MODEL.RETINANET.NUM_CLASSES (LazyConfig model.num_classes), which the data "
            "exceeds"))  # fmt: skip
        with self.assertRaises(ValueError) as ctx:
            label_focal_loss(logits, torch.tensor([[-2, 3, 3]]))
        self.assertEqual(str(ctx.exception), (
            "label_focal_loss: labels must lie in [-1, K=3] (-1 ignored, K background), got "
            "values in [-2, 3]"))  # fmt: skip

    def test_shape_and_dtype_messages_in_full(self):
        with self.assertRaises(ValueError) as ctx:
            label_focal_loss(torch.zeros(2, 4, 3), torch.zeros(2, 3, dtype=torch.long))
        self.assertEqual(str(ctx.exception), (
            "label_focal_loss: labels shape (2, 3) must equal logits shape without the class "
            "dimension (2, 4)"))  # fmt: skip
        with self.assertRaises(TypeError) as ctx:
            label_focal_loss(torch.zeros(2, 3), torch.zeros(2))
        self.assertEqual(str(ctx.exception), (
            "label_focal_loss: labels must be integer class indices (-1 ignored, K background), "
            "got dtype torch.float32"))  # fmt: skip
        # One class dimension and nothing else is valid: one anchor's logits, one label.
        torch.testing.assert_close(label_focal_loss(torch.zeros(3), torch.tensor(3)),
                                   3 * 0.75 * 0.25 * torch.log(torch.tensor(2.0)))  # fmt: skip

    def test_extreme_valid_labels_and_no_anchors(self):
        logits = torch.zeros(1, 2, 3)
        # -1 (ignored) and K = 3 (background) are valid: 3 negatives at p = 0.5, alpha 0.75.
        value = label_focal_loss(logits, torch.tensor([[-1, 3]]))
        expected = 3 * 0.75 * 0.25 * torch.log(torch.tensor(2.0))
        torch.testing.assert_close(value, expected)
        empty = label_focal_loss(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
        self.assertEqual(empty.item(), 0.0)

    def test_each_loss_names_itself(self):
        logits = torch.zeros(1, 2, 3)
        for fn in FUSED_LOSSES:
            name = fn.__name__
            with self.subTest(loss=name):
                with self.assertRaisesRegex(ValueError, rf"^{name}: labels must lie in"):
                    fn(logits, torch.tensor([[0, 9]]))
                with self.assertRaisesRegex(ValueError, rf"^{name}: reduction must be one of"):
                    fn(logits, torch.tensor([[0, 3]]), reduction="avg")
        for fn in (label_focal_loss, label_focal_loss_star):
            with self.assertRaisesRegex(ValueError, rf"^{fn.__name__}: gamma must be"):
                fn(logits, torch.tensor([[0, 3]]), gamma=-1.0)

    def test_alpha_above_one_is_refused(self):
        logits, labels = torch.zeros(1, 2, 3), torch.tensor([[0, 3]])
        with self.assertRaises(ValueError) as ctx:
            label_focal_loss(logits, labels, alpha=1.5)
        self.assertEqual(str(ctx.exception),
                         "label_focal_loss: alpha must be in [0, 1] (or < 0 to disable), got 1.5")
        # The bound itself is valid: only the positive element counts (p = 0.5, FL = ln 2 / 4).
        value = label_focal_loss(logits, labels, alpha=1.0)
        torch.testing.assert_close(value, 0.25 * torch.log(torch.tensor(2.0)))

    def test_no_grad_methods_and_the_bare_runner_name_themselves(self):
        """A loss's anchor_losses and elementwise_losses name the method; a runner called
        without ``where`` names its own class."""
        loss_fn = FocalLoss()
        logits, labels = torch.zeros(1, 2, 3), torch.tensor([[0, 9]])
        for name, method in (
            ("anchor_losses", loss_fn.anchor_losses),
            ("elementwise_losses", loss_fn.elementwise_losses),
            ("LabelLossRunner", loss_fn.runner.loss),
        ):
            with self.subTest(name), self.assertRaisesRegex(
                ValueError, rf"^{name}: labels must lie in \[-1, K=3\]"
            ):
                method(logits, labels)
        with self.assertRaisesRegex(ValueError, r"^LabelLossRunner: reduction must be one of"):
            loss_fn.runner.loss(logits, torch.tensor([[0, 3]]), "avg")


class TestDefaults(unittest.TestCase):
    def test_eager_unless_asked_to_compile(self):
        """torch.compile costs ~20 s on first use: only compile=True may call it."""
        logits, labels = torch.zeros(2, 3), torch.tensor([0, 3])
        for fn in FUSED_LOSSES:
            for compile, calls in ((None, 0), (True, 1)):
                kwargs = {} if compile is None else {"compile": compile}
                with self.subTest(loss=fn.__name__, compile=compile), mock.patch(
                    "torch.compile", side_effect=lambda f: f
                ) as compiler:
                    fn(logits, labels, **kwargs)
                    self.assertEqual(compiler.call_count, calls)

    def test_runner_sums_by_default(self):
        """Two background anchors at x = 0, K = 2: 4 elements of 0.75 * 0.25 * log 2 each."""
        runner = FocalLoss(alpha=0.25, gamma=2.0).runner
        logits, labels = torch.zeros(2, 2), torch.tensor([2, 2])
        expected = torch.tensor(4 * 0.75 * 0.25 * math.log(2.0))
        torch.testing.assert_close(runner.loss(logits, labels), expected)
        torch.testing.assert_close(runner.loss(logits.clone().requires_grad_(), labels), expected)

    def test_alpha_bounds(self):
        """alpha lies in [0, 1], or < 0 for no weighting. alpha = 1 weights only positives: the
        background anchor costs nothing, the positive at x = 0 costs (1 - p)^gamma log 2."""
        logits, labels = torch.zeros(2, 1), torch.tensor([0, 1])
        for cls, positive_cost in ((FocalLoss, 0.25 * math.log(2.0)),
                                   (BalancedCELoss, math.log(2.0))):  # fmt: skip
            with self.subTest(loss=cls.__name__):
                with self.assertRaises(ValueError) as ctx:
                    cls(alpha=1.5)
                self.assertEqual(str(ctx.exception), (
                    f"{cls.__name__}: alpha (cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA) must be in "
                    "[0, 1], or < 0 to disable the weighting; got 1.5"))  # fmt: skip
                value = cls(alpha=1.0)(logits, labels)
                torch.testing.assert_close(value, torch.tensor(positive_cost))

    def test_focal_loss_star_defaults_are_the_papers(self):
        """gamma = 2, beta = 1: one positive at x = 0 costs -log(sigmoid(1)) / 2."""
        value = label_focal_loss_star(torch.zeros(1, 1), torch.tensor([0]))
        torch.testing.assert_close(value, torch.tensor(math.log1p(math.exp(-1.0)) / 2))

    def test_hinge_margin_bounds(self):
        """The margin lies in (0, 1]: 0 would make every element free; 1 is the largest."""
        with self.assertRaisesRegex(ValueError, r"margin must be in \(0, 1\], got 0.0"):
            label_hinge_loss(torch.zeros(1, 1), torch.tensor([0]), margin=0.0)
        value = label_hinge_loss(torch.zeros(1, 1), torch.tensor([0]), margin=1.0)
        torch.testing.assert_close(value, torch.tensor(0.5))


if __name__ == "__main__":
    unittest.main()
