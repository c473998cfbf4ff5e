"""The grid runner with a stand-in train_net.py: results parsed from detectron2's outputs,
divergence recorded rather than fatal, resumability, dependencies, threads."""
import json
import math
import os
import shutil
import sys
import tempfile
import unittest

import retinafocal  # noqa: F401  (compat first)
from paper.grid import Grid, Row, RunSpec
from paper.runner import (
    GridRunner,
    LaunchOptions,
    RunResult,
    load_results,
    parse_log,
    read_metrics,
)

FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_train_net.py")


def _spec(name, mode="ok", ap=10.0, eval_of=None, max_iter=60):
    opts = ("FAKE.MODE", mode, "FAKE.AP", str(ap))
    return RunSpec(name, "unused.yaml", opts, max_iter=0 if eval_of else max_iter,
                   eval_of=eval_of, description=name)  # fmt: skip


class TestRunner(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="rf_runner_")
        self.runs = os.path.join(self.tmp, "runs")
        self.launch = LaunchOptions(train_net=FAKE, python=sys.executable, threads=1)
        self.lines = []

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def calls(self):
        path = os.path.join(self.runs, "calls.txt")
        if not os.path.isfile(path):
            return []
        with open(path) as f:
            return [line.split() for line in f]

    def run_grid(self, runs, jobs=1, only=None):
        grid = Grid("t", runs, [Row("1a", runs[0].name, "x")])
        runner = GridRunner(grid, self.runs, self.launch, jobs=jobs, only=only,
                            log=self.lines.append)  # fmt: skip
        return runner, runner.run()

    def test_results_resume_and_dependencies(self):
        runs = [_spec("a", ap=12.5), _spec("b", mode="diverge"), _spec("c", mode="crash"),
                _spec("d", mode="explode", ap=3.0), _spec("a_eval", eval_of="a", ap=11.0),
                _spec("c_eval", eval_of="c"), _spec("e", mode="nodet")]  # fmt: skip
        runner, results = self.run_grid(runs)

        a = results["a"]
        self.assertEqual((a.ap, a.ap50, a.ap75), (12.5, 32.5, 11.5))
        self.assertEqual(a.s_per_iter, 0.1034)
        self.assertEqual(a.train_seconds, 7.0)
        self.assertAlmostEqual(a.inference_ms, 12.5)
        self.assertEqual(a.iterations, 60)
        self.assertEqual([h[1] for h in a.loss_history], [2.0, 1.0, 0.8])
        self.assertFalse(a.diverged)

        b = results["b"]  # NaN: a result, not a failure
        self.assertTrue(b.diverged)
        self.assertEqual((b.nan_iter, b.nan_iter_exact), (63, True))
        self.assertIn("FloatingPointError", b.error)
        self.assertTrue(math.isnan(b.ap))

        self.assertNotIn("c", results)  # a crash is a failure ...
        self.assertIn("exit code 1", runner.failures["c"])
        self.assertIn("boom", runner.failures["c"])
        self.assertIn("skipped", runner.failures["c_eval"])  # ... and its dependents skip

        d = results["d"]  # exploding logged loss: 30 > 10 x 2
        self.assertTrue(d.exploded and d.diverged)
        self.assertEqual(d.ap, 3.0)

        e = results["e"]  # no detection at all: COCO AP 0, not detectron2's NaN
        self.assertTrue(e.no_detections)
        self.assertEqual((e.ap, e.ap50, e.ap75), (0.0, 0.0, 0.0))
        self.assertFalse(e.diverged)
        self.assertFalse(a.no_detections)

        ev = results["a_eval"]
        self.assertEqual(ev.ap, 11.0)  # from the log's copypaste block
        self.assertAlmostEqual(ev.inference_ms, 12.5)
        calls = {c[0]: c for c in self.calls()}
        self.assertEqual(calls["a_eval"][2], "1")
        self.assertEqual(calls["a_eval"][3], os.path.join(self.runs, "a", "model_final.pth"))
        self.assertEqual(calls["a"][4], "1")  # OMP_NUM_THREADS

        stored = load_results(Grid("t", runs, []), self.runs)
        self.assertEqual(set(stored), {"a", "b", "d", "e", "a_eval"})
        with open(os.path.join(self.runs, "a", "result.json")) as f:
            self.assertEqual(RunResult.from_json(json.load(f)).ap, 12.5)
        self.assertTrue(any("ETA" in line for line in self.lines))

        # Second pass: finished and diverged runs are not run again; the crash is retried.
        before = len(self.calls())
        _, results2 = self.run_grid(runs)
        new_calls = [c[0] for c in self.calls()[before:]]
        self.assertEqual(new_calls, ["c"])
        self.assertEqual(results2["a"].ap, 12.5)

    def test_changed_spec_runs_again_in_a_clean_directory(self):
        self.run_grid([_spec("a", ap=1.0)])
        stale = os.path.join(self.runs, "a", "stale_marker")
        open(stale, "w").close()
        _, results = self.run_grid([_spec("a", ap=2.0)])
        self.assertEqual(results["a"].ap, 2.0)
        self.assertFalse(os.path.exists(stale))
        self.assertEqual(len(self.calls()), 2)

    def test_parallel_jobs_and_only(self):
        runs = [_spec(n, ap=i) for i, n in enumerate(("a", "b", "c"))]
        _, results = self.run_grid(runs, jobs=2, only=["a", "c"])
        self.assertEqual(set(results), {"a", "c"})
        with self.assertRaisesRegex(KeyError, "nope"):
            GridRunner(Grid("t", runs, []), self.runs, self.launch, only=["nope"])

    def test_other_machines_run_in_step_but_write_no_results(self):
        self.launch.machine_rank = 1
        runs = [_spec("a"), _spec("a_eval", eval_of="a")]
        runner, _ = self.run_grid(runs)
        self.assertEqual([c[0] for c in self.calls()], ["a", "a_eval"])
        self.assertEqual(runner.failures, {})
        self.assertFalse(os.path.exists(os.path.join(self.runs, "a", "result.json")))
        self.assertTrue(os.path.exists(os.path.join(self.runs, "a", "stdout.1.log")))

    def test_missing_train_net(self):
        with self.assertRaisesRegex(FileNotFoundError, "train_net"):
            GridRunner(Grid("t", [], []), self.runs, LaunchOptions(train_net="/no/train_net.py"))


class TestParsing(unittest.TestCase):
    def test_read_metrics_merges_iterations_and_skips_a_torn_line(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "metrics.json")
            with open(path, "w") as f:
                f.write('{"iteration": 19, "total_loss": 1.0}\n{"iteration": 0, "x": 1}\n'
                        '{"iteration": 19, "total_loss": 2.0, "lr": 0.1}\n{"iteration": 39, "tot')
            records = read_metrics(path)
        self.assertEqual(records, [{"iteration": 0, "x": 1},
                                   {"iteration": 19, "total_loss": 2.0, "lr": 0.1}])

    def test_parse_log_takes_the_last_bbox_block(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "log.txt")
            with open(path, "w") as f:
                f.write("copypaste: Task: bbox\ncopypaste: AP,AP50\ncopypaste: 1.0,2.0\n"
                        "copypaste: Task: segm\ncopypaste: AP\ncopypaste: 9.0\n"
                        "copypaste: Task: bbox\ncopypaste: AP,AP50\ncopypaste: 3.5,nan\n"
                        "Total training time: 1 day, 2:03:04 (0:00:10 on hooks)\n"
                        "Loss became infinite or NaN at iteration=17!\n")
            out = parse_log(path)
        self.assertEqual(out["train_seconds"], 86400 + 2 * 3600 + 3 * 60 + 4)
        self.assertEqual(out["nan_iter"], 17)  # detectron2's own message
        self.assertEqual(out["bbox"]["AP"], 3.5)
        self.assertTrue(math.isnan(out["bbox"]["AP50"]))


if __name__ == "__main__":
    unittest.main()
