"""LDS and counterfactual evaluation: known answers for the math, then the assets on a tiny valuation."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from attribution_pipeline.evaluation import (
    counterfactual_sets, draw_test_coalitions, lds_score, random_removals, relative_change, spearman,
)


def test_spearman_known_answers():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert spearman(a, a ** 3) == pytest.approx(1.0)  # monotone, not linear
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert math.isnan(spearman(a, np.ones(4)))


def test_lds_of_an_additive_game_is_100_and_of_its_reverse_is_minus_100():
    rng = np.random.default_rng(0)
    phi = rng.normal(size=8)
    masks = draw_test_coalitions(8, 0.5, 20, seed=1)
    truth = masks @ phi
    measured = np.stack([truth + 1e-9 * rng.normal(size=len(truth)) for _ in range(3)])
    res = lds_score(phi, masks, measured)
    assert res.lds == pytest.approx(100.0) and res.ceiling == pytest.approx(100.0)
    assert res.ci_half_width == pytest.approx(0.0, abs=1e-9) and res.n_seeds == 3
    assert lds_score(-phi, masks, measured).lds == pytest.approx(-100.0)


def test_lds_interval_is_196_std_over_root_seeds_and_ceiling_is_seed_agreement():
    masks = draw_test_coalitions(6, 0.5, 10, seed=3)
    phi = np.arange(6, dtype=float)
    rng = np.random.default_rng(5)
    measured = np.stack([masks @ phi + rng.normal(scale=2.0, size=len(masks)) for _ in range(4)])
    res = lds_score(phi, masks, measured)
    per = [100 * spearman(masks @ phi, m) for m in measured]
    assert res.per_seed == pytest.approx(per)
    assert res.lds == pytest.approx(np.mean(per))
    assert res.ci_half_width == pytest.approx(1.96 * np.std(per, ddof=1) / 2.0)
    pairs = [100 * spearman(measured[i], measured[j]) for i in range(4) for j in range(i + 1, 4)]
    assert res.ceiling == pytest.approx(np.mean(pairs))
    with pytest.raises(ValueError, match="at least 3"):
        lds_score(phi, masks[:2], measured[:, :2])


def test_test_coalitions_are_seeded_distinct_of_size_alpha_n_and_held_out():
    m1 = draw_test_coalitions(10, 0.5, 12, seed=4)
    assert m1.shape == (12, 10) and (m1.sum(1) == 5).all()
    assert len({tuple(r) for r in m1}) == 12
    assert (m1 == draw_test_coalitions(10, 0.5, 12, seed=4)).all()
    assert not (m1 == draw_test_coalitions(10, 0.5, 12, seed=5)).all()
    exclude = {tuple(np.flatnonzero(r).tolist()) for r in m1}
    m2 = draw_test_coalitions(10, 0.5, 12, seed=4, exclude=exclude)
    assert not exclude & {tuple(np.flatnonzero(r).tolist()) for r in m2}
    small = draw_test_coalitions(4, 0.5, 10, seed=0)  # only C(4,2) = 6 exist
    assert small.shape == (6, 4)


def test_counterfactual_sets_and_relative_change():
    ids = ["a", "b", "c", "d", "e"]
    sets = counterfactual_sets(np.array([0.1, 0.5, -0.2, 0.3, 0.0]), ids, remove_fraction=0.4, keep_fraction=0.6)
    assert sets["remove_top"] == ["a", "c", "e"]  # b and d (the top 2) removed
    assert sets["keep_top"] == ["a", "b", "d"]
    draws = random_removals(ids, 0.4, 3, seed=0)
    assert all(len(d) == 3 and set(d) <= set(ids) for d in draws)
    assert draws == random_removals(ids, 0.4, 3, seed=0)
    assert relative_change(8.0, 10.0) == pytest.approx(-0.2)
    assert relative_change(-12.0, -10.0) == pytest.approx(-0.2)  # quality = −FID: lower is a drop


def test_lds_and_counterfactual_assets_write_duckdb_and_cache_retrains(tmp_path):
    from attribution_pipeline.config import PipelineConfig, load_preset
    from attribution_pipeline.layout import RunLayout
    from attribution_pipeline.runner import run_evaluation, run_valuation
    from attribution_pipeline.stages.evaluation import evaluate_counterfactual, evaluate_lds
    from attribution_pipeline.storage.results import ResultStore
    from attribution_pipeline_tests.conftest import TINY_OVERRIDES, write_digit_contributors

    contributors = write_digit_contributors(tmp_path / "five", classes=(0, 1, 2, 3, 7), per_class=12)
    cfg = (PipelineConfig().override(load_preset("digits")).override(TINY_OVERRIDES)
           .override({"contributors_dir": str(contributors), "workdir": str(tmp_path / "work"),
                      "train": {"steps": 20}, "valuation": {"budget": 10},
                      "lds": {"n_test": 4, "n_seeds": 2}, "counterfactual": {"n_random": 2}}))
    assert run_valuation(cfg, quiet=True, out=io.StringIO()) == 0
    out = io.StringIO()
    assert run_evaluation(cfg, out=out) == 0, out.getvalue()

    store = ResultStore(RunLayout.at(cfg.workdir).database)
    lds = store.query("SELECT * FROM lds_results")
    assert set(lds["property"]) == {"quality", "diversity"} and set(lds["method"]) == {"sft"}
    assert (lds["n_test"] == 4).all() and (lds["n_seeds"] == 2).all()
    assert lds.filter(lds["is_default"]).height == 2
    assert all(-100 <= v <= 100 for v in lds["lds"].drop_nulls())
    assert lds["ceiling"].drop_nulls().len() > 0
    retrained = store.query("SELECT DISTINCT coalition_key, seed FROM utilities WHERE method = 'retrain'")
    tests = set(lds["test_coalitions"][0])
    assert len(tests) == 4 and tests <= set(retrained["coalition_key"])
    kinds = store.query("SELECT kind FROM coalitions WHERE coalition_key IN (SELECT unnest(?))", [list(tests)])
    assert set(kinds["kind"]) <= {"lds_test", "sampled"}

    cf = store.query("SELECT * FROM counterfactual_results")
    for prop in ("quality", "diversity"):
        rows = cf.filter(cf["property"] == prop)
        got = sorted(zip(rows["scenario"], rows["ranking"], rows["repeat"]))
        assert got == [("keep_top", "shapley", 0), ("remove_random", "random", 0), ("remove_random", "random", 1),
                       ("remove_top", "loo", 0), ("remove_top", "shapley", 0)]
    assert set(cf.filter(cf["scenario"] == "remove_top")["kept"]) == {3}  # 40% of 5 removed
    assert set(cf.filter(cf["scenario"] == "keep_top")["kept"]) == {3}  # 60% of 5 kept
    for r in cf.iter_rows(named=True):
        assert r["relative_change"] == pytest.approx((r["v_after"] - r["v_full"]) / abs(r["v_full"]))
    assert "remove_top" in out.getvalue() and "ceiling" in out.getvalue()

    # everything is cached: a second evaluation retrains nothing
    layout = RunLayout.at(cfg.workdir)
    assert evaluate_lds(cfg, layout, store).n_retrains == 0
    assert evaluate_counterfactual(cfg, layout, store).n_retrains == 0


def test_evaluate_before_a_valuation_says_what_to_do(tiny_config):
    from attribution_pipeline.runner import run_evaluation

    assert run_evaluation(tiny_config, out=io.StringIO()) == 2
