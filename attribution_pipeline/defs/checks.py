"""Asset checks: the invariants a valuation must satisfy, visible in the UI beside each asset.

They read the configuration through the same resource as the assets, so a run launched with a
method override (``resources: {pipeline: {config: {method: "ft"}}}``) is checked against that
method's image sets and utilities.
"""

import math

import dagster as dg

from attribution_pipeline import stages
from attribution_pipeline.coalitions import EMPTY_KEY
from attribution_pipeline.data.imagesets import image_set_problems
from attribution_pipeline.defs.resources import PipelineResource
from attribution_pipeline.properties.registry import get_property
from attribution_pipeline.stages.utility import EMPTY_METHOD
from attribution_pipeline.storage.artifacts import is_complete, read_manifest
from attribution_pipeline.storage.records import rows_in

# Estimators whose values need not sum to v(N) − v(∅): Banzhaf and leave-one-out are other values.
NOT_EFFICIENT = ("banzhaf-msr", "loo")


# blocking: the evaluation assets downstream must not score a table that breaks efficiency
@dg.asset_check(asset="shapley_values", blocking=True,
                description="Per property and Shapley estimator, Σ values = v(N) − v(∅).")
def shapley_efficiency(pipeline: PipelineResource) -> dg.AssetCheckResult:
    df = pipeline.store().query(
        "SELECT property, estimator, sum(value) AS total, any_value(v_full - v_empty) AS gap "
        "FROM latest_shapley_values WHERE value_kind = 'shapley' AND estimator NOT IN (?, ?) GROUP BY ALL",
        list(NOT_EFFICIENT))
    bad = [f"{r['property']}/{r['estimator']}: Σ = {r['total']:.6g}, v(N) − v(∅) = {r['gap']:.6g}"
           for r in df.iter_rows(named=True) if abs(r["total"] - r["gap"]) > 1e-6 * max(1.0, abs(r["gap"]))]
    return dg.AssetCheckResult(passed=not bad and len(df) > 0,
                               metadata={"checked": len(df), "violations": "; ".join(bad) or "none"})


@dg.asset_check(asset="coalition_plan", blocking=True,
                description="Every contributor is in at least one planned coalition and out of another.")
def plan_covers_contributors(pipeline: PipelineResource) -> dg.AssetCheckResult:
    plan = stages.read_plan(pipeline.layout())
    current = stages.contributor_ids(pipeline.layout())
    sampled = plan.coalitions[1:]
    never_in = [c for c in current if not any(c in s.members for s in sampled)]
    never_out = [c for c in current if all(c in s.members for s in sampled)]
    stale = sorted(set(current) ^ set(plan.contributors))
    return dg.AssetCheckResult(
        passed=not (never_in or never_out or stale),
        metadata={"never_in": ", ".join(never_in) or "none", "never_out": ", ".join(never_out) or "none",
                  "contributors_not_in_plan": ", ".join(stale) or "none"})


@dg.asset_check(asset="empty_coalition_utilities", blocking=True,
                description="Every stored utility is finite (no NaN or infinity).")
def utilities_are_finite(pipeline: PipelineResource) -> dg.AssetCheckResult:
    layout = pipeline.layout()  # the base run's records (a worker's check never opens DuckDB)
    rows = [*rows_in(layout.untrained_images_dir.parent), *rows_in(layout.workdir / "models" / "full_model")]
    bad = [f"{r['coalition_key']}/{r['property']}" for r in rows if not math.isfinite(r["value"])]
    return dg.AssetCheckResult(passed=not bad, metadata={"rows": len(rows), "non_finite": ", ".join(bad[:20]) or "none"})


def _coalitions_to_check(context: dg.AssetCheckExecutionContext, pipeline: PipelineResource):
    """The coalition partitions of this run; outside a partitioned run, every planned one."""
    if context.has_partition_key_range or context.has_partition_key:
        return list(stages.planned_coalitions(pipeline.layout(), list(context.partition_keys)).values())
    return list({c.key: c for c in stages.read_plan(pipeline.layout()).coalitions}.values())


@dg.asset_check(asset="coalition_images", blocking=True,
                description="Each coalition's image set (of the run's utility method) is complete, holds "
                            "sampling.n_images images of the model's shape, and no image is constant.")
def image_sets_are_valid(context: dg.AssetCheckExecutionContext, pipeline: PipelineResource) -> dg.AssetCheckResult:
    cfg, layout = pipeline.config(), pipeline.layout()
    # every image set must have the shape of v(∅)'s (model families decode to different resolutions)
    reference = layout.untrained_images_dir
    shape = tuple(read_manifest(reference)["shape"]) if is_complete(reference) else None
    problems, checked = [], 0
    for c in _coalitions_to_check(context, pipeline):
        for seed in cfg.utility_seeds():
            spec = stages.utility_spec(cfg, layout, c, cfg.valuation.method, seed)
            problems += image_set_problems(spec.images_dir, cfg.sampling.n_images, shape)
            checked += 1
    return dg.AssetCheckResult(passed=not problems, metadata={
        "image_sets": checked, "method": cfg.valuation.method, "problems": "; ".join(problems[:20]) or "none"})


@dg.asset_check(asset="coalition_utilities", blocking=True,
                description="Each stored utility (of the run's utility method) is finite and within its "
                            "property's valid range (quality = −FID ≤ 0, diversity in [0, log2 K] for K "
                            "contributors).")
def utilities_in_valid_range(context: dg.AssetCheckExecutionContext, pipeline: PipelineResource) -> dg.AssetCheckResult:
    cfg, layout = pipeline.config(), pipeline.layout()
    instruments = stages.property_context(cfg, layout)
    method = cfg.valuation.method
    rows = [r for r in rows_in(layout.untrained_images_dir.parent)
            if r["coalition_key"] == EMPTY_KEY and r["method"] == EMPTY_METHOD]
    for c in _coalitions_to_check(context, pipeline):  # the records of this run's coalitions, never DuckDB
        for seed in cfg.utility_seeds(method):
            run_dir = stages.utility_spec(cfg, layout, c, method, seed).images_dir.parent
            rows += [r for r in rows_in(run_dir) if r["method"] == method and r["seed"] == seed]
    # a run folder keeps the records of earlier inputs (other instruments): check the newest of each
    rows = list({(r["coalition_key"], r["property"], r["method"], r["seed"]): r for r in rows}.values())
    bad = []
    for r in rows:
        if r["property"] not in cfg.valuation.properties:
            continue
        lo, hi = get_property(r["property"]).range_for(instruments)
        if not (math.isfinite(r["value"]) and lo <= r["value"] <= hi):
            bad.append(f"{r['coalition_key']}/{r['property']} = {r['value']:.6g} outside [{lo:.4g}, {hi:.4g}]")
    return dg.AssetCheckResult(passed=not bad, metadata={"rows": len(rows), "method": cfg.valuation.method,
                                                         "out_of_range": "; ".join(bad[:20]) or "none"})


ALL_CHECKS = [shapley_efficiency, plan_covers_contributors, utilities_are_finite, image_sets_are_valid,
              utilities_in_valid_range]
