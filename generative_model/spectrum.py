"""Periodic artefacts of synthetic slices (checkerboards, lattices, meshes), measured in the
Fourier domain against real slices.

A pattern that repeats every few pixels over a slice puts its energy into a few frequencies, where
real slices have little. So the mean log amplitude spectrum of the synthetic slices, minus that of
the real ones, shows the pattern as isolated peaks; its largest value (``peak_excess``, natural log:
0.7 = twice the real amplitude) says how strong the worst one is, and where (cycles per image,
period in pixels). ``mean_log_ratio`` below 0 says the synthetic slices carry less detail overall.
Real slices of other patients against the same real slices give the level that differences of
anatomy alone reach (``real_floor``). Unlike the feature-space metrics (``quality.py``), this needs no
network and does not ignore textures that leave the class unchanged.
"""
import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from preprocess.dataset import read_images  # noqa: E402

SPECTRUM_SLICES = 2000        # at most this many slices per file, evenly spread over it
AMPLITUDE_FLOOR = 1e-3        # added to amplitudes of the orthonormal FFT before the log: far below
                              # what the noise of a real slice puts into any frequency
BATCH = 256


def log_amplitude(images, floor=AMPLITUDE_FLOOR):
    """log(|FFT| + floor) of each image of a (..., S, S) tensor (orthonormal 2-d FFT, float32)."""
    return torch.log(torch.fft.fft2(images.float(), norm="ortho").abs() + floor)


def mean_log_spectrum(path, max_slices=SPECTRUM_SLICES, floor=AMPLITUDE_FLOOR):
    """Mean over (at most ``max_slices``, evenly spread) slices of a dataset file of the log
    amplitude of their orthonormal 2-d FFT, zero frequency in the middle: (S, S) array."""
    with h5py.File(path, "r") as handle:
        count = len(handle["images"])
    rows = np.unique(np.linspace(0, count - 1, min(count, max_slices)).astype(int))
    total = None
    for start in range(0, len(rows), BATCH):
        batch = torch.as_tensor(read_images(path, indices=rows[start:start + BATCH]))
        spectrum = log_amplitude(batch, floor).sum(0)
        total = spectrum if total is None else total + spectrum
    return torch.fft.fftshift(total / len(rows)).numpy()


def peak_of(difference):
    """Largest value of a centred spectrum difference, its frequency (cycles per image, y and x) and
    the period in pixels that frequency repeats at (frequency and period None when no frequency
    has more energy than the real slices)."""
    side = difference.shape[-1]
    y, x = np.unravel_index(int(np.argmax(difference)), difference.shape)
    fy, fx = int(y) - side // 2, int(x) - side // 2
    excess = float(difference[y, x])
    report = {"peak_excess": round(excess, 3), "peak_cycles_per_image": None, "peak_period_px": None,
              "mean_log_ratio": round(float(difference.mean()), 3)}
    if excess > 0:
        report.update(peak_cycles_per_image=[fy, fx], peak_period_px=round(float(side / max(np.hypot(fy, fx), 1e-9)), 2))
    return report


def spectral_artefacts(real_path, synthetic_path, heldout_path=None, png_path=None):
    """Peak and mean of (synthetic - real) mean log spectra; with ``heldout_path`` the same for real
    slices of other patients (``real_floor``); with ``png_path`` a figure of the difference maps."""
    real = mean_log_spectrum(real_path)
    synthetic = mean_log_spectrum(synthetic_path)
    if synthetic.shape != real.shape:
        raise ValueError(f"{synthetic_path}: slices of {synthetic.shape[-1]} px, {real_path}: {real.shape[-1]} px")
    maps = {"synthetic - real": synthetic - real}
    report = peak_of(maps["synthetic - real"])
    if heldout_path:
        maps["held-out real - real"] = mean_log_spectrum(heldout_path) - real
        report["real_floor"] = peak_of(maps["held-out real - real"])
    if png_path:
        plot_spectrum_differences(maps, png_path)
        report["figure"] = str(png_path)
    return report


def plot_spectrum_differences(maps, png_path):
    """Difference maps side by side, one colour scale (red: more energy than the real slices)."""
    limit = max(float(np.abs(m).max()) for m in maps.values())
    figure, axes = plt.subplots(1, len(maps), figsize=(4.4 * len(maps) + 1, 4.4), squeeze=False,
                                constrained_layout=True)
    for axis, (title, difference) in zip(axes[0], maps.items()):
        side = difference.shape[-1]
        image = axis.imshow(difference, cmap="RdBu_r", vmin=-limit, vmax=limit,
                            extent=(-side / 2, side / 2, side / 2, -side / 2))
        peak = peak_of(difference)
        where = (f" at {peak['peak_cycles_per_image']} ({peak['peak_period_px']} px)"
                 if peak["peak_period_px"] else "")
        axis.set_title(f"{title}\npeak {peak['peak_excess']:+.2f}{where}", fontsize=9)
        axis.set_xlabel("cycles per image, x")
        axis.set_ylabel("cycles per image, y")
    figure.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="mean log amplitude difference")
    figure.savefig(png_path, dpi=90)
    plt.close(figure)
