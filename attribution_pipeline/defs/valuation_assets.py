"""The Shapley table: one valuation round over every evaluated coalition of the plan."""


from typing import Optional

import dagster as dg

from attribution_pipeline import stages
from attribution_pipeline.defs.coalition_assets import coalition_plan, empty_coalition_utilities
from attribution_pipeline.defs.resources import PipelineResource

GROUP = "valuation"


class ShapleyConfig(dg.Config):
    method: Optional[str] = None  # utility method to fit on: "sft", "ft" or "retrain"; None = the workdir's


@dg.asset(
    group_name=GROUP,
    deps=[coalition_plan, empty_coalition_utilities, dg.AssetKey("coalition_utilities")],
    code_version="1",
    kinds={"duckdb"},
)
def shapley_values(context: dg.AssetExecutionContext, config: ShapleyConfig,
                   pipeline: PipelineResource) -> dg.MaterializeResult:
    """Shapley (and Banzhaf) values of every contributor for every property, with 95% intervals.

    Per property and Shapley estimator the values sum to v(N) − v(∅). Writes one valuation round
    to ``shapley_values`` / ``valuation_rounds``; an unchanged pool of utilities adds no round.
    """
    out = stages.compute_shapley(pipeline.config(), pipeline.layout(), pipeline.store(), context.log.info,
                                 method=config.method)
    default = [r for r in out.rows if r["is_default"]]
    lines = ["| property | contributor | value | 95% CI | rank |", "|---|---|---|---|---|"]
    for r in sorted(default, key=lambda r: (r["property"], r["rank"])):
        lines.append(f"| {r['property']} | {r['contributor']} | {r['value']:.4g} | "
                     f"[{r['ci_low']:.4g}, {r['ci_high']:.4g}] | {r['rank']} |")
    return dg.MaterializeResult(
        metadata={
            "round_id": out.round_id,
            "method": out.rows[0]["method"] if out.rows else (config.method or "sft"),
            "new_round": not out.skipped,
            "n_coalitions": out.n_coalitions,
            "estimators": ", ".join(sorted({r["estimator"] for r in out.rows})),
            "table": dg.MetadataValue.md("\n".join(lines)),
            "warnings": "; ".join(out.warnings) or "none",
        },
        data_version=dg.DataVersion(out.round_id),
    )
