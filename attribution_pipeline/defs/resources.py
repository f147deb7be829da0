"""The one resource every asset and asset check uses: the work directory and the run's options.

The configuration is read from ``<workdir>/pipeline_config.json`` (written by the CLI), so
``attribution-pipeline run`` and ``dagster dev`` on the same work directory value the same game.
This resource is also the one typed run config for what a single run may override: from the
launchpad, ``resources: {pipeline: {config: {method: "ft"}}}`` measures (and checks) that run's
coalitions by fine-tuning the full model; the contributors sensor passes its validated
``snapshot`` the same way. Leave ``workdir`` out to keep the code location's work directory.
"""

from typing import Optional

import dagster as dg

from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.storage.index import ingest
from attribution_pipeline.storage.results import ResultStore
from attribution_pipeline.validation import validate_config
from attribution_pipeline.workdir import default_workdir, read_pipeline_config


class PipelineResource(dg.ConfigurableResource):
    """Work directory of one valuation (checkpoints, images, DuckDB, Dagster home) and run options."""

    workdir: Optional[str] = None  # None = ATTRIBUTION_PIPELINE_WORKDIR, else data/runs/default
    method: Optional[str] = None  # utility method of this run ("sft", "ft", "retrain"); None = the workdir's
    # {contributor: data_hash} validated by the CLI or the sensor: only these folders are valued, each
    # must still hash the same. None = validate the whole contributors directory strictly now.
    snapshot: Optional[dict[str, str]] = None
    reference: Optional[str] = None  # a trusted reference folder for this run; None = the workdir's reference.dir

    def directory(self) -> str:
        return self.workdir or default_workdir()

    def config(self) -> PipelineConfig:
        """The work directory's configuration with this run's overrides applied (validated)."""
        cfg = read_pipeline_config(self.directory())
        cfg = cfg.override({"valuation": {"method": self.method}}) if self.method else cfg
        cfg = cfg.override({"reference": {"dir": self.reference}}) if self.reference else cfg
        validate_config(cfg)  # a UI launch with a bad value fails here, naming the field, before any work
        return cfg

    def layout(self) -> RunLayout:
        return RunLayout.at(self.directory())

    def store(self) -> ResultStore:
        """The results database, first brought up to date with the records workers left beside their
        artifacts (``storage/index.py``); only head-side code (the Shapley and evaluation steps, the
        sensor, checks of the head's tables) calls this: a worker's ResultStore raises."""
        store = ResultStore(self.layout().database)
        ingest(self.directory(), store)
        return store


def pipeline_resource(directory: str) -> PipelineResource:
    """The resource of one work directory. Dagster replaces a resource's whole config when a run
    config names any field, so the work directory is the field's default here, not a constructor
    value: a launch that only sets ``method`` still values this work directory."""

    class BoundPipelineResource(PipelineResource):
        workdir: Optional[str] = directory

    return BoundPipelineResource()
