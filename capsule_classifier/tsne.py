"""t-SNE of a trained classifier's penultimate-layer features over one or more dataset files.

    python capsule_classifier/tsne.py --checkpoint=checkpoints/RUN/best.pt \
        --data_path=data/figshare_dev_256.h5,data/synthetic_256.h5 --out_dir=checkpoints/RUN

Writes out_dir/tsne.png (coloured by class, or by data file with --colour_by=file, e.g. one file
per fold; real and synthetic slices with different markers) and out_dir/tsne.csv (one row per
slice with its coordinates). --method=umap uses UMAP instead (needs umap-learn); the files are
then umap.png and umap.csv.
"""

checkpoint = ""
data_path = []
out_dir = "."
max_slices = 3000             # random subset when the files hold more (0: all)
method = "tsne"               # "tsne" or "umap" (needs umap-learn)
colour_by = "class"           # "class", or "file" (one colour per data file, e.g. per fold)
seed = 0
device = "auto"
threads = 2


def run(flags):
    import os

    from capsule_classifier.embedding import embed_files, map_coordinates, model_and_files, write_tsne

    model, record, chosen, paths = model_and_files(flags, "tsne.py")
    features, data, file_index = embed_files(model, paths, record["image_size"], chosen, flags["max_slices"],
                                             flags["seed"])
    coordinates = map_coordinates(features, flags["seed"], flags["method"])
    if flags["colour_by"] not in ("class", "file"):
        raise ValueError(f"--colour_by must be 'class' or 'file', got {flags['colour_by']!r}")
    groups = dict(groups=file_index, group_names=[os.path.basename(p) for p in paths]) \
        if flags["colour_by"] == "file" else {}
    out_png = os.path.join(flags["out_dir"], f"{flags['method']}.png")
    out_csv = os.path.join(flags["out_dir"], f"{flags['method']}.csv")
    write_tsne(coordinates, data, out_png, out_csv,
               f"{flags['method'].upper()} of {record['model_name']} features ({len(data)} slices)", **groups)
    print(f"wrote {out_png} and {out_csv}")
    return out_png, out_csv


if __name__ == "__main__":
    from preprocess.checkpoint_io import CheckpointError
    from preprocess.distributed import leave_unless_rank_zero
    from preprocess.flags import run_script

    leave_unless_rank_zero("tsne.py")

    run_script(run, globals(), expected=(CheckpointError,))
