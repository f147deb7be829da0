"""LDS and counterfactual evaluation: known answers for the math, then the assets on a tiny valuation."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from attribution_pipeline.evaluation import (
    counterfactual_sets, draw_test_coalitions, lds_difference, lds_score, random_range, random_removals,
    relative_change, spearman, within_size_spearman,
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
    assert res.lds == pytest.approx(100.0) and res.test_retest == pytest.approx(100.0)
    assert res.ceiling == pytest.approx(100.0)
    # every resample ranks the coalitions alike: a zero-width interval, and here that claim is true
    assert res.lo == pytest.approx(100.0) and res.hi == pytest.approx(100.0) and res.n_seeds == 3
    assert not res.inside_random and res.random_hi < 100.0
    assert lds_score(-phi, masks, measured).lds == pytest.approx(-100.0)


def test_lds_of_the_true_values_of_an_additive_game_is_at_least_99_with_retraining_noise():
    rng = np.random.default_rng(3)
    phi = rng.normal(size=30)
    masks = draw_test_coalitions(30, 0.5, 60, seed=2)
    measured = np.stack([masks @ phi + 0.02 * rng.normal(size=len(masks)) for _ in range(3)])
    res = lds_score(phi, masks, measured)
    assert res.lds >= 99.0 and res.lo >= 98.0 and res.hi <= 100.0


def test_lds_reports_the_seed_mean_a_bootstrap_interval_the_random_range_and_the_oracle_ceiling():
    masks = draw_test_coalitions(12, 0.5, 40, seed=3)
    rng = np.random.default_rng(5)
    phi = rng.normal(size=12)
    measured = np.stack([masks @ phi + rng.normal(scale=1.5, size=len(masks)) for _ in range(4)])
    guess = phi + rng.normal(scale=0.8, size=12)
    res = lds_score(guess, masks, measured, n_boot=500, n_random=999, seed=9)
    per = [100 * spearman(masks @ guess, m) for m in measured]
    assert res.per_seed == pytest.approx(per)
    assert res.lds == pytest.approx(np.mean(per))
    assert res.lo < res.lds < res.hi and res.hi - res.lo > 5.0  # 40 coalitions, 4 seeds: not a point
    pairs = [100 * spearman(measured[i], measured[j]) for i in range(4) for j in range(i + 1, 4)]
    assert res.test_retest == pytest.approx(np.mean(pairs))
    assert res.ceiling == pytest.approx(100 * math.sqrt(np.mean(pairs) / 100))
    assert res.ceiling > res.test_retest  # the agreement of two seeds is not what an oracle reaches
    # the random range: order statistics 25 and 975 of 999 random attributions' scores, about 0
    lo, hi, scores = random_range(masks, measured, 999, seed=10)
    assert (res.random_lo, res.random_hi) == (lo, hi)
    ordered = np.sort(scores)
    assert lo == ordered[24] and hi == ordered[974] and lo < 0 < hi
    assert res.n_boot == 500 and res.n_random == 999 and "seeds" in res.covers
    # the same seed gives the same interval; another seed moves it only a little
    again = lds_score(guess, masks, measured, n_boot=500, n_random=999, seed=9)
    assert (again.lo, again.hi) == (res.lo, res.hi)
    with pytest.raises(ValueError, match="at least 3"):
        lds_score(phi, masks[:2], measured[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        lds_score(phi, masks, np.where(measured > 0, np.nan, measured))


def test_random_attributions_land_inside_the_reported_random_range_at_least_95_percent_of_the_time():
    # exchangeability gives P(inside) = (K + 1 - 2a) / (K + 1) >= 0.95 for the order statistics used;
    # 12,000 fresh draws over 40 test sets measure it (binomial s.e. 0.002)
    rng = np.random.default_rng(11)
    inside = total = 0
    for t in range(40):
        phi = rng.normal(size=20)
        masks = draw_test_coalitions(20, 0.5, 50, seed=t)
        measured = np.stack([masks @ phi + rng.normal(size=len(masks)) for _ in range(3)])
        lo, hi, _ = random_range(masks, measured, 1000, seed=t)
        fresh = rng.normal(size=(300, 20))
        scores = np.array([np.mean([100 * spearman(masks @ f, m) for m in measured]) for f in fresh])
        inside += int(((scores >= lo) & (scores <= hi)).sum())
        total += len(fresh)
    rate = inside / total
    print(f"random attributions inside the random range: {rate:.4f} of {total}")
    assert rate >= 0.945


@pytest.mark.parametrize("seed_effect, low, high", [(1.0, 0.90, 0.99), (0.0, 0.93, 1.0)])
def test_the_bootstrap_interval_covers_the_population_lds_at_its_nominal_rate(seed_effect, low, high):
    # With a seed effect shared across coalitions (kappa) resampling coalitions and seeds is nominal;
    # without one it is conservative (benchmarks/results/lds-intervals.md reports the rates)
    from attribution_pipeline.evaluation.simulate import AdditiveGame, interval_coverage

    game = AdditiveGame(n=30, noise=0.5 if seed_effect else 1.5, error=1.0, seed_effect=seed_effect)
    rep = interval_coverage(game, simulations=120, n_boot=600, n_random=200, fresh_random=5, seed=3,
                            n_population=4000, population_seeds=20)
    print(f"kappa={seed_effect}: coverage {rep.interval_coverage:.3f} (coalitions alone {rep.rows_only_coverage:.3f})")
    assert low <= rep.interval_coverage <= high
    if seed_effect:  # resampling the coalitions alone would miss the seed effect
        assert rep.rows_only_coverage < rep.interval_coverage


def test_paired_differences_cancel_what_two_attributions_share():
    rng = np.random.default_rng(8)
    phi = rng.normal(size=30)
    masks = draw_test_coalitions(30, 0.5, 50, seed=4)
    measured = np.stack([masks @ phi + rng.normal(scale=2.0, size=len(masks)) for _ in range(3)])
    noisy = phi + rng.normal(scale=1.5, size=30)
    same = lds_difference(noisy, noisy, masks, measured, n_boot=500)
    assert (same.difference, same.lo, same.hi) == (0.0, 0.0, 0.0) and not same.significant
    better = lds_difference(phi, noisy, masks, measured, n_boot=500, seed=1)
    a, b = (lds_score(v, masks, measured, n_boot=500, seed=1) for v in (phi, noisy))
    assert better.difference == pytest.approx(a.lds - b.lds)
    assert better.significant and better.lo > 0
    # pairing: the difference's interval is narrower than the two intervals side by side
    assert better.hi - better.lo < (a.hi - a.lo) + (b.hi - b.lo)


def test_within_size_spearman_is_not_carried_by_coalition_size():
    # sFT and retraining that share only a size effect: a correlation over all sizes says ~0.98,
    # the within-size Spearman says ~0 (the review's simulation); sharing the within-size signal says ~1
    rng = np.random.default_rng(2)
    sizes = np.repeat(np.arange(1, 10), 12)
    size_effect = 3.0 * np.log2(sizes)
    retrain = size_effect + 0.3 * rng.normal(size=len(sizes))
    unrelated = size_effect + 0.3 * rng.normal(size=len(sizes))
    assert np.corrcoef(unrelated, retrain)[0, 1] > 0.95
    none = within_size_spearman(sizes, unrelated, retrain, n_boot=500)
    assert abs(none.pooled) < 0.25 and none.lo < 0 < none.hi
    assert set(none.per_size) == set(range(1, 10)) and none.n == len(sizes)
    tracking = within_size_spearman(sizes, retrain + 0.05 * rng.normal(size=len(sizes)), retrain, n_boot=500)
    assert tracking.pooled > 0.9 and tracking.lo > 0.8
    assert none.pooled == pytest.approx(np.mean([r for r, _ in none.per_size.values()]))  # equal counts
    with pytest.raises(ValueError, match="no coalition size"):
        within_size_spearman(np.arange(5), np.arange(5.0), np.arange(5.0))


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
                      "lds": {"n_test": 4, "n_seeds": 2, "n_boot": 300, "n_random": 300},
                      "counterfactual": {"n_random": 2, "n_seeds": 2, "baselines": ["trak"]},
                      "baselines": {"n_timesteps": 2, "dim": 64, "journey_points": 2}}))
    assert run_valuation(cfg, quiet=True, out=io.StringIO()) == 0
    out = io.StringIO()
    assert run_evaluation(cfg, out=out) == 0, out.getvalue()

    store = ResultStore(RunLayout.at(cfg.workdir).database)
    # the baselines: every default method for both properties, ranked, costed, with provenance
    from attribution_pipeline.config import BaselinesConfig

    att = store.query("SELECT * FROM attributions")
    assert set(att["method"]) == set(BaselinesConfig().methods) and set(att["property"]) == {"quality", "diversity"}
    assert att.height == len(BaselinesConfig().methods) * 2 * 5
    for (m, p), g in att.group_by("method", "property"):
        assert sorted(g["rank"]) == [1, 2, 3, 4, 5] and (g["cost_s"] >= 0).all()
    trak = att.filter(att["method"] == "trak")
    prov = __import__("json").loads(trak["provenance"][0])
    assert prov["dim"] == 64 and prov["timesteps"] == 2 and prov["lambda"] == 0.5 and prov["projection_seed"] == 42
    size = att.filter((att["method"] == "size_share") & (att["property"] == "quality"))
    assert size["value"].sum() == pytest.approx(1.0)  # 12 images each: equal shares
    assert "trak" in out.getvalue() and "size_share" in out.getvalue()

    lds = store.query("SELECT * FROM lds_results")
    assert set(lds["property"]) == {"quality", "diversity"} and set(lds["method"]) == {"sft", "baseline"}
    scored = set(lds.filter(lds["method"] == "baseline")["estimator"])
    assert scored == set(BaselinesConfig().methods)  # every baseline is scored on the same test set
    assert (lds["n_test"] == 4).all() and (lds["n_seeds"] == 2).all()
    assert lds.filter(lds["is_default"]).height == 2
    assert all(-100 <= v <= 100 for v in lds["lds"].drop_nulls())
    assert lds["ceiling"].drop_nulls().len() > 0
    for r in lds.iter_rows(named=True):
        if r["lds"] is not None:  # every score with its interval and the chance range on the same test set
            assert r["lds_lo"] <= r["lds"] <= r["lds_hi"] and r["random_lo"] < r["random_hi"]
            assert r["inside_random"] == (r["random_lo"] <= r["lds"] <= r["random_hi"])
        assert r["retrain_seeds"] == [1000, 1001] and "seeds" in r["interval_covers"]
        # paired difference to the default estimate: none for the default itself
        assert (r["diff"] is None) == (bool(r["is_default"]) or r["lds"] is None)
    # equal data-size shares rank no test coalition above another (all have alpha n members): no LDS, not NaN
    share = lds.filter(lds["estimator"] == "size_share")
    assert share["lds"].null_count() == share.height == 2 and share["inside_random"].null_count() == 2
    # the cheap method's utilities of the same test coalitions, ranked against retraining within size
    fid = store.query("SELECT * FROM utility_fidelity")
    assert set(fid["method"]) == {"sft"} and set(fid["property"]) == {"quality", "diversity"}
    pooled = fid.filter(fid["size"] == 0)
    assert pooled.height == 2 and (pooled["n"] == 4).all()
    assert set(fid.filter(fid["size"] > 0)["size"]) == {int(round(0.5 * 5))}  # the test coalitions keep alpha n
    for r in pooled.iter_rows(named=True):
        assert -1.0 <= r["spearman"] <= 1.0 and r["lo"] <= r["hi"]
    retrained = store.query("SELECT DISTINCT coalition_key, seed FROM utilities WHERE method = 'retrain'")
    # no evaluation retrain reuses a seed that built θ*, the base or the pools (0 here)
    assert set(retrained["seed"]) <= {1000, 1001, 2000, 2001}
    tests = set(lds["test_coalitions"][0])
    assert len(tests) == 4 and tests <= set(retrained["coalition_key"])
    kinds = store.query("SELECT kind FROM coalitions WHERE coalition_key IN (SELECT unnest(?))", [list(tests)])
    assert set(kinds["kind"]) <= {"lds_test", "sampled"}

    cf = store.query("SELECT * FROM counterfactual_results")
    for prop in ("quality", "diversity"):
        rows = cf.filter(cf["property"] == prop)
        got = sorted(zip(rows["scenario"], rows["ranking"], rows["repeat"]))
        assert got == [("keep_top", "shapley", 0), ("keep_top", "trak", 0), ("remove_random", "random", 0),
                       ("remove_random", "random", 1), ("remove_top", "loo", 0), ("remove_top", "shapley", 0),
                       ("remove_top", "trak", 0)]
    assert set(cf.filter(cf["scenario"] == "remove_top")["kept"]) == {3}  # 40% of 5 removed
    assert set(cf.filter(cf["scenario"] == "keep_top")["kept"]) == {3}  # 60% of 5 kept
    assert set(cf["fraction"]) == {0.4, 0.6}
    for r in cf.iter_rows(named=True):
        assert len(r["per_seed"]) == 2 and r["retrain_seeds"] == [2000, 2001]
        assert r["relative_change"] == pytest.approx(np.mean(r["per_seed"]))
        assert r["rc_lo"] <= r["relative_change"] <= r["rc_hi"]
    assert "remove_top" in out.getvalue() and "ceiling" in out.getvalue()

    # everything is cached: a second evaluation retrains nothing
    layout = RunLayout.at(cfg.workdir)
    assert evaluate_lds(cfg, layout, store).n_retrains == 0
    assert evaluate_counterfactual(cfg, layout, store).n_retrains == 0


def test_evaluate_before_a_valuation_says_what_to_do(tiny_config):
    from attribution_pipeline.runner import run_evaluation

    assert run_evaluation(tiny_config, out=io.StringIO()) == 2


def test_evaluation_retrains_never_reuse_a_seed_that_built_the_valuation():
    from attribution_pipeline.config import ConfigError, PipelineConfig

    cfg = PipelineConfig()
    assert cfg.evaluation_seeds("lds") == [1000, 1001, 1002] and cfg.evaluation_seeds("counterfactual") == [2000, 2001, 2002]
    with pytest.raises(ConfigError, match="lds.retrain_seed") as info:
        cfg.override({"lds": {"retrain_seed": 0}})  # seed 0 trained θ*
    assert "seed(s) [0, 1, 2]" in str(info.value)
    with pytest.raises(ConfigError, match="counterfactual.retrain_seed"):
        cfg.override({"counterfactual": {"retrain_seed": 2}})  # finetune seed 0 + replicate 2
    assert cfg.override({"counterfactual": {"retrain_seed": 3}}).evaluation_seeds("counterfactual") == [3, 4, 5]
    for bad in ([], [0.5, 1.0]):
        with pytest.raises(ConfigError, match="lds.alphas"):
            cfg.override({"lds": {"alphas": bad}})
    assert cfg.override({"lds": {"alphas": [0.25, 0.5, 0.75]}}).lds.alphas == (0.25, 0.5, 0.75)


def test_a_config_of_an_earlier_version_with_one_alpha_and_one_fraction_still_reads():
    from attribution_pipeline.config import PipelineConfig

    old = {"lds": {"alpha": 0.25, "n_test": 12}, "counterfactual": {"remove_fraction": 0.3, "keep_fraction": 0.7}}
    for cfg in (PipelineConfig.from_dict(old), PipelineConfig().override(old)):  # a workdir's JSON; --set
        assert cfg.lds.alphas == (0.25,) and cfg.lds.n_test == 12
        assert cfg.counterfactual.remove_fractions == (0.3,) and cfg.counterfactual.keep_fractions == (0.7,)
