"""suggest_keys: which valid keys an unknown config key suggests, and in which order."""
import unittest

import retinafocal  # noqa: F401  (applies retinafocal.compat before detectron2 is imported)
from retinafocal.config_overrides import suggest_keys

KEYS = ["SOLVER.BASE_LR", "SOLVER.MAX_ITER", "MODEL.RETINANET.FOCAL_LOSS_GAMMA",
        "TEST.EVAL_PERIOD", "INPUT.FORMAT"]  # fmt: skip


class TestSuggestKeys(unittest.TestCase):
    """Scores: difflib ratio of the full paths, or 0.95 x the ratio of the last components when
    that is >= 0.8; keys scoring >= 0.6 are suggested, best first, at most 3."""

    def test_full_path_similarity(self):
        # "solver.lr" vs "solver.base_lr": ratio 0.78 (last components only 0.44).
        keys = KEYS + ["SOLVER.BASE_LRX", "SOLVER.BASE_LRY", "SOLVER.BASE_LR_END"]
        self.assertEqual(suggest_keys("SOLVER.LR", keys),
                         ["SOLVER.BASE_LR", "SOLVER.BASE_LRX", "SOLVER.BASE_LRY"])  # fmt: skip
        self.assertEqual(len(suggest_keys("SOLVER.LR", keys, n=4)), 4)

    def test_last_component_under_any_prefix(self):
        # Full paths are far apart (ratio < 0.6); the last components are equal.
        self.assertEqual(suggest_keys("AAAA.BBBB.BASE_LR", KEYS), ["SOLVER.BASE_LR"])
        self.assertEqual(suggest_keys("LOSS.NAME", ["MODEL.RETINAFOCAL.LOSS.NAME"]),
                         ["MODEL.RETINAFOCAL.LOSS.NAME"])  # fmt: skip

    def test_thresholds_are_inclusive(self):
        # "form" vs "format": last-component ratio exactly 0.8, so 0.95 x 0.8 = 0.76 counts.
        self.assertEqual(suggest_keys("XXXX.FORM", KEYS), ["INPUT.FORMAT"])
        # "ab.cd" vs "ab.xy": full ratio exactly 0.6.
        self.assertEqual(suggest_keys("AB.CD", ["AB.XY"]), ["AB.XY"])

    def test_weak_last_component_similarity_suggests_nothing(self):
        # "iter" vs "max_iter": ratio 0.67, below 0.8: not a suggestion (the full paths are
        # not close either).
        self.assertEqual(suggest_keys("ITER", KEYS), [])
        self.assertEqual(suggest_keys("LOSS_GAMMA", KEYS), [])

    def test_exact_path_ranks_above_equal_last_component(self):
        # "solver.max_iter": full ratio 0.97; "test.max_iters": last component equal, 0.95.
        self.assertEqual(suggest_keys("SOLVER.MAX_ITERS", ["TEST.MAX_ITERS", "SOLVER.MAX_ITER"]),
                         ["SOLVER.MAX_ITER", "TEST.MAX_ITERS"])  # fmt: skip

    def test_near_last_component_ranks_below_an_equal_one(self):
        # "base_lrs" vs "base_lr": last-component ratio 14 / 15, scored 0.95 x 14 / 15 = 0.887,
        # below the 0.95 of the equal last component (the full paths score 0.71 and 0.74).
        self.assertEqual(suggest_keys("MODEL.BASE_LR", ["SOLVER.BASE_LRS", "SOLVER.BASE_LR"]),
                         ["SOLVER.BASE_LR", "SOLVER.BASE_LRS"])  # fmt: skip

    def test_hand_picked(self):
        keys = ["SOLVER.BASE_LR", "SOLVER.MAX_ITER", "MODEL.RETINANET.FOCAL_LOSS_GAMMA"]
        self.assertEqual(suggest_keys("SOLVER.MAX_ITERS", keys)[0], "SOLVER.MAX_ITER")
        self.assertEqual(suggest_keys("BASE_LR", keys), ["SOLVER.BASE_LR"])  # prefix missing
        self.assertEqual(suggest_keys("MODEL.BASE_LR", keys)[0], "SOLVER.BASE_LR")
        self.assertEqual(
            suggest_keys("MODEL.RETINANET.FOCAL_LOSS_GAMA", keys)[0],
            "MODEL.RETINANET.FOCAL_LOSS_GAMMA",
        )
        self.assertEqual(suggest_keys("COMPLETELY.UNRELATED", keys), [])


if __name__ == "__main__":
    unittest.main()
