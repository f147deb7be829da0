"""The stages of a sparsified-fine-tuning valuation, as plain functions (no Dagster import).

Each stage reads its inputs from the run layout, writes its artifact atomically with a manifest,
and skips its work when the artifact already carries the inputs signature it would produce.
"""

from attribution_pipeline.stages.base import (
    StageResult,
    build_property_reference,
    contributor_ids,
    load_images,
    prepare_contributors,
    prune_base_model,
    read_contributors,
    train_full_model,
    utilities_version,
)
from attribution_pipeline.stages.coalitions import (
    CoalitionOutcome,
    Plan,
    coalitions_by_key,
    evaluate_coalition,
    evaluate_coalition_all_seeds,
    evaluate_empty_coalition,
    evaluate_full_model,
    plan_coalitions,
    read_plan,
    utility_spec,
)
from attribution_pipeline.stages.shapley import MissingUtilitiesError, ShapleyOutcome, compute_shapley

__all__ = [
    "StageResult", "build_property_reference", "contributor_ids", "load_images", "prepare_contributors",
    "prune_base_model", "read_contributors", "train_full_model", "utilities_version", "CoalitionOutcome", "Plan",
    "coalitions_by_key", "evaluate_coalition", "evaluate_coalition_all_seeds", "utility_spec", "evaluate_empty_coalition", "evaluate_full_model",
    "plan_coalitions", "read_plan", "MissingUtilitiesError", "ShapleyOutcome", "compute_shapley",
]
