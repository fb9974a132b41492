# `make demo` runs the pipeline on generated demo data; `make test` runs the tests.
# Both create the virtual environment .venv/ on first use (Python 3.11 and pip are all you need).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := data/demo
SIZE := 128
GAN_SIZE := 64
RUNS := checkpoints/demo
# The study's demo settings (sizes, epochs, augmentation) live in presets/study/demo.json: the demo's
# phantom classes differ mainly in how bright the tumour enhances, which the default gamma/contrast
# augmentation (made for real MRI) blurs, so the demo classifier uses flips and affine warps only.

.PHONY: demo test clean-demo

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install -r requirements.txt
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

demo: $(VENV)/.installed
	rm -rf $(DEMO) $(RUNS)
	@echo "== 1/3 demo data: synthetic figshare-layout .mat files"
	$(PY) preprocess/make_demo_data.py --out=$(DEMO)/mat --patients=36 --slices_per_patient=5
	@echo "== 2/3 dataset files: normalised slices and condition masks at $(SIZE) px (classifier) and $(GAN_SIZE) px (GAN)"
	$(PY) preprocess/prepare_dataset.py --source=$(DEMO)/mat --out=$(DEMO)/demo_$(SIZE).h5 --image_size=$(SIZE)
	$(PY) preprocess/prepare_dataset.py --source=$(DEMO)/mat --out=$(DEMO)/demo_$(GAN_SIZE).h5 --image_size=$(GAN_SIZE)
	@echo "== 3/3 the study per fold (presets/study/demo.json): masks, GAN and synthetic slices from the fold's"
	@echo "   training patients only; the capsule classifier on real slices, pre-trained on synthetic ones, and on synthetic ones alone"
	$(PY) study.py --preset=demo
	@echo "Demo outputs: $(DEMO)/ (demo .mat files, dataset files), $(RUNS)/study/ (per fold: masks, GAN, synthetic slices, classifier runs)."
	@echo "Start with $(RUNS)/study/RESULTS.md"

clean-demo:
	rm -rf $(DEMO) $(RUNS)
