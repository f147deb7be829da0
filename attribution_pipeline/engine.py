"""The engine a round's runs execute on, without importing Dagster: a Ray cluster (local or remote),
the Dagster daemon that dequeues runs onto it, and the ``dagster job launch`` commands that submit.

``attribution-pipeline run --engine local`` starts a Ray on this machine in the CLI's own process
(``LocalRay``: ``workers`` CPUs, the head's custom resource, dashboard and every port on 127.0.0.1),
``--engine ray`` checks that the cluster at ``--ray-address`` answers before any work
(``check_cluster``). Either way the CLI writes the instance config (``workdir.write_instance``),
starts the daemon (``Daemon``: the queue, the ``gpu`` pool, run monitoring and retries), and submits
each run the round's decision function asks for with Dagster's own ``dagster job launch``; the run
queue and dagster-ray's ``RayRunLauncher`` do the rest: each run is one Ray job.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attribution_pipeline.workdir import HEAD_RESOURCE, WORKDIR_ENV

CODE_LOCATION = "attribution_pipeline.definitions"
# Every process the engine starts keeps Ray to this machine's loopback unless told otherwise
# (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray bind 127.0.0.1; without it Ray listens on the
# routable address), without usage reporting, and with Ray's token authentication set explicitly:
# Ray 2.52+ turns it on by default for a new local cluster and clients without the token then fail.
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


class EngineError(RuntimeError):
    """The engine cannot be started or reached; nothing was submitted."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRay:
    """A Ray started in this process for ``workers`` runs at once (``gpus``: the GPUs it declares;
    None lets Ray count this machine's); ``address`` is its job-submission (dashboard) URL; ``stop``
    shuts down exactly what ``ray.init`` started."""

    def __init__(self, workers: int, gpus: int | None = None):
        self.workers, self.gpus = max(1, int(workers)), gpus
        self.address: str | None = None
        self._temp: str | None = None

    def start(self) -> str:
        for key, value in LOCAL_RAY_ENV.items():  # before Ray is imported: it reads some at import
            os.environ.setdefault(key, value)
        import ray  # heavy (~1 s); only the engines that use it pay for it

        # Ray's unix sockets live under the temp dir and must stay under ~100 characters
        self._temp = tempfile.mkdtemp(prefix="apray", dir="/tmp")
        ctx = ray.init(num_cpus=self.workers, num_gpus=self.gpus, resources={HEAD_RESOURCE: 1},
                       include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=_free_port(),
                       _temp_dir=self._temp, logging_level="ERROR", log_to_driver=False)
        self.address = f"http://{ctx.dashboard_url}"
        check_cluster(self.address, timeout_s=60)
        return self.address

    def stop(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if self._temp:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None


def check_cluster(address: str, timeout_s: float = 10.0) -> None:
    """Raise ``EngineError`` naming ``address`` unless a Ray job-submission server answers there."""
    from ray.job_submission import JobSubmissionClient

    deadline, last = time.monotonic() + timeout_s, None
    while True:
        try:
            JobSubmissionClient(address).list_jobs()
            return
        except Exception as exc:  # ConnectionError, auth errors, bad URLs: all mean "no engine here"
            last = exc
        if time.monotonic() > deadline:
            raise EngineError(f"no Ray cluster answers at {address}: {type(last).__name__}: {last}. Start one "
                              "(`ray start --head --dashboard-host=0.0.0.0`, docs/scaleout.md) or pass the head's "
                              "dashboard URL with --ray-address http://HEAD:8265") from last
        time.sleep(1.0)


def engine_env(workdir: str | Path, dagster_home: str | Path) -> dict[str, str]:
    """The environment of the daemon and the launch commands: this process's, plus the work
    directory and its Dagster home, and this environment's ``bin`` first on ``PATH`` (a run's Ray
    job starts ``dagster api execute_run`` by name; ``RayRunLauncher`` passes these on to it)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, WORKDIR_ENV: str(workdir), "DAGSTER_HOME": str(dagster_home), "PATH": path}


def _tool(name: str) -> str:
    """A console script of this environment (``dagster``, ``dagster-daemon``)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.is_file() else shutil.which(name)
    if not found:
        raise EngineError(f"{name} is not installed in this environment ({sys.executable})")
    return found


class Daemon:
    """``dagster-daemon run`` on the work directory's instance, its output in ``log_path``; it
    dequeues submitted runs (the queue and the ``gpu`` pool) and watches their health. ``stop``
    ends it and every process it started."""

    def __init__(self, env: dict[str, str], log_path: Path, echo: bool = False):
        self.env, self.log_path, self.echo = env, Path(log_path), echo
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([_tool("dagster-daemon"), "run", "-m", CODE_LOCATION], env=self.env,
                                         stdout=None if self.echo else log, stderr=None if self.echo else subprocess.STDOUT,
                                         start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        try:  # children the daemon started and left behind (its code server)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None


def launch(job: str, run_id: str, run_config: dict, tags: dict, env: dict[str, str],
           log_path: Path, echo: bool = False) -> subprocess.Popen:
    """Start ``dagster job launch`` for one run (it enqueues the run and returns, ~9 s: it loads the
    code location); returns the process, whose output goes to ``log_path`` (the terminal if ``echo``)."""
    cmd = [_tool("dagster"), "job", "launch", "-m", CODE_LOCATION, "-j", job, "--run-id", run_id,
           "--config-json", json.dumps(run_config), "--tags", json.dumps(tags)]
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=None if echo else log, stderr=None if echo else subprocess.STDOUT)
