"""The whole asset graph, materialized through Dagster in-process on a tiny configuration."""

import io
import json

import dagster as dg
import numpy as np
import polars as pl
import pytest

from attribution_pipeline.coalitions import EMPTY_KEY
from attribution_pipeline.defs.partitions import coalition_partitions
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.report import print_table
from attribution_pipeline.runner import run_valuation
from attribution_pipeline.storage.artifacts import read_manifest
from attribution_pipeline.stages import partition_runs
from attribution_pipeline.stages import read_plan
from attribution_pipeline.storage.results import ResultStore
from attribution_pipeline_tests.conftest import write_digit_contributors


def test_partition_runs_groups_contiguous_keys():
    order = list("abcdefgh")
    assert partition_runs(["b", "c", "d", "g"], order, 2) == [("b", "c", 2), ("d", "d", 1), ("g", "g", 1)]
    assert partition_runs([], order, 4) == []
    # a stretch is split evenly: runs in parallel end together
    assert [n for _, _, n in partition_runs(list(order), order, 3)] == [3, 3, 2]
    assert [n for _, _, n in partition_runs([f"k{i:02d}" for i in range(60)], [f"k{i:02d}" for i in range(60)], 16)] \
        == [15, 15, 15, 15]


def test_partition_runs_fill_whole_waves_of_the_engines_workers():
    keys = [f"k{i:03d}" for i in range(221)]
    assert [n for _, _, n in partition_runs(keys, keys, 32)] == [32, 32, 32, 32, 31, 31, 31]  # 7 runs
    two = [n for _, _, n in partition_runs(keys, keys, 32, slots=2)]
    assert len(two) == 8 and sum(two) == 221 and max(two) - min(two) <= 1  # 4 full waves on 2 workers
    assert len(partition_runs(keys[:64], keys, 32, slots=2)) == 2  # already a multiple
    assert len(partition_runs(keys[:3], keys, 32, slots=4)) == 3  # never more runs than keys
    gappy = [k for i, k in enumerate(keys[:40]) if i != 10]  # two stretches: 10 and 29 keys
    runs = partition_runs(gappy, keys, 16, slots=2)
    assert len(runs) == 4 and sum(n for *_, n in runs) == 39  # 1 + 2 runs, one more for the longer stretch
    assert [n for *_, n in runs] == [10, 10, 10, 9]


@pytest.fixture
def four_contributors(tmp_path):
    return write_digit_contributors(tmp_path / "four", classes=(0, 1, 4, 7), per_class=20)


def _coalition_runs(instance) -> int:
    return sum(1 for r in instance.get_runs() if r.job_name == "coalitions")


def test_valuation_end_to_end_then_cached_then_grown(tiny_config, four_contributors):
    cfg = tiny_config.override({"contributors_dir": str(four_contributors), "valuation": {"budget": 6}})
    out = io.StringIO()
    assert run_valuation(cfg, quiet=False, out=out) == 0, out.getvalue()
    layout = RunLayout.at(cfg.workdir)
    store = ResultStore(layout.database)
    plan = read_plan(layout)
    keys = {c.key for c in plan.coalitions}
    assert len(plan.coalitions) == 7 and plan.coalitions[0].kind == "full"

    # DuckDB contract
    assert store.query("SELECT count(*) AS n FROM contributors")["n"][0] == 4
    members = store.query("SELECT coalition_key, members, size FROM coalitions")
    assert keys | {EMPTY_KEY} <= set(members["coalition_key"])
    assert all(len(m) == s for m, s in zip(members["members"], members["size"]))
    util = store.query("SELECT * FROM utilities WHERE method = 'sft'")
    assert set(util["coalition_key"]) == keys | {EMPTY_KEY}
    assert set(util["property"]) == {"quality", "diversity"}
    assert np.isfinite(util["value"].to_numpy()).all()
    shap = store.query("SELECT * FROM latest_shapley_values")
    default = shap.filter(shap["is_default"])
    for prop in ("quality", "diversity"):
        rows = default.filter(default["property"] == prop)
        assert len(rows) == 4
        total = rows["value"].sum()
        assert abs(total - (rows["v_full"][0] - rows["v_empty"][0])) < 1e-6
        assert (rows["ci_low"] <= rows["value"]).all() and (rows["value"] <= rows["ci_high"]).all()
    assert {"shapley", "banzhaf"} <= set(shap["value_kind"])
    assert ((shap["p_top"] >= 0) & (shap["p_top"] <= 1)).all()
    assert (shap["rank_low"] <= shap["rank_high"]).all()
    assert "sum of values" in out.getvalue()
    # every row says what its interval covers and leaves out; the biased estimator says so
    assert shap["uncertainty"].is_not_null().all()
    assert all("retraining" in e for e in shap["interval_excludes"])
    banzhaf = shap.filter(shap["value_kind"] == "banzhaf")
    assert len(banzhaf) and all("not a Shapley value" in b for b in banzhaf["known_bias"])
    assert "not in the interval:" in out.getvalue()
    from attribution_pipeline.defs.valuation_assets import _table  # the UI's markdown says it too

    assert "**quality**" in _table(shap.to_dicts()) and "not in it: " in _table(shap.to_dicts())
    rounds = store.query("SELECT warnings FROM valuation_rounds")
    assert rounds["warnings"].dtype == pl.List(pl.String)

    # Dagster saw every coalition partition
    instance = dg.DagsterInstance.from_config(str(layout.dagster_home))
    assert set(instance.get_dynamic_partitions(coalition_partitions.name)) == keys
    done = instance.get_materialized_partitions(dg.AssetKey("coalition_utilities"))
    assert done == keys
    runs_before = _coalition_runs(instance)
    stamps = {k: (layout.coalition_checkpoint_dir(k) / "manifest.json").stat().st_mtime_ns for k in keys}

    # the same command again launches no coalition run and rewrites no checkpoint
    out2 = io.StringIO()
    assert run_valuation(cfg, out=out2) == 0
    assert "is up to date" in out2.getvalue() and "[coalitions]" not in out2.getvalue()
    assert _coalition_runs(instance) == runs_before
    assert stamps == {k: (layout.coalition_checkpoint_dir(k) / "manifest.json").stat().st_mtime_ns for k in keys}
    assert store.query("SELECT count(*) AS n FROM valuation_rounds")["n"][0] == 1  # unchanged pool: no new round

    # a larger budget evaluates exactly the new coalitions
    bigger = cfg.override({"valuation": {"budget": 10}})
    out3 = io.StringIO()
    assert run_valuation(bigger, out=out3) == 0
    plan2 = read_plan(layout)
    assert [c.key for c in plan2.coalitions[:7]] == [c.key for c in plan.coalitions]  # prefix-stable
    new = {c.key for c in plan2.coalitions} - keys
    assert f"[coalitions] {len(new)} planned coalition(s) lack a current sft utility" in out3.getvalue()
    assert stamps == {k: (layout.coalition_checkpoint_dir(k) / "manifest.json").stat().st_mtime_ns for k in keys}
    assert store.query("SELECT count(*) AS n FROM valuation_rounds")["n"][0] == 2


def test_bad_contributors_fail_before_anything_is_written(tiny_config, tmp_path, capsys):
    bad = tmp_path / "bad"
    write_digit_contributors(bad, classes=(0, 1))
    (bad / "digit_0" / "broken.png").write_bytes(b"")
    cfg = tiny_config.override({"contributors_dir": str(bad)})
    assert run_valuation(cfg, quiet=True) == 2
    assert "broken.png" in capsys.readouterr().err
    assert not RunLayout.at(cfg.workdir).workdir.exists()


def _check_results(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_asset_checks_pass_on_a_valuation_and_fail_on_tampered_results(tiny_config):
    from attribution_pipeline.defs.build import build_definitions

    cfg = tiny_config.override({"valuation": {"budget": 6}})
    assert run_valuation(cfg, quiet=True) == 0
    layout = RunLayout.at(cfg.workdir)
    instance = dg.DagsterInstance.from_config(str(layout.dagster_home))
    defs = build_definitions(str(layout.workdir))
    base = defs.resolve_job_def("valuation_base").execute_in_process(instance=instance)
    checks = _check_results(base)
    assert checks == {"plan_covers_contributors": True, "utilities_are_finite": True}
    store = ResultStore(layout.database)
    assert _check_results(defs.resolve_job_def("shapley").execute_in_process(instance=instance)) == {
        "shapley_efficiency": True}
    # tampered results: a Shapley value that breaks efficiency, a NaN in v(∅)'s record (the base
    # run's check reads the records its worker wrote, never DuckDB)
    store.delete_where("shapley_values", "contributor = 'digit_0' AND estimator = 'kernelshap'")
    (record,) = layout.untrained_images_dir.parent.glob("utilities/*.json")
    doc = json.loads(record.read_text())
    doc["rows"][0]["value"] = {"float": "nan"}
    record.write_text(json.dumps(doc))
    check_job = dg.define_asset_job("only_checks", selection=dg.AssetSelection.checks_for_assets(
        "shapley_values", "empty_coalition_utilities"))
    defs2 = dg.Definitions(assets=defs.assets, asset_checks=defs.asset_checks, jobs=[check_job],
                           resources=defs.resources)
    result = defs2.resolve_job_def("only_checks").execute_in_process(instance=instance, raise_on_error=False)
    assert _check_results(result) == {"shapley_efficiency": False, "utilities_are_finite": False}


def test_a_rescore_only_run_counts_only_its_own_work(tiny_config):
    """A new property re-scores cached image sets: the summary says nothing was trained or generated,
    that every coalition's model came from cache, and the overhead is against this run's scoring."""
    import re

    cfg = tiny_config.override({"valuation": {"budget": 4, "properties": ["diversity"]}})
    assert run_valuation(cfg, quiet=True) == 0
    out = io.StringIO()
    assert run_valuation(cfg.override({"valuation": {"properties": ["diversity", "quality"]}}), out=out) == 0
    line = next(x for x in out.getvalue().splitlines() if x.startswith("coalitions:"))
    m = re.search(r"coalitions: (\d+) measured, (\d+) model\(s\) trained \(([0-9.]+)s\), (\d+) image set\(s\) "
                  r"generated \(([0-9.]+)s\), scoring ([0-9.]+)s; (\d+) read their model from cache; wall ([0-9.]+)s on 1 worker\(s\), "
                  r"orchestration overhead (-?[0-9.]+)%", line)
    assert m, line
    measured, trained, _, generated, _, scoring, cached, wall, overhead = m.groups()
    assert (int(measured), int(trained), int(generated), int(cached)) == (5, 0, 0, 5)
    assert 0 < float(scoring) <= float(wall) and float(overhead) >= 0


def test_v_full_is_a_stated_choice_and_the_singleton_share_is_reported(tiny_config, four_contributors):
    cfg = tiny_config.override({"contributors_dir": str(four_contributors), "valuation": {"budget": 14}})
    assert run_valuation(cfg, quiet=True) == 0
    store = ResultStore(RunLayout.at(cfg.workdir).database)
    full_key = read_plan(RunLayout.at(cfg.workdir)).coalitions[0].key
    utility = {(r["method"], r["property"]): r["value"] for r in store.query(
        "SELECT method, property, value FROM utilities WHERE coalition_key = ?", [full_key]).iter_rows(named=True)}
    sv = "SELECT * FROM latest_shapley_values WHERE is_default AND property = 'quality'"
    by_coalition = store.query(sv)
    assert by_coalition["v_full"][0] == utility[("sft", "quality")]
    singles = store.query("SELECT avg(u.value) AS m FROM utilities u JOIN coalitions c USING (coalition_key) "
                          "WHERE c.size = 1 AND u.method = 'sft' AND u.property = 'quality'")["m"][0]
    v0, vn = by_coalition["v_empty"][0], by_coalition["v_full"][0]
    assert by_coalition["singleton_share"][0] == pytest.approx((singles - v0) / (vn - v0))

    out = io.StringIO()
    assert run_valuation(cfg.override({"valuation": {"v_full": "full_model"}}), out=out) == 0
    assert "[coalitions]" not in out.getvalue()  # the same utilities, only a new round
    by_theta = store.query(sv)
    assert by_theta["v_full"][0] == utility[("full_model", "quality")] != by_coalition["v_full"][0]
    assert by_theta["value"].sum() == pytest.approx(utility[("full_model", "quality")] - v0)
    assert store.query("SELECT v_full_source FROM valuation_rounds ORDER BY computed_at")["v_full_source"].to_list() \
        == ["coalition", "full_model"]


def test_replicates_measure_the_utility_noise_that_every_interval_then_includes(tiny_config, four_contributors):
    cfg = tiny_config.override({"contributors_dir": str(four_contributors),
                                "valuation": {"budget": 8, "replicates": 3, "replicated_coalitions": 2}})
    out = io.StringIO()
    assert run_valuation(cfg, out=out) == 0, out.getvalue()
    # 9 coalitions (N and 8 planned), N and 2 of them with 2 replicates each: 15 models, none from cache
    assert "coalitions: 9 measured, 15 model(s) trained" in out.getvalue()
    assert "; 0 read their model from cache" in out.getvalue()
    layout = RunLayout.at(cfg.workdir)
    store = ResultStore(layout.database)
    plan = read_plan(layout)
    seeds = {r["coalition_key"]: sorted(set(r["seeds"])) for r in store.query(
        "SELECT coalition_key, list(seed) AS seeds FROM utilities WHERE method = 'sft' GROUP BY coalition_key"
    ).iter_rows(named=True)}
    replicated = [EMPTY_KEY, plan.coalitions[0].key, plan.coalitions[1].key, plan.coalitions[2].key]
    s0 = cfg.finetune.seed
    assert all(seeds[k] == [s0, s0 + 1, s0 + 2] for k in replicated)
    assert all(seeds[c.key] == [s0] for c in plan.coalitions[3:] if c.key not in replicated)
    # replicate j: its own checkpoint and images, generated with generation seed + j
    images = read_manifest(layout.coalition_run_dir(plan.coalitions[0].key, "sft", s0 + 2) / "images")
    assert images["noise_seed"] == cfg.sampling.seed + 2
    rows = store.query("SELECT * FROM latest_shapley_values WHERE is_default").to_dicts()
    for prop in cfg.valuation.properties:
        got = store.query("SELECT coalition_key, seed, value FROM utilities WHERE property = ? AND method = 'sft'",
                          [prop]).to_dicts()
        groups = {}
        for r in got:
            if r["coalition_key"] in replicated:
                groups.setdefault(r["coalition_key"], []).append(r["value"])
        ss = sum(float(np.sum((np.array(g) - np.mean(g)) ** 2)) for g in groups.values())
        expected = np.sqrt(ss / 8)  # 4 coalitions, 2 dof each
        prop_rows = [r for r in rows if r["property"] == prop]
        assert all(r["noise_std"] == pytest.approx(expected) and r["noise_dof"] == 8 for r in prop_rows)
        assert all("unknown" not in r["interval_excludes"] and "replicates" in r["uncertainty"] for r in prop_rows)
        # the fit reads replicate 0 only: values still sum to v(N) − v(∅) of the first measurements
        assert sum(r["value"] for r in prop_rows) == pytest.approx(prop_rows[0]["v_full"] - prop_rows[0]["v_empty"])
    assert store.query("SELECT replicates, design FROM valuation_rounds").row(0) == (3, "paired-kernel")
    shown = io.StringIO()
    assert print_table(cfg.workdir, out=shown) == 0
    assert "utility noise: σ =" in shown.getvalue()

    # without replicates the same table says the noise is unknown, and nothing is measured again
    out = io.StringIO()
    assert run_valuation(cfg.override({"valuation": {"replicates": 1}}), out=out) == 0
    assert "[coalitions]" not in out.getvalue()
    rows = store.query("SELECT * FROM latest_shapley_values WHERE is_default").to_dicts()
    assert all(r["noise_std"] is None and "unknown" in r["interval_excludes"] for r in rows)


def test_the_papers_kernel_design_counts_repeated_draws_once_measured(tiny_config, four_contributors):
    cfg = tiny_config.override({"contributors_dir": str(four_contributors),
                                "valuation": {"budget": 12, "design": "kernel"}})
    assert run_valuation(cfg, quiet=True) == 0
    layout = RunLayout.at(cfg.workdir)
    plan = read_plan(layout)
    keys = [c.key for c in plan.coalitions[1:]]
    assert plan.design == "kernel" and len(set(keys)) < len(keys)  # i.i.d. draws repeat coalitions
    store = ResultStore(layout.database)
    counts = store.query("SELECT coalition_key, count(*) AS k FROM utilities WHERE method = 'sft' "
                         "AND property = 'quality' GROUP BY coalition_key")["k"].to_list()
    assert max(counts) == 1  # a repeated draw is measured once
    rows = store.query("SELECT * FROM latest_shapley_values").to_dicts()
    assert "kernelshap-paper" in {r["estimator"] for r in rows}
    assert all(r["noise_std"] is None for r in rows)  # repeats of one measurement are not a noise estimate
