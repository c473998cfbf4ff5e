"""Figure 1: the plotted curves are the focal loss -(1 - p)^gamma log(p), computed by
retinafocal.losses.sigmoid_focal_loss."""
import os
import tempfile
import unittest

import numpy as np

import retinafocal  # noqa: F401  (compat first)
from paper.figures import FIGURE1_GAMMAS, focal_loss_curve, plot_figure1

P_T = np.array([1e-4, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999999])


class TestFigure1Curves(unittest.TestCase):
    def test_paper_gammas(self):
        self.assertEqual(FIGURE1_GAMMAS, (0.0, 0.5, 1.0, 2.0, 5.0))

    def test_curve_equals_the_formula(self):
        for gamma in FIGURE1_GAMMAS:
            with self.subTest(gamma=gamma):
                expected = -((1.0 - P_T) ** gamma) * np.log(P_T)
                np.testing.assert_allclose(focal_loss_curve(P_T, gamma), expected, rtol=1e-7,
                                           atol=1e-12)  # fmt: skip

    def test_hand_computed_points(self):
        # p = 0.5, gamma = 2: 0.25 * log 2; p = 0.9, gamma = 2: 0.01 * -log 0.9 (100x below CE).
        self.assertAlmostEqual(float(focal_loss_curve(np.array([0.5]), 2.0)[0]),
                               0.25 * np.log(2.0), places=10)  # fmt: skip
        ce = float(focal_loss_curve(np.array([0.9]), 0.0)[0])
        fl = float(focal_loss_curve(np.array([0.9]), 2.0)[0])
        self.assertAlmostEqual(ce, -np.log(0.9), places=10)
        self.assertAlmostEqual(ce / fl, 100.0, places=6)

    def test_certain_prediction_has_zero_loss(self):
        for gamma in FIGURE1_GAMMAS:
            self.assertEqual(float(focal_loss_curve(np.array([1.0]), gamma)[0]), 0.0)

    def test_larger_gamma_never_increases_the_loss(self):
        curves = np.stack([focal_loss_curve(P_T, g) for g in FIGURE1_GAMMAS])
        self.assertTrue(np.all(np.diff(curves, axis=0) <= 1e-15))

    def test_rejects_probabilities_outside_0_1(self):
        for bad in (0.0, -0.1, 1.5):
            with self.assertRaises(ValueError):
                focal_loss_curve(np.array([bad]), 2.0)

    def test_plot_writes_a_png(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = plot_figure1(os.path.join(tmp, "f1.png"), points=50)
            with open(path, "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")


if __name__ == "__main__":
    unittest.main()
