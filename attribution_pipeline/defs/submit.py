"""The CLI's engine launcher (``--engine local|ray``): it submits, it does not execute.

``Submitter`` brings the engine up (``engine.py``: a local Ray, or a check that the cluster at
``--ray-address`` answers), writes the work directory's instance config (queue, ``gpu`` pool,
``RayRunLauncher``, run monitoring: ``workdir.instance_yaml``) so that ``dagster dev`` on the same
home behaves the same, starts the daemon, and for each step the round's decision function asks for
enqueues its runs with ``dagster job launch`` (all at once: the queue and the pool pace them) and
waits for them, reporting progress. Each run is one Ray job; Dagster's log lines go to
``<workdir>/logs/`` and to the run's own log in the UI.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import uuid

import dagster as dg

from attribution_pipeline.engine import Daemon, EngineError, LocalRay, check_cluster, engine_env, launch
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.workdir import EngineSettings, write_instance

POLL_S = 2.0


class Submitter:
    """Runs a round's requests on the engine of ``settings`` (``local`` or ``ray``)."""

    def __init__(self, workdir, settings: EngineSettings, verbose: bool = False):
        layout = RunLayout.at(workdir)
        self.logs = layout.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.verbose = verbose
        self.ray = LocalRay(settings.workers, settings.local_gpus) if settings.engine == "local" else None
        self.daemon: Daemon | None = None
        try:
            address = self.ray.start() if self.ray else settings.address
            if self.ray is None:
                check_cluster(address or "(no --ray-address given)")
            self.settings = dataclasses.replace(settings, address=address)
            home = write_instance(layout.workdir, self.settings)
            # the instance's storage is created here, once, before the daemon and any run open it
            self.instance = dg.DagsterInstance.from_config(str(home))
            self.env = engine_env(layout.workdir, home)
            self.daemon = Daemon(self.env, self.logs / "daemon.log", echo=verbose)
            self.daemon.start()
        except BaseException:
            self.close()
            raise

    def partitions(self) -> list[str]:
        from attribution_pipeline.defs.partitions import coalition_partitions

        return self.instance.get_dynamic_partitions(coalition_partitions.name)

    def run_step(self, step, requests, progress, work) -> bool:
        """Enqueue ``requests`` (one ``dagster job launch`` each, in parallel), wait for every run;
        True when all succeeded."""
        ids = [str(uuid.uuid4()) for _ in requests]
        launches = [launch(r.job_name, run_id, r.run_config, dict(r.tags), self.env, self.logs / "launch.log",
                           echo=self.verbose, workspace=self.daemon.workspace) for r, run_id in zip(requests, ids)]
        while any(p.poll() is None for p in launches):
            progress.poll()
            time.sleep(POLL_S / 4)
        refused = [run_id for p, run_id in zip(launches, ids) if p.returncode != 0]
        if refused:
            print(f"error: {len(refused)} run(s) could not be submitted; see {self.logs / 'launch.log'}",
                  file=sys.stderr)
            return False
        statuses = self._wait(ids, progress, work)
        failed = {run_id: s for run_id, s in statuses.items() if s != dg.DagsterRunStatus.SUCCESS}
        for run_id, status in failed.items():
            print(f"error: Dagster run {run_id} {status.value.lower()}: {self._failure(run_id)}", file=sys.stderr)
        return not failed

    def _wait(self, ids: list[str], progress, work) -> dict[str, dg.DagsterRunStatus]:
        done: dict[str, dg.DagsterRunStatus] = {}
        while len(done) < len(ids):
            for run_id in ids:
                run = None if run_id in done else self.instance.get_run_by_id(run_id)
                if run is not None and run.is_finished:
                    done[run_id] = run.status
                    work.add(self._materializations(run_id))
                    progress.run_done()
            progress.poll()
            if len(done) < len(ids) and not self.daemon.alive():
                raise EngineError(f"the Dagster daemon or its code server stopped; see {self.logs / 'daemon.log'} "
                                  f"and {self.logs / 'code-server.log'}")
            time.sleep(POLL_S if len(done) < len(ids) else 0)
        return done

    def _materializations(self, run_id: str) -> list:
        records = self.instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION,
                                                    limit=100_000).records
        return [r.event_log_entry.asset_materialization for r in records]

    def _failure(self, run_id: str) -> str:
        """The first step failure's message, else the run failure's (a worker that died)."""
        for kind in (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE):
            records = self.instance.get_records_for_run(run_id, of_type=kind, limit=1).records
            if records:
                event = records[0].event_log_entry.dagster_event
                if kind == dg.DagsterEventType.STEP_FAILURE:
                    return f"{event.step_key}: {event.step_failure_data.error.message.strip()}"
                message = (event.message or "run failed").strip()  # a dead worker's carries Ray's whole job record
                return message if len(message) < 400 else f"{message[:400]}… (the whole message: the run's log in the UI)"
        return "see `attribution-pipeline ui` or logs/daemon.log"

    def close(self) -> None:
        """Stop the daemon, then the local Ray (its runs with it)."""
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None
        if self.ray is not None:
            self.ray.stop()
            self.ray = None
