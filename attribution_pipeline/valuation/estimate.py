"""``estimate``: one entry point for every estimator, reading one shared pool of evaluated coalitions.

Estimators (``ESTIMATORS``; each an ``Estimator`` record beside its math, listed in ``registry.py``),
what they need, and how their uncertainty is obtained:

| estimator | value | needs | uncertainty |
|---|---|---|---|
| exact | Shapley | all 2^n − 2 coalitions | none, or the utility noise propagated |
| kernelshap | Shapley | ≥ n distinct coalitions | pair bootstrap |
| leverage | Shapley | as kernelshap; a leverage-design pool | pair bootstrap |
| regression-msr | Shapley | as kernelshap | pair bootstrap of the MSR correction (within pair classes) |
| proxy | Shapley | as kernelshap | jackknife over fold fits |
| banzhaf-msr | Banzhaf | every contributor in and out of some coalition | analytic (ranks: bootstrap) |
| loo | leave-one-out | the n coalitions N∖{i} | noise from repeats, else none |
| permutation | Shapley | rows laid out as permutation chains | over chains |
| kernelshap-paper | Shapley | as kernelshap; a kernel-design pool | pair bootstrap |

When the utility noise is known (``noise=``, from the pipeline's replicates, or repeated rows), every
interval above also includes the noise of v(∅), v(N) and of whatever the resampling holds fixed
(``with_utility_noise``).

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

import dataclasses
import math

import numpy as np

from attribution_pipeline.valuation.estimator import Estimator
from attribution_pipeline.valuation.pool import CoalitionPool, build_pool, unit_strata
from attribution_pipeline.valuation.proxies import PROXIES
from attribution_pipeline.valuation.registry import ESTIMATORS, REGISTRY
from attribution_pipeline.valuation.result import RawEstimate, ValuationResult, summarize
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


def _held_coalitions(record: Estimator, pool: CoalitionPool) -> np.ndarray:
    """Indices of the coalitions whose utility noise the estimator's own interval leaves out: those of
    the complete pair classes its stratified bootstrap holds fixed (none for the other estimators)."""
    if not record.holds_complete_strata:
        return np.zeros(0, dtype=np.int64)
    _, exhausted = unit_strata(pool)
    cls = np.minimum(pool.sizes, pool.n_players - pool.sizes)
    return np.flatnonzero(exhausted[cls])


def noise_jacobian(record: Estimator, pool: CoalitionPool, seed: int, proxy: str,
                   held: np.ndarray) -> np.ndarray:
    """∂φ/∂u (n, 2 + len(held)) for u = v(∅), v(N) and the utilities of the ``held`` coalitions: the
    record's closed form where it has one, else finite differences of the point estimate. Exact for the estimators linear in the utilities
    (exact, the regression fits, loo, permutation, Banzhaf) and for the proxy-based ones under the
    shifts of v(∅) and v(N) (a constant shift of the targets shifts a tree or linear proxy by as much)."""
    step = pool.noise_std if pool.noise_std and pool.noise_std > 0 else 1.0

    def point(p: CoalitionPool) -> np.ndarray:
        return np.asarray(record.run(p, seed=seed, n_bootstrap=0, proxy=proxy).values, dtype=np.float64)

    if record.noise_derivatives is not None:
        return record.noise_derivatives(pool, held)
    base = point(pool)
    cols = [point(dataclasses.replace(pool, empty_value=pool.empty_value + step)),
            point(dataclasses.replace(pool, full_value=pool.full_value + step))]
    for u in held:
        bumped = pool.mean_values.copy()
        bumped[u] += step
        cols.append(point(dataclasses.replace(pool, mean_values=bumped)))
    return (np.stack(cols, axis=1) - base[:, None]) / step


def with_utility_noise(record: Estimator, pool: CoalitionPool, raw: RawEstimate, *, seed: int, proxy: str,
                       n_draws: int) -> RawEstimate:
    """``raw`` with the utility noise its own interval leaves out added: that of v(∅) and v(N) (each one
    measurement, in every estimate) and of the coalitions a stratified bootstrap held fixed.

    Variances add (the noise is independent of the coalition sampling); the t degrees of freedom are
    Welch–Satterthwaite's from the estimator's and the noise estimate's; the draws (rank intervals)
    get Gaussian noise propagated through the same derivatives. Needs ``pool.noise_std``."""
    held = _held_coalitions(record, pool)
    jac = noise_jacobian(record, pool, seed, proxy, held)
    item_var = pool.noise_std**2 * np.concatenate([[1.0, 1.0], 1.0 / pool.evaluations[held]])
    noise_var = (jac**2) @ item_var
    values = np.asarray(raw.values, dtype=np.float64)
    n = len(values)
    draws = raw.draws if raw.draws is not None and len(raw.draws) else None
    if raw.std_errors is not None:
        own = np.asarray(raw.std_errors, dtype=np.float64) ** 2
    elif draws is not None and len(draws) > 1:
        own = draws.var(axis=0, ddof=1)
    else:
        own = np.full(n, np.nan)
    own_dof = np.inf if raw.dof is None else np.broadcast_to(np.asarray(raw.dof, dtype=np.float64), (n,))
    total = own + noise_var
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = np.where(np.isfinite(own_dof), own**2 / np.maximum(own_dof, 1e-12), 0.0) + noise_var**2 / pool.noise_dof
        dof = np.where(denom > 0, total**2 / np.maximum(denom, 1e-300), np.inf)
    dof = None if np.all(np.isinf(dof)) else np.where(np.isinf(dof), 1e6, dof)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x4015E]))
    n_rows = len(draws) if draws is not None else n_draws
    eps = rng.standard_normal((n_rows, len(item_var))) * np.sqrt(item_var)[None, :]
    noise_draws = eps @ jac.T
    draws = (values[None, :] if draws is None else draws) + noise_draws
    what = "v(∅), v(N)" + (f" and the {len(held)} coalitions held fixed" if len(held) else "")
    how = (f"{raw.uncertainty}; plus the utility noise of {what} (σ = {pool.noise_std:.3g} from "
           f"{pool.noise_source}, {pool.noise_dof} dof), propagated through the estimator")
    return RawEstimate(values, draws, np.sqrt(total), dof, how, warnings=list(raw.warnings))


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
    noise=None,
    repeats_are_draws: bool = False,
) -> ValuationResult:
    """Estimate contributor values from evaluated coalitions.

    masks: (B, n) bool, one row per evaluation (repeats of a coalition are averaged and their spread is
    the utility's noise); never ∅ or N. values: (B,) utilities, finite. empty_value, full_value: v(∅)
    and v(N), same units, one measurement each. estimator: ``"auto"`` or one of ``ESTIMATORS``. seed: seeds
    the bootstrap, the folds and the proxy. n_bootstrap: resamples (0: point estimate only, NaN errors
    for resampled estimators). confidence: interval level in (0, 1). top_k: k of ``p_top`` (default
    ⌈0.4 n⌉, the paper's "remove the top 40%"). proxy: ``"tree"`` or ``"linear"`` for regression-msr
    and proxy. noise: None, or (σ, dof[, source]): the standard deviation of one utility measurement and
    its degrees of freedom, estimated outside the pool (``valuation.replicates``: ∅, N and a few coalitions
    measured again with other seeds); rows that repeat a coalition are then design draws, not new
    measurements. repeats_are_draws: rows that repeat a coalition are design draws (one measurement)
    even without ``noise`` (then the noise is unknown). Whenever σ is known (given, or from repeated rows), every interval includes the noise
    of v(∅) and v(N) and of whatever the estimator's own resampling holds fixed (``with_utility_noise``);
    when it is not, the result's ``noise_std`` is None and ``valuation.scope`` says what is left out.

    Returns a ValuationResult; values in utility units, (n,). Raises ValueError on bad input or when the
    estimator cannot run on this pool (the message says which coalitions it needs).
    """
    _check_options(seed, n_bootstrap, confidence, proxy)
    pool = build_pool(masks, values, empty_value, full_value, noise=noise, repeats_are_draws=repeats_are_draws)
    n = pool.n_players
    if top_k is None:
        top_k = max(1, math.ceil(0.4 * n))
    if int(top_k) != top_k or not 1 <= top_k <= n:
        raise ValueError(f"top_k must be an integer in 1..{n}, got {top_k!r}")
    record = _chosen(pool, estimator)
    with single_threaded():
        raw = record.run(pool, seed=int(seed), n_bootstrap=int(n_bootstrap), proxy=proxy)
        if pool.noise_std is not None:
            raw = with_utility_noise(record, pool, raw, seed=int(seed), proxy=proxy, n_draws=int(n_bootstrap))
    if record.sampled and record.value_kind == "shapley" and pool.n_distinct < RELIABLE_BUDGET * n:
        raw.warnings.append(
            f"budget: {pool.n_distinct} distinct coalitions < 3n = {RELIABLE_BUDGET * n}; Shapley rankings "
            "are unreliable at this budget (see the rank intervals)"
        )
    return summarize(raw, estimator=record.name, value_kind=record.value_kind, n_coalitions=pool.n_distinct,
                     n_evaluations=pool.n_rows, noise_std=pool.noise_std, confidence=confidence,
                     top_k=int(top_k))
