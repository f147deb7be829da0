"""The Dagster webserver loads the code location headless, and a coalition partition launched
through its GraphQL API (what the UI's Materialize button calls) succeeds."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from attribution_pipeline.layout import RunLayout
from attribution_pipeline.runner import run_valuation
from attribution_pipeline.stages import read_plan
from attribution_pipeline.storage.index import ingest
from attribution_pipeline.storage.results import ResultStore

REPO = Path(__file__).resolve().parent.parent
LOCATION = "attribution_pipeline.definitions"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


WORKSPACE_Q = """{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
ASSETS_Q = """{ assetNodes { assetKey { path } partitionDefinition { name } dependencyKeys { path } } }"""
LAUNCH_M = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
  ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } ... on RunConfigValidationInvalid { errors { message } } } }"""
RUN_Q = """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }"""


@contextlib.contextmanager
def serving(layout: RunLayout, daemon: bool = False):
    """The UI on ``layout``'s instance, as a user starts it (``dagster dev``: webserver and the daemon
    that dequeues launched runs; ``dagster-webserver`` alone when ``daemon`` is False); yields the port
    once the code location has loaded (its workspace entries checked), and stops every process after."""
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(layout.dagster_home), "ATTRIBUTION_PIPELINE_WORKDIR": str(layout.workdir)}
    bindir = Path(sys.executable).parent
    command = [str(bindir / "dagster"), "dev"] if daemon else [str(bindir / "dagster-webserver")]
    proc = subprocess.Popen([*command, "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        status, entries, deadline = None, [], time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                entries = _graphql(port, WORKSPACE_Q)["data"]["workspaceOrError"]["locationEntries"]
                status = entries[0]["loadStatus"]
                if status == "LOADED":
                    break
            except OSError:
                pass
            time.sleep(1)
        assert status == "LOADED", f"code location not loaded: {status}"
        assert entries[0]["name"] == LOCATION
        assert entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation"
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def valued_workdir(tiny_config):
    cfg = tiny_config.override({"valuation": {"budget": 4}})
    assert run_valuation(cfg, quiet=True) == 0
    return cfg


def test_webserver_loads_location_and_materializes_a_coalition_partition(valued_workdir, tmp_path):
    cfg = valued_workdir
    layout = RunLayout.at(cfg.workdir)
    key = read_plan(layout).coalitions[1].key
    store = ResultStore(layout.database)
    store.delete_where("utilities", "coalition_key = ?", [key])  # as if this partition were never computed
    with serving(layout, daemon=True) as port:
        nodes = {"/".join(n["assetKey"]["path"]): n for n in _graphql(port, ASSETS_Q)["data"]["assetNodes"]}
        assert {"contributors", "full_model", "pruned_base_model", "coalition_plan", "coalition_checkpoint",
                "coalition_images", "coalition_utilities", "empty_coalition_utilities", "shapley_values",
                "lds_results", "counterfactual_results"} <= set(nodes)
        assert nodes["coalition_utilities"]["partitionDefinition"]["name"] == "coalitions"
        assert ["pruned_base_model"] in [d["path"] for d in nodes["coalition_checkpoint"]["dependencyKeys"]]

        params = {"selector": {"repositoryLocationName": LOCATION, "repositoryName": "__repository__",
                               "jobName": "coalitions"},
                  # the launchpad config that picks the utility method (here: fine-tune the full model)
                  "runConfigData": {"resources": {"pipeline": {"config": {"method": "ft"}}}},
                  "executionMetadata": {"tags": [{"key": "dagster/partition", "value": key}]}}
        launched = _graphql(port, LAUNCH_M, {"p": params})["data"]["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            run_status = _graphql(port, RUN_Q, {"id": run_id})["data"]["runOrError"]["status"]
            if run_status in ("SUCCESS", "FAILURE", "CANCELED"):
                break
            time.sleep(2)
        assert run_status == "SUCCESS"
        ingest(layout.workdir, store)  # the run's worker recorded its rows; the head indexes them
        rows = store.query("SELECT property FROM utilities WHERE coalition_key = ? AND method = 'ft'", [key])
        assert set(rows["property"]) == {"quality", "diversity"}
