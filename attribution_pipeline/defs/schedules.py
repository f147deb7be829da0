"""An optional periodic re-valuation: ``revaluation.cron`` in the work directory's configuration.

Off by default (``cron = None``: no schedule is defined). When set (``--set revaluation.cron="0 3 * *
1"``), the ``revaluation_schedule`` launches ``scheduled_revaluation`` on that cron: one run that
drives a whole round through the same asset jobs as ``attribution-pipeline run`` (each a Dagster
run in this instance), registering the folders that validate and leaving out, with their reasons,
those that do not. The policy is the configuration's ``revaluation.policy``.
"""

import io

import dagster as dg

from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.defs.resources import PipelineResource


@dg.op(description="One whole valuation round (contributors → base → coalitions → Shapley table).")
def revalue(context: dg.OpExecutionContext, pipeline: PipelineResource) -> None:
    from attribution_pipeline.runner import run_valuation

    out = io.StringIO()
    code = run_valuation(pipeline.config(), out=out, lenient=True)
    context.log.info(out.getvalue()[-20_000:])
    if code != 0:
        raise dg.Failure(f"the scheduled re-valuation failed (exit code {code}); see the log above")


@dg.job(name="scheduled_revaluation", description="A whole re-valuation round in one run (the schedule's target).")
def scheduled_revaluation():
    revalue()


def build_schedules(cfg: PipelineConfig) -> list[dg.ScheduleDefinition]:
    """The re-valuation schedule when ``revaluation.cron`` is set; none otherwise."""
    if not cfg.revaluation.cron:
        return []
    return [dg.ScheduleDefinition(name="revaluation_schedule", cron_schedule=cfg.revaluation.cron,
                                  job=scheduled_revaluation, default_status=dg.DefaultScheduleStatus.RUNNING,
                                  description=f"Re-value on {cfg.revaluation.cron!r} (policy {cfg.revaluation.policy}).")]
