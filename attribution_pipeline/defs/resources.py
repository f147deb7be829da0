"""The one resource every asset uses: where the valuation lives and how it is configured.

The configuration is read from ``<workdir>/pipeline_config.json`` (written by the CLI), so
``attribution-pipeline run`` and ``dagster dev`` on the same work directory value the same game.
Without that file the preset's defaults apply.
"""


import dagster as dg

from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.storage.results import ResultStore
from attribution_pipeline.workdir import read_pipeline_config


class PipelineResource(dg.ConfigurableResource):
    """Work directory of one valuation (checkpoints, images, DuckDB, Dagster home)."""

    workdir: str

    def config(self) -> PipelineConfig:
        return read_pipeline_config(self.workdir)

    def layout(self) -> RunLayout:
        return RunLayout.at(self.workdir)

    def store(self) -> ResultStore:
        return ResultStore(self.layout().database)
