"""Known-answer tests of every estimator on games with closed-form values."""

import numpy as np
import pytest

from attribution_pipeline.valuation import CoalitionDesign, estimate
from attribution_pipeline.valuation.coalitions import all_coalitions
from attribution_pipeline.valuation.games import (
    AdditiveGame,
    AirportGame,
    CoverageGame,
    GloveGame,
    PairwiseGame,
    WeightedVotingGame,
)

SHAPLEY_SAMPLED = ("kernelshap", "leverage", "regression-msr", "proxy", "kernelshap-paper")


def _run(game, masks, estimator, **kwargs):
    kwargs.setdefault("n_bootstrap", 50)
    return estimate(masks, game(masks), empty_value=game.empty_value, full_value=game.full_value,
                    estimator=estimator, **kwargs)


def _rel_err(estimate_values, truth):
    return np.linalg.norm(estimate_values - truth) / np.linalg.norm(truth)


@pytest.mark.parametrize("n", [5, 10, 20, 50])
def test_paired_kernelshap_is_exact_on_pairwise_games(n):
    game = PairwiseGame.random(n, seed=n)
    masks = CoalitionDesign(n, seed=0).take(10 * n)
    res = _run(game, masks, "kernelshap")
    np.testing.assert_allclose(res.values, game.shapley_values(), atol=1e-6 * np.abs(game.shapley_values()).max())
    assert np.max(res.std_errors) < 1e-6 * np.abs(game.shapley_values()).max()


def test_paired_kernelshap_is_exact_on_pairwise_games_with_odd_budget_cut_pair_aside():
    n = 30
    game = PairwiseGame.random(n, seed=1)
    masks = CoalitionDesign(n, seed=0).take(10 * n)
    res = _run(game, masks, "kernelshap", n_bootstrap=0)
    assert np.max(np.abs(res.values - game.shapley_values())) < 1e-6


def test_unpaired_kernel_is_not_exact_on_pairwise_games():
    # The contrast that makes the previous test meaningful.
    n = 20
    game = PairwiseGame.random(n, seed=2, interaction_scale=2.0)
    masks = CoalitionDesign(n, seed=0, design="kernel").take(10 * n)
    res = _run(game, masks, "kernelshap-paper", n_bootstrap=0)
    assert np.max(np.abs(res.values - game.shapley_values())) > 1e-3


@pytest.mark.parametrize(
    "game",
    [
        GloveGame([True, True, False, False, False, True, False]),
        AirportGame([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]),
        WeightedVotingGame([4, 3, 2, 2, 1, 1, 1], quota=8),
        CoverageGame.random(9, seed=3),
    ],
    ids=["glove", "airport", "voting", "coverage"],
)
def test_exact_estimator_on_complete_pool(game):
    n = game.n_players
    masks = CoalitionDesign(n, seed=0).take(2**n)  # the whole sequence: every coalition
    res = _run(game, masks, "auto")
    assert res.estimator == "exact"
    np.testing.assert_allclose(res.values, game.shapley_values(), atol=1e-10)
    assert res.values.sum() == pytest.approx(game.full_value - game.empty_value)
    banzhaf = _run(game, masks, "banzhaf-msr")
    np.testing.assert_allclose(banzhaf.values, game.banzhaf_values(), atol=1e-10)
    assert banzhaf.value_kind == "banzhaf"


def test_exact_agrees_with_shapiq():
    shapiq = pytest.importorskip("shapiq")
    game = CoverageGame.random(8, seed=7)
    masks = all_coalitions(8)
    res = _run(game, masks, "exact")
    computer = shapiq.ExactComputer(game=lambda coalitions: game(coalitions), n_players=8)
    np.testing.assert_allclose(res.values, computer("SV").get_n_order_values(1), atol=1e-10)
    banzhaf = _run(game, masks, "banzhaf-msr")
    np.testing.assert_allclose(banzhaf.values, computer("BV").get_n_order_values(1), atol=1e-10)


@pytest.mark.parametrize("estimator", ["kernelshap", "regression-msr", "proxy", "kernelshap-paper", "leverage"])
def test_efficiency_symmetry_and_null_player(estimator):
    # Players 0 and 1 are symmetric, player 2 is null; the rest interact pairwise.
    n = 12
    linear = np.linspace(1.0, 3.0, n)
    linear[[0, 1]] = 2.0
    linear[2] = 0.0
    pairwise = np.zeros((n, n))
    pairwise[0, 5] = pairwise[1, 5] = 1.5
    pairwise[3, 4] = -1.0
    game = PairwiseGame(linear, pairwise + pairwise.T)
    design = {"kernelshap-paper": "kernel", "leverage": "leverage"}.get(estimator, "paired-kernel")
    masks = CoalitionDesign(n, seed=1, design=design).take(20 * n)
    res = _run(game, masks, estimator)
    assert res.values.sum() == pytest.approx(game.full_value - game.empty_value, abs=1e-9)
    truth = game.shapley_values()
    tol = 1e-6 if estimator in ("kernelshap", "leverage") else 0.1 * np.abs(truth).max()
    assert abs(res.values[0] - res.values[1]) < 2 * tol
    assert abs(res.values[2]) < tol
    assert np.max(np.abs(res.values - truth)) < (tol if tol == 1e-6 else 0.5 * np.abs(truth).max())


@pytest.mark.parametrize(
    "estimator, design, bound",
    [
        ("kernelshap", "paired-kernel", 0.25),
        ("leverage", "leverage", 0.25),
        ("regression-msr", "paired-kernel", 0.15),
        ("regression-msr", "leverage", 0.15),
        ("proxy", "paired-kernel", 0.15),
        ("kernelshap-paper", "kernel", 0.4),
    ],
)
def test_error_bounds_on_a_game_with_interactions_of_every_order(estimator, design, bound):
    n = 20
    game = CoverageGame.random(n, seed=11)
    masks = CoalitionDesign(n, seed=0, design=design).take(20 * n)
    res = _run(game, masks, estimator)
    assert _rel_err(res.values, game.shapley_values()) < bound


def test_regression_msr_linear_proxy_is_nearly_exact_on_additive_games():
    # The linear proxy represents an additive game; only its (cross-validated) ridge shrinkage leaves a
    # residual for the Monte Carlo correction.
    n = 15
    game = AdditiveGame(np.linspace(-1, 2, n))
    masks = CoalitionDesign(n, seed=0).take(8 * n)
    res = _run(game, masks, "regression-msr", proxy="linear")
    np.testing.assert_allclose(res.values, game.shapley_values(), atol=1e-3)


def test_banzhaf_msr_on_bernoulli_pool_is_close_and_has_analytic_errors():
    n = 10
    game = CoverageGame.random(n, seed=5)
    masks = CoalitionDesign(n, seed=0, design="bernoulli").take(600)
    res = _run(game, masks, "banzhaf-msr")
    truth = game.banzhaf_values()
    assert res.value_kind == "banzhaf"
    assert np.all(np.abs(res.values - truth) < 4 * res.std_errors)
    assert "analytic" in res.uncertainty


def test_loo_uses_the_leave_one_out_coalitions_and_repeats_give_noise():
    n = 6
    game = CoverageGame.random(n, seed=2)
    loo = ~np.eye(n, dtype=bool)
    masks = np.vstack([loo, loo, loo])
    rng = np.random.default_rng(0)
    values = game(masks) + rng.normal(0, 0.1, len(masks))
    res = estimate(masks, values, empty_value=game.empty_value, full_value=game.full_value, estimator="loo")
    expected = game.full_value - values.reshape(3, n).mean(axis=0)
    np.testing.assert_allclose(res.values, expected)
    assert res.value_kind == "loo"
    assert res.noise_std == pytest.approx(0.1, rel=0.5)
    # three measurements of each N∖{i}, one of v(N): both in the interval
    np.testing.assert_allclose(res.std_errors, res.noise_std * np.sqrt(1 / 3 + 1))


def test_permutation_is_exact_on_additive_games_and_converges_on_others():
    n = 10
    additive = AdditiveGame(np.arange(1.0, n + 1))
    masks = CoalitionDesign(n, seed=0, design="permutation").take(2 * (n - 1))
    np.testing.assert_allclose(_run(additive, masks, "permutation").values, additive.shapley_values())
    game = AirportGame(np.arange(1.0, n + 1))
    masks = CoalitionDesign(n, seed=0, design="permutation").take(400 * (n - 1))
    res = _run(game, masks, "permutation")
    assert res.values.sum() == pytest.approx(game.full_value - game.empty_value)
    assert _rel_err(res.values, game.shapley_values()) < 0.1
    assert np.all(np.abs(res.values - game.shapley_values()) < 4 * res.std_errors)
    assert "antithetic" in res.uncertainty


@pytest.mark.parametrize("kind", ["tree", "linear"])
def test_proxy_shapley_values_are_exact_for_the_fitted_proxy(kind):
    from attribution_pipeline.valuation.coalitions import all_coalitions_with_endpoints, exact_semivalues
    from attribution_pipeline.valuation.proxies import fit_proxy

    n = 8
    game = CoverageGame.random(n, seed=4)
    masks = CoalitionDesign(n, seed=0).take(150)
    proxy = fit_proxy(kind, masks, game(masks), np.ones(len(masks)), seed=0)
    every = all_coalitions_with_endpoints(n)
    table = proxy.predict(every)
    brute = exact_semivalues(every[1:-1], table[1:-1], table[0], table[-1], "shapley")
    np.testing.assert_allclose(proxy.shapley, brute, atol=1e-9)
    # the diluted memberships (1{i∈S}/|S|) are fitted, so their closed-form values are exercised
    assert np.abs(proxy.coef[n : 2 * n]).max() > 1e-6
    assert (proxy.trees is not None and proxy.trees.n_iter_ > 0) == (kind == "tree")


def test_linear_proxy_represents_a_game_of_diluted_contributions():
    # v(S) = mean quality of S's members + a saturating size term: each member's effect fades as 1/|S|.
    # The proxy holds this game exactly, so regression-MSR is exact up to the ridge shrinkage.
    from attribution_pipeline.valuation.games import MeasuredGame

    n = 9
    quality = np.linspace(-2.0, 3.0, n)
    codes = np.arange(2**n)
    every = (codes[:, None] >> np.arange(n)[None, :]) & 1
    size = every.sum(axis=1)
    game = MeasuredGame(np.where(size > 0, every @ quality / np.maximum(size, 1) + np.sqrt(size), -1.0))
    masks = CoalitionDesign(n, seed=0).take(6 * n)
    res = _run(game, masks, "regression-msr", proxy="linear")
    assert _rel_err(res.values, game.shapley_values()) < 0.01  # 0.04 without the diluted term


def test_repeated_rows_are_averaged_and_measure_noise():
    n = 8
    game = PairwiseGame.random(n, seed=3)
    masks = CoalitionDesign(n, seed=0).take(60)
    repeated = np.vstack([masks] * 4)
    rng = np.random.default_rng(1)
    values = game(repeated) + rng.normal(0, 0.05, len(repeated))
    res = estimate(repeated, values, empty_value=game.empty_value, full_value=game.full_value,
                   estimator="kernelshap", n_bootstrap=50)
    averaged = estimate(masks, values.reshape(4, -1).mean(axis=0), empty_value=game.empty_value,
                        full_value=game.full_value, estimator="kernelshap", n_bootstrap=0)
    np.testing.assert_allclose(res.values, averaged.values, atol=1e-12)
    assert res.n_coalitions == 60 and res.n_evaluations == 240
    assert res.noise_std == pytest.approx(0.05, rel=0.2)


def test_proxy_warns_only_when_the_residual_correction_is_significant():
    from attribution_pipeline.valuation.pool import build_pool
    from attribution_pipeline.valuation.regression_msr import _bias_warning

    n = 10
    masks = CoalitionDesign(n, seed=0).take(200)
    pool = build_pool(masks, np.zeros(len(masks)), 0.0, 0.0)
    assert _bias_warning(pool, np.zeros(pool.n_distinct), seed=0) == []
    rng = np.random.default_rng(0)
    assert _bias_warning(pool, rng.normal(0, 1, pool.n_distinct), seed=0) == []
    biased = 5.0 * pool.coalitions[:, 0] + rng.normal(0, 1, pool.n_distinct)
    assert "regression-msr" in _bias_warning(pool, biased, seed=0)[0]


def test_cross_fit_uses_twenty_folds_and_keeps_each_pair_in_one_fold():
    from attribution_pipeline.valuation.pool import build_pool
    from attribution_pipeline.valuation.regression_msr import N_FOLDS, _fold_of

    n = 10
    game = CoverageGame.random(n, seed=1)
    for budget, expected in ((200, N_FOLDS), (30, 7), (4, 2)):
        masks = CoalitionDesign(n, seed=0).take(budget)
        pool = build_pool(masks, game(masks), game.empty_value, game.full_value)
        folds, n_folds = _fold_of(pool, seed=3)
        assert n_folds == expected == max(2, min(N_FOLDS, pool.n_units // 2))
        assert set(folds.tolist()) == set(range(n_folds))
        for unit in range(pool.n_units):  # a coalition and its complement share a fold
            assert len(set(folds[pool.unit == unit].tolist())) == 1
