"""Train and evaluate the capsule classifier or the ResNet18 / ResNet50 baselines, patient-wise or
leaving whole stretches of the figshare numbering out (--group_by=stretch).

    python capsule_classifier/train.py --data_path=data/figshare_dev_256.h5 --k_folds=5
    python capsule_classifier/train.py --data_path=data/synthetic_256.h5,data/figshare_dev_256.h5
    python capsule_classifier/train.py --CrossValidation=False --data_path=a.h5 --Test=True --data_test_path=b.h5
    python capsule_classifier/train.py --Train=False --Test=True --check_name=RUN --data_test_path=b.h5
    python capsule_classifier/train.py --model=resnet --FreezeLayers=True --pretrained=imagenet ...
    python capsule_classifier/train.py --data_path=data/figshare_dev_256.h5 --k_folds=5 --group_by=stretch

Dataset files whose attribute ``synthetic`` is true are used to pre-train; the real ones are then
split patient-wise (k folds; with --CrossValidation=False all of them train, or a --val_fraction
part validates) and fine-tuned on,
starting from the pre-trained weights. Study-format pickles (.pkl, a list of [image, label]) are
read through a restricted unpickler; they carry no patient ids, so their splits are slice-wise.

The defaults are the CPU recipe: the residual capsule network (capsule_preset=residual: residual
trunk, routed class capsules, a tumour-mask loss in training), AdamW with a one-cycle learning
rate, label smoothing 0.1, left-right flips, small affine warps and gamma/contrast changes, another
slice's tumour pasted, where it sat in its own slice, into about half of the training slices
(labels shared by tumour area), an exponential moving average of the weights, bfloat16 autocast
where the CPU has it; scores divide out the training class shares (--prior_correction=1) and average
over each slice's flips, small rotations and scalings (--test_time_warps=True). Flag presets
(presets/classifier/*.json, applied before the other flags): --preset=study (the paper's network,
optimiser and augmentation), --preset=compact (the previous default), --preset=resnet18_cpu (the
CPU baseline: ResNet18 at 128 px, 12 epochs).
Outputs go to model_dir/run_name/ (see capsule_classifier/README.md).
"""

PRESETS = "classifier"        # --preset=NAME reads presets/classifier/NAME.json
# --- the study's flags ---
Train = True
Test = False
CrossValidation = True
LoadSavedModel = False        # start from the checkpoint named by check_name
FreezeLayers = False          # ResNet50: freeze the first freeze_children children
model = "capsule"             # "capsule", "resnet18" (CPU baseline) or "resnet50" (alias "resnet")
epochs = 60                   # per fold or hold-out run (256 px, 2 CPU threads, bf16: about 15 s per epoch;
                              # 60 against 30: +1.5 +- 0.6 points leave-stretch-out, 5 folds, 10 paired
                              # fold runs of 2 seeds; 17 min 51 s for 2,350 slices; capsule_classifier/RESULTS.md)
batch_size = 32               # the global batch: under torchrun each process takes its share
lr = 1e-3                     # peak learning rate of the one-cycle recipe (study: 5e-5 with SGD)
momentum = 0.9                # SGD momentum (recipe=study_sgd)
k_folds = 7
fold = 0                      # 1..k_folds: run only that cross-validation fold (0: all of them)
model_dir = "checkpoints"
data_path = []                # one or more .h5 dataset files or study .pkl files
data_test_path = []
check_name = ""               # checkpoint path, or run name inside model_dir, for LoadSavedModel / Test
augmentation = "mri"          # "mri" (flips, small affine, gamma/contrast), "scanner" ("mri" + bias
                              # field, blur, noise), "affine" (no intensity change), "study" (rot90
                              # copies + flips), "none"
# --- additions ---
vertical_flips = False        # flips up-down as well as left-right (augmentation and test-time views);
                              # off: up-down flips turn sagittal and coronal slices upside down
image_size = None             # None: the size of the first data file
seed = 0                      # initialisation, batch order, augmentation
split_seed = 0                # the folds / hold-out part (the same for every seed)
device = "auto"               # "auto", "cpu", "cuda", "cuda:1"
run_name = None               # None: <model>_<image size>
resume = False                # continue an interrupted run from its last.pt files
val_fraction = 0.0            # CrossValidation=False: part of the patients held out to validate and
                              # pick best.pt (e.g. 0.2); 0: train on every slice, the model to use
                              # (training on ~75 % of the patients cost 3.7 points leave-stretch-out,
                              # one seed; capsule_classifier/RESULTS.md)
                              # Also the validation part of synthetic pre-training
train_fraction = 1.0          # cross-validation: train on about this share of each fold's training
                              # patients (whole groups, by class; a learning-curve point)
group_by = "patient"          # folds and hold-out keep whole "patient"s apart, or whole "stretch"es
                              # of consecutive figshare indices (about 200 slices, whole patients)
pretrain_epochs = 5
recipe = "onecycle"           # "onecycle" (AdamW) or "study_sgd" (SGD, fixed lr)
weight_decay = 1e-4
label_smoothing = 0.1
ema_decay = 0.998             # > 0: validate and keep an exponential moving average of the weights
capsule_preset = "residual"   # "residual" (residual trunk + routed class capsules), "compact"
                              # (the study's network made small) or "study" (the paper's exact network)
mask_weight = 0.5             # residual preset: weight of the tumour-mask loss (0: no mask head)
mixup = 0.0                   # > 0: mixup of each batch, weight ~ Beta(mixup, mixup) (0: off)
tumour_paste = 0.5            # > 0: about this share of each batch gets another slice's tumour (with a
                              # margin) pasted in (see paste_at); labels shared by the tumour area that shows
                              # (0: off; 0.5 against 0, leave-stretch-out: see capsule_classifier/RESULTS.md)
paste_at = "donor"            # where a pasted tumour lands: "donor" (where it sat in its own slice:
                              # keeps the tumour's place), "host" (on the slice's own tumour) or
                              # "either" (one of the two by a coin per pasted slice)
                              # (donor against host, leave-stretch-out: capsule_classifier/RESULTS.md)
paste_donor = "any"           # which slices give the pasted tumours: "any" slice of the batch or one of
                              # "other_class" (every pasted slice then mixes a tumour and surroundings of
                              # two classes)
paste_levels = "raw"          # "raw": the donor's patch pasted as it is after the intensity augmentation;
                              # "matched": pasted before it, scaled to the slice's tissue level (median
                              # outside the tumour), so a tumour keeps its brightness relative to the
                              # tissue around it (matched against raw, leave-stretch-out, 5 folds, seed 0:
                              # 0.885 against 0.879, not adopted; capsule_classifier/RESULTS.md)
stretch_adversary = 0.0       # > 0: residual preset: weight of a training-only head that, behind a gradient
                              # reversal, tells apart the stretches of the figshare numbering holding the
                              # slice's class, so the trunk learns to hide plane / scanner cues
                              # (capsule_classifier/stretch_adversary.py; 0: off; leave-stretch-out fold 5,
                              # seed 0: 0.730 at 0.3, 0.705 at 1.0, 0.739 at 0.3 with reads=map, the
                              # default 0.710; not adopted, capsule_classifier/RESULTS.md)
stretch_adversary_reads = "mean"  # what that head reads: the last stage averaged over positions ("mean") or
                              # every position of it ("map": a 1x1-convolution head, one prediction per position)
tumour_crop = False           # residual preset: add a second view centred on the predicted tumour
tumour_levels = False         # residual preset: a finer mask head and an expert reading the predicted
                              # tumour's brightness against the tissue (capsule_classifier/tumour_levels.py),
                              # its logits added to the capsules'
routing = "fast"              # "fast" or "general" dynamic routing loop
capsule_types = 1             # capsule types of the hidden capsule layers (study: 1)
scaled_norm = False           # start capsule batch-norm scales at 1/sqrt(D) so squash is not saturated
test_time_flips = True        # score with probabilities averaged over the image and its flips
prior_correction = 1.0        # score with probabilities divided by the training class shares to this
                              # power (1: as if the classes had been equally common in training; 0: off);
                              # kept in the checkpoint, so predict.py (and --Train=False test runs)
                              # score the same way by default; explain.py's predicted class does not use it
                              # (1 against 0, leave-stretch-out, 5 folds, seed 0: +0.012 accuracy, +0.027
                              # macro-F1; capsule_classifier/RESULTS.md)
test_time_warps = True        # score also over rotations of -10/+10 degrees and scalings of 0.9/1.1 of
                              # each slice (5x the scoring views; final scores only, not per-epoch
                              # validation); kept in the checkpoint for predict.py, like prior_correction
                              # (leave-stretch-out, 5 folds, seed 0, with the prior correction: 0.869 ->
                              # 0.879, macro-F1 0.789 -> 0.825; capsule_classifier/RESULTS.md);
                              # explain.py explains the single view's predicted class
freeze_children = 8           # used when FreezeLayers (study: 8)
pretrained = "none"           # ResNet50: "none", "imagenet" or a path to a torchvision weights file
amp = "auto"                  # mixed precision ("auto"): bfloat16 on GPUs and CPUs that support it, float16 on older GPUs
channels_last = False
threads = 2                   # CPU threads
preset = ""                   # flag values from presets/classifier/<preset>.json (study, compact, resnet18_cpu)


def run(flags):
    import torch

    from capsule_classifier.experiment import experiment_from_flags, run_experiment

    from preprocess import distributed
    from preprocess.devices import resolve_device

    torch.set_num_threads(flags["threads"])
    chosen = distributed.setup(resolve_device(flags["device"]))      # torchrun: this rank's device
    exp = experiment_from_flags(flags, chosen)
    try:
        return run_experiment(exp, log=print if distributed.is_main() else (lambda *a, **k: None))
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    from preprocess.checkpoint_io import CheckpointError
    from preprocess.flags import run_script

    run_script(run, globals(), expected=(CheckpointError, ValueError, FileNotFoundError))
