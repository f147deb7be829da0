"""A game given as a table of measured utilities (the enumerated real game of the estimator benchmark)."""

import json

import numpy as np
import pytest

from attribution_pipeline.valuation import CoalitionDesign, estimate
from attribution_pipeline.valuation.coalitions import all_coalitions_with_endpoints
from attribution_pipeline.valuation.games import MeasuredGame, PairwiseGame, load_measured_game


def _tabulated(game) -> MeasuredGame:
    return MeasuredGame(game(all_coalitions_with_endpoints(game.n_players)))


def test_a_tabulated_game_answers_like_the_game_and_has_its_exact_values():
    game = PairwiseGame.random(7, seed=3)
    table = _tabulated(game)
    masks = CoalitionDesign(7, seed=1).take(40)
    np.testing.assert_allclose(table(masks), game(masks))
    np.testing.assert_allclose(table.shapley_values(), game.shapley_values(), atol=1e-9)
    np.testing.assert_allclose(table.banzhaf_values(), game.banzhaf_values(), atol=1e-9)
    assert table.empty_value == pytest.approx(game.empty_value) and table.full_value == pytest.approx(game.full_value)


def test_estimators_read_a_measured_game_like_any_other():
    game = _tabulated(PairwiseGame.random(8, seed=5))
    masks = CoalitionDesign(8, seed=0).take(80)
    res = estimate(masks, game(masks), empty_value=game.empty_value, full_value=game.full_value,
                   estimator="kernelshap", n_bootstrap=20)
    np.testing.assert_allclose(res.values, game.shapley_values(), atol=1e-6)  # exact on pairwise games


@pytest.mark.parametrize("table, message", [
    (np.zeros(12), "2\\^n utilities"),
    (np.zeros(2), "2\\^n utilities"),
    (np.r_[np.zeros(7), np.nan], "finite"),
])
def test_a_malformed_table_is_refused(table, message):
    with pytest.raises(ValueError, match=message):
        MeasuredGame(table)


def test_the_file_format_round_trips_and_bad_files_are_named(tmp_path):
    game = _tabulated(PairwiseGame.random(4, seed=0))
    doc = {"format": "attribution_pipeline.measured_game/1", "contributors": list("abcd"),
           "properties": {"quality": {"values": game.table.tolist()}}}
    path = tmp_path / "game.json"
    path.write_text(json.dumps(doc))
    loaded, _ = load_measured_game(path, "quality")
    np.testing.assert_array_equal(loaded.table, game.table)
    with pytest.raises(ValueError, match="no property 'diversity'"):
        load_measured_game(path, "diversity")
    path.write_text(json.dumps({**doc, "contributors": list("abc")}))
    with pytest.raises(ValueError, match="3 contributors but 2\\^4"):
        load_measured_game(path, "quality")
    path.write_text(json.dumps({**doc, "format": "other"}))
    with pytest.raises(ValueError, match="not a measured-game file"):
        load_measured_game(path, "quality")
