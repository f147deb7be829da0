"""The CLI's launcher: carry a valuation round through Dagster, in this process, on the work
directory's persistent instance (``<workdir>/dagster_home``, so ``dagster dev`` lists these runs).

It decides nothing: it asks the round's decision function (``stages.round.next_step``), runs the
requests ``defs/requests.py`` builds for that step (the same the contributors sensor launches), and
repeats until the round is up to date. Coalition partitions go in runs of several partitions each:
the torch import and model set-up are paid once per run, not per coalition. This is the one module
outside ``defs/`` that imports Dagster.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field

import dagster as dg
import polars as pl

from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.data.contributors import ContributorValidationError
from attribution_pipeline.data.reference import scan_reference
from attribution_pipeline.defs.build import build_definitions
from attribution_pipeline.defs.jobs import EVALUATION_JOB
from attribution_pipeline.defs.partitions import coalition_partitions
from attribution_pipeline.defs.requests import step_requests
from attribution_pipeline.inputs import MissingInputError, absolute_paths
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.report import print_table
from attribution_pipeline.stages import budget_problem, confirm_round, next_step, take_snapshot
from attribution_pipeline.storage.artifacts import clean_leftovers
from attribution_pipeline.engine import EngineError
from attribution_pipeline.progress import Progress
from attribution_pipeline.storage.index import ingest
from attribution_pipeline.storage.results import ResultStore
from attribution_pipeline.workdir import (EngineSettings, claim_round, default_engine, prepare_dagster_home,
                                          release_round, write_instance, write_pipeline_config)

MAX_STEPS = 12  # a round is base → coalitions → shapley; more means a step made no progress


@dataclass
class Work:
    """What this process computed for coalitions (cached steps are counted, not timed)."""

    coalitions: int = 0
    models: int = 0  # a coalition's models: one per seed of the method, plus its replicates
    trained: int = 0
    generated: int = 0
    seconds: dict = field(default_factory=lambda: {"finetune_s": 0.0, "generate_s": 0.0, "score_s": 0.0})

    def add(self, materializations) -> None:
        for materialization in materializations:
            m = {k: v.value for k, v in materialization.metadata.items()}
            name = materialization.asset_key.path[-1]
            self.coalitions += name == "coalition_utilities"
            self.trained += int(m.get("trained", 0)) if name == "coalition_checkpoint" else 0
            self.models += int(m.get("models", 1)) if name == "coalition_checkpoint" else 0
            self.generated += int(m.get("generated", 0)) if name == "coalition_images" else 0
            for k in self.seconds:
                self.seconds[k] += float(m.get(k, 0.0))

    def summary(self, wall: float, settings: EngineSettings | None = None) -> str:
        """``wall``: the coalition steps' wall time; with ``workers`` runs at once the overhead is
        the worker time not spent on coalition work, over that work."""
        work = sum(self.seconds.values())
        workers = settings.workers if settings is not None else 1
        overhead = f"{(wall * workers - work) / work * 100:.1f}%" if work > 0 else "n/a"
        return (f"coalitions: {self.coalitions} measured, {self.trained} model(s) trained "
                f"({self.seconds['finetune_s']:.1f}s), {self.generated} image set(s) generated "
                f"({self.seconds['generate_s']:.1f}s), scoring {self.seconds['score_s']:.1f}s; "
                f"{self.models - self.trained} read their model from cache; wall {wall:.1f}s on {workers} "
                f"worker(s), orchestration overhead {overhead} of this run's work")


class InProcess:
    """Runs Dagster jobs in this process on the work directory's instance, one after another
    (``--engine in-process``: debugging and the test suite)."""

    def __init__(self, workdir, verbose: bool):
        # entered for the launcher's lifetime: Dagster then reads definitions state through this live
        # instance, not through whatever instance an earlier caller in this process left current
        self._stack = contextlib.ExitStack()
        self.instance = self._stack.enter_context(dg.DagsterInstance.from_config(str(prepare_dagster_home(workdir))))
        self.defs = build_definitions(str(workdir))
        self.log_cfg = {"loggers": {"console": {"config": {"log_level": "INFO" if verbose else "WARNING"}}}}
        logging.getLogger("dagster").setLevel(logging.WARNING)

    def execute(self, job_name: str, run_config: dict | None = None, tags: dict | None = None, **kwargs):
        job = self.defs.resolve_job_def(job_name)
        result = job.execute_in_process(instance=self.instance, raise_on_error=False, tags=tags,
                                        run_config={**(run_config or {}), **self.log_cfg}, **kwargs)
        if not result.success:
            for event in result.all_events:
                if event.is_step_failure:
                    print(f"error in {event.step_key}: {event.step_failure_data.error.message.strip()}",
                          file=sys.stderr)
            print(f"error: Dagster run {result.run_id} ({job_name}) failed; see `attribution-pipeline ui`",
                  file=sys.stderr)
        return result

    def run_step(self, step, requests, progress: "Progress", work: Work) -> bool:
        for i, request in enumerate(requests, 1):
            if len(requests) > 1:
                keys = request.partition_key_range
                progress.say(f"  run {i}/{len(requests)}: " + (f"{keys.start} .. {keys.end}" if keys else request.job_name))
            result = self.execute(request.job_name, request.run_config, dict(request.tags))
            work.add([e.materialization for e in result.get_asset_materialization_events()])
            progress.poll()
            if not result.success:
                return False
        return True

    def partitions(self) -> list[str]:
        return self.instance.get_dynamic_partitions(coalition_partitions.name)

    def close(self) -> None:
        self._stack.close()


def _prepare(cfg: PipelineConfig, lenient: bool, out):
    """Validate before anything is written: every configured local file, the data, the budget."""
    snapshot = take_snapshot(cfg, lenient=lenient)
    if cfg.reference.dir:  # a bad reference is refused before any work, with every problem named
        scan_reference(cfg.reference.dir, cfg.model.sample_size, cfg.model.channels)
    for name, problems in snapshot.rejected.items():
        print(f"warning: contributor folder {name!r} left out of this round: " + "; ".join(problems), file=out)
    problem = budget_problem(cfg.valuation.budget, len(snapshot.accepted))
    if problem:
        raise ValueError(problem)
    return snapshot


def open_launcher(workdir, settings: EngineSettings, verbose: bool):
    """The launcher of ``settings.engine``: in this process, or submitting to Ray through the queue."""
    if settings.engine == "in-process":
        write_instance(workdir, settings)  # Dagster's defaults: `dagster dev` then runs in its own processes
        return InProcess(workdir, verbose)
    from attribution_pipeline.defs.submit import Submitter

    return Submitter(workdir, settings, verbose)


def run_valuation(cfg: PipelineConfig, quiet: bool = False, out=sys.stdout, lenient: bool = False,
                  engine: EngineSettings | None = None, verbose: bool = False) -> int:
    """Value the contributors of ``cfg``; print the table; return a process exit code.

    lenient: value the folders that validate and leave out the others, with their reasons; by
    default any bad folder stops the run before anything is written.
    engine: where the runs execute (``workdir.EngineSettings``; default: ``default_engine()``).
    """
    progress = Progress(RunLayout.at(cfg.workdir), quiet, out)
    t_start = time.perf_counter()
    try:
        snapshot = _prepare(cfg, lenient, out)
    except (MissingInputError, ContributorValidationError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = absolute_paths(cfg)  # the configuration Dagster reads must not depend on its working directory
    layout = RunLayout.at(cfg.workdir)
    for path in clean_leftovers(layout.workdir) if layout.workdir.is_dir() else []:
        progress.say(f"removed {path.relative_to(layout.workdir)}: left by an interrupted write whose process is gone")
    write_pipeline_config(cfg)
    settings = engine or default_engine()
    try:
        launcher = open_launcher(layout.workdir, settings, verbose)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        claim_round(layout.workdir)  # the contributors sensor and the schedule stand aside meanwhile
        _introduce(cfg, layout, snapshot, settings, progress)
        return _round(cfg, layout, snapshot, launcher, progress, t_start, out)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        progress.end()
        launcher.close()
        release_round(layout.workdir)


def _introduce(cfg, layout, snapshot, settings: EngineSettings, progress: Progress) -> None:
    say = progress.say
    say(f"valuing {len(snapshot.accepted)} contributors from {cfg.contributors_path} (method {cfg.valuation.method})")
    say(f"work directory {layout.workdir} (Dagster home {layout.dagster_home})")
    where = {"in-process": "in this process, one run after another",
             "local": f"a local Ray, {settings.workers} worker(s) of one torch thread",
             "ray": f"the Ray cluster at {settings.address}"}[settings.engine]
    say(f"engine {settings.engine}: {where}" + ("" if settings.engine == "in-process" else
                                                 f"; Dagster's logs in {layout.workdir / 'logs'}"))
    say(f"instruments: trusted reference {cfg.reference.dir}" if cfg.reference.dir else
        "instruments: no trusted reference (--reference DIR): a fallback from the contributors' own images, which "
        "moves with the players and sees only crude junk; recorded in valuation_rounds.instrument")


def _round(cfg, layout, snapshot, launcher, progress: Progress, t_start: float, out) -> int:
    """Ask the decision function, run its requests, repeat until the round is up to date; a step
    whose runs failed is asked again once (its coalitions that lack a utility, nothing else)."""
    store, work = ResultStore(layout.database), Work()
    t_coalitions, previous, failures = 0.0, None, 0
    for _ in range(MAX_STEPS):
        ingest(layout.workdir, store)  # the records workers wrote: DuckDB's one writer is this process
        step = next_step(cfg, layout, store, snapshot.accepted)
        if step.kind in ("idle", "wait") or (step.kind, step.keys) == previous:
            break  # a step that succeeded and is asked for again made no progress
        previous = (step.kind, step.keys)
        requests = step_requests(step, cfg, str(layout.workdir), snapshot.accepted, launcher.partitions())
        progress.say(f"[{step.kind}] {step.reason}" + (f": {len(requests)} run(s)" if len(requests) > 1 else ""))
        progress.begin(step.kind, step.keys, len(requests))
        t0 = time.perf_counter()
        ok = launcher.run_step(step, requests, progress, work)
        progress.end()
        t_coalitions += time.perf_counter() - t0 if step.kind == "coalitions" else 0.0
        failures += not ok
        if not ok and (isinstance(launcher, InProcess) or failures > 1):
            return 1
        previous = previous if ok else None  # a failed step is asked again once, even with the same coalitions
    if step.kind != "idle":
        print(f"error: the round did not complete: {step.kind}: {step.reason}", file=sys.stderr)
        return 2 if step.kind == "wait" else 1
    if work.coalitions:
        progress.say(work.summary(t_coalitions, getattr(launcher, "settings", None)))
    confirm_round(store, step.round_id)  # the table below is this round, even if computed before
    progress.say(f"done in {time.perf_counter() - t_start:.1f}s: {step.reason}")
    return print_table(str(layout.workdir), out=out)


def run_evaluation(cfg: PipelineConfig, assets: tuple[str, ...] = ("baseline_attributions", "lds_results",
                                                                   "counterfactual_results"),
                   quiet: bool = False, out=sys.stdout) -> int:
    """Materialize the evaluation assets of a valued work directory and print their tables."""
    layout = RunLayout.at(cfg.workdir)
    if not layout.database.is_file():
        print(f"error: {layout.database} does not exist; run `attribution-pipeline run --workdir {layout.workdir}` "
              "first", file=sys.stderr)
        return 2
    write_pipeline_config(cfg)
    t0 = time.perf_counter()
    launcher = InProcess(layout.workdir, verbose=False)
    try:
        result = launcher.execute(EVALUATION_JOB, asset_selection=[dg.AssetKey(a) for a in assets])
    finally:
        launcher.close()
    if not result.success:
        return 1
    _print_evaluation(ResultStore(layout.database), assets, out)
    if not quiet:
        print(f"evaluation done in {time.perf_counter() - t0:.1f}s", file=out)
    return 0


def run_report(cfg: PipelineConfig, with_baselines: bool = True, out=sys.stdout) -> int:
    """Materialize ``baseline_attributions`` (unless ``with_baselines`` is False) and ``attribution_report``
    of a valued work directory; print where the page is and how to open it."""
    from attribution_pipeline.stages.report import PAGE, report_dir

    assets = ("baseline_attributions", "attribution_report") if with_baselines else ("attribution_report",)
    code = run_evaluation(cfg, assets, quiet=True, out=out)
    if code == 0:
        page = report_dir(RunLayout.at(cfg.workdir)) / PAGE
        print(f"report: {page}\nopen it with: python -m webbrowser file://{page}", file=out)
    return code


def _print_evaluation(store: ResultStore, assets: tuple[str, ...], out) -> None:
    with pl.Config(tbl_rows=100, tbl_cols=20, fmt_str_lengths=40, tbl_width_chars=250):
        if "baseline_attributions" in assets:
            print(store.query(
                "SELECT method, family, property, string_agg(contributor, ', ' ORDER BY rank) "
                "FILTER (WHERE rank <= 3) AS top_3, round(any_value(cost_s), 1) AS seconds FROM attributions "
                "WHERE computed_at = (SELECT max(computed_at) FROM attributions) GROUP BY ALL "
                "ORDER BY property, family, method"), file=out)
            print("baseline attributions: higher = more credit; seconds include shared caches (gradients) in full.",
                  file=out)
        if "lds_results" in assets:
            print(store.query(
                "SELECT alpha, property, method, estimator, is_default, round(lds, 1) AS lds, round(lds_lo, 1) AS lo, "
                "round(lds_hi, 1) AS hi, round(random_lo, 1) AS random_lo, round(random_hi, 1) AS random_hi, "
                "round(ceiling, 1) AS oracle_ceiling, round(diff, 1) AS diff_vs_default, round(diff_lo, 1) AS diff_lo, "
                "round(diff_hi, 1) AS diff_hi, n_test, n_seeds FROM lds_results "
                "WHERE computed_at = (SELECT max(computed_at) FROM lds_results) ORDER BY alpha, property, method, estimator"),
                file=out)
            print("LDS intervals: bootstrap over the test coalitions and retrain seeds (95%); random_lo..random_hi: "
                  "what random attributions reach on the same test set; oracle_ceiling: what the expected utility "
                  "itself scores; diff: paired difference to the valuation's default estimate.", file=out)
            print("Fidelity of the cheap utilities to retraining on the same test coalitions, within size "
                  "(Spearman; pooled: weighted mean over sizes with a 95% bootstrap interval):", file=out)
            print(store.query(
                "SELECT method, property, CASE WHEN size = 0 THEN 'pooled' ELSE size::VARCHAR END AS size, n, "
                "round(spearman, 3) AS spearman_within_size, round(lo, 3) AS lo, round(hi, 3) AS hi "
                "FROM utility_fidelity WHERE computed_at = (SELECT max(computed_at) FROM utility_fidelity) "
                "ORDER BY method, property, size"), file=out)
        if "counterfactual_results" in assets:
            print(store.query(
                "SELECT property, scenario, fraction, ranking, round(avg(relative_change) * 100, 2) AS change_pct, "
                "round(min(coalesce(rc_lo, relative_change)) * 100, 2) AS low_pct, "
                "round(max(coalesce(rc_hi, relative_change)) * 100, 2) AS high_pct, count(*) AS repeats, "
                "any_value(kept) AS kept, any_value(n_seeds) AS seeds FROM counterfactual_results "
                "WHERE computed_at = (SELECT max(computed_at) FROM counterfactual_results) "
                "GROUP BY ALL ORDER BY property, fraction, scenario, ranking"), file=out)
            print("counterfactual low..high: the seeds' 95% t interval (over the random draws too for remove_random).",
                  file=out)
