"""Regression-adjusted Monte Carlo (Witter, Liu & Musco, NeurIPS 2025) and the proxy alone.

Shapley values are linear in the game, so for any proxy f:  φ(v) = φ(f) + φ(v − f).  φ(f) is computed
exactly (``proxies.py``) and φ(v − f) is estimated by MSR Monte Carlo on the residuals
(``montecarlo.py``), whose variance shrinks with the residuals: a good proxy makes the estimate
accurate, a bad one only makes it noisier, never biased.

Cross-fitting (our choice; it keeps the correction unbiased). The bootstrap units are split into K
folds; the proxy f_k is fitted without fold k and the residuals of fold k are taken from f_k:

    φ̂ = (1/K) Σ_k [φ(f_k) + ((v(N) − v(∅) − f_k(N)) + f_k(∅)) / n] + MSR(out-of-fold residuals).

Fitting the proxy on the rows it then corrects would shrink those residuals and leave part of the
proxy's bias uncorrected. That holds for the sizes the pool samples; on a pair class the pool holds
completely there is nothing sampled to overfit, and the residuals there are taken against the mean proxy
f̄ = mean_k f_k, which makes the correction the exact contribution of v − f̄ on those sizes (and the
estimate exact on a complete pool); the bootstrap then resamples within pair classes and holds the
complete ones fixed (their utility noise is added by ``estimate`` when it is known). The error of φ̂ is the MSR error on the residual game given the proxies, so
the pair bootstrap resamples the MSR term with the proxies held fixed (no refits: cheap).

``proxy`` (the proxy alone, as SurrogateSHAP does): the mean over the K fold fits of φ(f_k) plus the
exact ∅/N terms (so efficiency holds); averaging the fold fits is bagging, and reuses the fits of
``regression-msr``. Its spread is the delete-a-fold jackknife over the K fits (K − 1 degrees of
freedom); its bias (what the proxy cannot represent) is not in the interval. Rank intervals come from
independent t draws per contributor.

The cross-fit of a pool is cached (a few entries, keyed by the pool's content, the proxy and the seed),
so ``regression-msr`` and ``proxy`` on the same pool fit the proxies once.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

from attribution_pipeline.valuation.estimator import Estimator, needs_cross_fit
from attribution_pipeline.valuation.montecarlo import shapley_msr, shapley_msr_design
from attribution_pipeline.valuation.pool import (
    CoalitionPool, point_and_bootstrap_weights, stratified_note, stratum_totals, unit_strata,
)
from attribution_pipeline.valuation.proxies import FittedProxy, fit_proxy
from attribution_pipeline.valuation.result import RawEstimate

# Folds of the cross-fit. Each fold's proxy is fitted on (K − 1)/K of the pool, so more folds leave
# smaller out-of-fold residuals: on the enumerated real game at B = 10n, 20 folds instead of 5 cut the
# error of regression-MSR by 5-10% (benchmarks/results/estimators-real-game.md); cost: K proxy fits.
N_FOLDS = 20


def _fold_of(pool: CoalitionPool, seed: int) -> tuple[np.ndarray, int]:
    """Fold (U,) of each distinct coalition (a pair stays in one fold) and the number of folds:
    ``N_FOLDS``, fewer when the pool has fewer than two units a fold, never under 2."""
    n_folds = max(2, min(N_FOLDS, pool.n_units // 2))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xF01D]))
    fold_of_unit = rng.permutation(pool.n_units) % n_folds
    return fold_of_unit[pool.unit], n_folds


def _efficient_proxy_values(proxy: FittedProxy, delta: float, n: int) -> np.ndarray:
    """φ(f) plus the exact ∅/N residual terms: Shapley values of f with f(∅), f(N) replaced by truth."""
    f_empty, f_full = proxy.endpoints()
    return proxy.shapley + ((delta - f_full) + f_empty) / n


_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 4


def _cache_key(pool: CoalitionPool, kind: str, seed: int) -> str:
    digest = hashlib.sha1()
    for arr in (pool.coalitions, pool.mean_values, pool.multiplicity):
        digest.update(np.ascontiguousarray(arr).tobytes())
    digest.update(f"{pool.empty_value!r}|{pool.full_value!r}|{kind}|{seed}|{pool.n_players}".encode())
    return digest.hexdigest()


def cross_fit(pool: CoalitionPool, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fold estimates (K, n) of φ(f_k) + ∅/N terms, out-of-fold residuals (U,) of v − v(∅) − f, and the
    residuals (U,) of v − v(∅) − f̄ against the mean proxy f̄ = mean_k f_k."""
    key = _cache_key(pool, kind, seed)
    if key not in _CACHE:
        _CACHE[key] = _cross_fit(pool, kind, seed)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return tuple(a.copy() for a in _CACHE[key])


def _cross_fit(pool: CoalitionPool, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    folds, n_folds = _fold_of(pool, seed)
    z = pool.coalitions.astype(np.float64)
    y = pool.mean_values - pool.empty_value
    weight = pool.multiplicity.astype(np.float64)
    residuals = np.empty(pool.n_distinct)
    mean_fit = np.zeros(pool.n_distinct)
    thetas = np.empty((n_folds, pool.n_players))
    for k in range(n_folds):
        train, test = folds != k, folds == k
        proxy = fit_proxy(kind, z[train], y[train], weight[train], seed=seed + k)
        fitted = proxy.predict(z)
        residuals[test] = y[test] - fitted[test]
        mean_fit += fitted / n_folds
        thetas[k] = _efficient_proxy_values(proxy, pool.delta, pool.n_players)
    return thetas, residuals, y - mean_fit


def complete_coalitions(pool: CoalitionPool) -> np.ndarray:
    """(U,) bool: the coalitions of the pair classes the pool holds completely (``unit_strata``)."""
    _, exhausted = unit_strata(pool)
    return exhausted[np.minimum(pool.sizes, pool.n_players - pool.sizes)]


def msr_residuals(pool: CoalitionPool, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fold estimates (K, n) and the residuals the correction sums: out of fold on the sampled sizes;
    against the mean proxy f̄ on the complete ones, where the correction is then the exact contribution
    of v − f̄ (no sampling, so no fitting bias to avoid) and the estimate is exact on a complete pool."""
    thetas, out_of_fold, against_mean = cross_fit(pool, kind, seed)
    return thetas, np.where(complete_coalitions(pool), against_mean, out_of_fold)


def effective_dof(pool: CoalitionPool, residuals: np.ndarray) -> np.ndarray:
    """Degrees of freedom (n,) of each contributor's bootstrap variance, for the t multiplier.

    The correction is a sum of independent unit terms d_u (a pair's weighted residuals); for one
    contributor a few units (the coalitions it forms alone, or the only one it is missing from) can
    carry most of the variance, and then the variance estimate is as unreliable as a sample of a few.
    With x_u = d_u² (d centred), df = 2 (Σ x)² / (U · sample variance of x): U for Gaussian terms,
    small when a few terms dominate (the Welch–Satterthwaite idea with the terms' kurtosis estimated).
    Only the units the bootstrap resamples count: those of complete pair classes are held fixed and add
    no variance (counting their large terms made the intervals too wide: coverage 0.98-1.0 at B = 20n).
    """
    ones = pool.multiplicity[None, :].astype(np.float64)
    totals = np.maximum(stratum_totals(pool, ones), 1e-300)[0]
    rows = (pool.multiplicity * residuals / totals)[:, None] * shapley_msr_design(pool)
    units = np.zeros((pool.n_units, pool.n_players))
    np.add.at(units, pool.unit, rows)
    held = np.zeros(pool.n_units, dtype=bool)
    held[pool.unit[complete_coalitions(pool)]] = True
    units = units[~held]
    n_units = len(units)
    if n_units < 2:
        return np.full(pool.n_players, max(pool.n_units - 1.0, 1.0))
    d2 = (units - units.mean(axis=0)) ** 2
    spread = d2.var(axis=0, ddof=1) * n_units
    dof = 2.0 * d2.sum(axis=0) ** 2 / np.maximum(spread, 1e-300)
    return np.clip(dof, 1.0, n_units - 1.0)


def regression_msr(pool: CoalitionPool, kind: str, seed: int, n_bootstrap: int) -> RawEstimate:
    """Regression-adjusted MSR Shapley estimate with a ``kind`` ("tree"/"linear") proxy; efficient."""
    thetas, residuals = msr_residuals(pool, kind, seed)
    base = thetas.mean(axis=0)
    # Units resampled within pair classes, the complete ones held fixed: their correction is exact
    # (residuals against f̄, ``msr_residuals``). With out-of-fold residuals there (an earlier release) the
    # estimate was 20% off on a complete pool at n = 4, and the whole-pool bootstrap that made up for it
    # covered 0.995-1.0 on the enumerated real game at B = 10n (benchmarks/results/estimators-real-game.md).
    weights = point_and_bootstrap_weights(pool, n_bootstrap, seed, stratified=True)
    # Residual game: g = v − v(∅) − f̄ at the pool (out of fold); its ∅/N terms are already in thetas.
    estimates = base[None, :] + shapley_msr(pool, residuals, weights, 0.0, 0.0)
    return RawEstimate(
        estimates[0], estimates[1:], None, effective_dof(pool, residuals),
        f"pair bootstrap of the residual correction ({n_bootstrap} resamples of {pool.n_units} units; "
        f"{stratified_note(pool)}; {len(thetas)}-fold cross-fitted {kind} proxy held fixed)",
    )


def proxy_only(pool: CoalitionPool, kind: str, seed: int, n_draws: int) -> RawEstimate:
    """Shapley values of the bagged ``kind`` proxy (mean of the fold fits), with ∅/N terms."""
    thetas, residuals, _ = cross_fit(pool, kind, seed)
    values = thetas.mean(axis=0)
    k = len(thetas)
    centred = thetas - values
    se = np.sqrt((k - 1) / k * np.sum(centred**2, axis=0))
    # K fits span only K − 1 directions, too few to draw rank intervals from; draw each contributor
    # independently from the t distribution its interval uses.
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9A0C]))
    draws = values[None, :] + se[None, :] * rng.standard_t(k - 1, size=(n_draws, len(values)))
    return RawEstimate(
        values, draws if n_draws > 0 else None, se, k - 1,
        f"delete-a-fold jackknife over {k} fold fits of the {kind} proxy (proxy bias not included)",
        warnings=_bias_warning(pool, residuals, seed),
    )


def _bias_warning(pool: CoalitionPool, residuals: np.ndarray, seed: int) -> list[str]:
    """A warning when the MSR correction (an unbiased estimate of the proxy's bias) is significant.

    With c the correction and Σ its bootstrap covariance, ‖c‖² − tr Σ estimates ‖bias‖² without bias;
    we warn when it exceeds tr Σ, i.e. when correcting would be expected to lower the error.
    """
    weights = point_and_bootstrap_weights(pool, 100, seed)
    correction = shapley_msr(pool, residuals, weights, 0.0, 0.0)
    spread = float(np.sum(correction[1:].var(axis=0, ddof=1)))
    size = float(np.sum(correction[0] ** 2))
    if size - spread > spread:
        return [f"proxy: its bias looks larger than its sampling error (residual correction ‖c‖² = {size:.3g}, "
                f"noise tr Σ = {spread:.3g}); estimator='regression-msr' corrects it"]
    return []


def noise_derivatives(pool: CoalitionPool, held: np.ndarray) -> np.ndarray:
    """∂φ/∂u (n, 2 + len(held)) for u = v(∅), v(N) and the utilities of the ``held`` coalitions.

    v(N) enters only through the efficiency term (1/n); shifting v(∅) shifts every target and so the
    proxy by a constant, which changes neither φ(f) nor a residual, only that term (−1/n); a held
    coalition's utility enters its residual against f̄ with MSR weight m_u / c_s · G_u, the proxies held
    fixed as the bootstrap holds them (the tests check these by finite differences)."""
    n = pool.n_players
    ends = np.tile([-1.0 / n, 1.0 / n], (n, 1))
    if not len(held):
        return ends
    ones = pool.multiplicity[None, :].astype(np.float64)
    totals = np.maximum(stratum_totals(pool, ones), 1e-300)[0]
    cols = (pool.multiplicity[held] / totals[held])[:, None] * shapley_msr_design(pool)[held]
    return np.hstack([ends, cols.T])


REGRESSION_MSR = Estimator(
    "regression-msr", "shapley", needs_cross_fit,
    run=lambda pool, *, seed, n_bootstrap, proxy: regression_msr(pool, proxy, seed, n_bootstrap),
    holds_complete_strata=True, noise_derivatives=noise_derivatives,
)
PROXY = Estimator(
    "proxy", "shapley", needs_cross_fit,
    run=lambda pool, *, seed, n_bootstrap, proxy: proxy_only(pool, proxy, seed, n_bootstrap),
    noise_derivatives=noise_derivatives,
)
