"""Features for clustering: PCA-whitening to a fixed size, then L2 normalisation (DeepCluster's recipe)."""

from __future__ import annotations

import faiss
import numpy as np


def preprocess_features(x: np.ndarray, dim: int = 256, whiten: bool = True, eps: float = 1e-5) -> np.ndarray:
    """PCA to ``dim`` dimensions (whitened if ``whiten``), then unit L2 norm per row; float32 (N, D) in and out.

    PCA needs at least ``dim`` dimensions (at ``dim`` it only rotates and whitens) and more samples than ``dim`` to
    mean anything, so it is skipped otherwise and only the normalisation runs (SPEC: skipped when fewer).
    ``eps`` is relative: whitening divides component j by sqrt(lambda_j + eps * lambda_max), so directions with
    no variance (rank-deficient features, e.g. dead ReLU units) stay small instead of turning float noise (zero or
    negative eigenvalues) into NaN or huge values.
    A row of zeros after PCA stays zero (PCA centres the rows: an all-zero input row stays zero only where it is
    skipped). Non-finite input raises ``ValueError``.
    """
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D array (N, D), got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values (has the encoder diverged?)")
    n, d = x.shape
    if d >= dim and n > dim:
        # centred first: faiss forms the covariance as x'x - n mean mean' in float32, which cancels when the mean
        # dwarfs the spread (a fresh or collapsing encoder's ReLU features): eigenvalues of rounding noise, and
        # the negative ones whitened into NaN, so that k-means crashed (until 2026-12-02)
        x = scale_to_one(x - x.mean(axis=0, dtype=np.float64).astype(np.float32))
        pca = faiss.PCAMatrix(d, dim, -0.5 if whiten else 0.0)
        # on every row: faiss fits on a sample of 1,000 rows per dimension by default (512k of 1M 512-d features),
        # where the sharded PCA takes them all, so the two gave other labels past that (until 2026-12-01). At 1M
        # the whole costs 1 CPU-s more
        pca.max_points_per_d = -(-n // d) + 1
        pca.train(x)
        if whiten:
            # faiss scales by (eigenvalue + epsilon) ** -0.5: regularise relative to the top eigenvalue, rebuild
            values = faiss.vector_to_array(pca.eigenvalues)
            top = float(values.max())
            pca.epsilon = eps * top if top > 0 else 1.0  # constant features: every component is zero anyway
            faiss.copy_array_to_vector(np.maximum(values, 0), pca.eigenvalues)  # float noise below 0: none there
            pca.prepare_Ab()
        x = pca.apply(x)
    else:
        x = scale_to_one(x.copy())  # normalised in place below: never the caller's array
    faiss.normalize_L2(x)  # in place, without an N x dim temporary; all-zero rows stay zero
    return x


def scale_to_one(x: np.ndarray) -> np.ndarray:
    """``x`` (float32) scaled in place by the power of two that brings its largest magnitude into [0.5, 1).

    Exact (no rounding) unless values become subnormal, and PCA-whitening and normalisation ignore the scale; but
    faiss squares float32 values in its covariance and in normalize_L2, which overflowed past about 1e18 (a
    diverging encoder's features: NaN, then a faiss traceback in k-means, or rows of zeros) and underflowed below
    about 1e-20, until 2026-12-02.
    """
    top = max(float(x.max()), -float(x.min())) if x.size else 0.0
    if top > 0:
        np.ldexp(x, -np.frexp(top)[1], out=x)
    return x
