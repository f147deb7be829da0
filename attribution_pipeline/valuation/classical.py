"""Estimators that need a pool of a particular shape: exact enumeration, leave-one-out, permutations.

- ``exact``: every non-trivial coalition is in the pool (2^n − 2 of them; n ≲ 20). No sampling error;
  when the utility's noise is known (repeated rows or replicates), it is propagated through the (linear)
  formula (``estimate`` adds that of v(∅) and v(N)); when it is not, the result says so.
- ``loo``: the n leave-one-out coalitions N∖{i} are in the pool; value_i = v(N) − v(N∖{i}). Not a
  Shapley estimate (value_kind "loo"); the paper's strongest baseline on CIFAR-20.
- ``permutation`` (antithetic): the pool's rows, in order, are blocks of n − 1 rows forming chains
  S_1 ⊂ S_2 ⊂ … ⊂ S_{n−1} with |S_j| = j (``CoalitionDesign(design="permutation")``); a chain gives one
  marginal contribution per contributor, telescoping to v(N) − v(∅). A chain followed by the chain of
  the reversed permutation forms one antithetic unit. We require this layout rather than search an
  arbitrary pool for chains: a search would pick chains by what happens to be present, which biases the
  estimate. For noise-free utilities only: every marginal contribution is a difference of two noisy
  evaluations, so the noise enters twice per contributor and per chain, and n − 1 evaluations buy one
  contribution per contributor.
"""

from __future__ import annotations

import numpy as np

from attribution_pipeline.valuation.coalitions import shapley_coefficients
from attribution_pipeline.valuation.estimator import Estimator
from attribution_pipeline.valuation.pool import CoalitionPool
from attribution_pipeline.valuation.result import RawEstimate


def is_complete(pool: CoalitionPool) -> bool:
    """Whether the pool holds all 2^n − 2 non-trivial coalitions."""
    return pool.n_players <= 30 and pool.n_distinct == 2**pool.n_players - 2


def _noise_draws(values: np.ndarray, se: np.ndarray, n_draws: int, seed: int) -> np.ndarray:
    """Independent Gaussian draws (R, n) around values with standard errors se (rank intervals only)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x0015E]))
    return values[None, :] + se[None, :] * rng.standard_normal((n_draws, len(values)))


def exact(pool: CoalitionPool, seed: int, n_draws: int) -> RawEstimate:
    """Exact Shapley values from a complete pool; the formula's noise propagation when noise is known."""
    n = pool.n_players
    z = pool.coalitions.astype(np.float64)
    alpha, beta = shapley_coefficients(pool.sizes, n)
    values = (alpha * pool.mean_values) @ z - (beta * pool.mean_values) @ (1.0 - z) + pool.delta / n
    if pool.noise_std is None:
        return RawEstimate(values, None, np.zeros(n), None,
                           "exact enumeration; no sampling error; utility noise unknown (no repeated rows or replicates)")
    inv_m = 1.0 / pool.evaluations
    var = pool.noise_std**2 * ((alpha**2 * inv_m) @ z + (beta**2 * inv_m) @ (1.0 - z))
    se = np.sqrt(var)
    return RawEstimate(values, _noise_draws(values, se, n_draws, seed), se, pool.noise_dof,
                       f"exact enumeration; utility noise from {pool.noise_source} propagated through the formula")


def loo_rows(pool: CoalitionPool) -> np.ndarray | None:
    """Index (n,) of the distinct coalition N∖{i} for each i, or None if one is missing."""
    n = pool.n_players
    big = np.flatnonzero(pool.sizes == n - 1)
    out = np.full(n, -1, dtype=np.int64)
    out[np.argmin(pool.coalitions[big], axis=1)] = big
    return None if np.any(out < 0) else out


def leave_one_out(pool: CoalitionPool, seed: int, n_draws: int) -> RawEstimate:
    """value_i = v(N) − mean v(N∖{i}); standard error from the utility noise when it is known."""
    rows = loo_rows(pool)
    values = pool.full_value - pool.mean_values[rows]
    if pool.noise_std is None:
        return RawEstimate(values, None, None, 0,
                           "none: leave-one-out has no sampling error to resample and the utility noise "
                           "is unknown (measure replicates, or the coalitions more than once, to get intervals)",
                           warnings=["loo: no repeated rows, so no noise estimate; intervals are NaN"])
    se = pool.noise_std / np.sqrt(pool.evaluations[rows])
    return RawEstimate(values, _noise_draws(values, se, n_draws, seed), se, pool.noise_dof,
                       f"utility noise from {pool.noise_source} of the coalitions N∖{{i}}")


def permutation_chains(pool: CoalitionPool) -> tuple[np.ndarray | None, str]:
    """Row blocks (k, n − 1) of the complete chains in the pool's row order, or None and the reason."""
    n = pool.n_players
    masks = pool.masks
    n_chains = masks.shape[0] // (n - 1)
    if n_chains == 0:
        return None, f"it needs at least one chain of n − 1 = {n - 1} rows; the pool has {masks.shape[0]} rows"
    blocks = masks[: n_chains * (n - 1)].reshape(n_chains, n - 1, n)
    sizes_ok = np.all(blocks.sum(axis=2) == np.arange(1, n)[None, :], axis=1)
    nested_ok = np.all(blocks[:, 1:, :] >= blocks[:, :-1, :], axis=(1, 2))
    bad = np.flatnonzero(~(sizes_ok & nested_ok))
    if len(bad):
        return None, (
            f"rows {bad[0] * (n - 1)}..{(bad[0] + 1) * (n - 1) - 1} are not a permutation chain (row j of "
            "a block must have j members and contain the row before); draw the pool with "
            "CoalitionDesign(n, design='permutation')"
        )
    return np.arange(n_chains * (n - 1)).reshape(n_chains, n - 1), ""


def permutation(pool: CoalitionPool, seed: int, n_draws: int) -> RawEstimate:
    """Antithetic permutation sampling over the pool's chains (see the module docstring)."""
    n = pool.n_players
    chains, _ = permutation_chains(pool)
    row_values = pool.mean_values[pool.row_index]
    n_chains = len(chains)
    contributions = np.empty((n_chains, n))
    for k, rows in enumerate(chains):
        block = pool.masks[rows]
        path = np.concatenate([[pool.empty_value], row_values[rows], [pool.full_value]])
        step = n - block.sum(axis=0)  # a contributor added at step j is in n − j rows of the chain
        contributions[k] = np.diff(path)[step - 1]
    warnings = ["permutation: marginal contributions difference two noisy evaluations; use this estimator "
                "for noise-free utilities only"]
    leftover = pool.masks.shape[0] - n_chains * (n - 1)
    if leftover:
        warnings.append(f"permutation: the last {leftover} rows do not complete a chain and were ignored")
    masks = pool.masks
    antithetic = n_chains % 2 == 0 and all(
        np.array_equal(masks[chains[2 * k + 1]], ~masks[chains[2 * k]][::-1]) for k in range(n_chains // 2)
    )
    units = contributions.reshape(n_chains // 2, 2, n).mean(axis=1) if antithetic else contributions
    values = units.mean(axis=0)
    n_units = len(units)
    if n_units < 2:
        warnings.append("permutation: one sampling unit only, so no standard error")
        return RawEstimate(values, None, None, 0, "none (a single chain)", warnings=warnings)
    se = units.std(axis=0, ddof=1) / np.sqrt(n_units)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xCA1A]))
    picks = rng.integers(0, n_units, size=(n_draws, n_units))
    draws = units[picks].mean(axis=1)
    kind = "antithetic pairs of chains" if antithetic else "chains"
    return RawEstimate(values, draws, se, n_units - 1,
                       f"standard error over {n_units} {kind}; ranks from their bootstrap", warnings=warnings)


def _needs_complete(pool: CoalitionPool) -> str | None:
    if is_complete(pool):
        return None
    n = pool.n_players
    total = f"2^{n} − 2 = {2**n - 2}" if n <= 60 else f"2^{n} − 2"
    return f"it needs every one of the {total} non-trivial coalitions; the pool has {pool.n_distinct}"


def _needs_loo_rows(pool: CoalitionPool) -> str | None:
    if loo_rows(pool) is not None:
        return None
    n = pool.n_players
    have = int(np.sum(pool.sizes == n - 1))
    return f"it needs all n = {n} leave-one-out coalitions N∖{{i}}; the pool has {have} of them"


def _needs_chains(pool: CoalitionPool) -> str | None:
    chains, why = permutation_chains(pool)
    return None if chains is not None else why


# The proxy option does not apply to these three; n_bootstrap is the number of rank-interval draws.
EXACT = Estimator("exact", "shapley", _needs_complete, sampled=False,
                  run=lambda pool, *, seed, n_bootstrap, proxy: exact(pool, seed, n_bootstrap))
LOO = Estimator("loo", "loo", _needs_loo_rows,
                run=lambda pool, *, seed, n_bootstrap, proxy: leave_one_out(pool, seed, n_bootstrap))
PERMUTATION = Estimator("permutation", "shapley", _needs_chains,
                        run=lambda pool, *, seed, n_bootstrap, proxy: permutation(pool, seed, n_bootstrap))
