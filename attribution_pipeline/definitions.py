"""The Dagster code location (``dagster dev -w workspace.yaml`` or ``dg dev``).

The work directory comes from ``ATTRIBUTION_PIPELINE_WORKDIR`` (default ``data/runs/default``).
"""

from attribution_pipeline.defs.build import build_definitions

defs = build_definitions()
