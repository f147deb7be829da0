"""The one resource every asset uses: where the valuation lives and how it is configured.

The configuration is read from ``<workdir>/pipeline_config.json`` (written by the CLI), so
``attribution-pipeline run`` and ``dagster dev`` on the same work directory value the same game.
Without that file the preset's defaults apply.
"""


import json
import os
from pathlib import Path

import dagster as dg

from attribution_pipeline.config import DEFAULT_DATA_DIR, PipelineConfig, load_preset
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.storage.results import ResultStore

WORKDIR_ENV = "ATTRIBUTION_PIPELINE_WORKDIR"


def default_workdir() -> str:
    return os.environ.get(WORKDIR_ENV, str(DEFAULT_DATA_DIR / "runs" / "default"))


def read_pipeline_config(workdir: str | Path) -> PipelineConfig:
    layout = RunLayout.at(workdir)
    if layout.config_file.is_file():
        cfg = PipelineConfig.from_dict(json.loads(layout.config_file.read_text()))
    else:
        cfg = PipelineConfig().override(load_preset("digits"))
    return cfg.override({"workdir": str(layout.workdir)})


class PipelineResource(dg.ConfigurableResource):
    """Work directory of one valuation (checkpoints, images, DuckDB, Dagster home)."""

    workdir: str

    def config(self) -> PipelineConfig:
        return read_pipeline_config(self.workdir)

    def layout(self) -> RunLayout:
        return RunLayout.at(self.workdir)

    def store(self) -> ResultStore:
        return ResultStore(self.layout().database)
