"""The Shapley table: one valuation round over every measured coalition of the plan."""

import dagster as dg

from attribution_pipeline import stages
from attribution_pipeline.defs.coalition_assets import coalition_plan, empty_coalition_utilities
from attribution_pipeline.defs.jobs import VALUATION_GROUP
from attribution_pipeline.defs.resources import PipelineResource


def _table(rows: list[dict]) -> str:
    lines = ["| property | contributor | value | 95% CI | rank |", "|---|---|---|---|---|"]
    default = sorted((r for r in rows if r["is_default"]), key=lambda r: (r["property"], r["rank"]))
    for r in default:
        lines.append(f"| {r['property']} | {r['contributor']} | {r['value']:.4g} | "
                     f"[{r['ci_low']:.4g}, {r['ci_high']:.4g}] | {r['rank']} |")
    scopes = {r["property"]: r for r in default if r.get("uncertainty")}
    for prop, r in scopes.items():  # what the intervals cover, under the table (valuation/scope.py)
        lines += ["", f"**{prop}** ({r['estimator']}): interval by {r['uncertainty']}; not in it: "
                  f"{r['interval_excludes']}." + (f" Known bias: {r['known_bias']}." if r.get("known_bias") else "")]
    return "\n".join(lines)


@dg.asset(group_name=VALUATION_GROUP, deps=[coalition_plan, empty_coalition_utilities,
                                             dg.AssetKey("coalition_utilities")], code_version="1", kinds={"duckdb"})
def shapley_values(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """Shapley (and Banzhaf) values of every contributor for every property, with 95% intervals,
    fitted on the utilities of the run's utility method.

    Per property and Shapley estimator the values sum to v(N) − v(∅). Writes one valuation round
    to ``shapley_values`` / ``valuation_rounds``; an unchanged pool of utilities adds no round.
    """
    cfg = pipeline.config()
    out = stages.compute_shapley(cfg, pipeline.layout(), pipeline.store(), context.log.info)
    return dg.MaterializeResult(
        metadata={"round_id": out.round_id, "method": cfg.valuation.method, "new_round": not out.skipped,
                  "n_coalitions": out.n_coalitions, "estimators": ", ".join(sorted({r["estimator"] for r in out.rows})),
                  "table": dg.MetadataValue.md(_table(out.rows)), "warnings": "; ".join(out.warnings) or "none"},
        data_version=dg.DataVersion(out.round_id),
    )
