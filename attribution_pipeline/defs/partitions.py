"""Coalition partitions: one dynamic partition per evaluated coalition, keyed by its short hash.

Keys are added by the ``coalition_plan`` asset, never removed by it, so the cache of computed
coalitions survives budget and contributor changes. This is also the one module that names
Dagster internals (the partition-range tags of a run, the unfinished run statuses).
"""

import dagster as dg
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

COALITION_PARTITIONS_NAME = "coalitions"
coalition_partitions = dg.DynamicPartitionsDefinition(name=COALITION_PARTITIONS_NAME)

UNFINISHED_STATUSES = list(NOT_FINISHED_STATUSES)


def range_tags(first: str, last: str) -> dict[str, str]:
    """Tags that make a run materialize the partitions ``first`` .. ``last`` (in partition order)."""
    return {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}
