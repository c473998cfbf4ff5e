"""The grid runner with a stand-in train_net.py: results read from the results.json each run
writes, divergence recorded rather than fatal, resumability, dependencies, threads."""
import json
import math
import os
import shutil
import sys
import tempfile
import unittest

import retinafocal  # noqa: F401  (compat first)
from paper.grid import Grid, Row, RunSpec
from paper.results import RunResult, load_results, read_train_results, result_from_outputs
from paper.runner import GridRunner, LaunchOptions

from .fake_train_net import results as fake_results

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
                _spec("c_eval", eval_of="c"), _spec("e", mode="nodet"),
                _spec("f", mode="silent")]  # fmt: skip
        runner, results = self.run_grid(runs)

        a = results["a"]
        self.assertEqual((a.ap, a.ap50, a.ap75), (12.5, 32.5, 11.5))
        self.assertEqual(a.s_per_iter, 0.1034)
        self.assertEqual(a.train_seconds, 6.2)
        self.assertAlmostEqual(a.inference_ms, 12.5)
        self.assertEqual(a.iterations, 60)
        self.assertEqual(a.loss_history, [[19, 2.0, 1.0], [39, 1.0, 0.5], [59, 0.8, 0.4]])
        self.assertFalse(a.diverged)
        # Every evaluation (after 45 of 60 iterations, and the final one), and the losses of
        # single iterations.
        self.assertEqual(a.evaluations, [[45, 10.5], [60, 12.5]])
        self.assertEqual((a.ap_at(45), a.ap_at(60)), (10.5, 12.5))
        self.assertTrue(math.isnan(a.ap_at(30)))
        self.assertEqual((a.raw_first_loss, a.raw_max_loss, a.raw_max_loss_iter), (2.5, 2.5, 0))

        b = results["b"]  # NaN: a result, not a failure
        self.assertTrue(b.diverged)
        self.assertEqual(b.nan_iter, 63)
        self.assertEqual(b.error, "loss_cls not finite at iteration 63; last checkpoint "
                                  f"{os.path.join(self.runs, 'b', 'model_0000059.pth')}")
        self.assertTrue(math.isnan(b.ap))

        self.assertNotIn("c", results)  # a crash is a failure ...
        self.assertIn("exit code 1", runner.failures["c"])
        self.assertIn("boom", runner.failures["c"])
        self.assertIn("skipped", runner.failures["c_eval"])  # ... and its dependents skip
        self.assertIn("without a usable results file", runner.failures["f"])

        d = results["d"]  # exploding logged loss: 30 > 10 x 2
        self.assertTrue(d.exploded and d.diverged)
        self.assertEqual(d.ap, 3.0)

        e = results["e"]  # no detection at all: COCO AP 0, not detectron2's NaN
        self.assertTrue(e.no_detections)
        self.assertEqual((e.ap, e.ap50, e.ap75), (0.0, 0.0, 0.0))
        self.assertFalse(e.diverged)
        self.assertFalse(a.no_detections)

        ev = results["a_eval"]
        self.assertEqual(ev.ap, 11.0)
        self.assertEqual((ev.iterations, ev.loss_history), (0, []))
        self.assertAlmostEqual(ev.inference_ms, 12.5)
        calls = {c[0]: c for c in self.calls()}
        self.assertEqual(calls["a_eval"][2], "1")
        self.assertEqual(calls["a_eval"][3], os.path.join(self.runs, "a", "model_final.pth"))
        self.assertEqual(calls["a"][4], "1")  # OMP_NUM_THREADS

        stored = load_results(Grid("t", runs, []), self.runs)
        self.assertEqual(set(stored), {"a", "b", "d", "e", "a_eval"})
        with open(os.path.join(self.runs, "a", "paper_result.json")) as f:
            self.assertEqual(RunResult.from_json(json.load(f)).ap, 12.5)
        self.assertTrue(any("ETA" in line for line in self.lines))

        # Second pass: finished and diverged runs are not run again; the failures are retried.
        before = len(self.calls())
        _, results2 = self.run_grid(runs)
        new_calls = [c[0] for c in self.calls()[before:]]
        self.assertEqual(new_calls, ["c", "f"])
        self.assertEqual(results2["a"].ap, 12.5)

    def test_changed_spec_runs_again_in_a_clean_directory(self):
        self.run_grid([_spec("a", ap=1.0)])
        stale = os.path.join(self.runs, "a", "stale_marker")
        open(stale, "w").close()
        _, results = self.run_grid([_spec("a", ap=2.0)])
        self.assertEqual(results["a"].ap, 2.0)
        self.assertFalse(os.path.exists(stale))
        self.assertEqual(len(self.calls()), 2)

    def test_a_run_is_not_read_from_an_earlier_attempts_results(self):
        runner, _ = self.run_grid([_spec("f", mode="silent")])
        self.assertIn("without a usable results file", runner.failures["f"])
        # A results.json that says "completed" is left from an earlier attempt; the retry exits
        # without writing its own (the stand-in train_net.py does not remove it).
        with open(os.path.join(self.runs, "f", "results.json"), "w") as f:
            json.dump(fake_results(bbox={"AP": 50.0, "AP50": 70.0, "AP75": 55.0}), f)
        runner, results = self.run_grid([_spec("f", mode="silent")])
        self.assertNotIn("f", results)
        self.assertIn("without a usable results file", runner.failures["f"])

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
        self.assertFalse(os.path.exists(os.path.join(self.runs, "a", "paper_result.json")))
        self.assertTrue(os.path.exists(os.path.join(self.runs, "a", "stdout.1.log")))

    def test_missing_train_net(self):
        with self.assertRaisesRegex(FileNotFoundError, "train_net"):
            GridRunner(Grid("t", [], []), self.runs, LaunchOptions(train_net="/no/train_net.py"))


class TestReadingResults(unittest.TestCase):
    """result_from_outputs on results files written here; stdout.log is only ever shown."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="rf_results_read_")
        self.spec = _spec("x", max_iter=60)

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def write(self, text, stdout="Traceback ...\nKeyError: 'boom'\n"):
        with open(os.path.join(self.dir, "results.json"), "w") as f:
            f.write(text)
        with open(os.path.join(self.dir, "stdout.log"), "w") as f:
            f.write(stdout)

    def read(self, returncode=0):
        return result_from_outputs(self.spec, self.dir, returncode=returncode, wall_seconds=9.0)

    def test_unusable_files_are_failures_that_say_why(self):
        self.assertEqual(read_train_results(self.dir)[0], None)
        self.assertIn("no results.json", read_train_results(self.dir)[1])
        self.write('{"schema": 2, "status": "comp')  # torn
        result, reason = self.read()
        self.assertIsNone(result)
        self.assertIn("cannot be read as JSON", reason)
        self.write(json.dumps({"schema": 1, "status": "completed"}))
        self.assertIn("schema 1; this runner reads schema 2", self.read()[1])
        # A crash without a results file shows the process's last line, unparsed.
        os.remove(os.path.join(self.dir, "results.json"))
        self.assertEqual(self.read(returncode=1), (None, "exit code 1: KeyError: 'boom'"))

    def test_nulls_are_nan_and_a_log_is_never_read(self):
        data = fake_results(bbox={"AP": 7.5, "AP50": None, "AP75": 5.0}, losses=[3.0, None])
        data["s_per_iter"] = None
        # A log that says otherwise changes nothing.
        self.write(json.dumps(data), stdout="copypaste: Task: bbox\ncopypaste: AP\n99.0\n")
        with open(os.path.join(self.dir, "log.txt"), "w") as f:
            f.write("copypaste: Task: bbox\ncopypaste: AP,AP50\ncopypaste: 99.0,99.0\n")
        result, reason = self.read()
        self.assertEqual(reason, "")
        self.assertEqual(result.ap, 7.5)
        self.assertTrue(math.isnan(result.ap50))
        self.assertTrue(math.isnan(result.s_per_iter))
        self.assertEqual(result.inference_ms, 12.5)
        self.assertEqual(result.wall_seconds, 9.0)
        # A null loss (NaN in the window) counts as exploding: the run diverged.
        self.assertTrue(math.isnan(result.loss_history[1][1]))
        self.assertTrue(result.exploded and result.diverged)

    def test_completed_but_failed_afterwards_is_a_failure(self):
        self.write(json.dumps(fake_results(bbox={"AP": 1.0}, losses=[1.0])))
        result, reason = self.read(returncode=3)
        self.assertIsNone(result)
        self.assertIn("exit code 3 after writing results.json", reason)


if __name__ == "__main__":
    unittest.main()
