"""The ``Estimator`` record: what an estimator computes, what pool it needs, and how to run it.

Each estimator is one record, defined beside its math (``classical.py``, ``regression.py``,
``regression_msr.py``, ``montecarlo.py``) and listed once in ``registry.py``; ``estimate`` only picks
a record and calls it. The checks below are the pool requirements several estimators share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Protocol

import numpy as np

from attribution_pipeline.valuation.pool import CoalitionPool
from attribution_pipeline.valuation.result import RawEstimate

ValueKind = Literal["shapley", "banzhaf", "loo"]


class Runner(Protocol):
    """How an estimator runs: seed seeds its resampling (and folds, proxies); n_bootstrap: resamples or
    draws for the intervals (0: point estimate only); proxy: ``"tree"`` or ``"linear"`` where a proxy
    is fitted, ignored elsewhere."""

    def __call__(self, pool: CoalitionPool, *, seed: int, n_bootstrap: int, proxy: str) -> RawEstimate: ...


@dataclass(frozen=True)
class Estimator:
    """One estimator of contributor values from a pool of evaluated coalitions.

    - ``name``: what ``estimate(estimator=...)`` and ``ValuationResult.estimator`` call it.
    - ``value_kind``: the value it estimates: ``"shapley"``, ``"banzhaf"`` or ``"loo"`` (leave-one-out).
    - ``needs(pool)``: None when it can run on the pool, else a sentence saying which coalitions it
      lacks (it ends an error message, so it reads "it needs …").
    - ``run(pool, *, seed, n_bootstrap, proxy)``: the estimate with what its intervals come from.
    - ``sampled``: False when the estimate has no sampling error from the choice of coalitions
      (exact enumeration), so the small-budget warning does not apply.
    - ``holds_complete_strata``: its bootstrap holds the complete pair classes fixed
      (``pool.bootstrap_weights(stratified=True)``), so their utility noise is not in its resamples and
      ``estimate`` adds it when the noise is known.
    - ``noise_derivatives(pool, held)``: ∂φ/∂v(∅), ∂φ/∂v(N) and ∂φ/∂v(S) for the ``held`` coalitions,
      (n, 2 + len(held)), in closed form; None: ``estimate`` takes them by finite differences of the
      point estimate (one more fit each).
    """

    name: str
    value_kind: ValueKind
    needs: Callable[[CoalitionPool], str | None]
    run: Runner
    sampled: bool = True
    holds_complete_strata: bool = False
    noise_derivatives: Callable[[CoalitionPool, np.ndarray], np.ndarray] | None = None


def needs_coverage(pool: CoalitionPool) -> str | None:
    """Every contributor inside some coalition and outside another: otherwise nothing in the pool
    separates its contribution from the rest (its column is constant)."""
    both = pool.coalitions.any(axis=0) & (~pool.coalitions).any(axis=0)
    if both.all():
        return None
    return (
        f"every contributor must be inside some coalition and outside another; contributor "
        f"{int(np.flatnonzero(~both)[0])} is not"
    )


def needs_regression(pool: CoalitionPool) -> str | None:
    """At least n distinct coalitions and coverage: the constrained fit has n unknowns (one fewer
    after the efficiency constraint), so fewer coalitions leave it underdetermined."""
    n = pool.n_players
    if pool.n_distinct < n:
        return f"it needs at least n = {n} distinct coalitions; the pool has {pool.n_distinct}"
    return needs_coverage(pool)


def needs_cross_fit(pool: CoalitionPool) -> str | None:
    """As ``needs_regression``, and at least 4 bootstrap units, so that each of the cross-fitting folds
    (``regression_msr.py``) has units to fit the proxy on and units to correct."""
    missing = needs_regression(pool)
    if missing is None and pool.n_units < 4:
        return f"it needs at least 4 bootstrap units (coalitions or complement pairs); the pool has {pool.n_units}"
    return missing
