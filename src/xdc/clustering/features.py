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
        scale = np.float32(np.ldexp(1.0, -_exponent(x) - 1))  # centred values are below twice the largest magnitude
        pca = _fit_pca(x, dim, whiten, eps, scale)
        out = np.empty((n, dim), dtype=np.float32)  # normalised in place below
        block = np.empty((min(n, _BLOCK), d), dtype=np.float32)
        for start in range(0, n, _BLOCK):  # on the scaled rows: faiss's A x + b overflowed past about 1e36
            rows = np.multiply(x[start : start + _BLOCK], scale, out=block[: n - start])
            pca.apply_noalloc(len(rows), faiss.swig_ptr(rows), faiss.swig_ptr(out[start : start + _BLOCK]))
        x = scale_to_one(out)
    else:
        x = scale_to_one(x.copy())  # normalised in place below: never the caller's array
    faiss.normalize_L2(x)  # in place, without an N x dim temporary; all-zero rows stay zero
    return x


_BLOCK = 16384  # rows centred at a time for the covariance: 32 MB at 512-d


def _fit_pca(x: np.ndarray, dim: int, whiten: bool, eps: float, scale: np.float32) -> faiss.PCAMatrix:
    """faiss's PCA matrix of every row of ``x`` times ``scale``, fitted here, to apply to rows times ``scale``.

    faiss forms the covariance as x'x - n mean mean' in float32, which cancels where the mean dwarfs the spread (a
    fresh or collapsing encoder's ReLU features: a mean 10 times the spread): eigenvalues of rounding noise, the
    negative ones whitened into NaN, and k-means crashed on them; and its squares overflowed float32 past about 1e18
    (a diverging encoder's finite features). Until 2026-12-02. Here the rows are scaled by a power of two (exact)
    that keeps them, centred, below 1, centred a block at a time, and the scatter matrix is summed in float32 as
    faiss's is (the same time; no N x D copy); eigenvalues below zero count as zero. The eigenvalues are those of
    the scatter matrix, as faiss's are of its rows': whitened components have faiss's variance of 1/N, which the
    normalisation removes."""
    n, d = x.shape
    mean = (x.mean(axis=0, dtype=np.float64) * scale).astype(np.float32)
    scatter = np.zeros((d, d), dtype=np.float32)
    for start in range(0, n, _BLOCK):
        block = x[start : start + _BLOCK] * scale - mean
        scatter += block.T @ block
    values, vectors = np.linalg.eigh(scatter.astype(np.float64))  # ascending
    values, vectors = np.maximum(values[::-1], 0.0), vectors[:, ::-1]
    pca = faiss.PCAMatrix(d, dim, -0.5 if whiten else 0.0)
    faiss.copy_array_to_vector(mean, pca.mean)
    faiss.copy_array_to_vector(values.astype(np.float32), pca.eigenvalues)
    faiss.copy_array_to_vector(np.ascontiguousarray(vectors.T, dtype=np.float32).ravel(), pca.PCAMat)  # rows
    pca.is_trained = True
    if whiten:
        # faiss scales by (eigenvalue + epsilon) ** -0.5: regularised relative to the top eigenvalue
        pca.epsilon = float(eps * values[0]) if values[0] > 0 else 1.0  # constant features: every component is zero
    pca.prepare_Ab()
    return pca


def scale_to_one(x: np.ndarray) -> np.ndarray:
    """``x`` (float32) scaled in place by the power of two that brings its largest magnitude into [0.5, 1).

    Exact (no rounding) unless values become subnormal, and PCA-whitening and normalisation ignore the scale; but
    faiss squares float32 values in its covariance and in normalize_L2, which overflowed past about 1e18 (a
    diverging encoder's features: NaN, then a faiss traceback in k-means, or rows of zeros) and underflowed below
    about 1e-20, until 2026-12-02.
    """
    np.ldexp(x, -_exponent(x), out=x)
    return x


def _exponent(x: np.ndarray) -> int:
    """The power of two just above the largest magnitude in ``x`` (0 where all are zero)."""
    top = max(float(x.max()), -float(x.min())) if x.size else 0.0
    return int(np.frexp(top)[1]) if top > 0 else 0
