"""t-SNE of a trained classifier's penultimate-layer features over one or more dataset files.

    python capsule_classifier/tsne.py --checkpoint=checkpoints/RUN/best.pt \
        --data_path=data/figshare_dev_256.h5,data/synthetic_256.h5 --out_dir=checkpoints/RUN

Writes out_dir/tsne.png (coloured by class; real and synthetic slices with different markers)
and out_dir/tsne.csv (one row per slice with its coordinates).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

checkpoint = ""
data_path = []
out_dir = "."
max_slices = 3000             # random subset when the files hold more (0: all)
seed = 0
device = "auto"
threads = 2


def run(flags):
    import os

    from capsule_classifier.embedding import embed_files, model_and_files, tsne_coordinates, write_tsne

    model, record, chosen, paths = model_and_files(flags, "tsne.py")
    features, data = embed_files(model, paths, record["image_size"], chosen, flags["max_slices"],
                                 flags["seed"])
    coordinates = tsne_coordinates(features, flags["seed"])
    out_png = os.path.join(flags["out_dir"], "tsne.png")
    out_csv = os.path.join(flags["out_dir"], "tsne.csv")
    write_tsne(coordinates, data, out_png, out_csv,
               f"t-SNE of {record['model_name']} features ({len(data)} slices)")
    print(f"wrote {out_png} and {out_csv}")
    return out_png, out_csv


if __name__ == "__main__":
    from preprocess.checkpoint_io import CheckpointError
    from preprocess.flags import run_script

    run_script(run, globals(), expected=(CheckpointError,))
