"""The ablation grid of the paper's Table 1 as data: runs to train and rows to report.

A :class:`RunSpec` is one training (or evaluation-only) job: a config file plus ``KEY VALUE``
overrides, a seed and an output name. A :class:`Row` is one line of a report table: which run it
shows, what it varies, and the paper's number for that setting. Several rows may share one run:
the focal-loss model with gamma = 2, alpha = .25 and 9 anchors is the FL row of Sec. 5.1, Table 1b,
Table 1c and Table 1d at once, and Table 1e and Figure 4 evaluate it. :class:`GridBuilder` and
the ``*_opts`` helpers put grids together; :mod:`paper.table1` holds the grids themselves.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .references import PaperAP

__all__ = [
    "RunSpec",
    "Row",
    "Level",
    "Grid",
    "GridBuilder",
    "SECTIONS",
    "NO_PRIOR_OPTS",
    "anchor_opts",
    "anchor_sizes",
    "ce_opts",
    "fl_opts",
    "ohem_opts",
    "run_name",
]

#: The report's sections, in order; "sweep" holds the imbalance sweep's rows (one set per
#: :class:`Level`).
SECTIONS: Tuple[str, ...] = ("init", "1a", "1b", "1c", "1d", "1e", "sweep")


@dataclass(frozen=True)
class RunSpec:
    """One job of the grid.

    Attributes:
        name: unique name; its outputs go to ``<runs dir>/<name>/``.
        config_file: yacs config (``.yaml``) the overrides apply to.
        opts: ``KEY VALUE`` overrides, flattened (``("SOLVER.MAX_ITER", "300", ...)``).
        seed: the config's ``SEED``; every run of a grid shares it, so runs differ only in what
            they ablate (same initial weights where shapes agree, same data order).
        max_iter: training iterations (for the schedule estimate and the report); 0 for an
            evaluation-only run.
        eval_of: for an evaluation-only run, the name of the training run whose final weights
            it evaluates; None for a training run.
        description: one line for logs and the report.
    """

    name: str
    config_file: str
    opts: Tuple[str, ...] = ()
    seed: int = 0
    max_iter: int = 0
    eval_of: Optional[str] = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or os.sep in self.name or self.name.startswith("."):
            raise ValueError(f"RunSpec.name must be a plain directory name, got {self.name!r}")
        if len(self.opts) % 2:
            raise ValueError(
                f"RunSpec {self.name!r}: opts must be KEY VALUE pairs, got an odd number "
                f"({len(self.opts)}): {list(self.opts)}"
            )

    @property
    def eval_only(self) -> bool:
        return self.eval_of is not None

    def fingerprint(self) -> str:
        """A short hash of everything that determines the run's result; a stored result with
        another fingerprint is stale and the run is done again."""
        payload = json.dumps(
            {k: v for k, v in asdict(self).items() if k != "description"}, sort_keys=True
        )
        return hashlib.sha1(payload.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Row:
    """One line of a report table.

    Attributes:
        section: one of :data:`SECTIONS`.
        run: name of the :class:`RunSpec` whose result the row shows.
        label: what the row varies, as shown in the table ("alpha = 0.75").
        params: the varied values, for ordering and for picking the best alpha per gamma
            (keys such as ``alpha``, ``gamma``, ``scales``, ``ratios``, ``method``, ``size``).
        paper: the paper's numbers for this setting; None when the paper has no such row.
        paper_label: the paper's setting when it differs from ``label`` (Table 1b's alpha), or
            what the paper says instead of a number.
    """

    section: str
    run: str
    label: str
    params: Mapping[str, Any] = field(default_factory=dict)
    paper: Optional[PaperAP] = None
    paper_label: str = ""


@dataclass(frozen=True)
class Level:
    """A dataset on which the paper's two central claims are checked: CE without the prior
    fails where CE with it and FL train (Sec. 5.1), and FL beats the best alpha-balanced CE
    (Table 1b). The report calls each a grid, measures its imbalance and gives each claim a
    verdict on it.

    Attributes:
        key: short name, e.g. "sparse-80"; the rows of section "sweep" carry it as
            ``params["level"]``.
        title: the dataset in a few words, for tables.
        measure_run: a training run on this dataset; its config and first training set are what
            the imbalance is measured on (:mod:`paper.imbalance`).
        sections: where the level's rows are: ``("init", "1a", "1b")`` for the Table 1
            miniature, ``("sweep",)`` for a sweep level.
    """

    key: str
    title: str
    measure_run: str
    sections: Tuple[str, ...] = ("sweep",)


@dataclass
class Grid:
    """Runs, report rows, and what to say about them.

    Attributes:
        name: the grid's name (one of :data:`GRID_NAMES` for the built-in ones).
        runs: training runs before the evaluation-only runs that depend on them.
        rows: the report's rows, in table order within each section.
        loss_analysis_run: the training run whose final model Figure 4 analyses (None: skip).
        loss_analysis_dataset: dataset for Figure 4 (None: the config's first test set).
        notes: per section, markdown that says what was run, which subset and why, and how it
            differs from the paper.
        schedule: markdown describing the training schedule.
        datasets: registered datasets to generate before any run starts (the embedded splits),
            so that parallel runs never write the same files at once.
        levels: the datasets on which the central claims are checked, in the order of their
            imbalance (the Table 1 miniature, then the sweep's).
        prepare_data: generates datasets that the runs register by ``DATASETS.COCO_JSON``
            (the sweep's), before any run starts; None when there are none.
        sweep_schedule: markdown describing the sweep's schedule and rules ("" without one).
    """

    name: str
    runs: List[RunSpec]
    rows: List[Row]
    loss_analysis_run: Optional[str] = None
    loss_analysis_dataset: Optional[str] = None
    notes: Dict[str, str] = field(default_factory=dict)
    schedule: str = ""
    datasets: Tuple[str, ...] = ()
    levels: List[Level] = field(default_factory=list)
    prepare_data: Optional[Callable[[], None]] = None
    sweep_schedule: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def run(self, name: str) -> RunSpec:
        for spec in self.runs:
            if spec.name == name:
                return spec
        raise KeyError(f"grid {self.name!r} has no run named {name!r}")

    def rows_of(self, section: str) -> List[Row]:
        return [row for row in self.rows if row.section == section]

    def validate(self) -> None:
        """Raise ValueError on duplicate run names, rows naming unknown runs or sections, and
        evaluation-only runs of unknown or later runs."""
        seen: Dict[str, RunSpec] = {}
        for spec in self.runs:
            if spec.name in seen:
                raise ValueError(f"grid {self.name!r}: duplicate run name {spec.name!r}")
            if spec.eval_of is not None:
                parent = seen.get(spec.eval_of)
                if parent is None or parent.eval_only:
                    raise ValueError(
                        f"grid {self.name!r}: run {spec.name!r} evaluates {spec.eval_of!r}, "
                        "which is not a training run listed before it"
                    )
            seen[spec.name] = spec
        for row in self.rows:
            if row.section not in SECTIONS:
                raise ValueError(
                    f"grid {self.name!r}: row {row.label!r} has unknown section "
                    f"{row.section!r}; sections are {SECTIONS}"
                )
            if row.run not in seen:
                raise ValueError(
                    f"grid {self.name!r}: row {row.section}/{row.label!r} names unknown run "
                    f"{row.run!r}"
                )
        for name in (self.loss_analysis_run,):
            if name is not None and (name not in seen or seen[name].eval_only):
                raise ValueError(
                    f"grid {self.name!r}: loss_analysis_run {name!r} is not a training run"
                )
        keys = [level.key for level in self.levels]
        if len(set(keys)) != len(keys):
            raise ValueError(f"grid {self.name!r}: duplicate level keys {keys}")
        for level in self.levels:
            spec = seen.get(level.measure_run)
            if spec is None or spec.eval_only:
                raise ValueError(f"grid {self.name!r}: level {level.key!r} measures "
                                 f"{level.measure_run!r}, which is not a training run")
        for row in self.rows_of("sweep"):
            if row.params.get("level") not in keys:
                raise ValueError(f"grid {self.name!r}: sweep row {row.label!r} names level "
                                 f"{row.params.get('level')!r}; levels are {keys}")


def _fmt(value: float) -> str:
    """A number for a run name: 0.25 -> "0p25", 2.0 -> "2"."""
    text = f"{value:g}"
    return text.replace(".", "p").replace("-", "m")


def run_name(kind: str, **params: float) -> str:
    """The canonical run name of a setting, e.g. ``run_name("fl", g=2, a=0.25)`` ->
    ``"fl_g2_a0p25"``; parameters appear in the order given."""
    return "_".join([kind] + [f"{k}{_fmt(v)}" for k, v in params.items()])


def anchor_sizes(base_sizes: Sequence[float], num_scales: int) -> List[List[float]]:
    """Anchor sizes per level for ``num_scales`` scales per octave: ``base * 2**(k / S)`` for
    k = 0 .. S-1, the paper's scales (S = 3 gives 2^0, 2^(1/3), 2^(2/3)).

    Args:
        base_sizes: the smallest anchor size of each level, e.g. [32, 64, 128, 256, 512].
        num_scales: S >= 1.

    Returns:
        One list of S sizes per level.
    """
    if num_scales < 1:
        raise ValueError(f"num_scales must be >= 1, got {num_scales}")
    return [[float(b) * 2.0 ** (k / num_scales) for k in range(num_scales)] for b in base_sizes]


_ASPECT_RATIOS = {1: [[1.0]], 3: [[0.5, 1.0, 2.0]]}


def fl_opts(alpha: float, gamma: float) -> Tuple[str, ...]:
    """Overrides for the focal loss with ``alpha`` and ``gamma``."""
    return (
        "MODEL.RETINAFOCAL.LOSS.NAME", "FocalLoss",
        "MODEL.RETINANET.FOCAL_LOSS_ALPHA", repr(float(alpha)),
        "MODEL.RETINANET.FOCAL_LOSS_GAMMA", repr(float(gamma)),
    )  # fmt: skip


def ce_opts(alpha: float) -> Tuple[str, ...]:
    """Overrides for alpha-balanced cross-entropy."""
    # BalancedCELoss is the focal loss at gamma 0 by construction: FOCAL_LOSS_GAMMA is not read.
    return (
        "MODEL.RETINAFOCAL.LOSS.NAME", "BalancedCELoss",
        "MODEL.RETINANET.FOCAL_LOSS_ALPHA", repr(float(alpha)),
    )  # fmt: skip


def ohem_opts(batch: int, ratio: float, nms: float) -> Tuple[str, ...]:
    """Overrides for OHEM: ``batch`` anchors per image, positive:negative 1:``ratio`` (0: no
    ratio), NMS at ``nms`` over the anchor boxes."""
    return (
        "MODEL.RETINAFOCAL.LOSS.NAME", "OHEMLoss",
        "MODEL.RETINAFOCAL.LOSS.OHEM_BATCH_SIZE_PER_IMAGE", str(int(batch)),
        "MODEL.RETINAFOCAL.LOSS.OHEM_NEG_POS_RATIO", repr(float(ratio)),
        "MODEL.RETINAFOCAL.LOSS.OHEM_NMS_THRESH", repr(float(nms)),
    )  # fmt: skip


def anchor_opts(base_sizes: Sequence[float], scales: int, ratios: int) -> Tuple[str, ...]:
    """Overrides for ``scales`` scales per octave from ``base_sizes`` and 1 or 3 aspect
    ratios."""
    return (
        "MODEL.ANCHOR_GENERATOR.SIZES", repr(anchor_sizes(base_sizes, scales)),
        "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", repr(_ASPECT_RATIOS[ratios]),
    )  # fmt: skip


#: The last class bias at 0 (pi = 0.5) instead of the paper's prior init (pi = 0.01).
NO_PRIOR_OPTS = ("MODEL.RETINANET.PRIOR_PROB", "0.5")


class GridBuilder:
    """Collects runs (deduplicated by name: a setting shared by several tables is trained once)
    and rows."""

    def __init__(self, base_opts: Tuple[str, ...], seed: int, max_iter: int):
        self.base_opts = base_opts
        self.seed = seed
        self.max_iter = max_iter
        self.runs: Dict[str, RunSpec] = {}
        self.rows: List[Row] = []

    def train(self, name: str, config_file: str, opts: Tuple[str, ...], description: str, *,
              base_opts: Optional[Tuple[str, ...]] = None,
              max_iter: Optional[int] = None) -> str:  # fmt: skip
        """Add a training run, once per name; returns the name. ``base_opts`` and ``max_iter``
        replace the builder's for this run (the sweep's runs have their own schedule)."""
        if name not in self.runs:
            self.runs[name] = RunSpec(
                name=name,
                config_file=config_file,
                opts=(self.base_opts if base_opts is None else base_opts) + opts,
                seed=self.seed,
                max_iter=self.max_iter if max_iter is None else max_iter,
                description=description,
            )
        return name

    def evaluate(self, name: str, of: str, opts: Tuple[str, ...], description: str) -> str:
        """Add an evaluation-only run of the final weights of run ``of``, with ``opts`` on top
        of its overrides; returns the name."""
        parent = self.runs[of]
        self.runs[name] = RunSpec(
            name=name,
            config_file=parent.config_file,
            opts=parent.opts + opts,
            seed=self.seed,
            eval_of=of,
            description=description,
        )
        return name

    def row(self, section: str, run: str, label: str, params: Dict[str, Any],
            paper: Optional[PaperAP], paper_label: str = "") -> None:  # fmt: skip
        """Add a report row (see :class:`Row`)."""
        self.rows.append(Row(section, run, label, params, paper, paper_label))

    def ordered_runs(self) -> List[RunSpec]:
        """Training runs first, then the evaluation-only runs that need their weights."""
        trains = [r for r in self.runs.values() if not r.eval_only]
        evals = [r for r in self.runs.values() if r.eval_only]
        return trains + evals
