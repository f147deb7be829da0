"""The jobs of a valuation round, selected by asset group. Their names are constants that the
CLI launcher, the sensor and the schedule import.

Each job runs its steps in one process: Dagster's default multiprocess executor starts a process per
step, and each pays the torch import and model set-up again (a base run launched from the UI took
175 s that way against 17 s in one process, on the tiny configuration).
"""

import json

import dagster as dg

from attribution_pipeline.models.shards import PROCESSES_ENV
from attribution_pipeline.workdir import HEAD_RESOURCE, ROLE_ENV, THREADS_ENV, WORKDIR_ENV, EngineSettings

BASE_GROUP, COALITIONS_GROUP, VALUATION_GROUP, EVALUATION_GROUP = "base", "coalitions", "valuation", "evaluation"
BASE_JOB, COALITIONS_JOB, SHAPLEY_JOB, EVALUATION_JOB = "valuation_base", "coalitions", "shapley", "evaluation"
ROUND_JOBS = (BASE_JOB, COALITIONS_JOB, SHAPLEY_JOB)

RAY_TAG = "dagster-ray/config"  # dagster-ray's per-run settings; ignored by the in-process launcher
GPU_POOL = "gpu"  # the concurrency pool of the training runs: at most `workers` (GPUs) in flight


def base_processes(settings: EngineSettings) -> int:
    """The CPU processes the base run may train with: every worker of a ``local`` engine (the base run
    has the machine to itself: nothing else of a round runs before θ̃* exists), one elsewhere (a
    cluster's nodes need not have that many cores, and a GPU run gains nothing from CPU processes)."""
    return max(1, int(settings.workers)) if settings.engine == "local" and not settings.gpus_per_run else 1


def ray_tags(settings: EngineSettings, kind: str) -> dict[str, str]:
    """The Ray request of a job's runs, by ``kind``: "training" (coalitions) one CPU and
    ``gpus_per_run`` GPUs; "base" the same, or on a local engine every core, with
    ``$ATTRIBUTION_PIPELINE_PROCESSES`` telling the training loop how many processes it may use for
    its batch slices (``models/shards.py``: the numbers do not depend on it); "head" (Shapley,
    evaluation: they write DuckDB) the head node (the custom resource only it declares) with the
    head's environment, not the workers'. Environment entries without a value are read from the
    daemon's environment when the run is launched (dagster-ray's ``env_vars``)."""
    if settings.engine == "in-process":
        return {}
    common = [WORKDIR_ENV, "DAGSTER_HOME", f"{THREADS_ENV}=1", "PATH", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
              "RAY_USAGE_STATS_ENABLED=0"]
    if kind == "head":
        request = {"num_cpus": 1, "resources": {HEAD_RESOURCE: 0.001}, "env_vars": common}
    else:
        request = {"num_cpus": 1, **({"num_gpus": settings.gpus_per_run} if settings.gpus_per_run else {})}
        processes = base_processes(settings)
        if kind == "base" and processes > 1:
            request = {"num_cpus": processes,
                       "env_vars": [*common, f"{ROLE_ENV}=worker", f"{PROCESSES_ENV}={processes}"]}
    return {RAY_TAG: json.dumps(request, sort_keys=True)}


def build_jobs(settings: EngineSettings) -> list:
    """The four jobs, tagged for the work directory's engine (``workdir.EngineSettings``)."""
    return [
        dg.define_asset_job(
            BASE_JOB, selection=dg.AssetSelection.groups(BASE_GROUP), executor_def=dg.in_process_executor,
            tags=ray_tags(settings, "base"),
            description="Validate contributors, build the instruments, train, prune and fine-tune the base, plan "
                        "the coalitions, measure v(∅) and the full model's own properties."),
        dg.define_asset_job(
            COALITIONS_JOB, selection=dg.AssetSelection.groups(COALITIONS_GROUP), executor_def=dg.in_process_executor,
            tags=ray_tags(settings, "training"), description="Fine-tune, generate and score coalition partitions."),
        dg.define_asset_job(
            SHAPLEY_JOB, selection=dg.AssetSelection.groups(VALUATION_GROUP), executor_def=dg.in_process_executor,
            tags=ray_tags(settings, "head"), description="Fit the Shapley table."),
        dg.define_asset_job(
            EVALUATION_JOB, selection=dg.AssetSelection.groups(EVALUATION_GROUP), executor_def=dg.in_process_executor,
            tags=ray_tags(settings, "head"),
            description="LDS and counterfactual evaluation of the latest Shapley values against retraining."),
    ]
