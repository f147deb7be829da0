"""What an estimator returns: values with standard errors, intervals, rank intervals and top-k odds."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats


@dataclass
class RawEstimate:
    """An estimator's output before summarising.

    values (n,); draws (R, n) resampled estimates (bootstrap or a stated approximation), None or empty
    when there is nothing to resample; std_errors (n,) analytic standard errors or None (then taken
    from the draws); dof: degrees of freedom of the t multiplier for the intervals (a number, or (n,)
    per contributor), or None for the normal quantile; below 1 the intervals are NaN. What kind of
    value it is comes from the estimator's record (``Estimator.value_kind``), not from here.
    """

    values: np.ndarray
    draws: np.ndarray | None
    std_errors: np.ndarray | None
    dof: float | np.ndarray | None
    uncertainty: str
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ValuationResult:
    """Estimated values of n contributors, in the utility's units.

    - ``values`` (n,): the estimates. For value_kind "shapley" they sum to v(N) − v(∅) whenever the
      estimator guarantees efficiency (all but ``loo`` and ``banzhaf-msr``).
    - ``std_errors`` (n,); ``ci_low``, ``ci_high`` (n,): two-sided intervals at ``confidence``
      (default 95%): values ± q·std_errors, q a t or normal quantile (see ``uncertainty``). NaN when
      the pool cannot tell (e.g. ``loo`` without repeated rows).
    - ``rank_low``, ``rank_high`` (n,) int: interval of each contributor's rank at ``confidence``
      across the draws; rank 1 = highest value. ``p_top`` (n,): probability of being in the top
      ``top_k`` across the draws (``p_top_k(k)`` for another k).
    - ``draws`` (R, n): the resampled estimates the ranks come from (R = 1 and equal to ``values``
      when there is no sampling uncertainty to draw from).
    - ``estimator``, ``value_kind`` ("shapley", "banzhaf" or "loo"), ``n_coalitions`` (distinct),
      ``n_evaluations`` (rows), ``noise_std`` (utility noise from repeated rows, or None),
      ``uncertainty`` (how std_errors were obtained), ``warnings`` (tuple of sentences).
    """

    values: np.ndarray
    std_errors: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    rank_low: np.ndarray
    rank_high: np.ndarray
    p_top: np.ndarray
    top_k: int
    draws: np.ndarray
    estimator: str
    value_kind: str
    n_coalitions: int
    n_evaluations: int
    noise_std: float | None
    uncertainty: str
    confidence: float
    warnings: tuple[str, ...]

    def p_top_k(self, k: int) -> np.ndarray:
        """Probability (n,) that each contributor ranks in the top k (1 ≤ k ≤ n) across the draws."""
        n = len(self.values)
        if int(k) != k or not 1 <= k <= n:
            raise ValueError(f"k must be an integer in 1..{n}, got {k!r}")
        return np.mean(ranks_of(self.draws) <= k, axis=0)

    def ranking(self) -> np.ndarray:
        """Contributor indices from highest to lowest value; (n,) int."""
        return np.argsort(-self.values, kind="stable")


def ranks_of(draws: np.ndarray) -> np.ndarray:
    """Ranks (R, n) of each row of draws (R, n); 1 = highest, ties share the best rank."""
    return stats.rankdata(-draws, axis=1, method="min").astype(np.int64)


def summarize(raw: RawEstimate, *, estimator: str, value_kind: str, n_coalitions: int, n_evaluations: int,
              noise_std: float | None, confidence: float, top_k: int) -> ValuationResult:
    """Turn a RawEstimate of ``estimator`` (which estimates ``value_kind`` values) into a
    ValuationResult (intervals, rank intervals, top-k odds)."""
    values = np.asarray(raw.values, dtype=np.float64)
    n = len(values)
    draws = raw.draws
    if draws is not None and len(draws):
        # a resample that lost every coalition a contributor is in (or out of) has no estimate: drop it
        # rather than rank NaNs (banzhaf-msr on a small pool)
        draws = draws[np.all(np.isfinite(draws), axis=1)]
    if draws is None or len(draws) == 0:
        draws = values[None, :]
    if raw.std_errors is not None:
        se = np.asarray(raw.std_errors, dtype=np.float64)
    elif len(draws) > 1:
        se = draws.std(axis=0, ddof=1)
    else:
        se = np.full(n, np.nan)
    tail = 0.5 + confidence / 2.0
    if raw.dof is None:
        q = np.full(n, stats.norm.ppf(tail))
    else:
        dof = np.broadcast_to(np.asarray(raw.dof, dtype=np.float64), (n,))
        q = np.where(dof >= 1, stats.t.ppf(tail, np.maximum(dof, 1.0)), np.nan)
    ranks = ranks_of(draws)
    lo_q, hi_q = (1.0 - confidence) / 2.0, 0.5 + confidence / 2.0
    rank_low = np.quantile(ranks, lo_q, axis=0, method="lower").astype(np.int64)
    rank_high = np.quantile(ranks, hi_q, axis=0, method="higher").astype(np.int64)
    point_ranks = ranks_of(values[None, :])[0]
    # The point estimate's own rank always lies inside its interval.
    rank_low = np.minimum(rank_low, point_ranks)
    rank_high = np.maximum(rank_high, point_ranks)
    return ValuationResult(
        values=values,
        std_errors=se,
        ci_low=values - q * se,
        ci_high=values + q * se,
        rank_low=rank_low,
        rank_high=rank_high,
        p_top=np.mean(ranks <= top_k, axis=0),
        top_k=int(top_k),
        draws=draws,
        estimator=estimator,
        value_kind=value_kind,
        n_coalitions=int(n_coalitions),
        n_evaluations=int(n_evaluations),
        noise_std=noise_std,
        uncertainty=raw.uncertainty,
        confidence=float(confidence),
        warnings=tuple(raw.warnings),
    )
