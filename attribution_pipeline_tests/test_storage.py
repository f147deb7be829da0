import multiprocessing as mp
import time

import pytest

from attribution_pipeline.storage.artifacts import (
    ArtifactMissingError, atomic_folder, is_complete, read_manifest,
)
from attribution_pipeline.storage.results import ResultStore


def test_atomic_folder_commits_only_complete_content(tmp_path):
    final = tmp_path / "art"
    with pytest.raises(RuntimeError):
        with atomic_folder(final) as tmp:
            (tmp / "a.bin").write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert not final.exists() and not list(tmp_path.glob(".art.tmp-*"))
    with atomic_folder(final, {"kind": "x"}) as tmp:
        (tmp / "a.bin").write_bytes(b"one")
    m1 = read_manifest(final)
    with atomic_folder(final) as tmp:
        (tmp / "a.bin").write_bytes(b"two")
    m2 = read_manifest(final)
    assert m1["kind"] == "x" and m1["content_hash"] != m2["content_hash"]
    assert (final / "a.bin").read_bytes() == b"two"


def test_folder_without_manifest_is_not_complete(tmp_path):
    (tmp_path / "half").mkdir()
    assert not is_complete(tmp_path / "half")
    with pytest.raises(ArtifactMissingError, match="materialize"):
        read_manifest(tmp_path / "half")


def test_upsert_is_idempotent(tmp_path):
    store = ResultStore(tmp_path / "db.duckdb")
    row = {"coalition_key": "c-1", "property": "quality", "value": 1.0, "method": "sft", "seed": 0, "elapsed_s": 1.0}
    store.upsert("utilities", [row])
    store.upsert("utilities", [{**row, "value": 2.0}])
    df = store.query("SELECT value FROM utilities")
    assert df["value"].to_list() == [2.0]


def _writer(path, worker, n):
    store = ResultStore(path)
    for i in range(n):
        store.upsert("utilities", [{"coalition_key": f"c-{worker}-{i}", "property": "q", "value": float(i),
                                    "method": "sft", "seed": 0, "elapsed_s": 0.0}])


def test_parallel_writers_lose_no_rows_and_never_hit_the_lock(tmp_path):
    path = tmp_path / "db.duckdb"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 10)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert ResultStore(path).query("SELECT count(*) AS n FROM utilities")["n"][0] == 40


def _write_many(final, worker, n, start=None):
    if start is not None:
        start.wait(60)  # both writers begin together
    for i in range(n):
        with atomic_folder(final, {"writer": worker, "i": i}) as tmp:
            (tmp / "a.bin").write_bytes(f"{worker}-{i}".encode() * 1000)


def test_two_processes_finishing_the_same_artifact_never_fail_or_mix(tmp_path):
    final = tmp_path / "art"
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_write_many, args=(final, w, 300, start)) for w in range(2)]
    for p in procs:
        p.start()
    time.sleep(3)
    start.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    m = read_manifest(final)
    assert (final / "a.bin").read_bytes() == f"{m['writer']}-{m['i']}".encode() * 1000  # one writer's content
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no temporary or moved-aside folder left
