"""The jobs of a valuation round, selected by asset group. Their names are constants that the
CLI launcher, the sensor and the schedule import.

Each job runs its steps in one process: Dagster's default multiprocess executor starts a process per
step, and each pays the torch import and model set-up again (a base run launched from the UI took
175 s that way against 17 s in one process, on the tiny configuration).
"""

import dagster as dg

BASE_GROUP, COALITIONS_GROUP, VALUATION_GROUP, EVALUATION_GROUP = "base", "coalitions", "valuation", "evaluation"
BASE_JOB, COALITIONS_JOB, SHAPLEY_JOB, EVALUATION_JOB = "valuation_base", "coalitions", "shapley", "evaluation"
ROUND_JOBS = (BASE_JOB, COALITIONS_JOB, SHAPLEY_JOB)

base_job = dg.define_asset_job(
    BASE_JOB, selection=dg.AssetSelection.groups(BASE_GROUP), executor_def=dg.in_process_executor,
    description="Validate contributors, build the instruments, train, prune and fine-tune the base, plan the "
                "coalitions, measure v(∅) and the full model's own properties.")
coalitions_job = dg.define_asset_job(
    COALITIONS_JOB, selection=dg.AssetSelection.groups(COALITIONS_GROUP), executor_def=dg.in_process_executor,
    description="Fine-tune, generate and score coalition partitions.")
shapley_job = dg.define_asset_job(
    SHAPLEY_JOB, selection=dg.AssetSelection.groups(VALUATION_GROUP), executor_def=dg.in_process_executor,
    description="Fit the Shapley table.")
evaluation_job = dg.define_asset_job(
    EVALUATION_JOB, selection=dg.AssetSelection.groups(EVALUATION_GROUP), executor_def=dg.in_process_executor,
    description="LDS and counterfactual evaluation of the latest Shapley values against retraining.")

ALL_JOBS = [base_job, coalitions_job, shapley_job, evaluation_job]
