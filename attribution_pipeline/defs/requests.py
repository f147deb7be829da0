"""Run requests that carry out one step of a round (``stages.round.next_step``).

The contributors sensor, the round continuation after a scheduled tick, and the CLI (which runs the
same requests in process) all launch exactly these; none decides anything itself.
"""

import dagster as dg

from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.defs.jobs import BASE_JOB, COALITIONS_JOB, SHAPLEY_JOB
from attribution_pipeline.defs.partitions import UNFINISHED_STATUSES, range_tags
from attribution_pipeline.layout import signature
from attribution_pipeline.stages import Step, partition_runs
from attribution_pipeline.workdir import read_engine

REQUEST_TAG = "attribution/request"  # what a run was launched for (the dedup key of the launchers)
LAUNCHED_BY_TAG = "attribution/launched_by"


def engine_slots(workdir: str) -> int:
    """How many coalition runs the work directory's engine runs at once (1 in process)."""
    settings = read_engine(workdir)
    return 1 if settings.engine == "in-process" else max(1, settings.workers)


def step_requests(step: Step, cfg: PipelineConfig, workdir: str, accepted: dict[str, str],
                  ordered_partitions: list[str]) -> list[dg.RunRequest]:
    """The runs of ``step``: the base job with the validated snapshot, the missing coalition
    partitions in ranges of ``valuation.coalitions_per_run`` (as many as fill the engine's workers
    in whole waves), or the Shapley job."""
    if step.kind == "base":
        config = {"resources": {"pipeline": {"config": {"workdir": workdir, "snapshot": accepted}}}}
        request = "base-" + signature(accepted, cfg.revaluation.policy)
        return [dg.RunRequest(job_name=BASE_JOB, run_config=config, tags={REQUEST_TAG: request})]
    if step.kind == "coalitions":
        known = set(ordered_partitions)
        keys = [k for k in step.keys if k in known]
        out = []
        slots = engine_slots(workdir)
        for first, last, _ in partition_runs(keys, ordered_partitions, max(1, cfg.valuation.coalitions_per_run), slots):
            chunk = ordered_partitions[ordered_partitions.index(first): ordered_partitions.index(last) + 1]
            request = "coalitions-" + signature(chunk, accepted, cfg.revaluation.policy, cfg.valuation.method)
            out.append(dg.RunRequest(job_name=COALITIONS_JOB, tags={**range_tags(first, last), REQUEST_TAG: request}))
        return out
    if step.kind == "shapley":
        return [dg.RunRequest(job_name=SHAPLEY_JOB, tags={REQUEST_TAG: f"shapley-{step.round_id}"})]
    return []


def deduplicated(context, requests: list[dg.RunRequest], max_attempts: int, launched_by: str) -> list[dg.RunRequest]:
    """Requests whose runs are neither in flight nor failed ``max_attempts`` times for the same inputs;
    each gets the run key ``<request>#<attempt>``."""
    out = []
    for r in requests:
        request = r.tags[REQUEST_TAG]
        runs = context.instance.get_runs(filters=dg.RunsFilter(tags={REQUEST_TAG: request}))
        if any(run.status in UNFINISHED_STATUSES for run in runs):
            continue
        if len(runs) >= max_attempts:
            context.log.error(f"{request}: launched {len(runs)} time(s) without success; fix the failure shown in "
                              "its runs, then change the inputs or launch it from the UI")
            continue
        out.append(dg.RunRequest(run_key=f"{request}#{len(runs) + 1}", job_name=r.job_name, run_config=r.run_config,
                                 tags={**r.tags, LAUNCHED_BY_TAG: launched_by}))
    return out
