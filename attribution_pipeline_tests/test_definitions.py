"""A snapshot of the Dagster definitions: a renamed asset, group, job, check, sensor or schedule shows
up here in review (as dagster-open-platform's ``test_defs`` does)."""

import dagster as dg

from attribution_pipeline.config import load_preset
from attribution_pipeline.defs.build import build_definitions

SNAPSHOT = {
    "assets": {
        "contributors": ("base", None),
        "property_reference": ("base", None),
        "full_model": ("base", None),
        "pruned_base_model": ("base", None),
        "coalition_plan": ("base", None),
        "empty_coalition_utilities": ("base", None),
        "full_model_utilities": ("base", None),
        "coalition_checkpoint": ("coalitions", "coalitions"),
        "coalition_images": ("coalitions", "coalitions"),
        "coalition_utilities": ("coalitions", "coalitions"),
        "shapley_values": ("valuation", None),
        "lds_results": ("evaluation", None),
        "counterfactual_results": ("evaluation", None),
        "baseline_attributions": ("evaluation", None),
        "attribution_report": ("evaluation", None),
    },
    "checks": {
        "coalition_images/image_sets_are_valid", "coalition_plan/plan_covers_contributors",
        "coalition_utilities/utilities_in_valid_range", "empty_coalition_utilities/utilities_are_finite",
        "shapley_values/shapley_efficiency",
    },
    "jobs": {"valuation_base", "coalitions", "shapley", "evaluation"},
    "sensors": {"contributors_sensor": "RUNNING", "round_continuation": "RUNNING"},
    "schedules": {"revaluation_schedule": ("0 3 * * 1", "STOPPED", "valuation_base")},
    "resources": {"pipeline"},
}


def _snapshot(defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assets[key.to_user_string()] = (node.group_name, getattr(node.partitions_def, "name", None))
    checks = {f"{k.asset_key.to_user_string()}/{k.name}" for k in graph.asset_check_keys}
    jobs = {j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__")}
    sensors = {s.name: s.default_status.value for s in defs.sensors}
    schedules = {s.name: (s.cron_schedule, s.default_status.value, s.job_name) for s in defs.schedules}
    return {"assets": assets, "checks": checks, "jobs": jobs, "sensors": sensors, "schedules": schedules,
            "resources": set(defs.resources)}


def test_definitions_match_the_snapshot(tmp_path):
    assert _snapshot(build_definitions(str(tmp_path / "work"))) == SNAPSHOT


def test_each_round_job_selects_its_group(tmp_path):
    defs = build_definitions(str(tmp_path / "work"))
    graph = defs.resolve_asset_graph()
    for job, group in (("valuation_base", "base"), ("coalitions", "coalitions"), ("shapley", "valuation")):
        selected = {k.to_user_string() for k in defs.resolve_job_def(job).asset_layer.executable_asset_keys}
        assert selected == {a for a, (g, _) in SNAPSHOT["assets"].items() if g == group}, job
    per_run = load_preset("digits")["valuation"]["coalitions_per_run"]  # the default preset's
    assert graph.get(dg.AssetKey("coalition_utilities")).backfill_policy.max_partitions_per_run == per_run == 32
    # one process per run: a process per step would pay the torch import at every step
    assert {j.executor_def.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__")} == {"in_process"}


def test_jobs_carry_the_engines_ray_request_and_training_holds_the_gpu_pool(tmp_path):
    """After ``run --engine local|ray`` the jobs ask Ray for what their runs need: training runs one
    CPU and the configured GPUs, with the worker role; Shapley and evaluation the head's resource,
    without it (they write DuckDB). In-process, no Ray tag at all."""
    import json

    from attribution_pipeline.defs.jobs import RAY_TAG
    from attribution_pipeline.workdir import HEAD_RESOURCE, EngineSettings, instance_yaml, write_instance

    work = tmp_path / "work"
    plain = {j.name: j.tags for j in build_definitions(str(work)).resolve_all_job_defs()}
    assert not any(RAY_TAG in tags for tags in plain.values())
    settings = EngineSettings(engine="ray", workers=3, address="http://head:8265", gpus_per_run=1)
    write_instance(work, settings)
    defs = build_definitions(str(work))
    tags = {j.name: json.loads(j.tags[RAY_TAG]) for j in defs.resolve_all_job_defs() if not j.name.startswith("__")}
    assert tags["coalitions"] == tags["valuation_base"] == {"num_cpus": 1, "num_gpus": 1}
    for job in ("shapley", "evaluation"):
        assert tags[job]["resources"] == {HEAD_RESOURCE: 0.001} and "num_gpus" not in tags[job]
        assert not any(v.startswith("ATTRIBUTION_PIPELINE_ROLE") for v in tags[job]["env_vars"])
    pools = {key.to_user_string(): node.pools for key, node in
             ((k, defs.resolve_asset_graph().get(k)) for k in defs.resolve_asset_graph().get_all_asset_keys())}
    assert {a for a, p in pools.items() if "gpu" in (p or ())} == {
        "full_model", "pruned_base_model", "coalition_checkpoint", "coalition_images", "coalition_utilities"}
    yaml = instance_yaml(work, settings)
    assert "ATTRIBUTION_PIPELINE_ROLE=worker" in yaml and "default_limit: 3" in yaml and "QueuedRunCoordinator" in yaml
    assert "num_gpus" not in yaml  # a tag of 0 cannot override an instance default: GPUs only by job tag
    # a local CPU engine gives the base run (alone in its step) every core and says so to its training loop
    write_instance(work, EngineSettings(engine="local", workers=2, address="http://127.0.0.1:8265"))
    local = {j.name: json.loads(j.tags[RAY_TAG]) for j in build_definitions(str(work)).resolve_all_job_defs()
             if not j.name.startswith("__")}
    assert local["coalitions"] == {"num_cpus": 1}
    assert local["valuation_base"]["num_cpus"] == 2
    assert {"ATTRIBUTION_PIPELINE_PROCESSES=2", "ATTRIBUTION_PIPELINE_ROLE=worker"} <= set(local["valuation_base"]["env_vars"])


def test_a_hand_written_storage_section_survives_a_change_of_engine(tmp_path):
    """docs/scaleout.md: Postgres storage is added by hand to dagster.yaml; ``run`` rewrites only the
    sections it manages (queue, pool, launcher, monitoring)."""
    import yaml

    from attribution_pipeline.workdir import EngineSettings, write_instance

    home = write_instance(tmp_path, EngineSettings(engine="ray", workers=2, address="http://head:8265"))
    storage = {"postgres": {"postgres_url": "postgresql://dagster@head/dagster"}}
    (home / "dagster.yaml").write_text((home / "dagster.yaml").read_text() + yaml.safe_dump({"storage": storage}))
    write_instance(tmp_path, EngineSettings())  # back to in-process: no launcher, no queue
    doc = yaml.safe_load((home / "dagster.yaml").read_text())
    assert doc["storage"] == storage and "run_launcher" not in doc and "run_coordinator" not in doc
    write_instance(tmp_path, EngineSettings(engine="ray", workers=4, address="http://head:8265"))
    doc = yaml.safe_load((home / "dagster.yaml").read_text())
    assert doc["storage"] == storage and doc["concurrency"]["pools"]["default_limit"] == 4
    assert doc["run_launcher"]["config"]["ray"]["address"] == "http://head:8265"
