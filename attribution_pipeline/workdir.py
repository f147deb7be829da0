"""A work directory's configuration and Dagster home, without importing Dagster.

The CLI writes ``<workdir>/pipeline_config.json``; the Dagster resource, the sensor and the
schedule read it back with ``read_pipeline_config``. ``dagster dev`` finds the work directory in
``ATTRIBUTION_PIPELINE_WORKDIR`` (``attribution-pipeline ui`` sets it).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from attribution_pipeline.config import DEFAULT_DATA_DIR, PipelineConfig, load_preset
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.storage.artifacts import atomic_write_bytes
from attribution_pipeline.storage.results import ROLE_ENV

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


# --- the engine: where a work directory's runs execute (written by `run`, read by the Definitions) ---

ENGINES = ("local", "ray", "in-process")
ENGINE_ENV = "ATTRIBUTION_PIPELINE_ENGINE"  # the CLI's default engine (the test suite sets in-process)
THREADS_ENV = "ATTRIBUTION_PIPELINE_TORCH_THREADS"
HEAD_RESOURCE = "attribution_head"  # a Ray custom resource only the head node declares


@dataclass(frozen=True)
class EngineSettings:
    """How runs of a work directory execute.

    engine: ``local`` (a Ray started by the CLI on this machine, ``workers`` runs at once, one torch
    thread each), ``ray`` (a running Ray cluster at ``address``), ``in-process`` (everything in the
    calling process, one run after another: debugging and tests).
    gpus_per_run: GPUs each training run asks Ray for (0 on CPU-only machines); the ``gpu`` pool
    admits at most ``workers`` runs at once.
    local_gpus: the GPUs a ``local`` Ray declares (None: Ray counts this machine's; a number on a
    CPU machine declares logical GPUs, which tests use to check placement).
    """

    engine: str = "in-process"
    workers: int = 1
    address: str | None = None
    gpus_per_run: float = 0.0
    local_gpus: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"


def default_engine() -> EngineSettings:
    """``$ATTRIBUTION_PIPELINE_ENGINE`` (default ``local``) with one worker per core of this machine."""
    engine = os.environ.get(ENGINE_ENV, "local")
    if engine not in ENGINES:
        raise ValueError(f"{ENGINE_ENV}={engine!r}: choose one of {', '.join(ENGINES)}")
    return EngineSettings(engine=engine, workers=os.cpu_count() or 1)


def engine_file(workdir: str | Path) -> Path:
    return RunLayout.at(workdir).dagster_home / "engine.json"


def read_engine(workdir: str | Path) -> EngineSettings:
    """The engine the work directory's instance was last configured for (in-process if never)."""
    path = engine_file(workdir)
    if not path.is_file():
        return EngineSettings()
    try:
        return EngineSettings(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return EngineSettings()


def instance_yaml(workdir: str | Path, settings: EngineSettings) -> str:
    """``dagster.yaml`` for ``settings``: in-process keeps Dagster's defaults; ``local`` and ``ray``
    send every run through the queue (at most ``workers`` runs that hold the ``gpu`` pool at once)
    to dagster-ray's ``RayRunLauncher``, which submits each run as one Ray job. The daemon (which
    ``dagster dev`` and ``attribution-pipeline run`` start) dequeues them and watches their health:
    a run whose worker died is marked failed, and the next step of the round (the CLI's or the
    sensor's) recomputes exactly the coalitions that lack a utility, so no Dagster run retry is
    configured (a retry racing that next step would compute a coalition twice)."""
    text = DAGSTER_YAML
    if settings.engine == "in-process" or not settings.address:
        return text
    layout = RunLayout.at(workdir)
    env = [f"{WORKDIR_ENV}={layout.workdir}", f"DAGSTER_HOME={layout.dagster_home}", f"{ROLE_ENV}=worker",
           f"{THREADS_ENV}=1", "PATH", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_USAGE_STATS_ENABLED=0"]
    return text + f"""run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
concurrency:
  pools:
    granularity: run
    default_limit: {max(1, int(settings.workers))}
run_launcher:
  module: dagster_ray
  class: RayRunLauncher
  config:
    ray:
      address: "{settings.address}"
      num_cpus: 1
      env_vars: {json.dumps(env)}
run_monitoring:
  enabled: true
  poll_interval_seconds: 5
  start_timeout_seconds: 120
  max_resume_run_attempts: 0
"""


MANAGED_KEYS = ("telemetry", "run_coordinator", "concurrency", "run_launcher", "run_monitoring")


def _kept_sections(path: Path) -> str:
    """The top-level sections of an existing ``dagster.yaml`` that ``run`` does not manage (e.g. a
    ``storage:`` on Postgres written by hand, docs/scaleout.md), as YAML text."""
    import yaml  # PyYAML comes with Dagster

    try:
        doc = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        return ""
    kept = {k: v for k, v in (doc or {}).items() if k not in MANAGED_KEYS} if isinstance(doc, dict) else {}
    return ("# kept from the previous dagster.yaml\n" + yaml.safe_dump(kept, sort_keys=False)) if kept else ""


def write_instance(workdir: str | Path, settings: EngineSettings) -> Path:
    """Write ``engine.json`` and ``dagster.yaml`` into the work directory's Dagster home; sections of
    ``dagster.yaml`` that the engine does not manage (storage, compute logs) are kept."""
    home = RunLayout.at(workdir).dagster_home
    home.mkdir(parents=True, exist_ok=True)
    text = instance_yaml(workdir, settings) + _kept_sections(home / "dagster.yaml")
    atomic_write_bytes(home / "dagster.yaml", text.encode())
    atomic_write_bytes(engine_file(workdir), settings.to_json().encode())
    return home


# --- who drives the round: `run` claims it so that the sensor and schedule stand aside -------------

def _driver_file(workdir: str | Path) -> Path:
    return RunLayout.at(workdir).dagster_home / "round_driver.json"


def claim_round(workdir: str | Path) -> None:
    """Record that this process (``attribution-pipeline run``) drives the work directory's round:
    between its steps no run is in flight, and the contributors sensor would otherwise request the
    same step (``round_driver``)."""
    import socket

    doc = {"pid": os.getpid(), "host": socket.gethostname()}
    atomic_write_bytes(_driver_file(workdir), (json.dumps(doc) + "\n").encode())


def release_round(workdir: str | Path) -> None:
    _driver_file(workdir).unlink(missing_ok=True)


def round_driver(workdir: str | Path) -> str | None:
    """``"pid N on HOST"`` while a live ``run`` drives the round; None otherwise (a claim whose
    process is gone on this host is stale)."""
    import socket

    try:
        doc = json.loads(_driver_file(workdir).read_text())
    except (OSError, ValueError):
        return None
    if doc.get("host") == socket.gethostname():
        try:
            os.kill(int(doc["pid"]), 0)
        except (ProcessLookupError, ValueError, KeyError, TypeError):
            return None
        except PermissionError:
            pass
    return f"pid {doc.get('pid')} on {doc.get('host')}"
