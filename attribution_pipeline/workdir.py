"""A work directory's configuration and Dagster home, without importing Dagster.

The CLI writes ``<workdir>/pipeline_config.json``; the Dagster resource, the sensor and the
schedule read it back with ``read_pipeline_config``. ``dagster dev`` finds the work directory in
``ATTRIBUTION_PIPELINE_WORKDIR`` (``attribution-pipeline ui`` sets it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from attribution_pipeline.config import DEFAULT_DATA_DIR, PipelineConfig, load_preset
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.storage.artifacts import atomic_write_bytes

WORKDIR_ENV = "ATTRIBUTION_PIPELINE_WORKDIR"
DEFAULT_WORKDIR = DEFAULT_DATA_DIR / "runs" / "default"

DAGSTER_YAML = """# Written by attribution-pipeline: a local instance for this work directory.
telemetry:
  enabled: false
"""


def default_workdir() -> str:
    return os.environ.get(WORKDIR_ENV, str(DEFAULT_WORKDIR))


def read_pipeline_config(workdir: str | Path) -> PipelineConfig:
    """The work directory's configuration; the digits preset where none was written yet."""
    layout = RunLayout.at(workdir)
    if layout.config_file.is_file():
        cfg = PipelineConfig.from_dict(json.loads(layout.config_file.read_text()))
    else:
        cfg = PipelineConfig().override(load_preset("digits"))
    return cfg.override({"workdir": str(layout.workdir)})


def write_pipeline_config(cfg: PipelineConfig) -> Path:
    layout = RunLayout.at(cfg.workdir)
    layout.workdir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(layout.config_file, cfg.to_json().encode())
    return layout.config_file


def prepare_dagster_home(workdir: str | Path) -> Path:
    """``<workdir>/dagster_home`` with a ``dagster.yaml`` (telemetry off), created when absent."""
    home = RunLayout.at(workdir).dagster_home
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").is_file():
        atomic_write_bytes(home / "dagster.yaml", DAGSTER_YAML.encode())
    return home
