# `make demo` runs the pipeline on generated demo data; `make test` runs the tests.
# Both create the virtual environment .venv/ on first use (Python 3.10+ and pip are all you need).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := data/demo
SIZE := 128

.PHONY: demo test clean-demo

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install -r requirements.txt
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

demo: $(VENV)/.installed
	@echo "== 1/3 demo data: synthetic figshare-layout .mat files"
	$(PY) preprocess/make_demo_data.py --out=$(DEMO)/mat --patients=36 --slices_per_patient=5
	@echo "== 2/3 dataset file: normalised slices and condition masks at $(SIZE) px"
	$(PY) preprocess/prepare_dataset.py --source=$(DEMO)/mat --out=$(DEMO)/demo_$(SIZE).h5 --image_size=$(SIZE)
	@echo "== 3/3 augmented condition masks"
	$(PY) preprocess/augment_masks.py --dataset=$(DEMO)/demo_$(SIZE).h5 --out=$(DEMO)/masks_aug_$(SIZE).h5 --per_class=100
	@echo "Demo outputs are in $(DEMO)/: mat/ (demo .mat files), demo_$(SIZE).h5 (dataset file), masks_aug_$(SIZE).h5 (augmented masks)"

clean-demo:
	rm -rf $(DEMO)
