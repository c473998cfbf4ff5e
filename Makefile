# Two commands on a fresh machine: `make train` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Written last by `setup`; newer than its inputs means there is nothing to do.
SETUP_STAMP := $(VENV)/.retinafocal-setup
TRAIN_CONFIG ?= configs/Embedded/retinanet_R18_FPN_shapes.yaml

.PHONY: setup test train paper mutation clean-venv

setup: $(SETUP_STAMP)

$(SETUP_STAMP): requirements.txt pyproject.toml tools/install_detectron2.py
	@start=$$(date +%s); \
	test -x $(PY) || $(PYTHON) -m venv $(VENV); \
	$(PY) -m pip install --quiet -r requirements.txt && \
	$(PY) tools/install_detectron2.py && \
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e . && \
	touch $(SETUP_STAMP) && \
	echo "setup done in $$(( $$(date +%s) - start )) s"

test: setup
	$(PY) -m pytest tests

train: setup
	$(PY) train_net.py --config-file $(TRAIN_CONFIG)

# The paper's ablations in miniature + Figures 1 and 4 -> reports/paper/REPORT.md (29.5 min on a
# fresh clone, 2 idle cores; finished runs are kept).
# Options: make paper PAPER_ARGS="--plan" (see paper/__main__.py).
paper: setup
	$(PY) -m paper $(PAPER_ARGS)

# Mutation testing of the core, not part of `make test` or CI: mutmut mutates retinafocal/losses/,
# modeling/, checkpoint.py, config_overrides.py and data/mapper.py ([tool.mutmut] in
# pyproject.toml), runs the fast tests that cover each mutant, and writes the score per module
# and the surviving mutants to reports/mutation/REPORT.md (fails below 90%). Starts from scratch
# each time (mutants/ is deleted); mutmut's own output goes to mutants/mutmut.log.
# One OpenMP thread per test process: mutmut runs one process per core.
mutation: setup
	$(PY) -m pip install --quiet -r requirements-mutation.txt
	rm -rf mutants && mkdir mutants
	@start=$$(date +%s); \
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run > mutants/mutmut.log 2>&1 \
		|| { tail -c 3000 mutants/mutmut.log; exit 1; }; \
	$(PY) tools/mutation_report.py --out reports/mutation/REPORT.md \
		--wall-seconds $$(( $$(date +%s) - start ))

clean-venv:
	rm -rf $(VENV)
