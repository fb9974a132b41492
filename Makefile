# `make demo` runs the pipeline on generated demo data; `make test` runs the tests.
# Both create the virtual environment .venv/ on first use (Python 3.11 and pip are all you need).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := data/demo
SIZE := 128
GAN_SIZE := 64
RUNS := checkpoints/demo
GAN_EPOCHS := 6
EPOCHS := 30
# The demo's phantom classes differ mainly in how bright the tumour enhances, which the default
# gamma/contrast augmentation (made for real MRI) blurs: the demo classifier uses flips and affine
# warps only (compact network of that time: 3-fold accuracy 0.57-0.66, 0.41-0.42 with the default
# augmentation; the residual default with affine-only: 0.92 real-only, 0.95 pre-trained).
DEMO_AUG := --augmentation=affine

.PHONY: demo test clean-demo

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install -r requirements.txt
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

demo: $(VENV)/.installed
	rm -rf $(DEMO) $(RUNS)
	@echo "== 1/8 demo data: synthetic figshare-layout .mat files"
	$(PY) preprocess/make_demo_data.py --out=$(DEMO)/mat --patients=36 --slices_per_patient=5
	@echo "== 2/8 dataset files: normalised slices and condition masks at $(SIZE) px (classifier) and $(GAN_SIZE) px (GAN)"
	$(PY) preprocess/prepare_dataset.py --source=$(DEMO)/mat --out=$(DEMO)/demo_$(SIZE).h5 --image_size=$(SIZE)
	$(PY) preprocess/prepare_dataset.py --source=$(DEMO)/mat --out=$(DEMO)/demo_$(GAN_SIZE).h5 --image_size=$(GAN_SIZE)
	@echo "== 3/8 augmented condition masks"
	$(PY) preprocess/augment_masks.py --dataset=$(DEMO)/demo_$(GAN_SIZE).h5 --out=$(DEMO)/masks_aug_$(GAN_SIZE).h5 --per_class=100
	@echo "== 4/8 conditional GANs, one per class (brief, $(GAN_SIZE) px so that it fits a laptop's CPU)"
	$(PY) generative_model/train.py --dataset=$(DEMO)/demo_$(GAN_SIZE).h5 --image_size=$(GAN_SIZE) --epochs=$(GAN_EPOCHS) --model_dir=$(RUNS) --run_name=gan
	@echo "== 5/8 synthetic slices from the augmented masks"
	$(PY) generative_model/generate.py --model_dir=$(RUNS) --run_name=gan --masks=$(DEMO)/masks_aug_$(GAN_SIZE).h5 --per_class=100 --out=$(DEMO)/synthetic_$(GAN_SIZE).h5
	@echo "== 6/8 capsule classifier on real slices only, patient-wise 3-fold cross-validation"
	$(PY) capsule_classifier/train.py --data_path=$(DEMO)/demo_$(SIZE).h5 --k_folds=3 --epochs=$(EPOCHS) --batch_size=16 $(DEMO_AUG) --model_dir=$(RUNS) --run_name=real_only
	@echo "== 7/8 capsule classifier pre-trained on synthetic slices, fine-tuned on the same folds"
	$(PY) capsule_classifier/train.py --data_path=$(DEMO)/synthetic_$(GAN_SIZE).h5,$(DEMO)/demo_$(SIZE).h5 --image_size=$(SIZE) --k_folds=3 --epochs=$(EPOCHS) --batch_size=16 $(DEMO_AUG) --pretrain_epochs=10 --model_dir=$(RUNS) --run_name=pretrained
	@echo "== 8/8 t-SNE of real and synthetic slices, summary"
	$(PY) capsule_classifier/tsne.py --checkpoint=$(RUNS)/pretrained/fold_1/best.pt --data_path=$(DEMO)/demo_$(SIZE).h5,$(DEMO)/synthetic_$(GAN_SIZE).h5 --out_dir=$(RUNS)/tsne
	$(PY) capsule_classifier/summarize.py --runs=$(RUNS)/real_only,$(RUNS)/pretrained --gan_run=$(RUNS)/gan --tsne_dir=$(RUNS)/tsne --title="Demo run" --out=$(RUNS)/SUMMARY.md
	@echo "Demo outputs: $(DEMO)/ (demo .mat files, dataset files, masks, synthetic slices), $(RUNS)/ (GAN and classifier runs)."
	@echo "Start with $(RUNS)/SUMMARY.md"

clean-demo:
	rm -rf $(DEMO) $(RUNS)
