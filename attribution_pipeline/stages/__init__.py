"""The stages of a sparsified-fine-tuning valuation, as plain functions (no Dagster import).

Each stage reads its inputs from the run layout, writes its artifact atomically with a manifest,
and skips its work when the artifact already carries the inputs signature it would produce.
One concept per module, importing in one direction (each only from those above it):

    result → contributors → lineage → models, reference → plan, utility → measure → round
    → shapley → evaluation
"""

from attribution_pipeline.stages.contributors import (
    Snapshot, contributor_ids, data_versions, prepare_contributors, read_contributors, register_contributors,
    take_snapshot,
)
from attribution_pipeline.stages.lineage import base_decision, base_lineage
from attribution_pipeline.stages.measure import (
    UtilityOutcome, measure_empty_coalition, measure_full_model, measure_utility, measure_utility_all_seeds,
    utilities_version,
)
from attribution_pipeline.stages.models import prune_base_model, train_full_model
from attribution_pipeline.stages.plan import (
    Plan, budget_problem, coalitions_by_key, plan_coalitions, planned_coalitions, read_plan,
)
from attribution_pipeline.stages.reference import build_property_reference, property_context
from attribution_pipeline.stages.result import StageResult
from attribution_pipeline.stages.round import Step, gather_pool, next_step, partition_runs
from attribution_pipeline.stages.shapley import MissingUtilitiesError, ShapleyOutcome, compute_shapley, confirm_round
from attribution_pipeline.stages.utility import UTILITY_METHODS, utility_spec

__all__ = [
    "Snapshot", "contributor_ids", "data_versions", "prepare_contributors", "read_contributors",
    "register_contributors", "take_snapshot", "base_decision", "base_lineage", "UtilityOutcome",
    "measure_empty_coalition", "measure_full_model", "measure_utility", "measure_utility_all_seeds",
    "utilities_version", "prune_base_model", "train_full_model", "Plan", "budget_problem", "coalitions_by_key",
    "plan_coalitions", "planned_coalitions", "read_plan", "build_property_reference", "property_context", "StageResult", "Step",
    "gather_pool", "next_step", "partition_runs", "MissingUtilitiesError", "ShapleyOutcome", "compute_shapley",
    "confirm_round",
    "UTILITY_METHODS", "utility_spec",
]
