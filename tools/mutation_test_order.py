"""pytest plugin for ``make mutation``: run each mutant's tests fastest first.

mutmut runs the tests mapped to a mutant with ``-x``, so a killed mutant costs the tests that run
before the first one that fails. Its fork-per-mutant runner orders them by the durations it
measured in its stats run, fastest first. Its fork-server runner (``process_isolation =
"forkserver"``, which this project needs) does not in mutmut 3.8.1: it passes them to pytest in
the iteration order of a Python set, which changes with each run's string hashing. A mutant of
the focal-loss terms then often runs seconds of whole-model tests before a millisecond
hand-computed test that kills it.

Loaded with ``-p tools.mutation_test_order`` from ``[tool.mutmut] pytest_add_cli_args`` (mutmut
puts ``mutants/`` on ``sys.path``); ``make test`` does not load it. Inside a mutmut worker (the
environment variable ``MUTANT_UNDER_TEST`` names a mutant) it sorts the collected tests by
``duration_by_test`` of ``mutmut-stats.json`` in pytest's root directory (``mutants/``); a test
missing there keeps its place after the timed ones. In every other pytest run, including mutmut's
stats and clean runs, it changes nothing. Where mutmut already passes them sorted, sorting again
changes nothing either.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Sequence

import pytest

STATS_FILE = "mutmut-stats.json"
#: mutmut's mutant names are ``<module>.<function>__mutmut_<n>``; its other phases set
#: MUTANT_UNDER_TEST to "", "stats", "fail" or "list_all_tests".
MUTANT_MARKER = "__mutmut_"


def under_mutant(environ: Dict[str, str]) -> bool:
    """Whether this pytest run tests one of mutmut's mutants."""
    return MUTANT_MARKER in environ.get("MUTANT_UNDER_TEST", "")


def load_durations(root: Path) -> Dict[str, float]:
    """Seconds per test node id from mutmut's stats run; empty when the file is absent. A
    malformed file raises a ValueError that names it."""
    path = root / STATS_FILE
    if not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            durations = json.load(f)["duration_by_test"]
        return {str(k): float(v) for k, v in durations.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: no readable 'duration_by_test' mapping ({e!r})") from e


def fastest_first(items: Sequence[pytest.Item], durations: Dict[str, float]) -> List[pytest.Item]:
    """``items`` sorted by measured duration; untimed ones last, each group in its given order
    (the sort is stable)."""
    return sorted(items, key=lambda item: durations.get(item.nodeid, float("inf")))


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    if not under_mutant(os.environ):
        return
    try:
        durations = load_durations(config.rootpath)
    except ValueError:
        # An error here would end the session with pytest's exit code 3, which mutmut counts as
        # a kill. Unsorted tests give the same verdicts, only later. (mutmut itself has read this
        # file before it starts any worker, so this is not expected to happen.)
        return
    items[:] = fastest_first(items, durations)
