"""One function builds the Definitions, for ``dagster dev`` and for the CLI alike."""


import dagster as dg

from attribution_pipeline.defs import (checks, coalition_assets, evaluation_assets, model_assets, schedules, sensors,
                                       valuation_assets)
from attribution_pipeline.defs.resources import PipelineResource
from attribution_pipeline.workdir import default_workdir, read_pipeline_config

ALL_ASSETS = [
    model_assets.contributors,
    model_assets.property_reference,
    model_assets.full_model,
    model_assets.pruned_base_model,
    coalition_assets.coalition_plan,
    coalition_assets.coalition_outcomes,
    coalition_assets.empty_coalition_utilities,
    coalition_assets.full_model_utilities,
    valuation_assets.shapley_values,
    evaluation_assets.lds_results,
    evaluation_assets.counterfactual_results,
]

# Everything but the coalition partitions: what must exist before coalitions can be evaluated.
base_job = dg.define_asset_job(
    "valuation_base",
    selection=dg.AssetSelection.assets(
        "contributors", "property_reference", "full_model", "pruned_base_model", "coalition_plan",
        "empty_coalition_utilities", "full_model_utilities",
    ),
    description="Validate contributors, train, prune and fine-tune the base, plan the coalitions.",
)
coalitions_job = dg.define_asset_job(
    "coalitions",
    selection=dg.AssetSelection.assets("coalition_checkpoint", "coalition_images", "coalition_utilities"),
    description="Fine-tune, generate and score coalition partitions.",
)
shapley_job = dg.define_asset_job(
    "shapley", selection=dg.AssetSelection.assets("shapley_values"), description="Fit the Shapley table."
)

evaluation_job = dg.define_asset_job(
    "evaluation", selection=dg.AssetSelection.assets("lds_results", "counterfactual_results"),
    description="LDS and counterfactual evaluation of the latest Shapley values against retraining.",
)


def build_definitions(workdir: str | None = None) -> dg.Definitions:
    workdir = workdir or default_workdir()
    cfg = read_pipeline_config(workdir)  # the sensor's default status and the schedule's cron
    return dg.Definitions(
        assets=ALL_ASSETS,
        asset_checks=checks.ALL_CHECKS,
        jobs=[base_job, coalitions_job, shapley_job, evaluation_job, schedules.scheduled_revaluation],
        sensors=[sensors.build_contributors_sensor(cfg, [base_job, coalitions_job, shapley_job])],
        schedules=schedules.build_schedules(cfg),
        resources={"pipeline": PipelineResource(workdir=workdir)},
    )
