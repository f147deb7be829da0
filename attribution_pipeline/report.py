"""Print the latest valuation round as a table (the CLI's closing output)."""

from __future__ import annotations

import sys

from attribution_pipeline.layout import RunLayout


def print_table(workdir: str, all_estimators: bool = False, out=sys.stdout) -> int:
    from attribution_pipeline.storage.results import ResultStore

    db = RunLayout.at(workdir).database
    if not db.is_file():
        print(f"error: {db} does not exist; run `attribution-pipeline run --workdir {workdir}` first", file=sys.stderr)
        return 2
    store = ResultStore(db)
    where = "" if all_estimators else "WHERE is_default"
    df = store.query(f"SELECT * FROM latest_shapley_values {where} ORDER BY property, estimator, rank")
    if not len(df):
        print("no valuation round yet", file=out)
        return 1
    for (prop, est), g in df.group_by(["property", "estimator"], maintain_order=True):
        r0 = g.row(0, named=True)
        total = float(g["value"].sum())
        print(f"\n{prop} — {est} ({r0['value_kind']}), {r0['n_coalitions']} coalitions, "
              f"v(N) = {r0['v_full']:.6g}, v(∅) = {r0['v_empty']:.6g}, round {r0['round_id']}", file=out)
        print(f"{'rank':>4}  {'contributor':<20} {'value':>12} {'std err':>10}   95% interval", file=out)
        for r in g.iter_rows(named=True):
            se = f"{r['std_error']:.4g}" if r["std_error"] is not None else "-"
            ci = (f"[{r['ci_low']:.4g}, {r['ci_high']:.4g}]" if r["ci_low"] is not None else "-")
            print(f"{r['rank']:>4}  {r['contributor']:<20} {r['value']:>12.5g} {se:>10}   {ci}", file=out)
        print(f"      sum of values {total:.6g}; v(N) - v(∅) = {r0['v_full'] - r0['v_empty']:.6g}", file=out)
        _print_scope(r0, out)
    return 0


def _print_scope(row: dict, out) -> None:
    """What the table's intervals cover and leave out, the estimator's known bias and its warnings."""
    if row.get("uncertainty") is None:  # a round stored before these columns existed
        return
    print(f"      interval: {row['uncertainty']}", file=out)
    print(f"      not in the interval: {row['interval_excludes']}", file=out)
    if "noise_std" in row:
        if row["noise_std"] is None:
            print("      utility noise: unknown (no replicates; set valuation.replicates >= 2)", file=out)
        else:
            print(f"      utility noise: σ = {row['noise_std']:.4g} per measurement ({row['noise_dof']} dof, from "
                  "the replicates of ∅, N and the first planned coalitions), in the interval", file=out)
    if row.get("singleton_share") is not None:
        print(f"      from no data to one contributor's: {100 * row['singleton_share']:.0f}% of v(N) - v(∅) "
              "(mean over the singletons)", file=out)
    if row.get("known_bias"):
        print(f"      known bias: {row['known_bias']}", file=out)
    for w in row.get("warnings") or []:
        print(f"      warning: {w}", file=out)
