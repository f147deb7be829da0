"""Evaluation assets: how well the Shapley values predict retraining (LDS) and what removing the
top contributors does (counterfactual). Both retrain models from scratch: minutes each on a CPU,
so they are not part of the default valuation; materialize them from the UI or with
``attribution-pipeline evaluate``."""


import dagster as dg

from attribution_pipeline.defs.jobs import EVALUATION_GROUP as GROUP
from attribution_pipeline.defs.resources import PipelineResource
from attribution_pipeline.defs.valuation_assets import shapley_values
from attribution_pipeline.stages import evaluation


@dg.asset(group_name=GROUP, deps=[shapley_values], code_version="1", kinds={"duckdb"})
def lds_results(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """LDS (Spearman × 100 between Σ_{i∈S} φ_i and the retrained utility of held-out coalitions S
    keeping a fraction α of contributors; mean ± 1.96·std/√seeds) of the latest round of each
    utility method, every estimator, beside the test–retest ceiling. Rows of ``lds_results``."""
    out = evaluation.evaluate_lds(pipeline.config(), pipeline.layout(), pipeline.store(), context.log.info)
    for w in out.warnings:
        context.log.warning(w)
    lines = ["| method | estimator | property | LDS | ± | ceiling |", "|---|---|---|---|---|---|"]
    for r in sorted(out.rows, key=lambda r: (r["property"], r["method"], r["estimator"])):
        lines.append(f"| {r['method']} | {r['estimator']}{' (default)' if r['is_default'] else ''} | {r['property']} "
                     f"| {r['lds']:.1f} | {r['lds_ci']:.1f} | {r['ceiling']:.1f} |")
    default = {f"lds_{r['method']}_{r['property']}": float(r["lds"]) for r in out.rows if r["is_default"]}
    first = out.rows[0] if out.rows else {}
    return dg.MaterializeResult(metadata={
        **default, "n_test": first.get("n_test", 0), "n_seeds": first.get("n_seeds", 0),
        "retrained_now": out.n_retrains, "table": dg.MetadataValue.md("\n".join(lines)),
        "warnings": "; ".join(out.warnings) or "none"})


@dg.asset(group_name=GROUP, deps=[shapley_values], code_version="1", kinds={"duckdb"})
def counterfactual_results(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """Relative change of each property after retraining without the top 40% of contributors by
    Shapley value (and by LOO, and at random), or with only the top 60%. Rows of
    ``counterfactual_results``."""
    out = evaluation.evaluate_counterfactual(pipeline.config(), pipeline.layout(), pipeline.store(), context.log.info)
    lines = ["| property | scenario | ranking | repeat | kept | relative change |", "|---|---|---|---|---|---|"]
    for r in out.rows:
        lines.append(f"| {r['property']} | {r['scenario']} | {r['ranking']} | {r['repeat']} | {r['kept']} "
                     f"| {100 * r['relative_change']:+.1f}% |")
    return dg.MaterializeResult(metadata={"retrained_now": out.n_retrains, "rows": len(out.rows),
                                          "table": dg.MetadataValue.md("\n".join(lines))})
