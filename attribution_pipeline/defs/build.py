"""One function builds the Definitions, for ``dagster dev`` and for the CLI alike.

The work directory's configuration is read once here for what Dagster needs at load time: the
sensor's default status and interval, the schedule's cron, the coalitions per backfill run, and
the engine its runs go to (``<dagster_home>/engine.json``, which tags the jobs for Ray).
"""

import dagster as dg

from attribution_pipeline.defs import checks, coalition_assets, evaluation_assets, model_assets, valuation_assets
from attribution_pipeline.defs.jobs import ROUND_JOBS, build_jobs
from attribution_pipeline.defs.resources import pipeline_resource
from attribution_pipeline.defs.schedules import build_revaluation_schedule, build_round_continuation
from attribution_pipeline.defs.sensors import build_contributors_sensor
from attribution_pipeline.config import PipelineConfig, load_preset
from attribution_pipeline.workdir import default_workdir, read_engine, read_pipeline_config


def build_definitions(workdir: str | None = None) -> dg.Definitions:
    workdir = workdir or default_workdir()
    try:
        cfg = read_pipeline_config(workdir)
    except ValueError:  # an invalid config file: the UI still loads; every run and tick names the problem
        cfg = PipelineConfig().override(load_preset("digits"))
    assets = [
        model_assets.contributors, model_assets.property_reference, model_assets.full_model,
        model_assets.pruned_base_model, coalition_assets.coalition_plan,
        coalition_assets.build_coalition_outcomes(cfg.valuation.coalitions_per_run),
        coalition_assets.empty_coalition_utilities, coalition_assets.full_model_utilities,
        valuation_assets.shapley_values, evaluation_assets.baseline_attributions, evaluation_assets.lds_results, evaluation_assets.counterfactual_results,
        evaluation_assets.attribution_report,
    ]
    jobs = build_jobs(read_engine(workdir))  # tagged for the engine `run` last configured
    round_jobs = [j for j in jobs if j.name in ROUND_JOBS]
    return dg.Definitions(
        assets=assets,
        asset_checks=checks.ALL_CHECKS,
        jobs=jobs,
        sensors=[build_contributors_sensor(cfg, round_jobs), build_round_continuation(round_jobs)],
        schedules=[build_revaluation_schedule(cfg, round_jobs[0])],
        resources={"pipeline": pipeline_resource(workdir)},
    )
