"""Each asset check passes on a real valuation and fails on a crafted bad input."""

import contextlib
import json
import math

import dagster as dg
import numpy as np
import pytest

from attribution_pipeline.data.imagesets import save_image_set
from attribution_pipeline.defs.build import build_definitions
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.runner import run_valuation
from attribution_pipeline.stages import read_plan
from attribution_pipeline.storage.results import ResultStore

ASSETS = ("coalition_plan", "coalition_images", "coalition_utilities", "shapley_values", "empty_coalition_utilities")


@pytest.fixture(scope="module")
def valued(tmp_path_factory):
    from attribution_pipeline.config import PipelineConfig, load_preset
    from attribution_pipeline_tests.conftest import TINY_OVERRIDES, write_digit_contributors

    tmp = tmp_path_factory.mktemp("checks")
    cfg = (PipelineConfig().override(load_preset("digits")).override(TINY_OVERRIDES)
           .override({"contributors_dir": str(write_digit_contributors(tmp / "c")), "workdir": str(tmp / "work"),
                      "valuation": {"budget": 6}}))
    assert run_valuation(cfg, quiet=True) == 0
    return cfg


def _checks(cfg) -> dict[str, bool]:
    layout = RunLayout.at(cfg.workdir)
    defs = build_definitions(str(layout.workdir))
    job = dg.define_asset_job("only_checks", selection=dg.AssetSelection.checks_for_assets(*ASSETS))
    defs = dg.Definitions(assets=defs.assets, asset_checks=defs.asset_checks, jobs=[job], resources=defs.resources)
    instance = dg.DagsterInstance.from_config(str(layout.dagster_home))
    result = defs.resolve_job_def("only_checks").execute_in_process(instance=instance, raise_on_error=False)
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


ALL_PASS = {"plan_covers_contributors": True, "image_sets_are_valid": True, "utilities_in_valid_range": True,
            "shapley_efficiency": True, "utilities_are_finite": True}


def test_every_check_passes_on_a_valuation(valued):
    assert _checks(valued) == ALL_PASS


def test_image_set_with_wrong_count_or_constant_images_fails(valued):
    layout = RunLayout.at(valued.workdir)
    folder = layout.coalition_images_dir(read_plan(layout).coalitions[1].key)
    good = np.load(folder / "images.npy")
    try:
        bad = good[:-3].copy()
        bad[0] = 17  # a constant image
        save_image_set(bad, folder, json.loads((folder / "manifest.json").read_text()) | {"n_images": len(bad)})
        assert _checks(valued) == {**ALL_PASS, "image_sets_are_valid": False}
    finally:
        save_image_set(good, folder)
    assert _checks(valued)["image_sets_are_valid"]


# the digits instrument tells the 10 digit classes apart: diversity lies in [0, log2 10]
@pytest.mark.parametrize("prop,value", [("diversity", math.log2(10) + 0.5), ("quality", 4.0), ("diversity", -0.1)])
def test_utility_outside_its_property_range_fails(valued, prop, value):
    """The coalition checks run in the worker and read the records it wrote (never DuckDB)."""
    layout = RunLayout.at(valued.workdir)
    with _tampered_record(layout.coalition_dir(read_plan(layout).coalitions[2].key), prop, value):
        assert _checks(valued) == {**ALL_PASS, "utilities_in_valid_range": False}


@contextlib.contextmanager
def _tampered_record(folder, prop: str, value: float):
    """The utility record under ``folder`` with ``prop``'s value replaced, restored afterwards."""
    (path,) = folder.glob("**/utilities/*.json")
    original = path.read_text()
    doc = json.loads(original)
    for row in doc["rows"]:
        if row["property"] == prop:
            row["value"] = value if math.isfinite(value) else {"float": repr(value)}
    try:
        path.write_text(json.dumps(doc))
        yield path
    finally:
        path.write_text(original)


def test_plan_where_a_contributor_is_never_left_out_fails(valued):
    layout = RunLayout.at(valued.workdir)
    path = layout.workdir / "plan.json"
    original = path.read_text()
    plan = json.loads(original)
    try:
        plan["coalitions"] = [c for c in plan["coalitions"] if "digit_0" in c["members"]]
        path.write_text(json.dumps(plan))
        assert _checks(valued)["plan_covers_contributors"] is False
    finally:
        path.write_text(original)


def test_non_finite_utility_and_broken_efficiency_fail(valued):
    layout = RunLayout.at(valued.workdir)
    store = ResultStore(layout.database)
    row = store.query("SELECT * FROM shapley_values WHERE is_default LIMIT 1").row(0, named=True)
    try:
        store.upsert("shapley_values", [{**row, "value": row["value"] + 1.0}])
        with _tampered_record(layout.untrained_images_dir.parent, "quality", float("inf")):  # v(∅)'s record
            got = _checks(valued)
        assert got["shapley_efficiency"] is False and got["utilities_are_finite"] is False
    finally:
        store.upsert("shapley_values", [row])


def test_a_launch_with_another_method_is_checked_against_that_methods_images(tiny_config):
    """The launchpad's ``resources: {pipeline: {config: {method: "ft"}}}`` reaches the asset checks
    too: an ft run of a coalition is checked against the ft image set, not the sFT one."""
    import shutil

    from attribution_pipeline.stages import utility_spec

    cfg = tiny_config.override({"valuation": {"budget": 4}})
    assert run_valuation(cfg, quiet=True) == 0
    layout = RunLayout.at(cfg.workdir)
    coalition = read_plan(layout).coalitions[1]
    shutil.rmtree(utility_spec(cfg, layout, coalition).images_dir)  # the sFT image set is gone
    defs = build_definitions(str(layout.workdir))
    instance = dg.DagsterInstance.from_config(str(layout.dagster_home))
    ft = {"resources": {"pipeline": {"config": {"method": "ft"}}}}
    result = defs.resolve_job_def("coalitions").execute_in_process(
        instance=instance, run_config=ft, partition_key=coalition.key, raise_on_error=False)
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    images = evaluations["image_sets_are_valid"]
    assert images.passed and images.metadata["method"].value == "ft", images.metadata
    assert evaluations["utilities_in_valid_range"].metadata["method"].value == "ft"
    ft_images = utility_spec(cfg.override({"valuation": {"method": "ft"}}), layout, coalition, "ft").images_dir
    assert ft_images.is_dir() and "ft-seed" in ft_images.parent.name
    # the same check with the workdir's method (sFT) sees the missing sFT image set
    only = dg.define_asset_job("image_check", selection=dg.AssetSelection.checks_for_assets("coalition_images"))
    defs2 = dg.Definitions(assets=defs.assets, asset_checks=defs.asset_checks, jobs=[only], resources=defs.resources)
    sft = defs2.resolve_job_def("image_check").execute_in_process(instance=instance, raise_on_error=False)
    assert [e.passed for e in sft.get_asset_check_evaluations()] == [False]
