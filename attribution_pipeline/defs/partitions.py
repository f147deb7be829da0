"""Coalition partitions: one dynamic partition per evaluated coalition, keyed by its short hash.

Keys are added by the ``coalition_plan`` asset (and by re-valuation), never removed by it, so the
cache of computed coalitions survives budget and contributor changes.
"""

import dagster as dg

COALITION_PARTITIONS_NAME = "coalitions"
coalition_partitions = dg.DynamicPartitionsDefinition(name=COALITION_PARTITIONS_NAME)
