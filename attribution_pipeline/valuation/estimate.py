"""``estimate``: one entry point for every estimator, reading one shared pool of evaluated coalitions.

Estimators (``ESTIMATORS``; each an ``Estimator`` record beside its math, listed in ``registry.py``),
what they need, and how their uncertainty is obtained:

| estimator | value | needs | uncertainty |
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

- ``kernelshap`` when n < 30 and U < 3n (at n = 10, B = 2n it beat every proxy-based estimator, which
  has too few coalitions per fold to fit);
- ``regression-msr`` (tree proxy with the MSR residual correction) otherwise: unbiased, at the price of
  20–40% more total error than the bagged proxy alone on the synthetic games at B = 5n…10n
  (``benchmarks/results/estimators.md``); level with it from B = 20n;
- ``permutation`` on a chain-laid pool that the regression estimators cannot use.

``auto`` chooses among unbiased estimators only. The bagged ``proxy`` alone has less total error on the
synthetic games, but it is shrunk toward equal shares by an amount no interval shows (its interval
covers its variance only), and two pools that differ only in the design seed ranked the default's
contributors differently (Spearman 0.39 on quality). A biased estimator becomes the default only when
it is shown better with its bias counted on the enumerated real game too (``benchmarks/estimators.py``,
section "real game"), not on synthetic games alone. ``proxy`` stays available by name.
"""

from __future__ import annotations

import math

import numpy as np

from attribution_pipeline.valuation.estimator import Estimator
from attribution_pipeline.valuation.pool import CoalitionPool, build_pool
from attribution_pipeline.valuation.proxies import PROXIES
from attribution_pipeline.valuation.registry import ESTIMATORS, REGISTRY
from attribution_pipeline.valuation.result import ValuationResult, summarize
from attribution_pipeline.valuation.threads import single_threaded

# Thresholds of ``auto`` (distinct coalitions per contributor, and n), read off the benchmark.
AUTO_KERNELSHAP_BELOW = 3
AUTO_KERNELSHAP_MAX_N = 30
# Below this many distinct coalitions per contributor, rankings are unreliable (any estimator).
RELIABLE_BUDGET = 3


def _can_run(pool: CoalitionPool, name: str) -> bool:
    return REGISTRY[name].needs(pool) is None


def _allowed(pool: CoalitionPool) -> list[str]:
    return [name for name in ESTIMATORS if _can_run(pool, name)]


def applicable_estimators(masks, n_players: int) -> list[str]:
    """Names (in ``ESTIMATORS`` order) of the estimators that can run on a pool with these coalitions.

    masks: (B, n) bool; n_players must equal its number of columns. Values are not needed.
    """
    masks = np.asarray(masks)
    if masks.ndim != 2 or masks.shape[1] != n_players:
        raise ValueError(f"masks must have shape (B, n_players={n_players}), got {masks.shape}")
    return _allowed(build_pool(masks, np.zeros(masks.shape[0]), 0.0, 0.0))


def select_estimator(pool: CoalitionPool) -> str:
    """The estimator ``auto`` uses on this pool (see the module docstring)."""
    if _can_run(pool, "exact"):
        return "exact"
    if _can_run(pool, "kernelshap"):
        n, budget = pool.n_players, pool.n_distinct
        small = n < AUTO_KERNELSHAP_MAX_N and budget < AUTO_KERNELSHAP_BELOW * n
        if small or not _can_run(pool, "regression-msr"):
            return "kernelshap"
        return "regression-msr"
    if _can_run(pool, "permutation"):
        return "permutation"
    raise ValueError(
        "no Shapley estimator can run on this pool: "
        + REGISTRY["kernelshap"].needs(pool)
        + ". Evaluate more coalitions (CoalitionDesign.take) or pick an estimator explicitly; this pool "
        + "allows " + str(_allowed(pool))
    )


def _check_options(seed, n_bootstrap, confidence, proxy) -> None:
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if int(n_bootstrap) != n_bootstrap or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be a non-negative integer, got {n_bootstrap!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if proxy not in PROXIES:
        raise ValueError(f"proxy must be one of {PROXIES}, got {proxy!r}")


def _chosen(pool: CoalitionPool, estimator: str) -> Estimator:
    """The record of ``estimator`` (``auto`` resolved), checked to run on this pool."""
    name = select_estimator(pool) if estimator == "auto" else estimator
    if name not in REGISTRY:
        raise ValueError(f"unknown estimator {estimator!r}; choose 'auto' or one of {ESTIMATORS}")
    record = REGISTRY[name]
    missing = record.needs(pool)
    if missing is not None:
        raise ValueError(
            f"estimator {name!r} cannot run on this pool: {missing}. Estimators that can: {_allowed(pool)}"
        )
    return record


def estimate(
    masks,
    values,
    *,
    empty_value: float,
    full_value: float,
    estimator: str = "auto",
    seed: int = 0,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    top_k: int | None = None,
    proxy: str = "tree",
) -> ValuationResult:
    """Estimate contributor values from evaluated coalitions.

    masks: (B, n) bool, one row per evaluation (repeats of a coalition are averaged and their spread is
    the utility's noise); never ∅ or N. values: (B,) utilities, finite. empty_value, full_value: v(∅)
    and v(N), same units, taken as exact. estimator: ``"auto"`` or one of ``ESTIMATORS``. seed: seeds
    the bootstrap, the folds and the proxy. n_bootstrap: resamples (0: point estimate only, NaN errors
    for resampled estimators). confidence: interval level in (0, 1). top_k: k of ``p_top`` (default
    ⌈0.4 n⌉, the paper's "remove the top 40%"). proxy: ``"tree"`` or ``"linear"`` for regression-msr
    and proxy.

    Returns a ValuationResult; values in utility units, (n,). Raises ValueError on bad input or when the
    estimator cannot run on this pool (the message says which coalitions it needs).
    """
    _check_options(seed, n_bootstrap, confidence, proxy)
    pool = build_pool(masks, values, empty_value, full_value)
    n = pool.n_players
    if top_k is None:
        top_k = max(1, math.ceil(0.4 * n))
    if int(top_k) != top_k or not 1 <= top_k <= n:
        raise ValueError(f"top_k must be an integer in 1..{n}, got {top_k!r}")
    record = _chosen(pool, estimator)
    with single_threaded():
        raw = record.run(pool, seed=int(seed), n_bootstrap=int(n_bootstrap), proxy=proxy)
    if record.sampled and record.value_kind == "shapley" and pool.n_distinct < RELIABLE_BUDGET * n:
        raw.warnings.append(
            f"budget: {pool.n_distinct} distinct coalitions < 3n = {RELIABLE_BUDGET * n}; Shapley rankings "
            "are unreliable at this budget (see the rank intervals)"
        )
    return summarize(raw, estimator=record.name, value_kind=record.value_kind, n_coalitions=pool.n_distinct,
                     n_evaluations=pool.n_rows, noise_std=pool.noise_std, confidence=confidence,
                     top_k=int(top_k))
