"""Rebuild the result tables of a work directory from its artifacts alone.

``attribution-pipeline reindex`` reads ``data/manifest.json`` (the contributors), ``plan.json`` (the
coalitions) and every utility record (``storage/records.py``) and upserts the ``contributors``,
``coalitions`` and ``utilities`` tables. A database that cannot be opened is moved aside (never
deleted) and a fresh one is built. The next ``run`` then finds every utility current and fits the
Shapley table without any fine-tune. Imports neither torch nor Dagster.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
from filelock import FileLock

from attribution_pipeline.coalitions import make_coalition
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.storage.records import read_utility_records
from attribution_pipeline.storage.results import TABLE_KEYS, ResultStore


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


def contributor_rows(layout: RunLayout) -> list[dict]:
    """The ``contributors`` rows of ``data/manifest.json`` (as ``register_contributors`` writes them)."""
    path = layout.data_dir / "manifest.json"
    if not path.is_file():
        raise ReindexError(f"{path} is missing: this work directory was never valued (run `attribution-pipeline "
                           "run` first); there is nothing to rebuild from")
    manifest = json.loads(path.read_text())
    return [{"contributor": c["contributor"], "n_images": c["n_images"], "data_hash": c["data_hash"],
             "n_skipped_files": c.get("n_skipped_files", 0), "path": c.get("path"),
             "n_duplicate_images": c.get("n_duplicate_images", 0),
             "duplicates_with": sorted(c.get("duplicates_with", {})), "removed_at": None}
            for c in manifest["contributors"]]


def coalition_rows(layout: RunLayout) -> list[dict]:
    """The ``coalitions`` rows of ``plan.json`` plus the empty coalition (as ``plan_coalitions`` writes them)."""
    path = layout.workdir / "plan.json"
    if not path.is_file():
        raise ReindexError(f"{path} is missing: no coalition plan to rebuild from (run `attribution-pipeline run`)")
    plan = json.loads(path.read_text())
    rows: dict[str, dict] = {}
    for i, c in enumerate(plan["coalitions"]):
        coalition = make_coalition(c["members"], c["kind"], i)
        rows.setdefault(coalition.key, coalition.as_row())  # the first occurrence wins, as in the plan
    empty = make_coalition([], "empty", -1)
    rows.setdefault(empty.key, empty.as_row())
    return list(rows.values())


def utility_rows(workdir: Path) -> tuple[list[dict], int, list[str]]:
    """The latest row per ``utilities`` key over every record (a later record replaces an earlier one),
    each stamped with its record's time; also the number of records and the unreadable ones."""
    records, problems = read_utility_records(workdir)
    keys = TABLE_KEYS["utilities"]
    latest: dict[tuple, dict] = {}
    for record in records:
        when = dt.datetime.fromtimestamp(record.written_at_ns / 1e9, dt.timezone.utc).replace(tzinfo=None)
        for row in record.rows:
            latest[tuple(row[k] for k in keys)] = {**row, "computed_at": when}
    return list(latest.values()), len(records), problems


def _upsert_by_columns(store: ResultStore, table: str, rows: list[dict]) -> int:
    """Upsert rows that may not all carry the same columns (records of older releases)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    return sum(store.upsert(table, group) for group in groups.values())


def reindex(workdir: str | Path) -> ReindexReport:
    """Rebuild ``contributors``, ``coalitions`` and ``utilities`` of ``workdir``'s database from its files."""
    layout = RunLayout.at(workdir)
    if not layout.workdir.is_dir():
        raise ReindexError(f"{layout.workdir} is not a directory")
    contributors, coalitions = contributor_rows(layout), coalition_rows(layout)
    utilities, n_records, problems = utility_rows(layout.workdir)
    report = ReindexReport(layout.database, move_aside_if_damaged(layout.database), problems=problems)
    store = ResultStore(layout.database, publish=False)  # published once, at the end
    report.contributors = store.upsert("contributors", contributors)
    report.coalitions = store.upsert("coalitions", coalitions)
    report.utilities = _upsert_by_columns(store, "utilities", utilities)
    report.records = n_records
    store.publish()
    return report
