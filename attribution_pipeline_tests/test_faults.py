"""Faults: a run killed with SIGKILL mid fine-tune and re-launched; four coalitions in parallel; an
analyst holding the published DuckDB copy open while runs write."""

import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg

from attribution_pipeline.layout import RunLayout
from attribution_pipeline.stages import read_plan
from attribution_pipeline.storage.artifacts import hash_folder, is_complete, read_manifest
from attribution_pipeline.storage.index import ingest
from attribution_pipeline.storage.results import ResultStore
from attribution_pipeline_tests.conftest import TINY_OVERRIDES, write_digit_contributors
from attribution_pipeline_tests.test_cli import _toml

NATURAL_KEYS = {
    "utilities": "coalition_key, property, method, seed",
    "coalitions": "coalition_key",
    "contributors": "contributor",
    "shapley_values": "round_id, contributor, property, estimator",
    "valuation_rounds": "round_id",
}


def _complete_artifacts_verify(workdir: Path) -> int:
    """Every artifact folder that looks complete holds exactly the files its manifest hashed."""
    n = 0
    for manifest in workdir.rglob("manifest.json"):
        folder = manifest.parent
        if folder.name == "data" or any(part.startswith(".") for part in folder.relative_to(workdir).parts):
            continue
        if "content_hash" in read_manifest(folder) and "files" in read_manifest(folder):
            assert hash_folder(folder)[0] == read_manifest(folder)["content_hash"], folder
            n += 1
    return n


def test_sigkill_mid_finetune_then_rerun_loses_and_duplicates_nothing(tmp_path):
    contributors = write_digit_contributors(tmp_path / "c", classes=(0, 1, 7), per_class=20)
    slow = {**TINY_OVERRIDES, "finetune": {"steps": 400, "batch_size": 16}, "preset": "tiny-slow-finetune"}
    preset = tmp_path / "slow.toml"
    preset.write_text(_toml(slow))
    work = tmp_path / "work"
    exe = Path(sys.executable).parent / "attribution-pipeline"
    cmd = [str(exe), "run", "--contributors", str(contributors), "--workdir", str(work), "--preset", str(preset),
           "--budget", "6", "--verbose"]  # --verbose: the per-coalition INFO lines of the in-process run
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    finished = None
    deadline = time.time() + 600
    for line in proc.stdout:  # wait for the first coalition to finish: the next one is fine-tuning
        m = re.search(r"\[1/\d+\] coalition (c-[0-9a-f]+) .* in ([0-9.]+)s", line)
        if m:
            finished = (m.group(1), float(m.group(2)))
            break
        assert time.time() < deadline, "no coalition finished in time"
    assert finished, "the run ended before any coalition finished"
    time.sleep(0.3 * finished[1])  # ~30% into the next coalition's 400 fine-tune steps
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL

    layout = RunLayout.at(work)
    plan = read_plan(layout)
    keys = list(dict.fromkeys(c.key for c in plan.coalitions))
    unfinished = [k for k in keys if not is_complete(layout.coalition_checkpoint_dir(k))]
    assert unfinished, "the kill came after every fine-tune had finished"
    _complete_artifacts_verify(work)  # nothing half-written passes for complete
    store = ResultStore(layout.database)
    before = store.query("SELECT count(DISTINCT coalition_key) AS n FROM utilities WHERE method = 'sft'")["n"][0]
    assert before < len(keys) + 1

    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[coalitions]" in again.stdout and "lack a current sft utility" in again.stdout
    for table, key in NATURAL_KEYS.items():
        counts = store.query(f"SELECT count(*) AS n, count(DISTINCT ({key})) AS d FROM {table}").row(0, named=True)
        assert counts["n"] == counts["d"], table  # no duplicated rows
    util = store.query("SELECT coalition_key, count(*) AS n FROM utilities WHERE method = 'sft' GROUP BY ALL")
    have = dict(zip(util["coalition_key"], util["n"]))
    assert all(have.get(k) == 2 for k in [*keys, "empty"])  # every planned coalition, both properties
    assert store.query("SELECT count(*) AS n FROM valuation_rounds")["n"][0] == 1
    assert all(is_complete(layout.coalition_checkpoint_dir(k)) and is_complete(layout.coalition_images_dir(k))
               for k in keys)
    assert _complete_artifacts_verify(work) >= 2 * len(keys)
    # the re-run removed what the killed writer left (its process is gone), and left nothing itself
    assert [p for p in work.rglob("*.tmp-*")] == [] and [p for p in work.rglob("*.old-*")] == []


def _materialize_partition(workdir: str, key: str, queue) -> None:
    os.environ["ATTRIBUTION_PIPELINE_TORCH_THREADS"] = "1"
    from attribution_pipeline.defs.build import build_definitions

    layout = RunLayout.at(workdir)
    instance = dg.DagsterInstance.from_config(str(layout.dagster_home))
    result = build_definitions(workdir).resolve_job_def("coalitions").execute_in_process(
        instance=instance, partition_key=key, raise_on_error=False)
    errors = [e.step_failure_data.error.message for e in result.all_events if e.is_step_failure]
    queue.put((key, result.success, errors))


def test_four_coalitions_in_parallel_lose_no_rows_and_hit_no_lock(tiny_config):
    from attribution_pipeline.defs.build import build_definitions
    from attribution_pipeline.workdir import prepare_dagster_home
    from attribution_pipeline.storage.artifacts import atomic_write_bytes

    cfg = tiny_config.override({"valuation": {"budget": 6}})
    layout = RunLayout.at(cfg.workdir)
    layout.workdir.mkdir(parents=True)
    atomic_write_bytes(layout.config_file, cfg.to_json().encode())
    instance = dg.DagsterInstance.from_config(str(prepare_dagster_home(layout.workdir)))
    assert build_definitions(cfg.workdir).resolve_job_def("valuation_base").execute_in_process(instance=instance).success
    keys = [c.key for c in read_plan(layout).coalitions[:4]]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_materialize_partition, args=(cfg.workdir, k, queue)) for k in keys]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    assert all(ok for _, ok, _ in results), results
    assert not any("lock" in " ".join(errs).lower() for _, _, errs in results)
    store = ResultStore(layout.database)
    ingest(layout.workdir, store)  # the workers left records; the head indexes them
    util = store.query(
        "SELECT coalition_key, count(*) AS n FROM utilities WHERE method = 'sft' AND coalition_key <> 'empty' GROUP BY ALL")
    assert dict(zip(util["coalition_key"], util["n"])) == {k: 2 for k in keys}
    done = instance.get_materialized_partitions(dg.AssetKey("coalition_utilities"))
    assert set(keys) <= done


READER = textwrap.dedent("""
    import sys, duckdb
    path = sys.argv[1]
    con = duckdb.connect(path, read_only=True)
    q = "SELECT count(*) FROM utilities"
    print(con.execute(q).fetchone()[0], flush=True)
    sys.stdin.readline()                       # hold the connection while the writer works
    print(con.execute(q).fetchone()[0], flush=True)
    con.close()
    print(duckdb.connect(path, read_only=True).execute(q).fetchone()[0], flush=True)
""")


def test_a_reader_holding_the_published_copy_never_blocks_writers(tmp_path):
    store = ResultStore(tmp_path / "attribution.duckdb")

    def row(i):
        return {"coalition_key": f"c-{i}", "property": "q", "value": float(i), "method": "sft", "seed": 0,
                "elapsed_s": 0.0}

    store.upsert("utilities", [row(0)])
    assert store.published.is_file()
    reader = subprocess.Popen([sys.executable, "-c", READER, str(store.published)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "1"
    t0 = time.perf_counter()
    for i in range(1, 11):  # the analyst's connection is open all along
        store.upsert("utilities", [row(i)])
    assert time.perf_counter() - t0 < 30
    assert store.query("SELECT count(*) AS n FROM utilities")["n"][0] == 11
    reader.stdin.write("\n")
    reader.stdin.flush()
    assert reader.stdout.readline().strip() == "1"  # a consistent snapshot while connected
    assert reader.stdout.readline().strip() == "11"  # reconnecting shows the latest publication
    assert reader.wait(30) == 0
