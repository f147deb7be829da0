"""Asset checks: the invariants a valuation must satisfy, visible in the UI beside each asset."""

import math

import dagster as dg

from attribution_pipeline import stages
from attribution_pipeline.defs.resources import PipelineResource

# Estimators whose values need not sum to v(N) − v(∅): Banzhaf and leave-one-out are other values.
NOT_EFFICIENT = ("banzhaf-msr", "loo")


@dg.asset_check(asset="shapley_values", description="Per property and Shapley estimator, Σ values = v(N) − v(∅).")
def shapley_efficiency(pipeline: PipelineResource) -> dg.AssetCheckResult:
    df = pipeline.store().query(
        "SELECT property, estimator, sum(value) AS total, any_value(v_full - v_empty) AS gap "
        "FROM latest_shapley_values WHERE value_kind = 'shapley' AND estimator NOT IN (?, ?) GROUP BY ALL",
        list(NOT_EFFICIENT))
    bad = [f"{r['property']}/{r['estimator']}: Σ = {r['total']:.6g}, v(N) − v(∅) = {r['gap']:.6g}"
           for r in df.iter_rows(named=True) if abs(r["total"] - r["gap"]) > 1e-6 * max(1.0, abs(r["gap"]))]
    return dg.AssetCheckResult(passed=not bad and len(df) > 0, metadata={"checked": len(df), "violations": "; ".join(bad) or "none"})


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
    df = pipeline.store().query("SELECT coalition_key, property, value FROM utilities")
    bad = [f"{r['coalition_key']}/{r['property']}" for r in df.iter_rows(named=True) if not math.isfinite(r["value"])]
    return dg.AssetCheckResult(passed=not bad, metadata={"rows": len(df), "non_finite": ", ".join(bad[:20]) or "none"})


ALL_CHECKS = [shapley_efficiency, plan_covers_contributors, utilities_are_finite]
