"""The engine, for real: a local Ray cluster started here (``ray.init``, every port on 127.0.0.1, two
logical GPUs and the head's custom resource), the Dagster daemon, the run queue with the ``gpu`` pool
and dagster-ray's ``RayRunLauncher``. No mocks: each coalition run is a Ray job.

One module-scoped cluster (~10 s to start) serves every test; it starts while Ray's default
dashboard-agent port is held, as another local Ray on the machine would hold it, so every job the tests
submit shows that two local clusters coexist. Its teardown checks that no process the module started is left.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import psutil
import pytest

from attribution_pipeline.config import PipelineConfig, load_preset
from attribution_pipeline.engine import LOCAL_RAY_ENV, _free_port, init_local_ray
from attribution_pipeline.runner import run_valuation
from attribution_pipeline.storage.records import read_utility_records
from attribution_pipeline.storage.results import ROLE_ENV, ResultStore, WorkerStoreError
from attribution_pipeline.workdir import EngineSettings
from attribution_pipeline_tests.conftest import TINY_OVERRIDES, write_digit_contributors

UTILITIES = "SELECT coalition_key, property, method, seed, value FROM utilities ORDER BY ALL"


def _ours(marker: str) -> list[psutil.Process]:
    """Live processes whose command line mentions ``marker`` (a temp dir or a work directory)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in proc.info["cmdline"] or []) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture(scope="module")
def ray_address():
    ray = pytest.importorskip("ray")
    before = {k: os.environ.get(k) for k in LOCAL_RAY_ENV}
    os.environ.update(LOCAL_RAY_ENV)
    temp = tempfile.mkdtemp(prefix="apray", dir="/tmp")
    with socket.socket() as held:  # another Ray on this machine holds Ray's default agent port
        try:
            held.bind(("127.0.0.1", 52365))
            held.listen()
        except OSError:
            pass  # something else already holds it: the same situation
        address = init_local_ray(ray, 2, 2, temp)
    yield address
    ray.shutdown()
    for key, value in before.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    deadline = time.monotonic() + 30
    while _ours(temp) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ours(temp), "Ray processes left after ray.shutdown()"


def _config(root: Path, **valuation) -> PipelineConfig:
    contributors = root / "contributors"
    if not contributors.is_dir():
        write_digit_contributors(contributors)
    return (PipelineConfig().override(load_preset("digits")).override(TINY_OVERRIDES)
            .override({"valuation": valuation} if valuation else {})
            .override({"contributors_dir": str(contributors), "workdir": str(root / "work")}))


def _utilities(cfg: PipelineConfig) -> list[tuple]:
    with duckdb.connect(str(Path(cfg.workdir) / "attribution.duckdb"), read_only=True) as con:
        return con.execute(UTILITIES).fetchall()


def _runs(cfg: PipelineConfig, job: str):
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(Path(cfg.workdir) / "dagster_home"))
    return instance, instance.get_runs(filters=dg.RunsFilter(job_name=job))


def test_a_worker_never_opens_the_results_database(tmp_path, monkeypatch):
    monkeypatch.setenv(ROLE_ENV, "worker")
    with pytest.raises(WorkerStoreError, match="never opens the results database"):
        ResultStore(tmp_path / "attribution.duckdb")
    assert not (tmp_path / "attribution.duckdb").exists()


def test_ray_engine_values_the_tiny_game_as_in_process(tmp_path, ray_address):
    """Every run (base, four coalition runs, Shapley) is a Ray job; the coalition runs hold the
    ``gpu`` pool, so with two logical GPUs they go two at a time, each placed on GPU 0 or 1; the
    utilities equal those of the in-process run with the same seeds."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    reference = _config(tmp_path / "inprocess", coalitions_per_run=2)
    assert run_valuation(reference, quiet=True, engine=EngineSettings()) == 0
    cfg = _config(tmp_path / "ray", coalitions_per_run=2)
    settings = EngineSettings(engine="ray", workers=2, address=ray_address, gpus_per_run=1)
    out = io.StringIO()
    assert run_valuation(cfg, engine=settings, out=out) == 0
    printed = out.getvalue()
    assert "[7/7" in printed and "coalition c-" in printed  # a line per finished coalition, with its count
    assert _utilities(cfg) == _utilities(reference)

    client = JobSubmissionClient(ray_address)
    instance, runs = _runs(cfg, "coalitions")
    assert len(runs) == 4  # 7 coalitions, 2 per run
    for job in ("valuation_base", "coalitions", "shapley"):
        for run in _runs(cfg, job)[1]:
            assert _final_status(client, f"dagster-run-{run.run_id}") == JobStatus.SUCCEEDED, job
            info = client.get_job_info(f"dagster-run-{run.run_id}")
            role = info.runtime_env["env_vars"].get(ROLE_ENV)
            assert role == ("worker" if job != "shapley" else None), job  # only the head-side run may write DuckDB
    spans = sorted((instance.get_run_record_by_id(r.run_id).start_time,
                    instance.get_run_record_by_id(r.run_id).end_time) for r in runs)
    overlap = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert overlap <= 2 and spans[2][0] >= min(spans[0][1], spans[1][1]) - 1.0  # two waves of two
    devices = _placements(instance)
    assert set(devices) == {"0", "1"} and len(devices) == 7


def _final_status(client, job_id: str, timeout_s: float = 60.0):
    """The Ray job's status once terminal (its process may still be exiting when Dagster's run is done)."""
    deadline = time.monotonic() + timeout_s
    while not (status := client.get_job_status(job_id)).is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
    return status


def _placements(instance) -> list[str]:
    import dagster as dg

    records = instance.fetch_materializations(dg.AssetKey("coalition_checkpoint"), limit=100).records
    return [r.asset_materialization.metadata["cuda_visible_devices"].value for r in records]


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(tmp_path, ray_address):
    """One coalition run's worker process is killed while it trains; the round still completes (the
    next step recomputes only what lacks a utility) and a second round recomputes nothing: every
    planned coalition has exactly one utility row per property."""
    cfg = _config(tmp_path, coalitions_per_run=4).override({"finetune": {"steps": 40}})
    settings = EngineSettings(engine="ray", workers=2, address=ray_address)
    killed: list[int] = []

    def kill_first_coalition_worker():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            # one run's worker: Ray's shell and the `dagster api execute_run` Python process under it
            procs = [p for p in _ours("execute_run") if '"pipeline_name": "coalitions"' in " ".join(p.cmdline())
                     and str(tmp_path) in " ".join(p.cmdline())]
            run_ids = sorted({re.search(r'"pipeline_run_id": "([0-9a-f-]+)"', " ".join(p.cmdline())).group(1)
                              for p in procs})
            procs = [p for p in procs if run_ids and run_ids[0] in " ".join(p.cmdline())]
            if procs:
                time.sleep(2.0)  # mid-run: torch loaded, training under way
                for proc in procs:
                    proc.kill()
                    killed.append(proc.pid)
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_first_coalition_worker, daemon=True)
    killer.start()
    rc = run_valuation(cfg, quiet=True, engine=settings)
    killer.join(timeout=1)
    assert killed, "no coalition worker was seen to kill"
    instance, runs = _runs(cfg, "coalitions")
    assert any(r.status.value == "FAILURE" for r in runs)  # the killed run is reported failed, not hung
    assert rc == 0
    first = _utilities(cfg)
    assert run_valuation(cfg, quiet=True, engine=settings) == 0
    assert _utilities(cfg) == first
    planned = {k for k, in duckdb.connect(str(Path(cfg.workdir) / "attribution.duckdb"), read_only=True)
               .execute("SELECT coalition_key FROM coalitions WHERE size > 0").fetchall()}
    keys = [(k, p) for k, p, m, s, _ in first if m == "sft" and k in planned]
    assert len(keys) == len(set(keys)) == 2 * len(planned)
    records, problems = read_utility_records(cfg.workdir)
    assert not problems


def test_a_cluster_that_is_down_is_named_before_any_work(tmp_path, capsys):
    from attribution_pipeline.cli import main

    port = _free_port()
    contributors = write_digit_contributors(tmp_path / "contributors")
    rc = main(["run", "--engine", "ray", "--ray-address", f"http://127.0.0.1:{port}", "--contributors",
               str(contributors), "--workdir", str(tmp_path / "work"), "--budget", "4"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"no Ray cluster answers at http://127.0.0.1:{port}" in err
    assert not (tmp_path / "work" / "models").exists() and not (tmp_path / "work" / "attribution.duckdb").exists()


def test_a_cli_round_keeps_the_sensor_aside_while_its_process_lives(tmp_path):
    """Between two steps of `run` nothing is in flight; the claim tells the sensor and the schedule
    that the CLI requests the next step (the daemon `run` starts evaluates the sensor too)."""
    import subprocess
    import sys

    from attribution_pipeline.workdir import _driver_file, claim_round, release_round, round_driver

    claim_round(tmp_path)
    assert round_driver(tmp_path) == f"pid {os.getpid()} on {os.uname().nodename}"
    release_round(tmp_path)
    assert round_driver(tmp_path) is None
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _driver_file(tmp_path).write_text(f'{{"pid": {int(gone.stdout)}, "host": "{os.uname().nodename}"}}')
    assert round_driver(tmp_path) is None  # a claim whose process is gone is stale


def test_sigterm_stops_a_local_run_and_everything_it_started(tmp_path):
    """A scheduler's stop (SIGTERM to the CLI) unwinds like Ctrl-C: exit 130 with a message, and the
    local Ray, the Dagster daemon and code server and the runs they launched are gone with it."""
    import subprocess
    import sys

    cfg = _config(tmp_path)
    preset = tmp_path / "tiny.toml"
    from attribution_pipeline_tests.test_cli import _toml

    preset.write_text(_toml({**TINY_OVERRIDES, "preset": "tiny"}))
    exe = Path(sys.executable).parent / "attribution-pipeline"
    cmd = [str(exe), "run", "--contributors", cfg.contributors_dir, "--workdir", cfg.workdir, "--preset",
           str(preset), "--budget", "8", "--engine", "local", "--workers", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ATTRIBUTION_PIPELINE_ENGINE": "local"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline, seen = time.monotonic() + 600, ""
    for line in proc.stdout:  # wait until coalition runs are in flight
        seen += line
        if re.search(r"\[1/\d+", line) or time.monotonic() > deadline:
            break
    assert re.search(r"\[1/\d+", seen), seen[-3000:]
    started = [p for p in psutil.Process(proc.pid).children(recursive=True) if _alive(p)]
    assert any("dagster-daemon" in " ".join(p.cmdline()) for p in started if _alive(p))
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=180)[0]
    assert proc.returncode == 130 and "interrupted: the engine is stopped" in rest, rest[-3000:]
    deadline = time.monotonic() + 60
    alive = [p for p in started if _alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(1)
        alive = [p for p in alive if _alive(p)]
    assert not alive, [p.pid for p in alive]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
