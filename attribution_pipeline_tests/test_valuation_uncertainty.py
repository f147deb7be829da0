"""Uncertainty: intervals cover the truth at about their level; the bootstrap is cheap enough."""

import time

import numpy as np
import pytest

from attribution_pipeline.valuation import CoalitionDesign, estimate
from attribution_pipeline.valuation.games import CoverageGame, noisy_values
from attribution_pipeline.valuation.pool import bootstrap_weights, build_pool
from attribution_pipeline.valuation.result import RawEstimate, summarize


@pytest.mark.parametrize("estimator, design", [("kernelshap", "paired-kernel"), ("regression-msr", "paired-kernel"),
                                            ("banzhaf-msr", "bernoulli")])
def test_intervals_cover_the_truth_on_a_noisy_game(estimator, design):
    # At n = 10 the Shapley kernel exhausts the smallest and largest sizes, where the with-replacement
    # bootstrap over-states the sampling variance (documented); n = 20 is the acceptance setting.
    n, repeats = 20, 15
    game = CoverageGame.random(n, seed=21)
    phi, banzhaf = game.shapley_values(), game.banzhaf_values()
    inside = []
    for seed in range(repeats):
        masks = CoalitionDesign(n, seed=seed, design=design).take(10 * n)
        values = noisy_values(game, masks, 0.5, seed=seed)
        res = estimate(masks, values, empty_value=game.empty_value, full_value=game.full_value, estimator=estimator,
                       seed=seed, n_bootstrap=100)
        truth = banzhaf if res.value_kind == "banzhaf" else phi
        inside.append(np.mean((res.ci_low <= truth) & (truth <= res.ci_high)))
    # 300 (contributor, repeat) pairs, correlated within a repeat: a wide band that can still fail.
    assert 0.85 <= np.mean(inside) <= 0.995


def test_bootstrap_resamples_pairs_together():
    masks = CoalitionDesign(10, seed=0).take(40)
    pool = build_pool(masks, np.zeros(40), 0.0, 0.0)
    assert pool.n_units == 20 and pool.paired_fraction == 1.0
    weights = bootstrap_weights(pool, 50, seed=1)
    partner = pool.complement
    np.testing.assert_array_equal(weights, weights[:, partner])
    np.testing.assert_allclose(weights.sum(axis=1), 40)


def test_summary_uses_t_quantiles_and_nan_without_information():
    values = np.array([3.0, 2.0, 1.0])
    raw = RawEstimate(values, None, np.array([1.0, 1.0, 1.0]), np.array([1.0, 5.0, 1e6]), "test")
    res = summarize(raw, estimator="kernelshap", value_kind="shapley", n_coalitions=3, n_evaluations=3,
                    noise_std=None, confidence=0.95, top_k=1)
    half = res.ci_high - values
    assert half[0] == pytest.approx(12.706, rel=1e-3)
    assert half[1] == pytest.approx(2.571, rel=1e-3)
    assert half[2] == pytest.approx(1.960, rel=1e-3)
    raw = RawEstimate(values, None, None, 0, "none")
    res = summarize(raw, estimator="loo", value_kind="loo", n_coalitions=3, n_evaluations=3, noise_std=None,
                    confidence=0.95, top_k=1)
    assert np.all(np.isnan(res.ci_low)) and np.array_equal(res.rank_low, [1, 2, 3])


def test_estimate_with_bootstrap_is_fast_at_n_200_b_2000():
    n = 200
    game = CoverageGame.random(n, seed=0)
    masks = CoalitionDesign(n, seed=0).take(2000)
    values = game(masks)
    start = time.perf_counter()
    res = estimate(masks, values, empty_value=game.empty_value, full_value=game.full_value, estimator="kernelshap",
                   n_bootstrap=200)
    assert time.perf_counter() - start < 15.0  # ≈ 1 s alone; generous for a shared machine
    assert res.draws.shape == (200, n) and np.all(res.std_errors > 0)
