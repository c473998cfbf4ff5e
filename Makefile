# Two commands on a fresh machine: `make train` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Written last by `setup`; newer than its inputs means there is nothing to do.
SETUP_STAMP := $(VENV)/.retinafocal-setup
TRAIN_CONFIG ?= configs/Embedded/retinanet_R18_FPN_shapes.yaml

.PHONY: setup test train paper clean-venv

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

clean-venv:
	rm -rf $(VENV)
