"""Shapley values as a constrained weighted least-squares fit (KernelSHAP and its variants).

The Shapley values are the solution of (Charnes et al. 1988; Lundberg & Lee 2017)

    min_φ  Σ_{∅ ≠ S ≠ N} μ(S) (v(S) − v(∅) − Σ_{i∈S} φ_i)²   subject to  Σ_i φ_i = v(N) − v(∅),

with the Shapley kernel μ(S) = (n − 1) / (C(n, s) s (n − s)), s = |S|. A pool estimates the objective
by a weighted sum over its distinct coalitions; the three variants differ only in the row weights ω:

- ``kernelshap`` (post-stratified): ω(S) = m(S) · K_s / c_s, where K_s ∝ 1 / (s (n − s)) is the kernel
  mass of size s, m(S) the evaluations of S and c_s the evaluations of size s in the pool. Each size's
  mean squared residual is weighted by its exact kernel mass, so the fit is valid on any pool that is
  uniform within sizes (every design in ``design.py``), and on a pool drawn from the kernel it equals
  Covert & Lee's estimator up to the random size counts. With a paired pool a coalition and its
  complement get equal weights, and then the fit is **exact on every game with interactions of order
  ≤ 2** (v(S) = Σ a_i + Σ b_ij): the residual of the true values is the same for S and N∖S, so the
  gradient of the objective at the true values is parallel to the constraint (see the tests).
- ``leverage`` (Leverage SHAP, Musco & Witter 2025): ω(S) = m(S) · μ(S) / π(S), where π(S) is the
  inclusion probability of S under leverage-score sampling without replacement of U coalitions,
  π(S) = min(1, C / C(n, s)) with C set so that Σ_S π(S) = U (leverage scores of the kernel regression
  are ∝ 1 / C(n, s): equal mass per size). This is their Horvitz–Thompson estimator; it assumes the pool
  came from ``CoalitionDesign(design="leverage")`` (or ``"uniform-size"``).
- ``kernelshap-paper`` (the paper, Covert & Lee 2021): ω(S) = m(S), i.e. ordinary least squares on the
  draws, which is the kernel-weighted fit when the draws come from the kernel (``design="kernel"``).

All three return values that sum exactly to v(N) − v(∅) (efficiency).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from attribution_pipeline.valuation.coalitions import log_comb
from attribution_pipeline.valuation.estimator import Estimator, needs_regression
from attribution_pipeline.valuation.pool import (
    CoalitionPool, point_and_bootstrap_weights, stratified_note, stratum_totals,
)
from attribution_pipeline.valuation.result import RawEstimate

# Relative ridge keeping the normal equations solvable when a resample is nearly rank-deficient; it
# moves the solution by ~1e-10 relative, far below any sampling error.
_RIDGE = 1e-10


def solve_constrained(z: np.ndarray, y: np.ndarray, omega: np.ndarray, delta: float) -> np.ndarray:
    """Constrained weighted least squares for many weightings at once.

    z: (U, n) 0/1 float design; y: (U,) targets v(S) − v(∅); omega: (R, U) non-negative row weights;
    delta: v(N) − v(∅). Returns (R, n); each row minimises Σ_u ω_ru (y_u − z_u·φ)² subject to
    Σ φ = delta (closed form: φ = A⁻¹b − A⁻¹1 (1ᵀA⁻¹b − delta) / (1ᵀA⁻¹1), A = ZᵀΩZ, b = ZᵀΩy).
    """
    n_res, _ = omega.shape
    n = z.shape[1]
    grams = np.empty((n_res, n, n))
    rhs = np.empty((n_res, n, 2))
    rhs[:, :, 1] = 1.0
    for r in range(n_res):
        zw = z * omega[r][:, None]
        grams[r] = zw.T @ z
        rhs[r, :, 0] = zw.T @ y
    scale = np.trace(grams, axis1=1, axis2=2) / n
    grams[:, np.arange(n), np.arange(n)] += (_RIDGE * np.maximum(scale, 1e-300))[:, None]
    sol = np.linalg.solve(grams, rhs)
    a_inv_b, a_inv_1 = sol[:, :, 0], sol[:, :, 1]
    shift = (a_inv_b.sum(axis=1) - delta) / a_inv_1.sum(axis=1)
    return a_inv_b - a_inv_1 * shift[:, None]


def kernel_size_mass(sizes: np.ndarray, n_players: int) -> np.ndarray:
    """Shapley-kernel mass of each size (unnormalised): (n − 1) / (s (n − s)); shaped like sizes."""
    s = np.asarray(sizes, dtype=np.float64)
    return (n_players - 1) / (s * (n_players - s))


def kernelshap_weights(pool: CoalitionPool, weights: np.ndarray) -> np.ndarray:
    """Post-stratified kernel weights ω = w K_s / c_s(w) for coalition weights w (R, U); (R, U)."""
    totals = stratum_totals(pool, weights)
    return weights * kernel_size_mass(pool.sizes, pool.n_players)[None, :] / np.maximum(totals, 1e-300)


def leverage_inclusion(n_players: int, n_distinct: int) -> np.ndarray:
    """π_s for s = 0..n: inclusion probability of one coalition of size s under leverage sampling.

    Without replacement, U coalitions in all: π_s = min(1, C / C(n, s)) with C solved so that
    Σ_s C(n, s) π_s = U (water-filling: sizes with few coalitions are taken whole). Entries 0 and n: 0.
    """
    n = n_players
    sizes = np.arange(1, n)
    log_count = log_comb(n, sizes)
    order = np.argsort(log_count)  # smallest sizes (fully enumerated first) first
    remaining = float(n_distinct)
    pi = np.zeros(n + 1)
    for rank, idx in enumerate(order):
        open_sizes = len(order) - rank
        share = remaining / open_sizes  # coalitions each open size would get
        count = np.exp(log_count[idx])
        if share >= count:
            pi[sizes[idx]] = 1.0
            remaining -= count
        else:
            for j in order[rank:]:
                pi[sizes[j]] = np.exp(np.log(share) - log_count[j])
            break
    return pi


def leverage_weights(pool: CoalitionPool, weights: np.ndarray) -> np.ndarray:
    """Leverage SHAP row weights w μ(S) / π(S), rescaled; (R, U) for w (R, U). Not post-stratified."""
    n = pool.n_players
    pi = leverage_inclusion(n, pool.n_distinct)[pool.sizes]
    log_mu = np.log(n - 1.0) - log_comb(n, pool.sizes) - np.log(pool.sizes * (n - pool.sizes.astype(float)))
    log_w = log_mu - np.log(pi)
    return weights * np.exp(log_w - log_w.max())[None, :]


def leverage_fit_warning(pool: CoalitionPool) -> str | None:
    """A warning when the pool's sizes are implausible under leverage sampling (chi-square, p < 0.001)."""
    from scipy.stats import chi2

    n = pool.n_players
    pi = leverage_inclusion(n, pool.n_distinct)
    sizes = np.arange(1, n)
    expected = np.exp(log_comb(n, sizes)) * pi[sizes]
    observed = np.bincount(pool.sizes, minlength=n + 1)[sizes].astype(float)
    partial = (pi[sizes] < 1.0) & (expected > 0)
    if partial.sum() < 2:
        return None
    exp_p, obs_p = expected[partial], observed[partial]
    exp_p = exp_p * obs_p.sum() / exp_p.sum()
    stat = float(np.sum((obs_p - exp_p) ** 2 / exp_p))
    p_value = float(chi2.sf(stat, df=int(partial.sum()) - 1))
    if p_value < 1e-3:
        return (
            "leverage: the pool's size distribution is not that of leverage sampling (chi-square "
            f"p = {p_value:.1e}); its weights assume CoalitionDesign(design='leverage'). Use "
            "estimator='kernelshap', which re-weights any pool by size."
        )
    return None


def draw_weights(pool: CoalitionPool, weights: np.ndarray) -> np.ndarray:
    """The paper's row weights ω = w (R, U): ordinary least squares on the draws."""
    return weights


RowWeights = Callable[[CoalitionPool, np.ndarray], np.ndarray]


def regression_estimates(pool: CoalitionPool, row_weights: RowWeights, weights: np.ndarray) -> np.ndarray:
    """Shapley estimates (R, n) of the variant with ``row_weights`` for coalition weights (R, U).

    row_weights: ``kernelshap_weights``, ``leverage_weights`` or ``draw_weights`` (the module docstring).
    """
    z = pool.coalitions.astype(np.float64)
    y = pool.mean_values - pool.empty_value
    return solve_constrained(z, y, row_weights(pool, weights), pool.delta)


def _regression_estimator(name: str, row_weights: RowWeights,
                          pool_warning: Callable[[CoalitionPool], str | None] | None = None,
                          stratified: bool = True) -> Estimator:
    """A regression variant with pair-bootstrap intervals (the fit is refitted on every resample);
    ``stratified``: resample within pair classes (``pool.bootstrap_weights``), for the fits that
    re-weight by size."""

    def run(pool: CoalitionPool, *, seed: int, n_bootstrap: int, proxy: str) -> RawEstimate:
        weights = point_and_bootstrap_weights(pool, n_bootstrap, seed, stratified)
        est = regression_estimates(pool, row_weights, weights)
        warning = pool_warning(pool) if pool_warning is not None else None
        how = stratified_note(pool) if stratified else "units resampled from the whole pool"
        return RawEstimate(est[0], est[1:], None, pool.n_units - 1,
                           f"pair bootstrap ({n_bootstrap} resamples of {pool.n_units} units; {how})",
                           warnings=[warning] if warning else [])

    return Estimator(name, "shapley", needs_regression, run, holds_complete_strata=stratified)


KERNELSHAP = _regression_estimator("kernelshap", kernelshap_weights)
LEVERAGE = _regression_estimator("leverage", leverage_weights, leverage_fit_warning)
KERNELSHAP_PAPER = _regression_estimator("kernelshap-paper", draw_weights, stratified=False)
