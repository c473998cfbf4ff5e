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

    def test_plot_draws_one_curve_per_gamma_in_loss_order(self):
        """Each gamma's curve is drawn in its own colour of matplotlib's default cycle; the
        curves stack as in the paper: cross-entropy (gamma 0) highest, gamma 5 lowest."""
        with tempfile.TemporaryDirectory() as tmp:
            rows = _curve_rows(plot_figure1(os.path.join(tmp, "f1.png"), points=50))
            self.assertTrue(all(len(r) > 100 for r in rows), [len(r) for r in rows])
            # Image rows grow downwards: a larger loss is drawn at a smaller row.
            medians = [float(np.median(r)) for r in rows]
            self.assertEqual(medians, sorted(medians), medians)
            only = _curve_rows(plot_figure1(os.path.join(tmp, "f2.png"), gammas=(2.0,)))
            self.assertGreater(len(only[0]), 100)
            self.assertEqual([len(r) for r in only[1:]], [0, 0, 0, 0])


def _curve_rows(path: str):
    """For each of the first five colours of matplotlib's default cycle, the image rows of the
    pixels drawn in it in the middle third of the image's width (p_t around 0.3 to 0.6, where
    the curves are apart and the legend is not)."""
    import matplotlib.image

    image = np.round(matplotlib.image.imread(path)[..., :3] * 255).astype(int)
    width = image.shape[1]
    image = image[:, width // 3 : 2 * width // 3]
    rows = []
    for colour in ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"):
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        rows.append(np.nonzero(np.abs(image - rgb).max(axis=-1) <= 8)[0])
    return rows


if __name__ == "__main__":
    unittest.main()
