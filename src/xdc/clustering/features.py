"""Features for clustering: PCA-whitening to a fixed size, then L2 normalisation (DeepCluster's recipe)."""

from __future__ import annotations

import math

import faiss
import numpy as np

from xdc.clustering.arguments import integer


def preprocess_features(x: np.ndarray, dim: int = 256, whiten: bool = True, eps: float = 1e-5) -> np.ndarray:
    """PCA to ``dim`` dimensions (whitened if ``whiten``), then unit L2 norm per row; float32 (N, D) in and out.

    PCA needs at least ``dim`` dimensions (at ``dim`` it only rotates and whitens) and more samples than ``dim`` to
    mean anything, so it is skipped otherwise and only the normalisation runs (SPEC: skipped when fewer).
    ``eps`` is relative: whitening divides component j by sqrt(lambda_j + eps * lambda_max), so directions with
    no variance (rank-deficient features, e.g. dead ReLU units) stay small instead of turning float noise (zero or
    negative eigenvalues) into NaN or huge values.
    A row of zeros after PCA stays zero (PCA centres the rows: an all-zero input row stays zero only where it is
    skipped). Features all identical (no variance) come out as rows of zeros when PCA runs, as identical unit rows
    otherwise; no rows give no rows. Non-finite input, features without dimensions (N, 0), complex ones and ``dim``
    < 1 raise ``ValueError``, as does an ``eps`` that is not finite and > 0.
    """
    check_features_shape(x, dim)
    check_eps(eps)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values (has the encoder diverged?)")
    if not x.shape[1]:
        raise ValueError(f"features have no dimensions (shape {x.shape}): nothing to cluster by")
    n, d = x.shape
    if d >= dim and n > dim:
        scale = centring_scale(largest_magnitude(x))
        centre = (x.mean(axis=0, dtype=np.float64) * scale).astype(np.float32)
        matrix = pca_matrix(centred_scatter(x, centre, scale), dim, whiten, eps)
        x = scale_to_one(project(x, centre, scale, matrix))  # a new array: normalised in place below
    else:
        x = scale_to_one(x.copy())  # normalised in place below: never the caller's array
    faiss.normalize_L2(x)  # in place, without an N x dim temporary; all-zero rows stay zero
    return x


def check_features_shape(x: np.ndarray, dim: int) -> None:
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D array (N, D), got shape {x.shape}")
    if integer(dim, "dim") < 1:  # an IndexError from the PCA, until 2026-12-02
        raise ValueError(f"PCA needs dim >= 1, got {dim}")
    if x.dtype.kind not in "biuf":  # complex ones lost their imaginary parts (a numpy warning) until 2026-12-02
        raise ValueError(f"features must be real numbers, got dtype {x.dtype}")


def check_eps(eps: float) -> None:
    """``ValueError`` unless ``eps`` > 0 and finite: below zero or NaN it made directions without variance NaN
    (rows of NaN from rank-deficient features, which k-means then refused as non-finite points), and at infinity it
    made every row zero, until 2026-12-03."""
    if not 0 < eps < math.inf:
        raise ValueError(f"eps must be a finite number > 0 (it keeps directions without variance finite), got {eps}")


# The PCA, here and in xdc.clustering.sharded. faiss's PCAMatrix formed the covariance as x'x - n mean mean' in
# float32, which cancels where the mean dwarfs the spread (a fresh or collapsing encoder's ReLU features: a mean 10
# times the spread): eigenvalues of rounding noise, the negative ones whitened into NaN, and k-means crashed on
# them; its squares overflowed float32 past about 1e18, and its projection A x + b past about 1e36 (a diverging
# encoder's finite features). Until 2026-12-02. Here the rows are scaled by a power of two (exact) that keeps them,
# centred, below 1, and centred a block at a time (no N x D copy), for the scatter matrix (summed in float32, as
# faiss's) and for the projection.

_BLOCK = 16384  # rows centred at a time: 32 MB at 512-d


def centred_scatter(x: np.ndarray, centre: np.ndarray, scale: np.float32) -> np.ndarray:
    """The scatter matrix (float32, D x D) of the rows of ``x`` times ``scale`` minus ``centre``."""
    scatter = np.zeros((x.shape[1], x.shape[1]), dtype=np.float32)
    for _, block in _centred_blocks(x, centre, scale):
        scatter += block.T @ block  # numpy takes it for a symmetric product: half the work of a general one
    return scatter


def pca_matrix(scatter: np.ndarray, dim: int, whiten: bool, eps: float) -> np.ndarray:
    """(D, dim) float32: the eigenvectors of the ``dim`` largest eigenvalues of ``scatter``, each divided by the
    square root of its eigenvalue plus ``eps`` times the largest where ``whiten``; eigenvalues below zero count as
    zero. Whitened components have faiss's variance: 1/N."""
    values, vectors = np.linalg.eigh(scatter.astype(np.float64))  # ascending
    values, vectors = np.maximum(values[::-1][:dim], 0.0), vectors[:, ::-1][:, :dim]
    if whiten:
        vectors = vectors / np.sqrt(values + (eps * values[0] if values[0] > 0 else 1.0))  # constant features: 1
    return vectors.astype(np.float32)


def project(x: np.ndarray, centre: np.ndarray, scale: np.float32, matrix: np.ndarray) -> np.ndarray:
    """The rows of ``x`` times ``scale`` minus ``centre``, times ``matrix``: float32 (N, dim)."""
    out = np.empty((len(x), matrix.shape[1]), dtype=np.float32)
    for start, block in _centred_blocks(x, centre, scale):
        np.matmul(block, matrix, out=out[start : start + _BLOCK])
    return out


def _centred_blocks(x: np.ndarray, centre: np.ndarray, scale: np.float32):
    """(first row, block) for the blocks of rows of ``x`` times ``scale`` minus ``centre``, in one buffer."""
    buffer = np.empty((min(len(x), _BLOCK), x.shape[1]), dtype=np.float32)
    for start in range(0, len(x), _BLOCK):
        block = np.multiply(x[start : start + _BLOCK], scale, out=buffer[: len(x) - start])
        block -= centre
        yield start, block


def scale_to_one(x: np.ndarray) -> np.ndarray:
    """``x`` (float32) scaled in place by the power of two that brings its largest magnitude into [0.5, 1).

    Exact (no rounding) unless values become subnormal, and normalisation ignores the scale; but faiss squares
    float32 values in normalize_L2, which overflowed past about 1e18 (a diverging encoder's features: rows of zeros)
    and underflowed below about 1e-20, until 2026-12-02.
    """
    np.ldexp(x, -_exponent(largest_magnitude(x)), out=x)
    return x


def centring_scale(top: float) -> np.float32:
    """The power of two that keeps rows whose largest magnitude is ``top``, once centred (below twice that), below 1:
    at most 2**127, float32's largest (subnormal rows, below 2**-126, stay above 2**-22)."""
    return np.float32(np.ldexp(1.0, min(-_exponent(top) - 1, 127)))


def largest_magnitude(x: np.ndarray) -> float:
    """The largest magnitude in ``x`` (0 where it is empty)."""
    return max(float(x.max()), -float(x.min())) if x.size else 0.0


def _exponent(top: float) -> int:
    """The exponent of the power of two just above ``top`` >= 0 (0 for 0)."""
    return int(np.frexp(top)[1]) if top > 0 else 0
