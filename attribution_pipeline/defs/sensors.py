"""The contributors sensor: re-value when contributors arrive, change or leave.

Each tick (every ``revaluation.sensor_interval_s`` seconds):

1. looks at the contributors directory (``data/watch.py``): a folder unchanged for
   ``revaluation.settle_seconds`` is validated once; a bad one is logged and left out (never a
   partial contributor), and reconsidered when its folder changes;
2. unless a run of the round's jobs is in flight (launched by it, the UI or the CLI; a run unfinished
   after 6 h is presumed dead), requests the next step of the round
   (``stages.revaluation.next_step``), one of:
   - ``valuation_base`` with the validated snapshot as run config (contributors → instruments →
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
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.defs.partitions import coalition_partitions
from attribution_pipeline.defs.resources import PipelineResource
from attribution_pipeline.layout import signature

SENSOR_NAME = "contributors_sensor"
REQUEST_TAG = "attribution/request"  # what a run was launched for (the sensor's dedup key)
LAUNCHED_BY_TAG = "attribution/launched_by"


def _attempts(instance: dg.DagsterInstance, request: str) -> tuple[int, int]:
    """(runs launched for ``request``, of which not yet finished)."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={REQUEST_TAG: request}))
    return len(runs), sum(r.status in NOT_FINISHED_STATUSES for r in runs)


ROUND_JOBS = ("valuation_base", "coalitions", "shapley", "scheduled_revaluation")
# A run still unfinished this long after its creation is presumed dead (a killed `attribution-pipeline
# run` leaves its in-process runs STARTED for ever) and no longer holds the sensor back.
IN_FLIGHT_HORIZON_S = 6 * 3600


def _in_flight(instance: dg.DagsterInstance) -> list[str]:
    """Unfinished runs of the round's jobs (launched by the sensor, the UI or the CLI)."""
    since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=IN_FLIGHT_HORIZON_S)
    runs = []
    for job in ROUND_JOBS:
        runs += instance.get_runs(filters=dg.RunsFilter(job_name=job, statuses=NOT_FINISHED_STATUSES,
                                                        created_after=since))
    return [f"{r.job_name} {r.run_id[:8]}" for r in runs]


def _request(context, request: str, max_attempts: int, **kwargs) -> list[dg.RunRequest]:
    launched, running = _attempts(context.instance, request)
    if running:
        return []
    if launched >= max_attempts:
        context.log.error(f"{request}: launched {launched} time(s) without success; fix the failure shown in its "
                          "runs, then change the inputs or launch it from the UI")
        return []
    tags = {REQUEST_TAG: request, LAUNCHED_BY_TAG: SENSOR_NAME, **kwargs.pop("tags", {})}
    return [dg.RunRequest(run_key=f"{request}#{launched + 1}", tags=tags, **kwargs)]


def requests_for(context, cfg: PipelineConfig, pipeline: PipelineResource, accepted: dict[str, str],
                 rejected=()):
    """The run requests of the next step of the round; (requests, reason)."""
    from attribution_pipeline.runner import partition_runs
    from attribution_pipeline.stages.revaluation import next_step

    layout, store = pipeline.layout(), pipeline.store()
    step = next_step(cfg, layout, store, accepted, rejected)
    attempts = cfg.revaluation.max_attempts
    if step.kind == "base":
        request = "base-" + signature(accepted, cfg.revaluation.policy)
        return _request(context, request, attempts, job_name="valuation_base", run_config={
            "ops": {"contributors": {"config": {"snapshot": accepted}}}}), step.reason
    if step.kind == "coalitions":
        ordered = context.instance.get_dynamic_partitions(coalition_partitions.name)
        keys = [k for k in step.keys if k in set(ordered)]
        out = []
        for first, last, _ in partition_runs(keys, ordered, max(1, cfg.valuation.coalitions_per_run)):
            chunk = ordered[ordered.index(first): ordered.index(last) + 1]
            request = "coalitions-" + signature(chunk, accepted, cfg.revaluation.policy)
            out += _request(context, request, attempts, job_name="coalitions", tags={
                ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last})
        return out, step.reason
    if step.kind == "shapley":
        return _request(context, f"shapley-{step.round_id}", attempts, job_name="shapley"), step.reason
    return [], step.reason


def build_contributors_sensor(cfg: PipelineConfig, jobs: list) -> dg.SensorDefinition:
    status = dg.DefaultSensorStatus.RUNNING if cfg.revaluation.sensor else dg.DefaultSensorStatus.STOPPED

    @dg.sensor(name=SENSOR_NAME, jobs=jobs, minimum_interval_seconds=cfg.revaluation.sensor_interval_s,
               default_status=status,
               description="Registers contributors whose folders appear, change or disappear in the contributors "
                           "directory, then requests the base, the missing coalition partitions and the Shapley "
                           "table in turn (see attribution_pipeline/defs/sensors.py).")
    def contributors_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
        from attribution_pipeline.data.watch import watch_contributors

        live = pipeline.config()  # the work directory's configuration, read at every tick
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
        busy = _in_flight(context.instance)
        if busy:
            return dg.SensorResult(cursor=cursor, skip_reason=dg.SkipReason(f"waiting for {', '.join(busy)}"))
        from attribution_pipeline.data.contributors import contributor_id

        requests, reason = requests_for(context, live, pipeline, watch.accepted,
                                        [contributor_id(name) for name in watch.rejected])
        if not requests:
            return dg.SensorResult(cursor=cursor, skip_reason=dg.SkipReason(reason))
        context.log.info(f"{reason}: requesting {len(requests)} run(s)")
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return contributors_sensor
