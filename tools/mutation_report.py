"""Write the mutation-testing report (``make mutation``) from mutmut's results.

Reads ``mutants/<file>.meta`` (one per mutated file, written by ``mutmut run``) and the checked-in
list of equivalent mutants (tools/mutation_equivalents.toml), and writes a Markdown report: the
score of each module, the surviving mutants with their diffs, and the equivalent ones with the
reason each changes nothing observable.

An equivalent mutant is named by its function and its change (the source lines it removes and
adds, stripped), never by mutmut's number, which shifts whenever the function changes:

    [[equivalent]]
    function = "retinafocal.losses.ohem.OHEMLoss.select"
    removed = ["n, r, k = pred_logits.shape"]
    added = ["n, r, k = None"]
    reason = "..."

Score = (killed + timed out) / (all mutants - listed equivalent ones). A mutant that no selected
test runs ("no tests") counts as surviving. Exit status 1 when the score is below ``--min-score``.

Usage (from the repository root, in the environment that ran mutmut):
    python tools/mutation_report.py --out reports/mutation/REPORT.md [--wall-seconds S]
"""
from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import os
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
EQUIVALENTS_FILE = os.path.join(HERE, "mutation_equivalents.toml")

# mutmut's exit codes (mutmut/stats.py): what each means for the score.
KILLED = {1, 3}
TIMEOUT = {-24, 24, 152, 255, 36}
SURVIVED = {0}
NO_TESTS = {5, 33}


@dataclass
class Mutant:
    key: str  # mutmut's name, e.g. retinafocal.losses.ohem.x_ohem_select__mutmut_3
    path: str  # the source file
    exit_code: Optional[int]
    removed: Tuple[str, ...] = ()
    added: Tuple[str, ...] = ()
    diff: str = ""

    @property
    def function(self) -> str:
        """Dotted name of the mutated function: module.function or module.Class.method."""
        module, _, mangled = self.key.partition("__mutmut_")[0].rpartition(".")
        if mangled.startswith("x_"):
            return f"{module}.{mangled[2:]}"
        _, cls, method = mangled.split("\u01c1")  # mutmut's class separator
        return f"{module}.{cls}.{method}"

    @property
    def status(self) -> str:
        code = self.exit_code
        if code in KILLED:
            return "killed"
        if code in TIMEOUT:
            return "timeout"
        if code in SURVIVED:
            return "survived"
        if code in NO_TESTS:
            return "no tests"
        if code is None:
            return "not checked"
        return f"other (exit {code})"


@dataclass
class Equivalent:
    function: str
    removed: Tuple[str, ...]
    added: Tuple[str, ...]
    reason: str
    matched: List[str] = field(default_factory=list)


def _strip_lines(lines: Sequence[str]) -> Tuple[str, ...]:
    return tuple(line.strip() for line in lines if line.strip())


def load_equivalents(path: str = EQUIVALENTS_FILE) -> List[Equivalent]:
    """The checked-in equivalent mutants; a clear error names a malformed entry."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    out = []
    for i, entry in enumerate(data.get("equivalent", [])):
        missing = {"function", "removed", "added", "reason"} - set(entry)
        if missing:
            raise ValueError(f"{path}: entry {i + 1} lacks {sorted(missing)}")
        out.append(
            Equivalent(
                function=entry["function"],
                removed=_strip_lines(entry["removed"]),
                added=_strip_lines(entry["added"]),
                reason=entry["reason"],
            )
        )
    return out


def mutated_files(only_mutate: Sequence[str], root: str = ".") -> List[str]:
    """Source files under ``root`` that match mutmut's ``only_mutate`` globs."""
    found = []
    for dirpath, _, files in os.walk(os.path.join(root, "retinafocal")):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if name.endswith(".py") and any(fnmatch.fnmatch(rel, p) for p in only_mutate):
                found.append(rel)
    return sorted(found)


def load_mutants(files: Sequence[str]) -> List[Mutant]:
    mutants = []
    for path in files:
        meta = os.path.join("mutants", path + ".meta")
        if not os.path.isfile(meta):
            raise FileNotFoundError(f"{meta} is missing: run `mutmut run` first (make mutation)")
        with open(meta) as f:
            codes = json.load(f)["exit_code_by_key"]
        mutants += [Mutant(key, path, code) for key, code in codes.items()]
    return mutants


def attach_diffs(mutants: Sequence[Mutant]) -> None:
    """Fill in the diff of every mutant that was not killed (mutmut's own `show` code)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    for m in mutants:
        if m.status in ("killed", "timeout"):
            continue
        m.diff = get_diff_for_mutant(m.key, path=m.path)
        body = [line for line in m.diff.splitlines()[2:] if not line.startswith("@@")]
        m.removed = _strip_lines([line[1:] for line in body if line.startswith("-")])
        m.added = _strip_lines([line[1:] for line in body if line.startswith("+")])


def match_equivalents(
    mutants: Sequence[Mutant], equivalents: Sequence[Equivalent]
) -> Dict[str, Equivalent]:
    """mutant key -> its entry, for the surviving mutants that an entry describes."""
    by_change = {(e.function, e.removed, e.added): e for e in equivalents}
    matched = {}
    for m in mutants:
        if m.status in ("killed", "timeout"):
            continue
        entry = by_change.get((m.function, m.removed, m.added))
        if entry is not None:
            entry.matched.append(m.key)
            matched[m.key] = entry
    return matched


def score_rows(mutants: Sequence[Mutant], equivalent: Dict[str, Equivalent]):
    """Per file: (file, counts, score); the last row is the total."""
    by_file: Dict[str, Counter] = {}
    for m in mutants:
        status = "equivalent" if m.key in equivalent else m.status
        by_file.setdefault(m.path, Counter())[status] += 1
    total = sum(by_file.values(), Counter())
    rows = []
    for name, counts in list(sorted(by_file.items())) + [("total", total)]:
        considered = sum(counts.values()) - counts["equivalent"]
        detected = counts["killed"] + counts["timeout"]
        rows.append((name, counts, detected / considered if considered else 1.0))
    return rows


def unmutated_functions(files: Sequence[str]) -> List[Tuple[str, str]]:
    """(dotted name, decorators) of the functions mutmut leaves alone: those with a decorator
    other than a lone ``@staticmethod`` / ``@classmethod`` (mutmut 3 cannot wrap them)."""
    found = []
    for path in files:
        with open(path) as f:
            tree = ast.parse(f.read())
        module = path[: -len(".py")].replace(os.sep, ".")
        for node in tree.body:
            methods = [(node.name, m) for m in node.body] if isinstance(node, ast.ClassDef) else []
            for owner, fn in methods + [(None, node)]:
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                names = [ast.unparse(d) for d in fn.decorator_list]
                if names and names not in (["staticmethod"], ["classmethod"]):
                    dotted = ".".join(x for x in (module, owner, fn.name) if x)
                    found.append((dotted, ", ".join(f"@{n}" for n in names)))
    return found


def _git_commit() -> str:
    """The checked-out commit, marked when the work tree differs from it; "" without git."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout

    try:
        sha = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return sha + (" (with uncommitted changes)" if dirty else "")


def render(
    mutants, equivalent, equivalents, rows, wall_seconds: Optional[float], unmutated
) -> str:
    import mutmut

    lines = ["# Mutation testing report", ""]
    lines.append(
        f"Generated by `make mutation` (mutmut {mutmut.__version__}) from `mutants/`; do not edit."
    )
    commit = _git_commit()
    if commit:
        lines.append(f"Code and tests at commit {commit}.")
    if wall_seconds is not None:
        lines.append(f"Whole run (mutant generation, test mapping, every mutant): "
                     f"{wall_seconds / 60:.1f} min.")  # fmt: skip
    lines += ["", "Score = (killed + timeout) / (mutants - equivalent). Survivors include mutants "
              "that no selected test runs (\"no tests\").", ""]  # fmt: skip
    lines.append("| module | mutants | killed | timeout | equivalent | survived | no tests | other "
                 "| score |")  # fmt: skip
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, c, score in rows:
        known = c["killed"] + c["timeout"] + c["equivalent"] + c["survived"] + c["no tests"]
        other = sum(c.values()) - known
        label = f"**{name}**" if name == "total" else f"`{name}`"
        lines.append(f"| {label} | {sum(c.values())} | {c['killed']} | {c['timeout']} | "
                     f"{c['equivalent']} | {c['survived']} | {c['no tests']} | {other} | "
                     f"{100 * score:.1f}% |")  # fmt: skip
    survivors = [
        m for m in mutants if m.status not in ("killed", "timeout") and m.key not in equivalent
    ]
    lines += ["", f"## Surviving mutants ({len(survivors)})", ""]
    if not survivors:
        lines.append("None.")
    for m in survivors:
        lines += [f"### `{m.key}` ({m.status})", "", f"In `{m.function}`:", "", "```diff",
                  m.diff.strip(), "```", ""]  # fmt: skip
    lines += ["", f"## Equivalent mutants ({len(equivalent)})", "",
              "Listed with their reasons in `tools/mutation_equivalents.toml`.", ""]  # fmt: skip
    for m in mutants:
        if m.key in equivalent:
            change = " / ".join(m.added) or "(line removed)"
            lines.append(f"- `{m.function}`: `{change}`: {equivalent[m.key].reason}")
    lines += ["", f"## Functions mutmut does not mutate ({len(unmutated)})", "",
              "mutmut 3 mutates code inside functions only, and leaves decorated functions "
              "alone (other than a lone @staticmethod or @classmethod): module-level constants "
              "and the code of these functions are not part of the score.", ""]  # fmt: skip
    lines += [f"- `{name}` ({decorators})" for name, decorators in unmutated]
    stale = [e for e in equivalents if not e.matched]
    if stale:
        lines += ["", f"## Entries of the equivalents list that matched no survivor ({len(stale)})",
                  "", "The code they describe changed, or a test now kills them: remove them.",
                  ""]  # fmt: skip
        lines += [f"- `{e.function}`: `{' / '.join(e.added)}`" for e in stale]
    return "\n".join(lines) + "\n"


def skeleton(m: Mutant) -> str:
    """An [[equivalent]] entry describing mutant ``m``, its reason left to write."""
    return "\n".join([
        "[[equivalent]]",
        f"function = {json.dumps(m.function)}",
        f"removed = {json.dumps(list(m.removed))}",
        f"added = {json.dumps(list(m.added))}",
        'reason = "TODO"',
        "",
    ])  # fmt: skip


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="reports/mutation/REPORT.md")
    parser.add_argument("--wall-seconds", type=float, default=None)
    parser.add_argument("--min-score", type=float, default=0.90)
    parser.add_argument("--skeleton", action="store_true",
                        help="print an [[equivalent]] entry for every survivor (to fill in its "
                        "reason and paste into the list), write no report")  # fmt: skip
    args = parser.parse_args(argv)
    with open("pyproject.toml", "rb") as f:
        only_mutate = tomllib.load(f)["tool"]["mutmut"]["only_mutate"]
    files = mutated_files(only_mutate)
    mutants = load_mutants(files)
    attach_diffs(mutants)
    equivalents = load_equivalents()
    equivalent = match_equivalents(mutants, equivalents)
    if args.skeleton:
        for m in mutants:
            if m.status not in ("killed", "timeout") and m.key not in equivalent:
                print(skeleton(m))
        return 0
    rows = score_rows(mutants, equivalent)
    # Rendered before the file is opened: truncating a tracked report would make the work tree
    # look changed to the commit line.
    report = render(mutants, equivalent, equivalents, rows, args.wall_seconds,
                    unmutated_functions(files))  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(report)
    for name, counts, score in rows:
        print(f"{name:45s} {sum(counts.values()):5d} mutants  {100 * score:5.1f}%")
    total_score = rows[-1][2]
    print(f"report: {args.out}")
    if total_score < args.min_score:
        print(f"mutation score {100 * total_score:.1f}% is below {100 * args.min_score:.0f}%")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
