"""Maximum-sample-reuse (MSR) Monte Carlo: every sampled coalition informs every contributor.

Both estimators here are weighted sums over the pool, post-stratified by coalition size (the weight of a
coalition is its evaluations over the evaluations of its size, times the size's exact mass), so they
are valid on any pool that is uniform within sizes. They take coalition weights (R, U), so one call
returns the point estimate and all bootstrap resamples.

Shapley (for the residual of a proxy, ``regression_msr.py``). With α(s) = 1 / (n C(n−1, s−1)) and
β(s) = 1 / (n C(n−1, s)),  φ_i(g) = Σ_{S∋i} α(|S|) g(S) − Σ_{S∌i} β(|S|) g(S). Size s holds C(n, s)
coalitions and α(s) C(n, s) = 1/s, β(s) C(n, s) = 1/(n − s), so a sampled coalition of size s
contributes  (w / c_s) · (1{i∈S} / s − 1{i∉S} / (n − s)) · g(S),  plus the exact terms of ∅ and N:
(g(N) − g(∅)) / n. The sampled part sums to zero over i, so efficiency is exact. In a paired pool a
coalition and its complement contribute (g(S) − g(N∖S)) / (s c_s) to each i ∈ S: the part of g that is
symmetric under complement cancels exactly.

Banzhaf (Wang & Jia 2023, "Data Banzhaf"): β_i = E[v(S) | i ∈ S] − E[v(S) | i ∉ S] for S uniform over
all 2^n coalitions. Estimated by weighted means over the pool (weights: size mass C(n, s) / 2^n over
the size's evaluations), with ∅ and N added exactly (each has mass 2^−n). Under
``design="bernoulli"`` this is their MSR estimator; its analytic standard error treats rows as
independent draws (ratio-estimator linearisation).
"""

from __future__ import annotations

import numpy as np

from attribution_pipeline.valuation.coalitions import log_comb
from attribution_pipeline.valuation.estimator import Estimator, needs_coverage
from attribution_pipeline.valuation.pool import CoalitionPool, point_and_bootstrap_weights, stratum_totals
from attribution_pipeline.valuation.result import RawEstimate


def shapley_msr_design(pool: CoalitionPool) -> np.ndarray:
    """G (U, n): 1{i∈S}/s − 1{i∉S}/(n − s) for each distinct coalition S of size s."""
    z = pool.coalitions.astype(np.float64)
    s = pool.sizes.astype(np.float64)[:, None]
    return z / s - (1.0 - z) / (pool.n_players - s)


def shapley_msr(pool: CoalitionPool, targets: np.ndarray, weights: np.ndarray,
                empty_target: float, full_target: float) -> np.ndarray:
    """MSR estimate (R, n) of the Shapley values of the game g with g(S_u) = targets[u].

    targets (U,): g at the pool's distinct coalitions; weights (R, U); empty_target, full_target:
    g(∅) and g(N), known exactly. Each row sums to full_target − empty_target. Unbiased when the pool
    is uniform within sizes (post-stratified Horvitz–Thompson).
    """
    totals = np.maximum(stratum_totals(pool, weights), 1e-300)
    coef = weights * targets[None, :] / totals
    return coef @ shapley_msr_design(pool) + (full_target - empty_target) / pool.n_players


def banzhaf_weights(pool: CoalitionPool, weights: np.ndarray) -> np.ndarray:
    """Post-stratified Banzhaf row weights (R, U): w · C(n, s) / c_s(w), rescaled (scale cancels)."""
    log_mass = log_comb(pool.n_players, pool.sizes)
    mass = np.exp(log_mass - log_mass.max())
    return weights * mass[None, :] / np.maximum(stratum_totals(pool, weights), 1e-300)


def banzhaf_msr(pool: CoalitionPool, weights: np.ndarray) -> np.ndarray:
    """MSR Banzhaf estimates (R, n) for coalition weights (R, U); exact on a complete pool."""
    n = pool.n_players
    omega = banzhaf_weights(pool, weights)
    z = pool.coalitions.astype(np.float64)
    y = pool.mean_values
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_in = ((omega * y) @ z) / (omega @ z)
        mean_out = ((omega * y) @ (1.0 - z)) / (omega @ (1.0 - z))
    edge = 2.0 ** (1 - n)
    return edge * pool.delta + (1.0 - edge) * (mean_in - mean_out)


def banzhaf_msr_std_errors(pool: CoalitionPool) -> np.ndarray:
    """Analytic standard errors (n,) of the MSR Banzhaf point estimate.

    Var of a weighted mean Σ ω y / Σ ω over independent rows ≈ Σ ω² (y − ȳ)² / (Σ ω)², for the rows
    with i and those without, added (the two sets of rows are disjoint).
    """
    n = pool.n_players
    omega = banzhaf_weights(pool, pool.multiplicity[None, :].astype(np.float64))[0]
    z = pool.coalitions.astype(np.float64)
    y = pool.mean_values
    var = np.zeros(n)
    for member in (z, 1.0 - z):
        w = omega[:, None] * member  # (U, n)
        total = w.sum(axis=0)
        mean = (w * y[:, None]).sum(axis=0) / total
        var += (w**2 * (y[:, None] - mean[None, :]) ** 2).sum(axis=0) / total**2
    return (1.0 - 2.0 ** (1 - n)) * np.sqrt(var)


def _run_banzhaf_msr(pool: CoalitionPool, *, seed: int, n_bootstrap: int, proxy: str) -> RawEstimate:
    est = banzhaf_msr(pool, point_and_bootstrap_weights(pool, n_bootstrap, seed))
    return RawEstimate(est[0], est[1:], banzhaf_msr_std_errors(pool), None,
                       "analytic (MSR, rows as independent draws); ranks from a pair bootstrap")


# The Shapley MSR above has no record of its own: it is the correction inside ``regression-msr``.
BANZHAF_MSR = Estimator("banzhaf-msr", "banzhaf", needs_coverage, _run_banzhaf_msr)
