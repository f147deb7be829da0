"""The engine a round's runs execute on, without importing Dagster: a Ray cluster (local or remote),
the Dagster daemon that dequeues runs onto it, and the ``dagster job launch`` commands that submit.

``attribution-pipeline run --engine local`` starts a Ray on this machine in the CLI's own process
(``LocalRay``: ``workers`` CPUs, the head's custom resource, dashboard and every port on 127.0.0.1),
``--engine ray`` checks that the cluster at ``--ray-address`` answers before any work
(``check_cluster``). Either way the CLI writes the instance config (``workdir.write_instance``),
starts one code server and the daemon (``Daemon``: the queue, the ``gpu`` pool, run monitoring), and
submits each run the round's decision function asks for with Dagster's own ``dagster job launch``
through that code server; the run queue and dagster-ray's ``RayRunLauncher`` do the rest: each run
is one Ray job.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from attribution_pipeline.workdir import HEAD_RESOURCE, WORKDIR_ENV

CODE_LOCATION = "attribution_pipeline.definitions"
# Every process the engine starts keeps Ray to this machine's loopback unless told otherwise
# (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray bind 127.0.0.1; without it Ray listens on the
# routable address), without usage reporting, and with Ray's token authentication set explicitly:
# Ray 2.52+ turns it on by default for a new local cluster and clients without the token then fail.
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
# A local Ray shares the machine's cores with the runs it hosts, so what it does while they train is
# cut back: its dashboard agent samples node and process statistics every 60 s, not every 5 (nothing
# here reads them; the job API still answers), and the raylet starts no idle worker processes ahead of
# need (each run is a job whose entrypoint is its own process, so the prestarted workers only polled).
# What an idle local engine takes from the runs with Ray's defaults and with these:
# benchmarks/results/engine-idle.md (benchmarks/engine_idle.py).
LOCAL_RAY_QUIET_ENV = {"REPORTER_UPDATE_INTERVAL_MS": "60000", "METRICS_RECORD_INTERVAL_S": "60"}
LOCAL_RAY_SYSTEM_CONFIG = {"enable_worker_prestart": False, "prestart_worker_first_driver": False}


class EngineError(RuntimeError):
    """The engine cannot be started or reached; nothing was submitted."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_local_ray(ray, cpus: int, gpus: int | None, temp_dir: str) -> str:
    """``ray.init`` a local cluster with every port on 127.0.0.1 and free; its job-submission URL.

    ``ray.init`` offers no argument for the dashboard agent's port, and Ray's fixed default (52365)
    lets only one local cluster per machine take job submissions: the second one's agent cannot bind
    it and every submission answers "No available agent to submit job" (ray-project/ray#34886, where
    Ray points to ``ray start --dashboard-agent-listen-port``). So the agent gets a free port here, given
    to the parameters ``ray.init`` builds, and two ``attribution-pipeline run`` on one machine coexist.
    """
    from ray._private import parameter

    original = parameter.RayParams
    parameter.RayParams = functools.partial(original, dashboard_agent_listen_port=_free_port())
    # ray.init installs a C-level SIGTERM handler that aborts the process, which left the cluster's
    # processes, the Dagster daemon and the launched runs behind; the caller's handler (the CLI turns
    # SIGTERM into KeyboardInterrupt, which shuts everything down) is put back after it
    on_terminate = signal.getsignal(signal.SIGTERM)
    try:
        ctx = ray.init(num_cpus=cpus, num_gpus=gpus, resources={HEAD_RESOURCE: 1}, include_dashboard=True,
                       dashboard_host="127.0.0.1", dashboard_port=_free_port(), _temp_dir=temp_dir,
                       logging_level="ERROR", log_to_driver=False, _system_config=LOCAL_RAY_SYSTEM_CONFIG)
    finally:
        parameter.RayParams = original
        if on_terminate is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_terminate)
    return f"http://{ctx.dashboard_url}"


class LocalRay:
    """A Ray started in this process for ``workers`` runs at once (``gpus``: the GPUs it declares;
    None lets Ray count this machine's); ``address`` is its job-submission (dashboard) URL; ``stop``
    shuts down exactly what ``ray.init`` started."""

    def __init__(self, workers: int, gpus: int | None = None):
        self.workers, self.gpus = max(1, int(workers)), gpus
        self.address: str | None = None
        self._temp: str | None = None

    def start(self) -> str:
        for key, value in {**LOCAL_RAY_ENV, **LOCAL_RAY_QUIET_ENV}.items():  # before Ray is imported: it reads some at import
            os.environ.setdefault(key, value)
        import ray  # heavy (~1 s); only the engines that use it pay for it

        # Ray's unix sockets live under the temp dir and must stay under ~100 characters
        self._temp = tempfile.mkdtemp(prefix="apray", dir="/tmp")
        self.address = init_local_ray(ray, self.workers, self.gpus, self._temp)
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


def _stop_group(proc: subprocess.Popen | None, grace_s: float) -> None:
    """End a process started in its own session, then whatever it left behind in its group."""
    if proc is None:
        return
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Daemon:
    """``dagster-daemon run`` on the work directory's instance, its output in ``log_path``; it
    dequeues submitted runs (the queue and the ``gpu`` pool) and watches their health.

    The code location is loaded once, by one ``dagster api grpc`` server on a socket in a private
    temporary folder (its output in ``code-server.log`` beside the daemon's), which the daemon and
    every ``launch`` use: a launch that loads the code itself takes 8.4 s here, one through the
    server 1.6 s, and the round waits for its launches at every step. ``stop`` ends both and every
    process they started."""

    READY_LINE = b"Started Dagster code server"

    def __init__(self, env: dict[str, str], log_path: Path, echo: bool = False, ready_timeout_s: float = 300.0):
        self.env, self.log_path, self.echo = env, Path(log_path), echo
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None
        self.server: subprocess.Popen | None = None
        self.folder: str | None = None
        self.workspace: str | None = None  # a workspace file naming the server under the code location's name

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.folder = tempfile.mkdtemp(prefix="ap-code-")  # a socket path must stay under ~100 characters
        socket_path = os.path.join(self.folder, "grpc.sock")
        # the location keeps the name the UI's workspace.yaml gives it, so runs, sensors and schedules
        # launched through the server are the same objects as those of `attribution-pipeline ui`
        self.workspace = os.path.join(self.folder, "workspace.yaml")
        with open(self.workspace, "w") as f:
            f.write(f"load_from:\n  - grpc_server:\n      host: localhost\n      socket: {socket_path}\n"
                    f"      location_name: {CODE_LOCATION}\n")
        server_log = self.log_path.with_name("code-server.log")
        start = server_log.stat().st_size if server_log.exists() else 0
        with open(server_log, "ab") as log:
            self.server = subprocess.Popen([_tool("dagster"), "api", "grpc", "-m", CODE_LOCATION, "--socket", socket_path,
                                            "--log-level", "info"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            with open(server_log, "rb") as log:
                log.seek(start)
                if self.READY_LINE in log.read():
                    break
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise EngineError(f"the Dagster code server did not start (exit code {self.server.poll()}); "
                                  f"see {server_log}")
            time.sleep(0.2)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([_tool("dagster-daemon"), "run", "-w", self.workspace], env=self.env,
                                         stdout=None if self.echo else log, stderr=None if self.echo else subprocess.STDOUT,
                                         start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.server.poll() is None

    def stop(self, grace_s: float = 20.0) -> None:
        _stop_group(self.proc, grace_s)
        _stop_group(self.server, grace_s)
        self.proc = self.server = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = self.workspace = None


def launch(job: str, run_id: str, run_config: dict, tags: dict, env: dict[str, str],
           log_path: Path, echo: bool = False, workspace: str | None = None) -> subprocess.Popen:
    """Start ``dagster job launch`` for one run (it enqueues the run and returns: ~2 s through the
    code server of a ``Daemon.workspace``, ~9 s loading the code itself without one); returns the
    process, whose output goes to ``log_path`` (the terminal if ``echo``)."""
    where = ["-w", workspace] if workspace else ["-m", CODE_LOCATION]
    cmd = [_tool("dagster"), "job", "launch", *where, "-j", job, "--run-id", run_id,
           "--config-json", json.dumps(run_config), "--tags", json.dumps(tags)]
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=None if echo else log, stderr=None if echo else subprocess.STDOUT)
