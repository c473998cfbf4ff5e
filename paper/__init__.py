"""Reproduce the focal-loss paper's evidence: the ablation grid of Table 1, Figure 1 and Figure 4.

Not part of the ``retinafocal`` plugin: an experiment driver that trains through the
repository's ``train_net.py`` and reads the results file each run writes. Run it from the
repository root:

    python -m paper --plan                 # the runs and a time estimate (make paper runs them)
    python -m paper.analyze_loss --help    # Figure 4 for any checkpoint and dataset

* :mod:`.grid`: runs and report rows as data;
* :mod:`.table1`: the grids (``shapes`` miniature, ``shapes-full``, ``coco``);
* :mod:`.runner`: runs a grid through ``train_net.py``, seeded and resumable;
* :mod:`.results`: what a run measured, read from the ``results.json`` it wrote;
* :mod:`.loss_analysis`: Figure 4, the loss CDFs of any checkpoint on any dataset;
* :mod:`.figures`: Figure 1 and the report's other plots;
* :mod:`.report`: ``REPORT.md`` with our numbers next to the paper's;
* :mod:`.references`: the paper's numbers;
* :mod:`.reproduce`: all of the above in one call, for ``python -m paper``.
"""
