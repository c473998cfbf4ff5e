"""The fused runner: chunking never changes a bit, compile state belongs to the loss object, and
a failed compilation falls back to the eager result with one warning."""

import copy
import itertools
import logging
import pickle
import unittest
from unittest import mock

import torch

import retinafocal  # noqa: F401  (compat before detectron2)
from retinafocal.losses import (
    BalancedCELoss,
    FocalLoss,
    FocalLossStar,
    HingeLoss,
    OHEMLoss,
    _fused,
    _terms,
)

TERMS = {
    "focal": _terms.FocalTerms(0.25, 2.0, hard_targets=True),
    "focal_gamma_1.5_no_alpha": _terms.FocalTerms(-1.0, 1.5, hard_targets=True),
    "balanced_ce": _terms.FocalTerms(0.75, 0.0, hard_targets=True),
    "fl_star": _terms.FocalStarTerms(2.0, 1.0),
    "hinge": _terms.HingeTerms(0.5),
}


def _batch(seed, n=2, r=300, k=7, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, r, k, generator=gen) * 6).to(dtype)
    logits[0, 0, 0] = 90.0  # saturated sigmoids stay exact
    labels = torch.randint(-1, k + 1, (n, r), generator=gen)
    return logits, labels


def _everything(runner, logits, labels):
    """Every output of a runner: the three reductions with their gradients, and the no-grad
    per-anchor and per-element losses."""
    out = {}
    for reduction in ("sum", "mean", "none"):
        x = logits.clone().requires_grad_()
        loss = runner.loss(x, labels, reduction)
        upstream = torch.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape).to(loss.dtype)
        (loss * upstream).sum().backward()
        out[reduction] = loss.detach()
        out[reduction + "_grad"] = x.grad
    out["anchor"] = runner.anchor_losses(logits, labels)
    out["element"] = runner.elementwise_losses(logits, labels)
    return out


class TestChunking(unittest.TestCase):
    def test_chunk_size_changes_only_rounding(self):
        """Every result is per row or per element, so chunks of 1 row, of a few rows and the
        whole tensor at once (no chunking) agree; a chunk boundary can only move which elements
        ATen evaluates with its vectorised or its scalar pow/exp/log (a last-ulp difference,
        seen for float64 pow). The default chunking is reproducible bit for bit."""
        self.assertTrue(hasattr(_fused, "_EAGER_CPU_CHUNK_ELEMENTS"))
        tolerance = {
            torch.float32: dict(rtol=1e-6, atol=1e-7),
            torch.float64: dict(rtol=1e-13, atol=1e-15),
            torch.float16: dict(rtol=1e-3, atol=1e-6),
            torch.bfloat16: dict(rtol=8e-3, atol=1e-6),
        }
        for (name, terms), dtype in itertools.product(TERMS.items(), tolerance):
            # 62 rows of 7 classes: 62 one-row chunks, or 12 chunks of 5 rows and one of 2.
            logits, labels = _batch(len(name), r=31, dtype=dtype)
            default = _everything(_fused.LabelLossRunner(terms), logits, labels)
            again = _everything(_fused.LabelLossRunner(terms), logits, labels)
            for chunk in (1, 5 * 7 + 3, 1 << 30):
                with mock.patch.object(_fused, "_EAGER_CPU_CHUNK_ELEMENTS", chunk):
                    other = _everything(_fused.LabelLossRunner(terms), logits, labels)
                for key, value in default.items():
                    with self.subTest(terms=name, dtype=dtype, chunk=chunk, output=key):
                        self.assertTrue(torch.equal(again[key], value))
                        self.assertEqual(other[key].dtype, value.dtype)
                        torch.testing.assert_close(other[key], value, **tolerance[dtype])

    def test_per_anchor_and_elementwise_agree_with_the_loss(self):
        logits, labels = _batch(1)
        runner = _fused.LabelLossRunner(TERMS["focal"])
        out = _everything(runner, logits, labels)
        self.assertTrue(torch.equal(out["element"], out["none"]))
        torch.testing.assert_close(out["anchor"], out["element"].sum(-1))
        torch.testing.assert_close(out["anchor"].sum(), out["sum"])

    def test_loss_value_is_the_same_with_and_without_a_gradient(self):
        """A reported loss (no gradient) equals the training loss bit for bit: both sum the
        per-anchor rows, in the same order (a sum over all elements rounds differently)."""
        logits, labels = _batch(2, r=2000, k=80)
        for name, terms in TERMS.items():
            runner = _fused.LabelLossRunner(terms)
            for reduction in ("sum", "mean"):
                with self.subTest(terms=name, reduction=reduction):
                    trained = runner.loss(logits.clone().requires_grad_(), labels, reduction)
                    reported = runner.loss(logits, labels, reduction)
                    self.assertTrue(torch.equal(reported, trained.detach()))


class TestCompileState(unittest.TestCase):
    """torch.compile is mocked: a real compile costs ~20 s and stays in the benchmark."""

    @staticmethod
    def _broken_compile(fn, *args, **kwargs):
        def run(terms, x, labels, *outs):
            # A kernel that fails part way leaves garbage in the outputs (NaN here, so that the
            # allocator handing back an earlier call's identical values cannot hide it): the
            # eager rerun must overwrite all of it.
            for out in outs:
                out.fill_(float("nan"))
            raise RuntimeError("no C++ compiler")

        return run

    def test_falls_back_to_eager_and_warns_once_per_loss(self):
        logits, labels = _batch(3)
        expected = FocalLoss(alpha=0.25, gamma=2.0)(logits, labels)
        first_loss = FocalLoss(alpha=0.25, gamma=2.0, compile=True)
        second_loss = FocalLoss(alpha=0.25, gamma=2.0, compile=True)
        with mock.patch.object(torch, "compile", self._broken_compile):
            with self.assertLogs(_fused.logger, level=logging.WARNING) as logs:
                results = [
                    first_loss(logits.clone().requires_grad_(), labels),
                    first_loss(logits, labels),
                    first_loss.anchor_losses(logits, labels).sum(),
                    second_loss(logits, labels),
                ]
        # One warning for each loss object: the failure is remembered by the object that met it.
        self.assertEqual(len(logs.records), 2)
        self.assertIn("no C++ compiler", logs.output[0])
        for result in results:
            torch.testing.assert_close(result, expected)

    def test_compiled_functions_belong_to_the_runner(self):
        """The module keeps no compiled function or failure flag of its own; copies and pickles
        of a compiled loss carry its settings but not its compiled functions."""
        for name in ("_compiled", "_compile_failed", "_pool"):
            self.assertFalse(hasattr(_fused, name), name)
        calls = []

        def counting_compile(fn, *args, **kwargs):
            calls.append(fn)
            return fn  # "compiled" = the eager pass itself, whole tensors at once

        logits, labels = _batch(4)
        loss = FocalLoss(alpha=0.25, gamma=2.0, compile=True)
        with mock.patch.object(torch, "compile", counting_compile):
            value = loss(logits, labels)
            loss(logits, labels)
            self.assertEqual(len(calls), 1)  # compiled once, then reused
            clone = copy.deepcopy(loss)
            self.assertIsNone(clone.runner._compiled)
            self.assertTrue(clone.runner.compile)
            torch.testing.assert_close(clone(logits, labels), value)
            self.assertEqual(len(calls), 2)
        restored = pickle.loads(pickle.dumps(loss))
        self.assertIsNone(restored.runner._compiled)
        self.assertEqual(vars(restored.runner.terms), vars(loss.runner.terms))

    def test_compiled_only_when_asked_and_for_two_rows_or_more(self):
        """A single row stays eager (a compiled kernel would specialise on it); the compiled
        passes see whole tensors and give the eager results."""
        calls = []

        def counting_compile(fn, *args, **kwargs):
            calls.append(fn)
            return fn

        logits, labels = _batch(5, n=1, r=2)
        with mock.patch.object(torch, "compile", counting_compile):
            eager = FocalLoss(alpha=0.25, gamma=2.0)
            self.assertEqual(eager(logits, labels).dtype, torch.float32)
            self.assertEqual(calls, [])
            compiled = FocalLoss(alpha=0.25, gamma=2.0, compile=True)
            one_row = compiled(logits[:, :1], labels[:, :1])
            self.assertEqual(calls, [])
            torch.testing.assert_close(one_row, eager(logits[:, :1], labels[:, :1]))
            torch.testing.assert_close(compiled(logits, labels), eager(logits, labels))
            self.assertEqual(len(calls), 1)

    def test_the_warning_names_the_pass_the_device_and_the_reason(self):
        for error, reason in ((RuntimeError("no C++ compiler\nsecond line"),
                               "RuntimeError: no C++ compiler"),
                              (OSError(), "OSError: ")):  # fmt: skip

            def broken(fn, *args, **kwargs):
                def run(*a, **k):
                    raise error

                return run

            logits, labels = _batch(6)
            with self.subTest(reason=reason), mock.patch.object(torch, "compile", broken):
                with self.assertLogs(_fused.logger, level=logging.WARNING) as logs:
                    FocalLoss(compile=True)(logits.clone().requires_grad_(), labels)
                self.assertEqual(logs.records[0].getMessage(), (
                    "retinafocal.losses: torch.compile of the fused loss (rows_and_grad) failed "
                    f"on cpu; this loss runs eagerly from now on. Reason: {reason}"
                ))  # fmt: skip
        # Each kind of pass names itself.
        x = logits.clone().requires_grad_()
        calls = {
            "rows": lambda loss: loss.anchor_losses(logits, labels),
            "elementwise": lambda loss: loss.elementwise_losses(logits, labels),
            "elementwise_and_grad": lambda loss: loss.runner.loss(x, labels, "none"),
        }
        with mock.patch.object(torch, "compile", broken):
            for name, call in calls.items():
                with self.subTest(name), self.assertLogs(_fused.logger, logging.WARNING) as logs:
                    call(FocalLoss(compile=True))
                self.assertIn(f"fused loss ({name}) failed", logs.output[0])

    def test_compiled_results_are_used_and_every_size_shares_a_kernel(self):
        """What the compiled pass writes is the result (no second, eager pass), and the anchor
        dimension of every tensor it gets is marked dynamic, so any image size reuses it."""
        marked = []

        def fake_compile(fn, *args, **kwargs):
            def run(terms, x, labels, *outs):
                for out in outs:
                    out.fill_(0.5)

            return run

        logits, labels = _batch(7, n=1, r=4, k=3)
        with mock.patch.object(torch, "compile", fake_compile), mock.patch.object(
            torch._dynamo, "mark_dynamic", lambda t, dim: marked.append((tuple(t.shape), dim))
        ):
            x = logits.clone().requires_grad_()
            loss = FocalLoss(compile=True)(x, labels)
            loss.backward()
        self.assertEqual(loss.item(), 0.5 * 4)  # 4 rows, each "0.5"
        self.assertTrue(torch.equal(x.grad, torch.full_like(x, 0.5)))
        self.assertEqual(marked, [((4, 3), 0), ((4,), 0), ((4,), 0), ((4, 3), 0)])

    def test_every_fused_loss_owns_a_runner(self):
        for loss in (FocalLoss(), FocalLossStar(), HingeLoss()):
            self.assertIsInstance(loss.runner, _fused.LabelLossRunner)
        for cls in (FocalLoss, BalancedCELoss, FocalLossStar, HingeLoss):
            self.assertTrue(cls(compile=True).runner.compile, cls.__name__)
        ohem = OHEMLoss(compile=True)
        self.assertTrue(ohem._scorer.compile)
        self.assertFalse(ohem._kept.compile)


if __name__ == "__main__":
    unittest.main()
