"""Linear datamodeling score (LDS), as in Lin et al. (2025) and TRAK, with intervals that say what they cover.

For held-out coalitions S_1..S_m (each keeping a fraction α of the n contributors), an attribution φ
predicts v(S_j) ≈ Σ_{i∈S_j} φ_i. LDS is the Spearman rank correlation × 100 between those predictions
and the utilities measured by retraining, per retrain seed, averaged over seeds (the paper's
definition). Beside it, every score here carries:

- an **interval** by bootstrap over the test coalitions and the retrain seeds (both resampled with
  replacement, ``n_boot`` times, percentile interval). It covers the draw of the test set and the
  retraining noise; it does not cover how the attribution itself was estimated (its own interval is
  the valuation's) nor a bias of the game (sFT against retraining is what LDS measures);
- the **random range**: the central 95% of the LDS that random attributions (i.i.d. normal values,
  ``n_random`` of them) reach on the *same* test set and measurements. Its bounds are order
  statistics chosen so that a new random attribution falls inside with probability ≥ 95%
  (exchangeability), so a score inside it cannot be told from chance;
- the **oracle ceiling**: what an attribution that predicts the expected utility exactly would score,
  100·√(test–retest) where test–retest is the mean Spearman between two seeds' measurements (the
  correlation of a measurement with its expectation is the square root of its reliability). The
  test–retest agreement itself is *not* an upper bound and is reported under its own name.

Comparisons of two attributions are **paired**: the same test set, the same bootstrap resamples, an
interval of the difference (``lds_difference``).
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata

LEVEL = 0.95
N_BOOT = 2000
N_RANDOM = 2000
COVERS = "test-coalition draw and retrain seeds (bootstrap over both)"
NOT_COVERED = "the attribution's own estimation error; the gap between the utility method and retraining"


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ with average ranks for ties; NaN when either side is constant."""
    ra, rb = rankdata(a), rankdata(b)
    if np.std(ra) == 0 or np.std(rb) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis (broadcast); NaN where a side is constant."""
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    num = (x * y).sum(axis=-1)
    den = np.sqrt((x * x).sum(axis=-1) * (y * y).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _ranks(x: np.ndarray) -> np.ndarray:
    return rankdata(x, axis=-1)


def draw_test_coalitions(n_players: int, alpha: float, n_test: int, seed: int,
                         exclude: set[tuple[int, ...]] | None = None) -> np.ndarray:
    """``(m, n)`` boolean masks of distinct coalitions of size round(α·n) (at least 1, at most n−1),
    drawn uniformly with ``seed``, avoiding ``exclude`` (member-index tuples, e.g. the coalitions
    the attribution was fitted on) while enough others exist. m = min(n_test, number available)."""
    if n_players < 2:
        raise ValueError("LDS needs at least 2 contributors")
    size = min(max(1, int(round(alpha * n_players))), n_players - 1)
    exclude = exclude or set()
    total = math.comb(n_players, size)
    rng = np.random.default_rng(seed)
    chosen: list[tuple[int, ...]] = []
    if total <= 4 * n_test + len(exclude):  # small: enumerate and shuffle
        pool = list(itertools.combinations(range(n_players), size))
        order = rng.permutation(len(pool))
        fresh = [pool[i] for i in order if pool[i] not in exclude]
        used = [pool[i] for i in order if pool[i] in exclude]
        chosen = (fresh + used)[:n_test]
    else:
        seen: set[tuple[int, ...]] = set()
        while len(chosen) < n_test:
            c = tuple(sorted(rng.choice(n_players, size=size, replace=False).tolist()))
            if c not in seen and c not in exclude:
                seen.add(c)
                chosen.append(c)
    masks = np.zeros((len(chosen), n_players), dtype=bool)
    for j, c in enumerate(chosen):
        masks[j, list(c)] = True
    return masks


@dataclass
class LDSResult:
    lds: float  # mean over seeds of Spearman × 100
    lo: float  # bootstrap interval (test coalitions and seeds resampled), LEVEL
    hi: float
    per_seed: list[float]
    random_lo: float  # central LEVEL range of random attributions' LDS on this test set
    random_hi: float
    test_retest: float  # mean Spearman × 100 between pairs of seeds' measurements (NaN with one seed)
    ceiling: float  # oracle ceiling: 100·√(test–retest), what the expected utility itself scores
    n_test: int
    n_seeds: int
    n_boot: int
    n_random: int
    covers: str = COVERS
    not_covered: str = NOT_COVERED
    extra: dict = field(default_factory=dict)

    @property
    def inside_random(self) -> bool:
        """True when the score cannot be told from a random attribution's."""
        return self.random_lo <= self.lds <= self.random_hi


def _check(values: np.ndarray, masks: np.ndarray, measured: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=float)
    masks = np.asarray(masks, dtype=bool)
    measured = np.atleast_2d(np.asarray(measured, dtype=float))
    if values.ndim != 1 or masks.shape[1] != len(values) or measured.shape[1] != len(masks):
        raise ValueError(f"shapes disagree: values {values.shape}, masks {masks.shape}, measured {measured.shape}")
    if len(masks) < 3:
        raise ValueError(f"LDS needs at least 3 test coalitions, got {len(masks)}")
    if not np.isfinite(measured).all():
        raise ValueError("measured utilities contain NaN or infinity")
    return values, masks, measured


def per_seed_lds(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Spearman × 100 of ``predicted`` (..., m) against each seed's row of ``measured`` (seeds, m)."""
    return 100.0 * _rowwise_pearson(_ranks(predicted)[..., None, :], _ranks(measured))


def bootstrap_draws(n_test: int, n_seeds: int, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Resample indices: test coalitions ``(n_boot, n_test)`` and seeds ``(n_boot, n_seeds)``; one
    set of draws serves every attribution scored on the same test set (paired comparisons)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_test, size=(n_boot, n_test)), rng.integers(0, n_seeds, size=(n_boot, n_seeds))


def bootstrap_lds(predicted: np.ndarray, measured: np.ndarray, draws) -> np.ndarray:
    """LDS of each bootstrap resample, ``(n_boot,)``: ``predicted`` (m,), ``measured`` (seeds, m)."""
    rows, seeds = draws
    pred = _ranks(predicted[rows])  # (B, m): ranks recomputed within each resample (ties averaged)
    meas = _ranks(measured[:, rows])  # (S, B, m)
    rho = 100.0 * _rowwise_pearson(pred[None, :, :], meas)  # (S, B)
    picked = rho[seeds.T, np.arange(rows.shape[0])[None, :]]  # (s, B): the resampled seeds of each b
    with warnings.catch_warnings():  # a resample whose coalitions tie everywhere has no Spearman: NaN, dropped
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(picked, axis=0)


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if len(samples) == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    return float(np.percentile(samples, tail)), float(np.percentile(samples, 100 - tail))


def random_range(masks: np.ndarray, measured: np.ndarray, n_random: int = N_RANDOM, seed: int = 0,
                 level: float = LEVEL) -> tuple[float, float, np.ndarray]:
    """The central ``level`` range of the LDS of ``n_random`` random attributions (i.i.d. N(0, 1)
    values) on this test set, and the scores themselves. The bounds are the order statistics
    a = ⌊(1−level)/2·(K+1)⌋ and K+1−a of the K scores, so a new random attribution lands inside with
    probability (K+1−2a)/(K+1) ≥ ``level``."""
    masks = np.asarray(masks, dtype=bool)
    measured = np.atleast_2d(np.asarray(measured, dtype=float))
    rng = np.random.default_rng(seed)
    phi = rng.normal(size=(n_random, masks.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        scores = np.nanmean(per_seed_lds(phi @ masks.T.astype(float), measured), axis=-1)  # (K,)
    ordered = np.sort(scores[np.isfinite(scores)])
    k = len(ordered)
    a = int(math.floor((1 - level) / 2 * (k + 1)))
    if a < 1:
        return float(ordered[0]), float(ordered[-1]), scores
    return float(ordered[a - 1]), float(ordered[k - a]), scores


def retest_agreement(measured: np.ndarray) -> float:
    """Mean Spearman × 100 between pairs of seeds' measurements; NaN with one seed."""
    measured = np.atleast_2d(np.asarray(measured, dtype=float))
    pairs = [100.0 * spearman(measured[a], measured[b]) for a, b in itertools.combinations(range(len(measured)), 2)]
    pairs = [p for p in pairs if np.isfinite(p)]
    return float(np.mean(pairs)) if pairs else float("nan")


def oracle_ceiling(retest: float) -> float:
    """100·√(test–retest / 100): the LDS (per seed) of the expected utility itself, when each
    measurement is the expectation plus independent noise; 0 when seeds do not agree at all."""
    if not np.isfinite(retest):
        return float("nan")
    return 100.0 * math.sqrt(max(retest, 0.0) / 100.0)


def lds_score(values: np.ndarray, masks: np.ndarray, measured: np.ndarray, *, n_boot: int = N_BOOT,
              n_random: int = N_RANDOM, seed: int = 0, level: float = LEVEL) -> LDSResult:
    """``values`` (n,), ``masks`` (m, n) held-out coalitions, ``measured`` (seeds, m) retrained
    utilities; ``seed`` seeds the bootstrap and the random attributions (score every method on one
    test set with the same ``seed`` for paired intervals)."""
    values, masks, measured = _check(values, masks, measured)
    predicted = masks.astype(float) @ values
    per_seed = per_seed_lds(predicted, measured)
    boot = bootstrap_lds(predicted, measured, bootstrap_draws(len(masks), len(measured), n_boot, seed))
    lo, hi = percentile_interval(boot, level)
    rlo, rhi, _ = random_range(masks, measured, n_random, seed + 1, level)
    retest = retest_agreement(measured)
    return LDSResult(_mean_of_finite(per_seed), lo, hi, [float(x) for x in per_seed], rlo, rhi, retest,
                     oracle_ceiling(retest), len(masks), len(measured), n_boot, n_random)


def _mean_of_finite(x) -> float:
    """Mean of the finite entries; NaN when there is none (an attribution constant on the test set)."""
    x = np.asarray(x, dtype=float)
    return float(x[np.isfinite(x)].mean()) if np.isfinite(x).any() else float("nan")


@dataclass
class LDSDifference:
    difference: float  # LDS(a) − LDS(b) on the same test set
    lo: float
    hi: float
    n_boot: int

    @property
    def significant(self) -> bool:
        return not (self.lo <= 0.0 <= self.hi)


def lds_difference(values_a: np.ndarray, values_b: np.ndarray, masks: np.ndarray, measured: np.ndarray, *,
                   n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> LDSDifference:
    """LDS(a) − LDS(b), paired: both scored on every bootstrap resample of the same test coalitions
    and seeds, so what the two share (which coalitions were drawn, the seeds' noise) cancels."""
    a, masks, measured = _check(values_a, masks, measured)
    b, _, _ = _check(values_b, masks, measured)
    draws = bootstrap_draws(len(masks), len(measured), n_boot, seed)
    pa, pb = masks.astype(float) @ a, masks.astype(float) @ b
    diff = bootstrap_lds(pa, measured, draws) - bootstrap_lds(pb, measured, draws)
    lo, hi = percentile_interval(diff, level)
    point = _mean_of_finite(per_seed_lds(pa, measured)) - _mean_of_finite(per_seed_lds(pb, measured))
    return LDSDifference(point, lo, hi, n_boot)


@dataclass
class WithinSize:
    pooled: float  # Spearman, mean over sizes weighted by coalitions per size
    lo: float  # bootstrap over coalitions within each size
    hi: float
    per_size: dict[int, tuple[float, int]]  # size → (Spearman, coalitions)
    n: int


def within_size_spearman(sizes: np.ndarray, approx: np.ndarray, reference: np.ndarray, *, min_per_size: int = 3,
                         n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> WithinSize:
    """How well ``approx`` utilities (e.g. sFT) rank coalitions like ``reference`` (retraining)
    among coalitions of the same size: Spearman within each size with at least ``min_per_size``
    coalitions, pooled as their mean weighted by count, with a bootstrap interval that resamples
    coalitions within each size. Coalition size cannot carry it (a size effect shared by both
    methods scores 0 here), unlike a correlation over coalitions of every size."""
    sizes = np.asarray(sizes)
    approx = np.asarray(approx, dtype=float)
    reference = np.asarray(reference, dtype=float)
    if not (len(sizes) == len(approx) == len(reference)):
        raise ValueError(f"lengths disagree: sizes {len(sizes)}, approx {len(approx)}, reference {len(reference)}")
    groups = {int(k): np.flatnonzero(sizes == k) for k in np.unique(sizes)}
    groups = {k: g for k, g in groups.items() if len(g) >= min_per_size}
    if not groups:
        raise ValueError(f"no coalition size has {min_per_size} or more coalitions")
    per_size = {k: (spearman(approx[g], reference[g]), len(g)) for k, g in groups.items()}

    def pooled(rho: dict[int, float]) -> float:
        ok = {k: r for k, r in rho.items() if np.isfinite(r)}
        w = sum(len(groups[k]) for k in ok)
        return float(sum(r * len(groups[k]) for k, r in ok.items()) / w) if w else float("nan")

    rng = np.random.default_rng(seed)
    boots = {}
    for k, g in groups.items():
        idx = g[rng.integers(0, len(g), size=(n_boot, len(g)))]
        boots[k] = _rowwise_pearson(_ranks(approx[idx]), _ranks(reference[idx]))
    samples = np.array([pooled({k: boots[k][b] for k in groups}) for b in range(n_boot)])
    lo, hi = percentile_interval(samples, level)
    return WithinSize(pooled({k: r for k, (r, _) in per_size.items()}), lo, hi, per_size,
                      int(sum(len(g) for g in groups.values())))
