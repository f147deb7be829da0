"""Evaluation assets: how well the Shapley values predict retraining (LDS) and what removing the
top contributors does (counterfactual). Both retrain models from scratch: minutes each on a CPU,
so they are not part of the default valuation; materialize them from the UI or with
``attribution-pipeline evaluate``."""


import dagster as dg

from attribution_pipeline.defs.jobs import EVALUATION_GROUP as GROUP
from attribution_pipeline.defs.resources import PipelineResource
from attribution_pipeline.defs.coalition_assets import full_model_utilities
from attribution_pipeline.defs.model_assets import pruned_base_model
from attribution_pipeline.defs.valuation_assets import shapley_values
from attribution_pipeline.stages import evaluation
from attribution_pipeline.stages.baselines import compute_baselines, family_of


def _f(x, fmt: str = "{:.1f}") -> str:
    return "–" if x is None else fmt.format(x)


@dg.asset(group_name=GROUP, deps=[full_model_utilities, pruned_base_model], code_version="1", kinds={"duckdb"})
def baseline_attributions(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """Cheaper attributions to compare the Shapley values with (the paper's Table 1 baselines):
    data-size share, leave-one-out by sFT (and by retraining when ``baselines.methods`` names
    ``loo_retrain``), pixel and instrument-feature similarity of θ*'s generated images to each
    contributor's (mean, and max: each generated image's closest), the instrument's confidence on and
    the property of the contributor's own images, and the gradient family (gradient similarity, TRAK,
    relative and renormalised IF, D-TRAK, Journey-TRAK) from one cache of projected per-example
    gradients at θ*. Rows of ``attributions`` (method, family, property, contributor, value, rank,
    cost_s, provenance)."""
    out = compute_baselines(pipeline.config(), pipeline.layout(), pipeline.store(), context.log.info)
    for m, why in out.skipped.items():
        context.log.warning(f"{m} skipped: {why}")
    ids = list(dict.fromkeys(r["contributor"] for r in out.rows))
    props = list(dict.fromkeys(r["property"] for r in out.rows))
    lines = ["| method | family | seconds | " + " | ".join(f"{p}: top 3" for p in props) + " |",
             "|---|---|---|" + "---|" * len(props)]
    for m, by_prop in out.values.items():
        tops = []
        for p in props:
            order = sorted(range(len(ids)), key=lambda k: -by_prop[p][k])[:3]
            tops.append(", ".join(ids[k] for k in order))
        lines.append(f"| {m} | {family_of(m)} | {out.costs.get(m, 0.0):.1f} | " + " | ".join(tops) + " |")
    return dg.MaterializeResult(metadata={
        "methods": len(out.values), "basis": out.basis, "skipped": "; ".join(f"{k}: {v}" for k, v in out.skipped.items())
        or "none", "cost_s": dg.MetadataValue.json({k: round(v, 2) for k, v in out.costs.items()}),
        "table": dg.MetadataValue.md("\n".join(lines))})


@dg.asset(group_name=GROUP, deps=[shapley_values, baseline_attributions], code_version="3", kinds={"duckdb"})
def lds_results(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """LDS (Spearman × 100 between Σ_{i∈S} φ_i and the retrained utility of held-out coalitions S
    keeping a fraction α of contributors, mean over retrain seeds) of the latest round of each
    utility method, every estimator, at each α of ``lds.alphas``. Beside each: the bootstrap
    interval (test coalitions and seeds), the range random attributions reach on the same test set,
    the oracle ceiling and the paired difference to the default estimate. Rows of ``lds_results``;
    the within-size Spearman of the cheap utilities (sFT, FT) against retraining on the same test
    coalitions goes to ``utility_fidelity``."""
    out = evaluation.evaluate_lds(pipeline.config(), pipeline.layout(), pipeline.store(), context.log.info)
    for w in out.warnings:
        context.log.warning(w)
    lines = ["| α | method | estimator | property | LDS | 95% interval | random 95% range | oracle ceiling "
             "| test–retest | paired difference to the default |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(out.rows, key=lambda r: (r["alpha"], r["property"], r["method"], r["estimator"])):
        inside = " (inside the random range)" if r["inside_random"] else ""
        diff = (f"{r['diff']:+.1f} [{r['diff_lo']:+.1f}, {r['diff_hi']:+.1f}]" if r["diff"] is not None else "–")
        lines.append(f"| {r['alpha']:g} | {r['method']} | {r['estimator']}{' (default)' if r['is_default'] else ''} "
                     f"| {r['property']} | {_f(r['lds'])}{inside} | {_f(r['lds_lo'])}–{_f(r['lds_hi'])} "
                     f"| {_f(r['random_lo'])} to {_f(r['random_hi'])} | {_f(r['ceiling'])} | {_f(r['test_retest'])} | {diff} |")
    first = out.rows[0] if out.rows else {}
    if first:
        lines += ["", f"Interval covers: {first['interval_covers']}. Retrain seeds {first['retrain_seeds']}."]
    if out.fidelity:
        lines += ["", "Fidelity of the cheap utilities to retraining on the same test coalitions, within size "
                  "(size 0: pooled, with its 95% bootstrap interval):", "",
                  "| method | property | size | coalitions | Spearman | 95% interval |", "|---|---|---|---|---|---|"]
        for r in out.fidelity:
            interval = "–" if r["lo"] is None else f"{r['lo']:.2f}–{r['hi']:.2f}"
            lines.append(f"| {r['method']} | {r['property']} | {r['size'] or 'pooled'} | {r['n']} | {_f(r['spearman'], '{:.2f}')} "
                         f"| {interval} |")
    default = {f"lds_{r['method']}_{r['property']}_a{r['alpha']:g}": float(r["lds"]) for r in out.rows
               if r["is_default"] and r["lds"] is not None}
    return dg.MaterializeResult(metadata={
        **default, "n_test": first.get("n_test", 0), "n_seeds": first.get("n_seeds", 0),
        "retrained_now": out.n_retrains, "table": dg.MetadataValue.md("\n".join(lines)),
        "warnings": "; ".join(out.warnings) or "none"})


@dg.asset(group_name=GROUP, deps=[shapley_values, baseline_attributions], code_version="3", kinds={"duckdb"})
def counterfactual_results(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """Relative change of each property after retraining without the top ``counterfactual.remove_fractions``
    of contributors by each method's Shapley values (and by LOO, and at random), or with only the top
    ``keep_fractions``; each with an interval over the retrain seeds. Rows of ``counterfactual_results``."""
    out = evaluation.evaluate_counterfactual(pipeline.config(), pipeline.layout(), pipeline.store(), context.log.info)
    lines = ["| property | scenario | fraction | ranking | repeat | kept | relative change | 95% interval (seeds) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in out.rows:
        interval = "–" if r["rc_lo"] is None else f"{100 * r['rc_lo']:+.1f}% to {100 * r['rc_hi']:+.1f}%"
        lines.append(f"| {r['property']} | {r['scenario']} | {r['fraction']:g} | {r['ranking']} | {r['repeat']} "
                     f"| {r['kept']} | {100 * r['relative_change']:+.1f}% | {interval} |")
    return dg.MaterializeResult(metadata={"retrained_now": out.n_retrains, "rows": len(out.rows),
                                          "table": dg.MetadataValue.md("\n".join(lines))})


@dg.asset(group_name=GROUP, deps=[shapley_values, baseline_attributions, lds_results, counterfactual_results],
          code_version="1", kinds={"html"})
def attribution_report(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """One HTML page with PNG figures under ``<workdir>/report/``: the Shapley table per property with
    intervals and rank intervals, a Table-1-style LDS table of every attribution (Shapley variants and
    baselines) with the random range and the ceiling, LDS against cost, the counterfactual figure,
    image grids (θ*'s samples, the top and bottom contributors' images, the model without the top 40%)
    and the rank agreement across methods. Reads whatever the upstream assets have stored; a section
    whose inputs are missing says which command computes them."""
    from attribution_pipeline.stages.report import build_report

    out = build_report(pipeline.config(), pipeline.layout(), pipeline.store(), context.log.info)
    return dg.MaterializeResult(metadata={
        "page": dg.MetadataValue.path(str(out.page)), "figures": len(out.figures),
        "missing": "; ".join(out.missing) or "none", "summary": dg.MetadataValue.md(out.markdown)})
