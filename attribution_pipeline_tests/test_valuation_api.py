"""The public API: import hygiene, result fields, estimator selection, and what errors say."""

import subprocess
import sys

import numpy as np
import pytest

from attribution_pipeline.valuation import ESTIMATORS, CoalitionDesign, applicable_estimators, estimate
from attribution_pipeline.valuation.games import CoverageGame, PairwiseGame
from attribution_pipeline.valuation.registry import REGISTRY


def test_import_pulls_in_neither_torch_nor_dagster():
    code = (
        "import sys, attribution_pipeline.valuation as v; "
        "v.estimate; v.CoalitionDesign(5).take(10); "
        "bad = [m for m in ('torch', 'dagster') if m in sys.modules]; "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"imported: {done.stdout.strip()} {done.stderr[-500:]}"


def _pool(n=12, budget=120, seed=0, design="paired-kernel"):
    game = CoverageGame.random(n, seed=1)
    masks = CoalitionDesign(n, seed=seed, design=design).take(budget)
    return game, masks, game(masks)


def test_result_fields_and_shapes():
    game, masks, values = _pool()
    res = estimate(masks, values, empty_value=game.empty_value, full_value=game.full_value, seed=0)
    n = game.n_players
    for name in ("values", "std_errors", "ci_low", "ci_high", "rank_low", "rank_high", "p_top"):
        assert getattr(res, name).shape == (n,), name
    assert np.all(res.ci_low <= res.values) and np.all(res.values <= res.ci_high)
    assert np.all(res.rank_low >= 1) and np.all(res.rank_high <= n) and np.all(res.rank_low <= res.rank_high)
    assert res.estimator in ESTIMATORS and res.value_kind == "shapley"
    assert res.n_coalitions == 120 and res.noise_std is None
    assert res.top_k == 5  # ⌈0.4 n⌉
    assert res.p_top.sum() == pytest.approx(res.top_k)
    np.testing.assert_allclose(res.p_top_k(res.top_k), res.p_top)
    assert res.p_top_k(n).min() == 1.0
    best = res.ranking()[0]
    assert res.rank_low[best] == 1


def test_same_seed_same_result_other_seed_other_bootstrap():
    game, masks, values = _pool()
    kwargs = dict(empty_value=game.empty_value, full_value=game.full_value, estimator="regression-msr")
    a = estimate(masks, values, seed=3, **kwargs)
    b = estimate(masks, values, seed=3, **kwargs)
    c = estimate(masks, values, seed=4, **kwargs)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.std_errors, b.std_errors)
    assert not np.array_equal(a.std_errors, c.std_errors)


def test_auto_picks_by_pool_and_warns_on_small_budgets():
    n = 12
    game = CoverageGame.random(n, seed=1)
    kwargs = dict(empty_value=game.empty_value, full_value=game.full_value)
    small = CoalitionDesign(n, seed=0).take(2 * n)
    res = estimate(small, game(small), **kwargs)
    assert res.estimator == "kernelshap"
    assert any("3n" in w for w in res.warnings)
    medium = CoalitionDesign(n, seed=0).take(10 * n)
    res = estimate(medium, game(medium), **kwargs)
    assert res.estimator == "regression-msr" and not any("3n" in w for w in res.warnings)
    large = CoalitionDesign(n, seed=0).take(20 * n)
    assert estimate(large, game(large), **kwargs).estimator == "regression-msr"
    n_big = 40
    big_game = CoverageGame.random(n_big, seed=1)
    tiny = CoalitionDesign(n_big, seed=0).take(2 * n_big)
    assert estimate(tiny, big_game(tiny), empty_value=big_game.empty_value, full_value=big_game.full_value,
                    n_bootstrap=20).estimator == "regression-msr"  # unbiased: never the bare proxy
    chains = CoalitionDesign(n, seed=0, design="permutation").take(2 * (n - 1))
    assert estimate(chains[: n - 1], game(chains[: n - 1]), **kwargs).estimator == "permutation"


def test_applicable_estimators():
    n = 6
    loo = ~np.eye(n, dtype=bool)
    allowed = applicable_estimators(loo, n)
    assert "loo" in allowed and "exact" not in allowed and "permutation" not in allowed
    every = CoalitionDesign(n, seed=0).take(2**n)
    assert set(applicable_estimators(every, n)) >= {"exact", "kernelshap", "banzhaf-msr", "loo"}
    chains = CoalitionDesign(n, seed=0, design="permutation").take(4 * (n - 1))
    assert "permutation" in applicable_estimators(chains, n)
    assert "permutation" not in applicable_estimators(CoalitionDesign(n, seed=0).take(40), n)


def test_registry_lists_each_estimator_once_under_its_own_name():
    assert ESTIMATORS == tuple(REGISTRY) and len(set(ESTIMATORS)) == len(ESTIMATORS)
    assert all(record.name == name for name, record in REGISTRY.items())
    kinds = {name: record.value_kind for name, record in REGISTRY.items()}
    assert kinds["banzhaf-msr"] == "banzhaf" and kinds["loo"] == "loo"
    assert {kinds[name] for name in ESTIMATORS if name not in ("banzhaf-msr", "loo")} == {"shapley"}


@pytest.mark.parametrize("design", ["paired-kernel", "permutation"])
def test_every_estimator_that_can_run_reports_its_name_and_value_kind(design):
    n = 5
    game = CoverageGame.random(n, seed=2)
    masks = CoalitionDesign(n, seed=0, design=design).take(2**n if design != "permutation" else 4 * (n - 1))
    values = game(masks)
    allowed = applicable_estimators(masks, n)
    # A complete pool admits all but permutation; a chain pool admits permutation (and the regressions).
    assert ("permutation" in allowed) == (design == "permutation")
    assert len(allowed) >= 5
    for name in allowed:
        res = estimate(masks, values, empty_value=game.empty_value, full_value=game.full_value, estimator=name,
                       n_bootstrap=20)
        assert res.estimator == name and res.value_kind == REGISTRY[name].value_kind
        assert res.values.shape == (n,) and np.all(np.isfinite(res.values))


def test_method_keyword_is_gone():
    game, masks, values = _pool()
    with pytest.raises(TypeError, match="method"):
        estimate(masks, values, empty_value=game.empty_value, full_value=game.full_value, method="kernelshap")


def test_small_budget_warning_spares_exact_enumeration():
    # n = 3: all 6 coalitions are fewer than 3n = 9, yet exact enumeration has no sampling error.
    n = 3
    game = CoverageGame.random(n, seed=1)
    every = CoalitionDesign(n, seed=0).take(2**n)
    kwargs = dict(empty_value=game.empty_value, full_value=game.full_value)
    exact = estimate(every, game(every), estimator="exact", **kwargs)
    assert exact.estimator == "exact" and not any("3n" in w for w in exact.warnings)
    sampled = estimate(every, game(every), estimator="kernelshap", **kwargs)
    assert any("3n" in w for w in sampled.warnings)
    np.testing.assert_allclose(sampled.values, exact.values, atol=1e-8)


@pytest.mark.parametrize(
    "masks, values, kwargs, message",
    [
        (np.ones(5, dtype=bool), np.ones(5), {}, "2-D"),
        (np.eye(4, dtype=bool), np.ones(3), {}, "one utility per row"),
        (np.eye(4, dtype=bool), np.array([1.0, np.nan, 1.0, 1.0]), {}, "non-finite"),
        (np.vstack([np.eye(4, dtype=bool), np.zeros(4, dtype=bool)]), np.ones(5), {}, "empty coalition"),
        (np.vstack([np.eye(4, dtype=bool), np.ones(4, dtype=bool)]), np.ones(5), {}, "full coalition"),
        (np.eye(4, dtype=bool), np.ones(4), {"estimator": "shapley-magic"}, "unknown estimator"),
        (np.eye(4, dtype=bool), np.ones(4), {"estimator": "exact"}, "every one of the 2\\^4 − 2 = 14"),
        (np.eye(4, dtype=bool), np.ones(4), {"estimator": "loo"}, "leave-one-out coalitions"),
        (np.eye(4, dtype=bool), np.ones(4), {"estimator": "permutation"}, "permutation chain"),
        (np.eye(4, dtype=bool)[:2], np.ones(2), {"estimator": "kernelshap"}, "at least n = 4 distinct"),
        (np.eye(4, dtype=bool), np.ones(4), {"proxy": "forest"}, "proxy"),
        (np.eye(4, dtype=bool), np.ones(4), {"top_k": 9}, "top_k"),
    ],
)
def test_errors_say_what_is_wrong(masks, values, kwargs, message):
    with pytest.raises(ValueError, match=message):
        estimate(masks, values, empty_value=0.0, full_value=1.0, **kwargs)


def test_p_top_k_rejects_bad_k():
    game, masks, values = _pool()
    res = estimate(masks, values, empty_value=game.empty_value, full_value=game.full_value, estimator="kernelshap")
    with pytest.raises(ValueError, match="k must be"):
        res.p_top_k(0)


def test_rank_intervals_are_tight_when_values_are_well_separated():
    n = 8
    game = PairwiseGame(np.arange(1.0, n + 1) * 10, np.zeros((n, n)))
    masks = CoalitionDesign(n, seed=0).take(60)
    rng = np.random.default_rng(0)
    values = game(masks) + rng.normal(0, 0.1, len(masks))
    res = estimate(masks, values, empty_value=0.0, full_value=game.full_value, estimator="kernelshap")
    expected_rank = n - np.arange(n)
    np.testing.assert_array_equal(res.rank_low, expected_rank)
    np.testing.assert_array_equal(res.rank_high, expected_rank)
    np.testing.assert_allclose(res.p_top_k(3), (expected_rank <= 3).astype(float))
