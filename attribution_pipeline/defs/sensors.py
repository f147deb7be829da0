"""The contributors sensor: re-value when contributors arrive, change or leave.

Each tick (every ``revaluation.sensor_interval_s`` seconds):

1. looks at the contributors directory (``data/watch.py``): a folder unchanged for
   ``revaluation.settle_seconds`` is validated once; a bad one is logged and left out (never a
   partial contributor), and reconsidered when its folder changes;
2. unless a run of the round's jobs is in flight (launched by it, the UI or the CLI; a run unfinished
   after 6 h is presumed dead), asks the round's one decision function (``stages.round.next_step``)
   and requests exactly its runs (``defs/requests.py``), one of:
   - ``valuation_base`` with the validated snapshot in the ``pipeline`` resource's run config (contributors → instruments →
     full model → pruned base → plan: retrained or kept by ``revaluation.policy``);
   - ``coalitions`` for exactly the planned coalitions that lack a current utility, in partition
     ranges of ``valuation.coalitions_per_run`` (queued runs: several run in parallel);
   - ``shapley`` once every planned coalition has its utility (a new valuation round).

Why a sensor and not ``AutomationCondition.on_missing()`` / ``eager()``: after a rebase or a changed
contributor the planned coalitions are stale, not missing, and ``eager()`` would re-run every
partition ever planned (old plans included); the plan and the utilities' signatures in DuckDB know
exactly which coalitions to compute.

A request is launched at most ``revaluation.max_attempts`` times for the same inputs (run keys
``<request>#<attempt>``); then the sensor logs an error and waits for the inputs to change.

On by default (``DefaultSensorStatus.RUNNING``) when the project is served with ``dagster dev``;
turn it off with the toggle in the UI (Automation → contributors_sensor) or, for a work directory,
with ``revaluation.sensor = false`` in its configuration (``--set revaluation.sensor=false``).
"""

import datetime
import json
import time

import dagster as dg

from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.data.contributors import contributor_id
from attribution_pipeline.data.watch import watch_contributors
from attribution_pipeline.defs.jobs import ROUND_JOBS
from attribution_pipeline.defs.partitions import UNFINISHED_STATUSES, coalition_partitions
from attribution_pipeline.defs.requests import deduplicated, step_requests
from attribution_pipeline.defs.resources import PipelineResource
from attribution_pipeline.stages import next_step
from attribution_pipeline.workdir import round_driver

SENSOR_NAME = "contributors_sensor"
# A run still unfinished this long after its creation is presumed dead (a killed `attribution-pipeline
# run` leaves its in-process runs STARTED for ever) and no longer holds the sensor back.
IN_FLIGHT_HORIZON_S = 6 * 3600


def in_flight(instance: dg.DagsterInstance) -> list[str]:
    """Unfinished runs of the round's jobs (launched by the sensor, the schedule, the UI or the CLI)."""
    since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=IN_FLIGHT_HORIZON_S)
    runs = []
    for job in ROUND_JOBS:
        runs += instance.get_runs(filters=dg.RunsFilter(job_name=job, statuses=UNFINISHED_STATUSES,
                                                        created_after=since))
    return [f"{r.job_name} {r.run_id[:8]}" for r in runs]


def round_requests(context, cfg: PipelineConfig, pipeline: PipelineResource, accepted: dict[str, str],
                   rejected=(), launched_by: str = SENSOR_NAME) -> tuple[list[dg.RunRequest], str]:
    """Ask the decision function, then request its runs (deduplicated); (requests, reason)."""
    step = next_step(cfg, pipeline.layout(), pipeline.store(), accepted, rejected)
    ordered = context.instance.get_dynamic_partitions(coalition_partitions.name)
    requests = step_requests(step, cfg, str(pipeline.layout().workdir), accepted, ordered)
    return deduplicated(context, requests, cfg.revaluation.max_attempts, launched_by), step.reason


def _evaluate(context: dg.SensorEvaluationContext, pipeline: PipelineResource) -> dg.SensorResult | dg.SkipReason:
    try:
        live = pipeline.config()  # the work directory's configuration, read and validated at every tick
    except ValueError as exc:
        context.log.error(f"the work directory's configuration is invalid; no round is requested: {exc}")
        return dg.SkipReason(f"invalid configuration: {exc}")
    if live.data.source != "folders":
        return dg.SkipReason(f"data.source is {live.data.source!r}: the sensor watches folder-per-contributor "
                             "directories only; re-value with `attribution-pipeline run`")
    previous = json.loads(context.cursor) if context.cursor else {}
    watch = watch_contributors(live.contributors_path, previous.get("folders", {}), time.time(),
                               live.revaluation.settle_seconds)
    for event in watch.events:
        (context.log.warning if event.startswith("rejected") else context.log.info)(event)
    cursor = json.dumps({"folders": watch.state}, sort_keys=True)
    if not (pipeline.layout().data_dir / "manifest.json").is_file():
        return dg.SensorResult(cursor=cursor, skip_reason=dg.SkipReason(
            f"no valuation in {pipeline.layout().workdir} yet: run `attribution-pipeline run` (or materialize "
            "the assets) once; the sensor then re-values when contributors change"))
    if watch.settling:
        return dg.SensorResult(cursor=cursor, skip_reason=dg.SkipReason(
            f"waiting for {watch.settling} to stay unchanged for {live.revaluation.settle_seconds:g}s"))
    busy = in_flight(context.instance)
    if busy:
        return dg.SensorResult(cursor=cursor, skip_reason=dg.SkipReason(f"waiting for {', '.join(busy)}"))
    driver = round_driver(pipeline.directory())
    if driver:  # between two steps of a CLI round nothing is in flight, but the CLI requests the next one
        return dg.SensorResult(cursor=cursor, skip_reason=dg.SkipReason(
            f"`attribution-pipeline run` ({driver}) drives this round"))
    requests, reason = round_requests(context, live, pipeline, watch.accepted,
                                      [contributor_id(name) for name in watch.rejected])
    if not requests:
        return dg.SensorResult(cursor=cursor, skip_reason=dg.SkipReason(reason))
    context.log.info(f"{reason}: requesting {len(requests)} run(s)")
    return dg.SensorResult(run_requests=requests, cursor=cursor)


def build_contributors_sensor(cfg: PipelineConfig, round_jobs: list) -> dg.SensorDefinition:
    """The sensor of ``cfg``'s work directory; ``round_jobs``: the base, coalitions and Shapley jobs
    (tagged for the work directory's engine, ``jobs.build_jobs``)."""
    status = dg.DefaultSensorStatus.RUNNING if cfg.revaluation.sensor else dg.DefaultSensorStatus.STOPPED

    @dg.sensor(name=SENSOR_NAME, jobs=round_jobs,
               minimum_interval_seconds=cfg.revaluation.sensor_interval_s, default_status=status,
               description="Registers contributors whose folders appear, change or disappear in the contributors "
                           "directory, then requests the base, the missing coalition partitions and the Shapley "
                           "table in turn (see attribution_pipeline/defs/sensors.py).")
    def contributors_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
        return _evaluate(context, pipeline)

    return contributors_sensor
