"""Distribution metrics of synthetic slices in a feature space: Fréchet distance, kernel distance
(KID), k-nearest-neighbour precision and recall, and memorisation (each synthetic slice's nearest
real training slice).

The features come from outside (``capsule_classifier/features.py``: the penultimate layer of a
classifier trained on the real training slices), so these functions only see arrays. Such a
feature space needs no download and knows MRI, but it was trained to separate tumour classes:
it may be blind to artefacts that do not change the class (textures, checkerboards), and numbers
from different feature networks are not comparable. The Inception-based FID/KID of the
literature (``inception_distances``) needs torchmetrics and a local weights file.

    FD        ||mu_r - mu_s||^2 + Tr(C_r + C_s - 2 (C_r C_s)^1/2)
    KID       unbiased MMD^2 with the kernel (x.y / d + 1)^3, mean and std over random subsets
    precision share of synthetic slices inside the real manifold (union of balls reaching each real
              point's k-th nearest real neighbour; Kynkäänniemi et al. 2019); recall the converse
"""
import numpy as np
import torch
from scipy import linalg

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
PR_NEIGHBOURS = 3


def frechet_distance(real, synthetic):
    """Fréchet distance between Gaussians fitted to two (N, D) feature arrays."""
    real, synthetic = np.asarray(real, np.float64), np.asarray(synthetic, np.float64)
    mean_gap = real.mean(0) - synthetic.mean(0)
    cov_r, cov_s = np.cov(real, rowvar=False), np.cov(synthetic, rowvar=False)
    root = linalg.sqrtm(cov_r @ cov_s)
    if not np.isfinite(root).all():   # nearly singular product: nudge the diagonals (as is usual)
        offset = np.eye(len(cov_r)) * 1e-6
        root = linalg.sqrtm((cov_r + offset) @ (cov_s + offset))
    return float(mean_gap @ mean_gap + np.trace(cov_r + cov_s - 2 * root.real))


def _polynomial_mmd(x, y):
    """Unbiased MMD^2 between two samples with the kernel (x.y / d + 1)^3."""
    d = x.shape[1]
    k_xx, k_yy, k_xy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m, n = len(x), len(y)
    return ((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)) + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
            - 2 * k_xy.mean())


def kernel_distance(real, synthetic, subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE, seed=0):
    """(mean, std) of the unbiased kernel distance over ``subsets`` random subsets of each set."""
    real, synthetic = np.asarray(real, np.float64), np.asarray(synthetic, np.float64)
    size = min(subset_size, len(real), len(synthetic))
    if size < 2:
        raise ValueError("the kernel distance needs at least 2 slices on each side")
    rng = np.random.default_rng(seed)
    values = [_polynomial_mmd(real[rng.choice(len(real), size, replace=False)],
                              synthetic[rng.choice(len(synthetic), size, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def _distances(a, b):
    return torch.cdist(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32))


def _kth_neighbour_radius(points, k):
    distances = _distances(points, points)
    return distances.kthvalue(k + 1, dim=1).values      # +1: each point is its own nearest


def precision_recall(real, synthetic, k=PR_NEIGHBOURS):
    """(precision, recall) of the synthetic distribution against the real one (k-NN manifolds)."""
    if min(len(real), len(synthetic)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} slices on each side")
    real_radius, synthetic_radius = _kth_neighbour_radius(real, k), _kth_neighbour_radius(synthetic, k)
    cross = _distances(synthetic, real)                       # (S, R)
    precision = (cross <= real_radius[None, :]).any(dim=1).float().mean().item()
    recall = (cross.T <= synthetic_radius[None, :]).any(dim=1).float().mean().item()
    return precision, recall


def nearest_neighbours(queries, references):
    """(index, distance) of each query's nearest reference in feature space."""
    distances = _distances(queries, references)
    best = distances.min(dim=1)
    return best.indices.numpy(), best.values.numpy()


def structural_similarities(images_a, images_b):
    """SSIM of each pair of [0, 1] slices (scikit-image, data range 1)."""
    from skimage.metrics import structural_similarity
    return np.array([structural_similarity(a, b, data_range=1.0) for a, b in zip(images_a, images_b)])


def inception_distances(real_images, synthetic_images, weights_path, subset_size=KID_SUBSET_SIZE):
    """The literature's FID and KID (Inception-v3 pool features) through torchmetrics, with the
    weights read from ``weights_path`` (nothing is downloaded). Slices are (N, S, S) in [0, 1]."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance
    except ImportError as error:
        raise RuntimeError("the Inception FID/KID need torchmetrics and torch-fidelity "
                           "(pip install torchmetrics torch-fidelity)") from error
    size = min(subset_size, len(real_images), len(synthetic_images))
    fid = FrechetInceptionDistance(normalize=True, feature_extractor_weights_path=weights_path)
    kid = KernelInceptionDistance(normalize=True, subset_size=size, feature_extractor_weights_path=weights_path)
    for images, real in ((real_images, True), (synthetic_images, False)):
        for start in range(0, len(images), 64):
            batch = torch.as_tensor(np.asarray(images[start:start + 64]), dtype=torch.float32)
            batch = batch[:, None].expand(-1, 3, -1, -1)          # grey to RGB
            fid.update(batch, real=real)
            kid.update(batch, real=real)
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}
