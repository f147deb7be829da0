"""The three utility methods (sft, ft, retrain) side by side in one work directory."""

from __future__ import annotations

import io

import pytest

from attribution_pipeline.coalitions import EMPTY_KEY
from attribution_pipeline.layout import RunLayout, content_hash
from attribution_pipeline.runner import run_valuation
from attribution_pipeline.stages import gather_pool, read_plan, utility_spec
from attribution_pipeline.storage.artifacts import read_manifest
from attribution_pipeline.storage.results import ResultStore


def missing_coalitions(cfg, layout, method=None):
    """Planned coalitions (∅ aside) lacking a current utility by ``method`` (the round's pool)."""
    if method:
        cfg = cfg.override({"valuation": {"method": method}})
    return [k for k in gather_pool(cfg, layout, ResultStore(layout.database)).missing if k != EMPTY_KEY]


def test_methods_are_stored_side_by_side_and_cached(tiny_config):
    cfg = tiny_config.override({"valuation": {"budget": 4}, "retrain": {"n_seeds": 2}})
    layout = RunLayout.at(cfg.workdir)
    assert run_valuation(cfg, quiet=True, out=io.StringIO()) == 0
    for method in ("ft", "retrain"):
        assert missing_coalitions(cfg, layout, method)  # nothing of this method yet
        out = io.StringIO()
        assert run_valuation(cfg.override({"valuation": {"method": method}}), out=out) == 0, out.getvalue()
        assert f"[coalitions] 5 planned coalition(s) lack a current {method} utility" in out.getvalue()
        again = io.StringIO()
        assert run_valuation(cfg.override({"valuation": {"method": method}}), out=again) == 0
        assert "is up to date" in again.getvalue() and "[coalitions]" not in again.getvalue()  # cached

    store = ResultStore(layout.database)
    plan = read_plan(layout)
    keys = {c.key for c in plan.coalitions}
    util = store.query("SELECT coalition_key, method, seed, property, value, base_version FROM utilities "
                       "WHERE coalition_key <> ?", [EMPTY_KEY])
    counts = {m: util.filter(util["method"] == m) for m in ("sft", "ft", "retrain")}
    assert set(counts["sft"]["coalition_key"]) == keys == set(counts["ft"]["coalition_key"])
    assert set(counts["retrain"]["coalition_key"]) == keys
    assert set(counts["retrain"]["seed"]) == {cfg.train.seed, cfg.train.seed + 1}  # two training seeds
    assert len(counts["retrain"]) == 2 * len(keys) * 2  # keys x seeds x properties
    # each method starts from its own model: pruned base, full model, nothing
    assert set(counts["sft"]["base_version"]) == {content_hash(layout.pruned_base_dir)}
    assert set(counts["ft"]["base_version"]) == {content_hash(layout.full_model_dir)}
    assert counts["retrain"]["base_version"].null_count() == len(counts["retrain"])
    # different methods give different models, hence different utilities
    a = dict(zip(counts["sft"]["coalition_key"] + counts["sft"]["property"], counts["sft"]["value"]))
    b = dict(zip(counts["ft"]["coalition_key"] + counts["ft"]["property"], counts["ft"]["value"]))
    assert any(abs(a[k] - b[k]) > 1e-9 for k in a)

    # retraining N with seed train.seed is θ* itself: no second training of it
    full = plan.coalitions[0]
    ckpt = layout.coalition_checkpoint_dir(full.key, "retrain", cfg.train.seed)
    assert not ckpt.exists()
    other = layout.coalition_checkpoint_dir(full.key, "retrain", cfg.train.seed + 1)
    assert read_manifest(other)["method"] == "retrain"

    # one valuation round per method, efficiency against that method's v(N) (retrain: the seed mean)
    rounds = store.query("SELECT method, count(*) AS n FROM valuation_rounds GROUP BY method")
    assert dict(zip(rounds["method"], rounds["n"])) == {"sft": 1, "ft": 1, "retrain": 1}
    shap = store.query("SELECT property, sum(value) AS total, any_value(v_full) AS vf, any_value(v_empty) AS v0 "
                       "FROM shapley_values WHERE method = 'retrain' AND is_default GROUP BY property")
    for r in shap.iter_rows(named=True):
        vn = counts["retrain"].filter((counts["retrain"]["coalition_key"] == full.key)
                                      & (counts["retrain"]["property"] == r["property"]))["value"].mean()
        assert r["vf"] == pytest.approx(vn)
        assert r["total"] == pytest.approx(r["vf"] - r["v0"], abs=1e-6)


def test_utility_signature_marks_stale_rows(tiny_config):
    """A changed fine-tune recipe makes every stored sFT utility stale: the runner recomputes them."""
    cfg = tiny_config.override({"valuation": {"budget": 4}})
    layout = RunLayout.at(cfg.workdir)
    assert run_valuation(cfg, quiet=True, out=io.StringIO()) == 0
    assert missing_coalitions(cfg, layout) == []
    changed = cfg.override({"finetune": {"steps": cfg.finetune.steps + 1}})
    plan = read_plan(layout)
    assert utility_spec(changed, layout, plan.coalitions[0]).utility_signature != \
        utility_spec(cfg, layout, plan.coalitions[0]).utility_signature
    assert sorted(missing_coalitions(changed, layout)) == sorted({c.key for c in plan.coalitions})


def test_unknown_method_is_rejected(tiny_config):
    with pytest.raises(ValueError, match="valuation.method"):
        tiny_config.override({"valuation": {"method": "distill"}})
