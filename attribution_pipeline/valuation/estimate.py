"""``estimate``: one entry point for every estimator, reading one shared pool of evaluated coalitions.

Methods (``METHODS``), what they need, and how their uncertainty is obtained:

| method | value | needs | uncertainty |
|---|---|---|---|
| exact | Shapley | all 2^n − 2 coalitions | none, or noise propagated from repeats |
| kernelshap | Shapley | ≥ n distinct coalitions | pair bootstrap |
| leverage | Shapley | as kernelshap; a leverage-design pool | pair bootstrap |
| regression-msr | Shapley | as kernelshap | pair bootstrap of the MSR correction |
| proxy | Shapley | as kernelshap | jackknife over fold fits |
| banzhaf-msr | Banzhaf | every contributor in and out of some coalition | analytic (ranks: bootstrap) |
| loo | leave-one-out | the n coalitions N∖{i} | noise from repeats, else none |
| permutation | Shapley | rows laid out as permutation chains | over chains |
| kernelshap-paper | Shapley | as kernelshap; a kernel-design pool | pair bootstrap |

``auto`` picks ``exact`` on a complete pool; otherwise what our benchmark (``benchmarks/estimators.py``,
results in ``benchmarks/results/estimators.md``) found most accurate for (n, U), U distinct coalitions:

- ``kernelshap`` when n < 30 and U < 3n (at n = 10, B = 2n it beat every proxy-based method, which
  has too few coalitions per fold to fit);
- ``proxy`` (bagged tree proxy) when U < 20n: the most accurate at B = 2n…10n for n = 50 and 200,
  noise-free and noisy, with 15–40% less error than ``regression-msr``; likewise in a side check on
  weighted-voting, airport and glove games (n = 20, B = 10n, 20 seeds), where its jackknife intervals
  covered too. When the residual correction says the proxy is biased, the result carries a warning;
- ``regression-msr`` (tree proxy) from U = 20n: the two are level there, and the corrected estimator
  is unbiased, so its error keeps falling with the budget where the proxy's bias stays;
- ``permutation`` on a chain-laid pool that the regression estimators cannot use.
"""

from __future__ import annotations

import math

import numpy as np

from attribution_pipeline.valuation import classical
from attribution_pipeline.valuation.montecarlo import banzhaf_msr, banzhaf_msr_std_errors
from attribution_pipeline.valuation.pool import CoalitionPool, bootstrap_weights, build_pool
from attribution_pipeline.valuation.proxies import PROXIES
from attribution_pipeline.valuation.regression import leverage_fit_warning, regression_estimates
from attribution_pipeline.valuation.regression_msr import proxy_only, regression_msr
from attribution_pipeline.valuation.result import RawEstimate, ValuationResult, summarize
from attribution_pipeline.valuation.threads import single_threaded

METHODS = (
    "exact",
    "kernelshap",
    "leverage",
    "regression-msr",
    "proxy",
    "banzhaf-msr",
    "loo",
    "permutation",
    "kernelshap-paper",
)
_REGRESSION = ("kernelshap", "leverage", "kernelshap-paper")
# Thresholds of ``auto`` (distinct coalitions per contributor, and n), read off the benchmark.
AUTO_KERNELSHAP_BELOW = 3
AUTO_KERNELSHAP_MAX_N = 30
AUTO_MSR_FROM = 20
# Below this many distinct coalitions per contributor, rankings are unreliable (any estimator).
RELIABLE_BUDGET = 3


def _missing_for(pool: CoalitionPool, method: str) -> str | None:
    """None if ``method`` can run on ``pool``; otherwise which coalitions it needs."""
    n = pool.n_players
    inside = pool.coalitions.any(axis=0)
    outside = (~pool.coalitions).any(axis=0)
    both = inside & outside
    coverage_msg = None
    if not both.all():
        coverage_msg = (
            f"every contributor must be inside some coalition and outside another; contributor "
            f"{int(np.flatnonzero(~both)[0])} is not"
        )
    if method == "exact":
        if classical.is_complete(pool):
            return None
        total = f"2^{n} − 2 = {2**n - 2}" if n <= 60 else f"2^{n} − 2"
        return f"it needs every one of the {total} non-trivial coalitions; the pool has {pool.n_distinct}"
    if method in (*_REGRESSION, "regression-msr", "proxy"):
        if pool.n_distinct < n:
            return f"it needs at least n = {n} distinct coalitions; the pool has {pool.n_distinct}"
        if coverage_msg:
            return coverage_msg
        if method in ("regression-msr", "proxy") and pool.n_units < 4:
            return f"it needs at least 4 bootstrap units (coalitions or complement pairs); the pool has {pool.n_units}"
        return None
    if method == "banzhaf-msr":
        return coverage_msg
    if method == "loo":
        if classical.loo_rows(pool) is None:
            have = int(np.sum(pool.sizes == n - 1))
            return f"it needs all n = {n} leave-one-out coalitions N∖{{i}}; the pool has {have} of them"
        return None
    if method == "permutation":
        chains, why = classical.permutation_chains(pool)
        return None if chains is not None else why
    raise ValueError(f"unknown method {method!r}; choose 'auto' or one of {METHODS}")


def applicable_methods(masks, n_players: int) -> list[str]:
    """Names (in ``METHODS`` order) of the methods that can run on a pool with these coalitions.

    masks: (B, n) bool; n_players must equal its number of columns. Values are not needed.
    """
    masks = np.asarray(masks)
    if masks.ndim != 2 or masks.shape[1] != n_players:
        raise ValueError(f"masks must have shape (B, n_players={n_players}), got {masks.shape}")
    pool = build_pool(masks, np.zeros(masks.shape[0]), 0.0, 0.0)
    return [m for m in METHODS if _missing_for(pool, m) is None]


def select_method(pool: CoalitionPool) -> str:
    """The method ``auto`` uses on this pool (see the module docstring)."""
    if classical.is_complete(pool):
        return "exact"
    if _missing_for(pool, "kernelshap") is None:
        n, budget = pool.n_players, pool.n_distinct
        small = n < AUTO_KERNELSHAP_MAX_N and budget < AUTO_KERNELSHAP_BELOW * n
        if small or _missing_for(pool, "proxy") is not None:
            return "kernelshap"
        return "regression-msr" if budget >= AUTO_MSR_FROM * n else "proxy"
    if _missing_for(pool, "permutation") is None:
        return "permutation"
    raise ValueError(
        "no Shapley estimator can run on this pool: "
        + _missing_for(pool, "kernelshap")
        + ". Evaluate more coalitions (CoalitionDesign.take) or pick a method explicitly; this pool allows "
        + str([m for m in METHODS if _missing_for(pool, m) is None])
    )


def _run(pool: CoalitionPool, method: str, *, seed: int, n_bootstrap: int, proxy: str) -> RawEstimate:
    n_units = pool.n_units
    if method in _REGRESSION:
        weights = pool.multiplicity[None, :].astype(np.float64)
        if n_bootstrap > 0:
            weights = np.vstack([weights, bootstrap_weights(pool, n_bootstrap, seed)])
        est = regression_estimates(pool, method, weights)
        warnings = []
        if method == "leverage" and (msg := leverage_fit_warning(pool)):
            warnings.append(msg)
        return RawEstimate(est[0], est[1:] if n_bootstrap > 0 else None, None, n_units - 1,
                           f"pair bootstrap ({n_bootstrap} resamples of {n_units} units)", warnings=warnings)
    if method == "regression-msr":
        return regression_msr(pool, proxy, seed, n_bootstrap)
    if method == "proxy":
        return proxy_only(pool, proxy, seed, n_bootstrap)
    if method == "banzhaf-msr":
        weights = pool.multiplicity[None, :].astype(np.float64)
        if n_bootstrap > 0:
            weights = np.vstack([weights, bootstrap_weights(pool, n_bootstrap, seed)])
        est = banzhaf_msr(pool, weights)
        return RawEstimate(est[0], est[1:] if n_bootstrap > 0 else None, banzhaf_msr_std_errors(pool), None,
                           "analytic (MSR, rows as independent draws); ranks from a pair bootstrap",
                           value_kind="banzhaf")
    if method == "exact":
        return classical.exact(pool, seed, n_bootstrap)
    if method == "loo":
        return classical.leave_one_out(pool, seed, n_bootstrap)
    if method == "permutation":
        return classical.permutation(pool, seed, n_bootstrap)
    raise ValueError(f"unknown method {method!r}; choose 'auto' or one of {METHODS}")


def estimate(
    masks,
    values,
    *,
    empty_value: float,
    full_value: float,
    method: str = "auto",
    seed: int = 0,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    top_k: int | None = None,
    proxy: str = "tree",
) -> ValuationResult:
    """Estimate contributor values from evaluated coalitions.

    masks: (B, n) bool, one row per evaluation (repeats of a coalition are averaged and their spread is
    the utility's noise); never ∅ or N. values: (B,) utilities, finite. empty_value, full_value: v(∅)
    and v(N), same units, taken as exact. method: ``"auto"`` or one of ``METHODS``. seed: seeds the
    bootstrap, the folds and the proxy. n_bootstrap: resamples (0: point estimate only, NaN errors for
    resampled methods). confidence: interval level in (0, 1). top_k: k of ``p_top`` (default ⌈0.4 n⌉,
    the paper's "remove the top 40%"). proxy: ``"tree"`` or ``"linear"`` for regression-msr and proxy.

    Returns a ValuationResult; values in utility units, (n,). Raises ValueError on bad input or when the
    method cannot run on this pool (the message says which coalitions it needs).
    """
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if int(n_bootstrap) != n_bootstrap or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be a non-negative integer, got {n_bootstrap!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if proxy not in PROXIES:
        raise ValueError(f"proxy must be one of {PROXIES}, got {proxy!r}")
    pool = build_pool(masks, values, empty_value, full_value)
    n = pool.n_players
    if top_k is None:
        top_k = max(1, math.ceil(0.4 * n))
    if int(top_k) != top_k or not 1 <= top_k <= n:
        raise ValueError(f"top_k must be an integer in 1..{n}, got {top_k!r}")
    chosen = select_method(pool) if method == "auto" else method
    if chosen not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose 'auto' or one of {METHODS}")
    missing = _missing_for(pool, chosen)
    if missing is not None:
        allowed = [m for m in METHODS if _missing_for(pool, m) is None]
        raise ValueError(f"method {chosen!r} cannot run on this pool: {missing}. Methods that can: {allowed}")
    with single_threaded():
        raw = _run(pool, chosen, seed=int(seed), n_bootstrap=int(n_bootstrap), proxy=proxy)
    if chosen != "exact" and raw.value_kind == "shapley" and pool.n_distinct < RELIABLE_BUDGET * n:
        raw.warnings.append(
            f"budget: {pool.n_distinct} distinct coalitions < 3n = {RELIABLE_BUDGET * n}; Shapley rankings "
            "are unreliable at this budget (see the rank intervals)"
        )
    return summarize(raw, method=chosen, n_coalitions=pool.n_distinct, n_evaluations=pool.n_rows,
                     noise_std=pool.noise_std, confidence=confidence, top_k=int(top_k))
