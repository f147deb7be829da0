"""Re-valuation: the incremental pool on known games, then both policies end to end on tiny runs."""

import re
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from attribution_pipeline.coalitions import coalitions_to_masks
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.runner import run_valuation
from attribution_pipeline.stages import read_plan
from attribution_pipeline.stages.plan import extend_pool
from attribution_pipeline.storage.results import ResultStore
from attribution_pipeline.valuation import CoalitionDesign, estimate
from attribution_pipeline.valuation.games import CoverageGame
from attribution_pipeline_tests.conftest import write_digit_contributors


def _sets(masks, players):
    return [frozenset(p for p, m in zip(players, row) if m) for row in masks]


def test_extend_pool_adds_exactly_the_coalitions_holding_the_newcomer_and_stays_paired():
    old = [f"p{i}" for i in range(10)]
    previous = [frozenset(old), *_sets(CoalitionDesign(10, seed=3).take(60), old)]
    players = [*old, "new"]
    pool = extend_pool(previous, players, ["new"], removed=[])
    assert pool[0] == frozenset(players)
    added = set(pool) - set(previous)
    assert all("new" in s for s in added)
    assert added == {s | {"new"} for s in [frozenset(), *previous]}  # 62 = 60 sampled + N + ∅
    assert len(added) == 62 and len(pool) == 61 + 62
    proper = [s for s in pool if s != frozenset(players)]
    assert all(frozenset(players) - s in set(proper) for s in proper)  # every coalition with its complement


def test_extend_pool_drops_a_removed_contributors_coalitions():
    players = ["a", "b", "c", "d"]
    previous = [frozenset(players), frozenset("a"), frozenset("bcd"), frozenset("ab"), frozenset("cd")]
    pool = extend_pool(previous, ["a", "b", "c"], [], removed=["d"])
    assert pool == [frozenset("abc"), frozenset("a"), frozenset("ab")]


@pytest.mark.parametrize("seed", range(4))
def test_estimators_on_the_incremental_pool_keep_efficiency_and_beat_a_fresh_design_of_equal_new_cost(seed):
    """A known game of 11 contributors (diminishing returns inside groups + synergies): the
    incremental pool (60 old coalitions reused + 62 new) versus a fresh design of 61 (what rebase
    computes at the default budget). Noise-free utilities: this is the estimator's share of the
    error only; the base's approximation is measured on the real pipeline (README)."""
    game = CoverageGame.random(11, seed=seed)
    truth = game.shapley_values()
    old = [str(i) for i in range(10)]
    players = [*old, "10"]
    previous = [frozenset(old), *_sets(CoalitionDesign(10, seed=seed).take(60), old)]
    pool = extend_pool(previous, players, ["10"], removed=[])
    masks = coalitions_to_masks([sorted(s) for s in pool[1:]], players)
    fresh = CoalitionDesign(11, seed=seed).take(61)
    for estimator in ("kernelshap", "auto", "regression-msr"):
        inc = estimate(masks, game(masks), empty_value=game.empty_value, full_value=game.full_value,
                       estimator=estimator, n_bootstrap=0, seed=seed)
        ref = estimate(fresh, game(fresh), empty_value=game.empty_value, full_value=game.full_value,
                       estimator=estimator, n_bootstrap=0, seed=seed)
        assert abs(inc.values.sum() - (game.full_value - game.empty_value)) < 1e-8
        err_inc = np.linalg.norm(inc.values - truth) / np.linalg.norm(truth)
        err_ref = np.linalg.norm(ref.values - truth) / np.linalg.norm(truth)
        assert err_inc < 0.1, (estimator, err_inc)
        assert err_inc < 1.25 * err_ref, (estimator, err_inc, err_ref)


# ---- end to end on tiny runs ---------------------------------------------------------------------
def _stamp(path):
    return (path / "manifest.json").stat().st_mtime_ns


def _run(cfg, policy):
    out = io.StringIO()
    code = run_valuation(cfg.override({"revaluation": {"policy": policy}}), out=out)
    assert code == 0, out.getvalue()
    return out.getvalue()


def _trained(text):
    """(coalitions trained, coalitions only re-scored) from the run's summary line."""
    line = next(ln for ln in text.splitlines() if ln.startswith("coalitions:"))
    m = re.search(r"coalitions: (\d+) measured, (\d+) model\(s\) trained", line)
    return int(m.group(2)), int(m.group(1)) - int(m.group(2))


def test_incremental_then_changed_then_removed_then_rebase(tiny_config, tmp_path):
    root = write_digit_contributors(tmp_path / "three", classes=(0, 1, 7), per_class=20)
    cfg = tiny_config.override({"contributors_dir": str(root), "valuation": {"budget": 6}})
    layout = RunLayout.at(cfg.workdir)
    store = ResultStore(layout.database)
    _run(cfg, "incremental")  # the first round trains a base (there is none to keep)
    full0, base0 = _stamp(layout.full_model_dir), _stamp(layout.pruned_base_dir)
    plan0 = read_plan(layout)

    # a newcomer: the base is kept, only coalitions containing it are fine-tuned
    write_digit_contributors(root, classes=(4,), per_class=20)
    text = _run(cfg, "incremental")
    assert (_stamp(layout.full_model_dir), _stamp(layout.pruned_base_dir)) == (full0, base0)
    plan1 = read_plan(layout)
    with_new = [c for c in plan1.coalitions if "digit_4" in c.members]
    assert {c.key for c in plan1.coalitions} - {c.key for c in plan0.coalitions} == {c.key for c in with_new}
    assert len(with_new) == len(plan0.coalitions) + 1 == 8  # 7 old coalitions and ∅, each with digit_4
    assert _trained(text) == (8, 0)  # the 7 old ones untouched: the trusted instruments did not change
    rounds = store.query("SELECT * FROM valuation_rounds ORDER BY computed_at")
    assert len(rounds) == 2 and rounds["policy"].to_list() == ["incremental", "incremental"]
    assert rounds["base_predates"].to_list() == [[], ["digit_4"]]
    assert rounds["base_trained_on"][1].to_list() == ["digit_0", "digit_1", "digit_7"]
    util = store.query("SELECT coalition_key, base_predates FROM utilities WHERE method = 'sft' AND coalition_key <> 'empty'")
    predates = {r["coalition_key"]: r["base_predates"] for r in util.iter_rows(named=True)}
    assert all(predates[c.key] == (["digit_4"] if "digit_4" in c.members else []) for c in plan1.coalitions)
    hist = store.query("SELECT * FROM shapley_history WHERE property = 'diversity' ORDER BY computed_at, contributor")
    assert len(hist) == 3 + 4 and hist.filter(hist["round_id"] == rounds["round_id"][1])["change"].null_count() == 1

    # a changed contributor: its coalitions are fine-tuned again on the new data, the base stays
    img = root / "digit_1" / sorted(p.name for p in (root / "digit_1").iterdir())[0]
    Image.new("L", (8, 8), 255).save(img)
    text = _run(cfg, "incremental")
    assert _stamp(layout.pruned_base_dir) == base0
    assert _trained(text)[0] == sum("digit_1" in c.members for c in plan1.coalitions)
    assert store.query("SELECT base_predates FROM valuation_rounds ORDER BY computed_at DESC LIMIT 1")[
        "base_predates"][0].to_list() == ["digit_1", "digit_4"]

    # a removed contributor: its coalitions leave the plan; the new full coalition is computed
    shutil.rmtree(root / "digit_7")
    text = _run(cfg, "incremental")
    plan3 = read_plan(layout)
    assert all("digit_7" not in c.members for c in plan3.coalitions)
    assert plan3.coalitions[0].members == ("digit_0", "digit_1", "digit_4")
    assert store.query("SELECT removed_at IS NOT NULL AS gone FROM contributors WHERE contributor = 'digit_7'")["gone"][0]
    assert len(store.query("SELECT * FROM latest_shapley_values WHERE is_default AND property = 'quality'")) == 3

    # rebase: the base is retrained on the current contributors and everything recomputed
    text = _run(cfg, "rebase")
    assert _stamp(layout.pruned_base_dir) != base0
    plan4 = read_plan(layout)
    assert _trained(text) == (len(plan4.coalitions), 0)
    last = store.query("SELECT * FROM valuation_rounds ORDER BY computed_at DESC LIMIT 1").row(0, named=True)
    assert last["policy"] == "rebase" and last["base_predates"] == []
    assert store.query("SELECT count(DISTINCT round_id) AS n FROM shapley_values")["n"][0] == 5
    assert json.loads((layout.full_model_dir / "manifest.json").read_text())["trained_on"].keys() == {
        "digit_0", "digit_1", "digit_4"}


def test_a_changed_contributor_makes_the_base_and_the_coalitions_unsynced_in_the_ui(tiny_config):
    """The UI's "unsynced": data versions. Changing one file changes the contributors' data version,
    so the full model, the pruned base and the coalition partitions built on the old one are stale."""
    import dagster as dg
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from attribution_pipeline.defs.build import build_definitions

    cfg = tiny_config.override({"valuation": {"budget": 6}})
    assert run_valuation(cfg, quiet=True) == 0
    layout = RunLayout.at(cfg.workdir)
    instance = dg.DagsterInstance.from_config(str(layout.dagster_home))
    defs = build_definitions(str(layout.workdir))
    key = read_plan(layout).coalitions[1].key

    def status(asset, partition=None):
        return get_stale_status_resolver(instance, list(defs.assets)).get_status(dg.AssetKey(asset), partition)

    assert status("full_model") == StaleStatus.FRESH
    assert status("coalition_checkpoint", key) == StaleStatus.FRESH
    folder = layout.workdir.parent / "contributors" / "digit_1"
    Image.new("L", (8, 8), 255).save(sorted(folder.iterdir())[0])
    job = defs.resolve_job_def("valuation_base")
    assert job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("contributors")]).success
    for asset in ("full_model", "pruned_base_model", "property_reference", "coalition_plan"):
        assert status(asset) == StaleStatus.STALE, asset
    assert status("coalition_checkpoint", key) == StaleStatus.STALE
