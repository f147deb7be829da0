"""Drive a whole valuation through Dagster, in this process, on a persistent instance.

The CLI and the tests call ``run_valuation``. It materializes the same assets the UI shows, in
the instance under ``<workdir>/dagster_home``, so ``dagster dev`` on that home lists these runs.
Coalition partitions go in runs of several partitions each, all in this one process: the torch
import and model set-up are paid once, not per coalition.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.data.contributors import ContributorValidationError
from attribution_pipeline.data.sources import discover_source
from attribution_pipeline.inputs import MissingInputError, absolute_paths, check_local_inputs
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.storage.artifacts import atomic_write_bytes
from attribution_pipeline.workdir import prepare_dagster_home

def missing_coalitions(cfg: PipelineConfig, layout: RunLayout, method: str | None = None) -> list[str]:
    """Planned coalition keys that lack a current utility by ``method`` (every seed, every property)."""
    from attribution_pipeline.stages import read_plan
    from attribution_pipeline.stages.shapley import method_utilities
    from attribution_pipeline.storage.results import ResultStore

    method = method or cfg.valuation.method
    plan = read_plan(layout)
    keys = list(dict.fromkeys(c.key for c in plan.coalitions))
    properties = list(cfg.valuation.properties)
    have = method_utilities(cfg, layout, ResultStore(layout.database), keys, properties, method)
    return [k for k in keys if not all((k, p) in have for p in properties)]


def partition_runs(missing: list[str], ordered_keys: list[str], per_run: int) -> list[tuple[str, str, int]]:
    """Group missing keys into (first, last, count) ranges contiguous in the partition order,
    each of at most ``per_run`` keys."""
    position = {k: i for i, k in enumerate(ordered_keys)}
    idx = sorted(position[k] for k in missing)
    runs, start, prev, count = [], None, -1, 0
    for i in idx:
        if start is None:
            start, count = i, 1
        elif i == prev + 1 and count < per_run:
            count += 1
        else:
            runs.append((ordered_keys[start], ordered_keys[prev], count))
            start, count = i, 1
        prev = i
    if start is not None:
        runs.append((ordered_keys[start], ordered_keys[prev], count))
    return runs


def _lenient_scan(cfg: PipelineConfig, out) -> list:
    from attribution_pipeline.data.contributors import MIN_CONTRIBUTORS, scan_contributors

    scan = scan_contributors(cfg.contributors_path)
    for name, problems in scan.rejected.items():
        print(f"warning: contributor folder {name!r} left out of this round: " + "; ".join(problems), file=out)
    if len(scan.accepted) < MIN_CONTRIBUTORS:
        raise ContributorValidationError(scan.root, [f"{scan.root}: {len(scan.accepted)} valid contributor(s); "
                                                     f"a valuation needs at least {MIN_CONTRIBUTORS}"])
    return scan.accepted


def run_valuation(cfg: PipelineConfig, quiet: bool = False, out=sys.stdout, lenient: bool = False) -> int:
    """Value the contributors of ``cfg``; print the table; return a process exit code.

    lenient: value the folders that validate and leave out the others, with their reasons (the
    scheduled re-valuation); by default any bad folder stops the run before anything is written.
    """
    import dagster as dg
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from attribution_pipeline.defs.build import build_definitions
    from attribution_pipeline.defs.partitions import coalition_partitions
    from attribution_pipeline.report import print_table

    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=out, flush=True)

    t_start = time.perf_counter()
    try:  # validate before anything is written: every configured local file, then the data
        check_local_inputs(cfg)
        found = _lenient_scan(cfg, out) if (lenient and cfg.data.source == "folders") else discover_source(cfg)
    except (MissingInputError, ContributorValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = len(found)
    if cfg.valuation.budget < n and cfg.valuation.budget < 2**n - 2:
        print(f"error: a budget of {cfg.valuation.budget} coalitions cannot value {n} contributors: "
              f"Shapley regression needs at least n = {n} (use --budget {max(5 * n, n)} or more)", file=sys.stderr)
        return 2
    cfg = absolute_paths(cfg)  # the configuration Dagster reads must not depend on its working directory
    layout = RunLayout.at(cfg.workdir)
    layout.workdir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(layout.config_file, cfg.to_json().encode())
    home = prepare_dagster_home(layout.workdir)
    say(f"valuing {len(found)} contributors from {cfg.contributors_path}")
    say(f"work directory {layout.workdir} (Dagster home {home})")

    instance = dg.DagsterInstance.from_config(str(home))
    defs = build_definitions(str(layout.workdir))
    log_cfg = {"loggers": {"console": {"config": {"log_level": "WARNING" if quiet else "INFO"}}}}
    logging.getLogger("dagster").setLevel(logging.WARNING)

    def execute(job_name: str, **kwargs) -> bool:
        job = defs.resolve_job_def(job_name)
        result = job.execute_in_process(instance=instance, raise_on_error=False, **kwargs)
        if not result.success:
            for event in result.all_events:
                if event.is_step_failure:
                    print(f"error in {event.step_key}: {event.step_failure_data.error.message.strip()}",
                          file=sys.stderr)
            print(f"error: Dagster run {result.run_id} ({job_name}) failed; see `attribution-pipeline ui`",
                  file=sys.stderr)
        return result.success

    say("[1/3] contributors, property reference, full model, pruned base, coalition plan")
    t0 = time.perf_counter()
    # the snapshot validated above is what this round values: a folder that appears meanwhile waits
    snapshot = {c.contributor: c.data_hash for c in found}
    if not execute("valuation_base", run_config={**log_cfg, "ops": {
            "contributors": {"config": {"snapshot": snapshot}},
            "coalition_plan": {"config": {"budget": cfg.valuation.budget, "seed": cfg.valuation.seed}}}}):
        return 1
    t_base = time.perf_counter() - t0

    missing = missing_coalitions(cfg, layout)
    ordered = instance.get_dynamic_partitions(coalition_partitions.name)
    runs = partition_runs(missing, ordered, max(1, cfg.valuation.coalitions_per_run))
    say(f"[2/3] coalitions ({cfg.valuation.method}): {len(missing)} to evaluate in {len(runs)} run(s), "
        f"{len(set(ordered)) - len(missing)} already known")
    if missing:
        from attribution_pipeline.stages import coalitions_by_key
        from attribution_pipeline.stages.revaluation import split_work
        from attribution_pipeline.storage.results import ResultStore

        work = split_work(cfg, layout, list(coalitions_by_key(ResultStore(layout.database), missing).values()))
        say(f"  {len(work.train)} to train, {len(work.rescore)} only to re-score (policy {cfg.revaluation.policy})")
    t0 = time.perf_counter()
    for i, (first, last, count) in enumerate(runs, 1):
        say(f"  run {i}/{len(runs)}: {count} coalition(s) {first} .. {last}")
        tags = {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}
        if not execute("coalitions", tags=tags, run_config={**log_cfg, "ops": {"coalition_outcomes": {
                "config": {"method": cfg.valuation.method}}}}):
            return 1
    t_coalitions = time.perf_counter() - t0

    say("[3/3] Shapley values")
    if not execute("shapley", run_config={**log_cfg, "ops": {"shapley_values": {"config": {
            "method": cfg.valuation.method}}}}):
        return 1
    total = time.perf_counter() - t_start
    if missing:
        from attribution_pipeline.storage.results import ResultStore

        df = ResultStore(layout.database).utilities_for(missing, method=cfg.valuation.method)
        import polars as pl

        # one elapsed_s per coalition (every property row of a coalition carries the same time)
        compute = float(df.group_by("coalition_key", "seed").agg(pl.col("elapsed_s").first())["elapsed_s"].sum()) if len(df) else 0.0
        overhead = (t_coalitions - compute) / compute * 100 if compute > 0 else float("nan")
        say(f"coalition compute {compute:.1f}s, wall {t_coalitions:.1f}s: orchestration overhead {overhead:.1f}%")
    say(f"done in {total:.1f}s (base {t_base:.1f}s, coalitions {t_coalitions:.1f}s)")
    return print_table(str(layout.workdir), out=out)


def run_evaluation(cfg: PipelineConfig, assets: tuple[str, ...] = ("lds_results", "counterfactual_results"),
                   quiet: bool = False, out=sys.stdout) -> int:
    """Materialize the evaluation assets of a valued work directory and print their tables."""
    import dagster as dg

    from attribution_pipeline.defs.build import build_definitions
    from attribution_pipeline.storage.results import ResultStore

    layout = RunLayout.at(cfg.workdir)
    if not layout.database.is_file():
        print(f"error: {layout.database} does not exist; run `attribution-pipeline run --workdir {layout.workdir}` "
              "first", file=sys.stderr)
        return 2
    atomic_write_bytes(layout.config_file, cfg.to_json().encode())
    home = prepare_dagster_home(layout.workdir)
    instance = dg.DagsterInstance.from_config(str(home))
    defs = build_definitions(str(layout.workdir))
    logging.getLogger("dagster").setLevel(logging.WARNING)
    job = defs.resolve_job_def("evaluation")
    t0 = time.perf_counter()
    result = job.execute_in_process(
        instance=instance, raise_on_error=False, asset_selection=[dg.AssetKey(a) for a in assets],
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING" if quiet else "INFO"}}}})
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure:
                print(f"error in {event.step_key}: {event.step_failure_data.error.message.strip()}", file=sys.stderr)
        return 1
    import polars as pl

    store = ResultStore(layout.database)
    with pl.Config(tbl_rows=100, tbl_cols=12, fmt_str_lengths=40):
        if "lds_results" in assets:
            print(store.query(
                "SELECT property, method, estimator, is_default, round(lds, 1) AS lds, round(lds_ci, 1) AS ci, "
                "round(ceiling, 1) AS ceiling, n_test, n_seeds FROM lds_results "
                "WHERE computed_at = (SELECT max(computed_at) FROM lds_results) ORDER BY property, method, estimator"),
                file=out)
        if "counterfactual_results" in assets:
            print(store.query(
                "SELECT property, scenario, ranking, avg(relative_change) * 100 AS change_pct, count(*) AS repeats, "
                "any_value(kept) AS kept FROM counterfactual_results "
                "WHERE computed_at = (SELECT max(computed_at) FROM counterfactual_results) "
                "GROUP BY ALL ORDER BY property, scenario, ranking"), file=out)
    if not quiet:
        print(f"evaluation done in {time.perf_counter() - t0:.1f}s", file=out)
    return 0
