"""pytest plugin for ``make mutation``: run each mutant's tests fastest first.

mutmut runs the tests mapped to a mutant with ``-x``, so a killed mutant costs the tests that run
before the first one that fails. Its fork-per-mutant runner orders them by the durations it
measured in its stats run, fastest first. Its fork-server runner (``process_isolation =
"forkserver"``, which this project needs) does not in mutmut 3.8.1: it passes them to pytest in
the iteration order of a Python set, which changes with each run's string hashing. A mutant of
the focal-loss terms then often runs seconds of whole-model tests before a millisecond
hand-computed test that kills it.

Loaded with ``-p tools.mutation_test_order`` from ``[tool.mutmut] pytest_add_cli_args`` (mutmut
puts ``mutants/`` on ``sys.path``); ``make test`` does not load it. It sorts the collected tests
by ``duration_by_test`` of ``mutmut-stats.json`` in pytest's root directory (``mutants/``) in
a mutmut worker (the environment variable ``MUTANT_UNDER_TEST`` names a mutant) and in mutmut's
clean run (``MUTANT_UNDER_TEST`` empty), so that the clean run checks that the tests pass in the
order the mutants see (each mutant runs a subset, which keeps that order). A test missing from
the stats keeps its place after the timed ones. Other pytest runs, including mutmut's stats run,
keep their order. Where mutmut already passes the tests sorted, sorting again changes nothing.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Sequence

import pytest

STATS_FILE = "mutmut-stats.json"
#: mutmut's mutant names are ``<module>.<function>__mutmut_<n>``; its other phases set
#: MUTANT_UNDER_TEST to "" (the clean run), "stats", "fail" or "list_all_tests".
MUTANT_MARKER = "__mutmut_"


def sorts_tests(environ: Dict[str, str]) -> bool:
    """Whether this pytest run is mutmut's clean run or tests one of its mutants."""
    name = environ.get("MUTANT_UNDER_TEST")
    return name is not None and (name == "" or MUTANT_MARKER in name)


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
    if not sorts_tests(os.environ):
        return
    try:
        durations = load_durations(config.rootpath)
    except ValueError:
        if os.environ["MUTANT_UNDER_TEST"] == "":
            raise  # the clean run fails, so `make mutation` stops and shows the message
        # In a mutant's run, pytest's exit code 3 would count as a kill. Unsorted tests give the
        # same verdicts, only later. (The clean run has read the same file, so this is not
        # expected.)
        return
    items[:] = fastest_first(items, durations)
