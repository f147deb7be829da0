"""The periodic re-valuation: ``revaluation_schedule`` and the runs that carry its round through.

``revaluation.cron`` (e.g. ``--set revaluation.cron="0 3 * * 1"``) turns the schedule on; without
it the schedule is listed, STOPPED, on Mondays 03:00. Each tick validates the contributors
leniently (bad folders are left out of the round, with their reasons in the tick's log), asks the
round's decision function (``stages.round.next_step``) and requests the base run when the round
needs one. ``round_continuation`` then asks the same function after each successful run the
schedule's round launched, and requests the next step (the missing coalition partitions, then the
Shapley table), so a scheduled round completes with the contributors sensor off.
"""

import dagster as dg

from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.data.contributors import ContributorValidationError
from attribution_pipeline.defs.jobs import BASE_JOB, ROUND_JOBS
from attribution_pipeline.defs.requests import LAUNCHED_BY_TAG
from attribution_pipeline.defs.resources import PipelineResource
from attribution_pipeline.defs.sensors import in_flight, round_requests
from attribution_pipeline.inputs import MissingInputError
from attribution_pipeline.stages import data_versions, read_contributors, take_snapshot
from attribution_pipeline.workdir import round_driver

SCHEDULE_NAME = "revaluation_schedule"
DEFAULT_CRON = "0 3 * * 1"


def build_revaluation_schedule(cfg: PipelineConfig, base_job) -> dg.ScheduleDefinition:
    cron = cfg.revaluation.cron or DEFAULT_CRON
    status = dg.DefaultScheduleStatus.RUNNING if cfg.revaluation.cron else dg.DefaultScheduleStatus.STOPPED

    @dg.schedule(name=SCHEDULE_NAME, cron_schedule=cron, job=base_job, default_status=status,
                 description=f"Re-value on {cron!r}: validate the contributors, then request the round's next step "
                             "(policy from the work directory's revaluation.policy).")
    def revaluation_schedule(context: dg.ScheduleEvaluationContext, pipeline: PipelineResource):
        busy = in_flight(context.instance)
        if busy:
            return dg.SkipReason(f"a round is in flight: {', '.join(busy)}")
        driver = round_driver(pipeline.directory())
        if driver:
            return dg.SkipReason(f"`attribution-pipeline run` ({driver}) drives a round")
        live = pipeline.config()
        try:
            snapshot = take_snapshot(live, lenient=True)
        except (ContributorValidationError, MissingInputError) as exc:
            return dg.SkipReason(f"no round: {exc}")
        for name, problems in snapshot.rejected.items():
            context.log.warning(f"contributor folder {name!r} left out of this round: {'; '.join(problems)}")
        requests, reason = round_requests(context, live, pipeline, snapshot.accepted, launched_by=SCHEDULE_NAME)
        requests = [r for r in requests if r.job_name == BASE_JOB]
        return requests or dg.SkipReason(f"{reason} (the schedule starts rounds with the base run; the contributors "
                                         "sensor or round_continuation carries a started round)")

    return revaluation_schedule


def _continue_round(context: dg.RunStatusSensorContext, pipeline: PipelineResource):
    if context.dagster_run.tags.get(LAUNCHED_BY_TAG) != SCHEDULE_NAME or context.dagster_run.job_name not in ROUND_JOBS:
        return dg.SkipReason("not a run of a scheduled round")
    live = pipeline.config()
    accepted = data_versions(read_contributors(pipeline.layout()))  # the round values what it registered
    requests, reason = round_requests(context, live, pipeline, accepted, launched_by=SCHEDULE_NAME)
    return requests or dg.SkipReason(reason)


def build_round_continuation(round_jobs: list) -> dg.SensorDefinition:
    """``round_continuation`` watching and requesting ``round_jobs`` (base, coalitions, Shapley)."""

    @dg.run_status_sensor(name="round_continuation", run_status=dg.DagsterRunStatus.SUCCESS,
                          monitored_jobs=round_jobs, request_jobs=round_jobs,
                          default_status=dg.DefaultSensorStatus.RUNNING,
                          description="After each successful run of a round the schedule started, requests the "
                                      "round's next step (the same decision as the contributors sensor).")
    def round_continuation(context: dg.RunStatusSensorContext, pipeline: PipelineResource):
        return _continue_round(context, pipeline)

    return round_continuation
