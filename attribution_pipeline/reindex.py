"""Rebuild the result tables of a work directory from its artifacts alone.

``attribution-pipeline reindex`` reads ``data/manifest.json`` (the contributors), ``plan.json`` (the
coalitions) and every utility record (``storage/records.py``) and upserts the ``contributors``,
``coalitions`` and ``utilities`` tables. A database that cannot be opened is moved aside (never
deleted) and a fresh one is built. The next ``run`` then finds every utility current and fits the
Shapley table without any fine-tune. Imports neither torch nor Dagster.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
from filelock import FileLock

from attribution_pipeline.layout import RunLayout
from attribution_pipeline.storage.index import ingest
from attribution_pipeline.storage.results import ResultStore


class ReindexError(RuntimeError):
    """The work directory lacks what a rebuild needs."""


@dataclass
class ReindexReport:
    database: Path
    moved_aside: list[Path] = field(default_factory=list)
    contributors: int = 0
    coalitions: int = 0
    utilities: int = 0
    records: int = 0
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"moved the damaged database aside to {p}" for p in self.moved_aside]
        out.append(f"rebuilt {self.database}: {self.contributors} contributor(s), {self.coalitions} coalition(s), "
                   f"{self.utilities} utility row(s) from {self.records} record(s)")
        return out + [f"warning: {p}" for p in self.problems]


def _healthy(db: Path) -> bool:
    """True when DuckDB opens ``db`` and reads its utilities (or it has no tables yet)."""
    try:
        with duckdb.connect(str(db), read_only=True, config={"enable_external_access": False}) as con:
            tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
            if "utilities" in tables:
                con.execute("SELECT count(*) FROM utilities").fetchall()
        return True
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():  # in use by another process: busy, not damaged
            raise ReindexError(f"{db} is in use by another process ({str(exc).splitlines()[0]}); "
                               "stop the running valuation or query and reindex again") from exc
        return False
    except duckdb.Error:
        return False


def move_aside_if_damaged(db: Path) -> list[Path]:
    """Rename a database (and its WAL) that DuckDB cannot read to ``<name>.damaged-<UTC time>``."""
    with FileLock(str(db) + ".lock", timeout=600):  # never judge a file a writer holds
        if not db.exists() or _healthy(db):
            return []
        return _rename_damaged(db)


def _rename_damaged(db: Path) -> list[Path]:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = []
    for path in (db, db.with_name(db.name + ".wal")):
        if path.exists():
            target = path.with_name(f"{path.name}.damaged-{stamp}-{os.getpid()}")
            os.replace(path, target)
            moved.append(target)
    return moved


def _read(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ReindexError(f"{path} is missing: {what} (run `attribution-pipeline run` first); there is nothing "
                           "to rebuild from")
    return json.loads(path.read_text())


def reindex(workdir: str | Path) -> ReindexReport:
    """Rebuild ``contributors``, ``coalitions`` and ``utilities`` of ``workdir``'s database from its files."""
    layout = RunLayout.at(workdir)
    if not layout.workdir.is_dir():
        raise ReindexError(f"{layout.workdir} is not a directory")
    _read(layout.data_dir / "manifest.json", "this work directory was never valued")
    _read(layout.workdir / "plan.json", "no coalition plan to rebuild from")
    report = ReindexReport(layout.database, move_aside_if_damaged(layout.database))
    store = ResultStore(layout.database, publish=False)  # published once, at the end
    done = ingest(layout.workdir, store)
    report.contributors, report.coalitions, report.utilities = done.contributors, done.coalitions, done.utilities
    report.records, report.problems = done.records, done.problems
    store.publish()
    return report
