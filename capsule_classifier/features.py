"""Penultimate-layer features of a trained classifier for every slice of one or more dataset files,
saved for other stages (the GAN's quality metrics read them; they never import the classifier).

    python capsule_classifier/features.py --checkpoint=checkpoints/RUN/best.pt \
        --data_path=data/train.h5,data/heldout.h5,data/synthetic.h5 --out=features.npz

Writes an .npz: ``features`` (N, D) float32, ``labels``, ``file_index`` (into ``files``), ``rows``
(row of each slice in its file) and ``files`` (the paths). ``--max_slices`` draws a seeded random
subset per file (0: all).
"""

checkpoint = ""
data_path = []
out = "features.npz"
max_slices = 0                # per file; 0: every slice
seed = 0
device = "auto"
threads = 2


def run(flags):
    import numpy as np

    from capsule_classifier.embedding import file_features, model_and_files
    from preprocess.atomic import atomic_path, check_outputs

    model, record, device, paths = model_and_files(flags, "features.py")
    check_outputs({"out": flags["out"]}, {"data_path": paths})
    parts = [file_features(model, path, record["image_size"], device, flags["max_slices"], flags["seed"])
             for path in paths]
    with atomic_path(flags["out"]) as partial:
        with open(partial, "wb") as handle:
            np.savez(handle, features=np.concatenate([p[0] for p in parts]),
                     labels=np.concatenate([p[1] for p in parts]),
                     rows=np.concatenate([p[2] for p in parts]),
                     file_index=np.concatenate([np.full(len(p[2]), k) for k, p in enumerate(parts)]),
                     files=np.array([str(p) for p in paths]), checkpoint=str(flags["checkpoint"]))
    print(f"wrote {flags['out']}: {sum(len(p[2]) for p in parts)} slices x {parts[0][0].shape[1]} features "
          f"({record['model_name']})")
    return flags["out"]


if __name__ == "__main__":
    from preprocess.checkpoint_io import CheckpointError
    from preprocess.distributed import leave_unless_rank_zero
    from preprocess.flags import run_script

    leave_unless_rank_zero("features.py")

    run_script(run, globals(), expected=(CheckpointError, ValueError))
