"""Known-answer simulations of the LDS machinery (``lds.py``): games whose population LDS is known, so
that the intervals and the random range can be checked against it. Used by the tests and by
``benchmarks/lds_intervals.py``, which reports the rates.

The game: n contributors with true contributions φ ~ N(0, 1); a coalition's expected utility is
Σ_{i∈S} φ_i. Retrain seed s measures Σ_{i∈S} (φ_i + b_si) + ε_sS: b_s ~ N(0, κ²) is what the seed
shares across every coalition it trains (its initialisation and data order favour some contributors),
ε ~ N(0, σ²) is independent per coalition and seed. The attribution scored is φ̂ = φ + τ·η (an
estimate with error τ). Its **population LDS** is the expected Spearman correlation × 100 between
Σ_S φ̂ and one seed's measurement over coalitions of size round(α·n): averaged over
``population_seeds`` seeds, each on ``n_population`` random coalitions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attribution_pipeline.evaluation.lds import (
    LEVEL, bootstrap_lds, percentile_interval, bootstrap_draws, draw_test_coalitions, lds_score, per_seed_lds, random_range,
)


@dataclass(frozen=True)
class AdditiveGame:
    n: int = 30
    alpha: float = 0.5
    noise: float = 1.5  # σ: retraining noise per seed and coalition
    error: float = 1.0  # τ: estimation error of the attribution scored
    seed_effect: float = 0.0  # κ: what a retrain seed shares across the coalitions it trains

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """True contributions and the attribution scored."""
        phi = rng.normal(size=self.n)
        return phi, phi + self.error * rng.normal(size=self.n)

    def measure(self, masks: np.ndarray, phi: np.ndarray, seeds: int, rng: np.random.Generator) -> np.ndarray:
        """``(seeds, m)`` retrained utilities of the coalitions ``masks``."""
        effects = phi[None, :] + self.seed_effect * rng.normal(size=(seeds, self.n))
        return effects @ masks.T.astype(float) + self.noise * rng.normal(size=(seeds, len(masks)))

    def population_lds(self, phi: np.ndarray, phi_hat: np.ndarray, rng: np.random.Generator,
                       n_population: int = 10_000, population_seeds: int = 40) -> float:
        size = min(max(1, int(round(self.alpha * self.n))), self.n - 1)
        keys = rng.random((n_population, self.n))
        masks = np.zeros((n_population, self.n), dtype=bool)
        np.put_along_axis(masks, np.argsort(keys, axis=1)[:, :size], True, axis=1)
        measured = self.measure(masks, phi, population_seeds, rng)
        return float(np.mean(per_seed_lds(masks.astype(float) @ phi_hat, measured)))


@dataclass
class CoverageReport:
    simulations: int
    interval_coverage: float  # share of bootstrap intervals that hold the population LDS
    mean_width: float
    mean_population: float  # mean population LDS of the attributions scored
    rows_only_coverage: float  # the same with only the test coalitions resampled (seeds kept), for contrast
    random_inclusion: float  # share of fresh random attributions inside the reported random range
    random_draws: int


def interval_coverage(game: AdditiveGame, *, simulations: int = 200, n_test: int = 50, seeds: int = 3,
                      n_boot: int = 1000, n_random: int = 1000, fresh_random: int = 50, seed: int = 0,
                      n_population: int = 10_000, population_seeds: int = 40) -> CoverageReport:
    """Simulate ``simulations`` evaluations: each draws a game, a test set of ``n_test`` coalitions
    measured with ``seeds`` seeds, the bootstrap interval of the attribution's LDS, and scores
    ``fresh_random`` new random attributions against the reported random range."""
    rng = np.random.default_rng(seed)
    hits, rows_hits, widths, populations, inside, total = 0, 0, [], [], 0, 0
    for k in range(simulations):
        phi, phi_hat = game.draw(rng)
        population = game.population_lds(phi, phi_hat, rng, n_population, population_seeds)
        masks = draw_test_coalitions(game.n, game.alpha, n_test, seed=int(rng.integers(2**31)))
        measured = game.measure(masks, phi, seeds, rng)
        res = lds_score(phi_hat, masks, measured, n_boot=n_boot, n_random=n_random, seed=k)
        hits += res.lo <= population <= res.hi
        widths.append(res.hi - res.lo)
        populations.append(population)
        rows, _ = bootstrap_draws(n_test, seeds, n_boot, k)
        lo, hi = percentile_interval(bootstrap_lds(masks.astype(float) @ phi_hat, measured,
                                      (rows, np.tile(np.arange(seeds), (n_boot, 1)))))
        rows_hits += lo <= population <= hi
        fresh = rng.normal(size=(fresh_random, game.n))
        scores = np.nanmean(per_seed_lds(fresh @ masks.T.astype(float), measured), axis=-1)
        inside += int(((scores >= res.random_lo) & (scores <= res.random_hi)).sum())
        total += fresh_random
    return CoverageReport(simulations, hits / simulations, float(np.mean(widths)), float(np.mean(populations)),
                          rows_hits / simulations, inside / total, total)


__all__ = ["AdditiveGame", "CoverageReport", "interval_coverage", "random_range", "LEVEL"]
