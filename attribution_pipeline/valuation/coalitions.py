"""Coalition bookkeeping shared by the design and the estimators.

A coalition of ``n`` contributors is a boolean row of length ``n`` (True = the contributor's data is in
the training set). The empty and the full coalition are never sampled: v(∅) and v(N) are measured
separately and passed to the estimators as scalars.

Strata. Every design here draws a size (or, when paired, a *pair class* c = min(s, n − s) grouping the
sizes c and n − c, since a coalition and its complement are drawn together), then a coalition uniformly
among those of that size. The estimators re-weight by size, so they work on any pool that is uniform
within sizes.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.special import gammaln


def log_comb(n: int, k: np.ndarray | int) -> np.ndarray:
    """Natural log of the binomial coefficient C(n, k), elementwise; exact enough for n up to 10^6."""
    k = np.asarray(k, dtype=np.float64)
    return gammaln(n + 1.0) - gammaln(k + 1.0) - gammaln(n - k + 1.0)


def pair_class_multiplicity(classes: np.ndarray, n_players: int) -> np.ndarray:
    """κ_c: how many sizes a pair class spans (2, or 1 for the middle class of an even n); float array."""
    classes = np.asarray(classes)
    return np.where(2 * classes == n_players, 1.0, 2.0)


def shapley_kernel_size_mass(n_players: int) -> np.ndarray:
    """Probability of each size s = 1..n−1 under the Shapley kernel; array of shape (n−1,), sums to 1.

    The Shapley kernel gives each coalition of size s the weight (n−1) / (C(n, s) s (n − s)); summed over
    the C(n, s) coalitions of one size this is proportional to 1 / (s (n − s)).
    """
    s = np.arange(1, n_players, dtype=np.float64)
    mass = 1.0 / (s * (n_players - s))
    return mass / mass.sum()


def pack_rows(masks: np.ndarray) -> np.ndarray:
    """Pack boolean rows (B, n) into bytes (B, ceil(n/8)) so rows can be hashed and compared fast."""
    return np.packbits(np.asarray(masks, dtype=bool), axis=1)


def all_coalitions(n_players: int) -> np.ndarray:
    """Every coalition except ∅ and N, by size then lexicographically; bool array (2^n − 2, n).

    Only for small n (the array has (2^n − 2) n entries); raises ValueError above n = 24.
    """
    n = n_players
    if n > 24:
        raise ValueError(f"refusing to enumerate 2^{n} coalitions; exact enumeration is for n <= 24")
    rows = []
    for size in range(1, n):
        for members in itertools.combinations(range(n), size):
            rows.append(members)
    out = np.zeros((len(rows), n), dtype=bool)
    for r, members in enumerate(rows):
        out[r, list(members)] = True
    return out


def all_coalitions_with_endpoints(n_players: int) -> np.ndarray:
    """All 2^n coalitions including ∅ and N, in binary counting order; bool array (2^n, n). n <= 24."""
    n = n_players
    if n > 24:
        raise ValueError(f"refusing to enumerate 2^{n} coalitions; exact enumeration is for n <= 24")
    codes = np.arange(2**n, dtype=np.int64)
    return ((codes[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)


def shapley_coefficients(sizes: np.ndarray, n_players: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights of v(S) in the Shapley value, for members and non-members of S.

    φ_i = Σ_{S ∋ i} α(|S|) v(S) − Σ_{S ∌ i} β(|S|) v(S) over all S ⊆ N, with
    α(s) = 1 / (n C(n−1, s−1)) and β(s) = 1 / (n C(n−1, s)). Returns (α, β) arrays shaped like sizes.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    n = n_players
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(sizes >= 1, np.exp(-np.log(n) - log_comb(n - 1, np.maximum(sizes - 1, 0))), 0.0)
        beta = np.where(sizes <= n - 1, np.exp(-np.log(n) - log_comb(n - 1, np.minimum(sizes, n - 1))), 0.0)
    return alpha, beta


def exact_semivalues(masks: np.ndarray, values: np.ndarray, empty_value: float, full_value: float,
                     kind: str = "shapley") -> np.ndarray:
    """Exact Shapley or Banzhaf values from a table of every non-trivial coalition.

    masks: bool (2^n − 2, n), each non-trivial coalition exactly once (any order); values: (2^n − 2,).
    Returns (n,). Shapley values sum to full_value − empty_value; Banzhaf values need not.
    """
    masks = np.asarray(masks, dtype=bool)
    n = masks.shape[1]
    values = np.asarray(values, dtype=np.float64)
    sizes = masks.sum(axis=1)
    z = masks.astype(np.float64)
    if kind == "shapley":
        alpha, beta = shapley_coefficients(sizes, n)
        member = (alpha * values) @ z
        nonmember = (beta * values) @ (1.0 - z)
        return member - nonmember + (full_value - empty_value) / n
    if kind == "banzhaf":
        scale = 2.0 ** (n - 1)
        return (values @ z - values @ (1.0 - z) + full_value - empty_value) / scale
    raise ValueError(f"kind must be 'shapley' or 'banzhaf', got {kind!r}")
