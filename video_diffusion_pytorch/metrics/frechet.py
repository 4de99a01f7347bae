"""The Fréchet distance between Gaussians fitted to two sets of features (Dowson & Landau
1982), which FID (Heusel et al. 2017, §3) and FVD (Unterthiner et al. 2018, §3) compute on
network features:

    d² = |mu_1 - mu_2|² + tr(S_1 + S_2 - 2 (S_1^½ S_2 S_1^½)^½).

The matrix square root is taken from symmetric eigendecompositions in float64, so the
trace term stays real and needs no iterative `sqrtm`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gaussian_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean `(d,)` and unbiased covariance `(d, d)` in float64 of `features` `(n, d)`, n >= 2."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be (n, d) with at least 2 rows, got shape {tuple(features.shape)}")
    features = features.double()
    return features.mean(dim=0), torch.cov(features.T)


def _sqrt_psd(matrix: Tensor) -> Tensor:
    """The square root of a symmetric positive semi-definite matrix (negative rounding clipped)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_distance(mu_1: Tensor, sigma_1: Tensor, mu_2: Tensor, sigma_2: Tensor) -> float:
    """d² between N(mu_1, sigma_1) and N(mu_2, sigma_2) (the formula above)."""
    if mu_1.shape != mu_2.shape or sigma_1.shape != sigma_2.shape:
        raise ValueError(f"the statistics differ in shape: {tuple(mu_1.shape)}/{tuple(sigma_1.shape)} and {tuple(mu_2.shape)}/{tuple(sigma_2.shape)}")
    mu_1, sigma_1, mu_2, sigma_2 = (x.double() for x in (mu_1, sigma_1, mu_2, sigma_2))
    root_1 = _sqrt_psd(sigma_1)
    middle = root_1 @ sigma_2 @ root_1
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mu_1 - mu_2).square().sum() + sigma_1.trace() + sigma_2.trace() - 2 * trace_root
    return max(distance.item(), 0.0)


def frechet_distance_of(features_1: Tensor, features_2: Tensor) -> float:
    """d² between Gaussians fitted to two feature sets `(n_1, d)` and `(n_2, d)`."""
    return frechet_distance(*gaussian_statistics(features_1), *gaussian_statistics(features_2))
