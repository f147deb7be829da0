"""Closed-form values of the test games agree with exact enumeration and with known answers."""

import numpy as np
import pytest

from attribution_pipeline.valuation.games import (
    AdditiveGame,
    AirportGame,
    CoverageGame,
    Game,
    GloveGame,
    PairwiseGame,
    WeightedVotingGame,
    noisy_values,
)


def _games(n):
    rng = np.random.default_rng(n)
    return [
        AdditiveGame(rng.normal(size=n)),
        PairwiseGame.random(n, seed=n),
        AirportGame(rng.uniform(1, 10, n)),
        WeightedVotingGame(rng.integers(1, 6, n), quota=int(rng.integers(5, 10))),
        CoverageGame.random(n, seed=n),
    ]


@pytest.mark.parametrize("n", [5, 9])
def test_closed_forms_match_enumeration(n):
    for game in _games(n):
        np.testing.assert_allclose(game.shapley_values(), Game.shapley_values(game), atol=1e-10)
        np.testing.assert_allclose(game.banzhaf_values(), Game.banzhaf_values(game), atol=1e-10)


@pytest.mark.parametrize("n", [5, 10, 50])
def test_shapley_values_are_efficient(n):
    for game in _games(n):
        assert game.shapley_values().sum() == pytest.approx(game.full_value - game.empty_value, rel=1e-10)


def test_glove_game_known_values():
    # One left glove, two right gloves: the scarce left glove takes 2/3, each right glove 1/6.
    game = GloveGame([True, False, False])
    np.testing.assert_allclose(game.shapley_values(), [2 / 3, 1 / 6, 1 / 6])
    # Balanced market: everyone gets 1/2.
    np.testing.assert_allclose(GloveGame([True, True, False, False]).shapley_values(), 0.5)


def test_airport_game_known_values():
    # Costs 1, 2, 4: the first layer (1) split three ways, the second (1) two ways, the last (2) alone.
    np.testing.assert_allclose(AirportGame([1.0, 2.0, 4.0]).shapley_values(), [1 / 3, 1 / 3 + 1 / 2, 1 / 3 + 1 / 2 + 2])
    np.testing.assert_allclose(AirportGame([4.0, 1.0, 2.0]).shapley_values(), [1 / 3 + 1 / 2 + 2, 1 / 3, 1 / 3 + 1 / 2])


def test_weighted_voting_known_values():
    # Weights (2, 1, 1), quota 3: player 0 is pivotal in 4 of 6 orders.
    np.testing.assert_allclose(WeightedVotingGame([2, 1, 1], 3).shapley_values(), [2 / 3, 1 / 6, 1 / 6])
    # A dictator takes everything.
    np.testing.assert_allclose(WeightedVotingGame([5, 1, 1], 5).shapley_values(), [1, 0, 0])


def test_coverage_game_closed_form_at_large_n_is_efficient_and_nontrivial():
    game = CoverageGame.random(200, seed=0)
    phi = game.shapley_values()
    assert phi.sum() == pytest.approx(game.full_value - game.empty_value)
    # Not additive: the group terms carry interactions of every order.
    masks = np.eye(200, dtype=bool)[:5]
    assert np.any(np.abs(game(masks) - (game.own[:5] + game.pairwise.linear[:5])) > 0)


def test_noisy_values_are_prefix_stable_and_seeded():
    game = AdditiveGame(np.arange(6.0))
    masks = np.random.default_rng(0).random((20, 6)) < 0.5
    full = noisy_values(game, masks, 0.5, seed=1)
    np.testing.assert_array_equal(noisy_values(game, masks[:7], 0.5, seed=1), full[:7])
    assert not np.allclose(noisy_values(game, masks, 0.5, seed=2), full)
    np.testing.assert_array_equal(noisy_values(game, masks, 0.0, seed=1), game(masks))
