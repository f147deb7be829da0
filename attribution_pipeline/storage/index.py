"""DuckDB as an index of the work directory: the rows of ``contributors``, ``coalitions`` and
``utilities`` are read from the artifacts the stages write (``data/manifest.json``, ``plan.json``
and the utility records, ``storage/records.py``) and upserted by one writer, the head process.

Workers (any run that trains, generates or scores: the base job and the coalition runs) never open
DuckDB: on a cluster the database lives with the head, and file locks over a network file system are
not to be trusted. ``ingest`` is what the head calls before it reads (the CLI before each step, the
contributors sensor, the Shapley step); ``attribution-pipeline reindex`` calls it on a fresh database.
Imports neither torch nor Dagster.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

from attribution_pipeline.coalitions import make_coalition
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.storage.records import read_utility_records
from attribution_pipeline.storage.results import TABLE_KEYS, ResultStore


@dataclass
class Ingested:
    """What one ``ingest`` upserted, and the records it could not read."""

    contributors: int = 0
    coalitions: int = 0
    utilities: int = 0
    records: int = 0
    problems: list[str] = field(default_factory=list)


def contributor_rows(manifest: dict) -> list[dict]:
    """The ``contributors`` rows of a data manifest (``data/manifest.json``)."""
    return [{"contributor": c["contributor"], "n_images": c["n_images"], "data_hash": c["data_hash"],
             "n_skipped_files": c.get("n_skipped_files", 0), "path": c.get("path"),
             "n_duplicate_images": c.get("n_duplicate_images", 0),
             "duplicates_with": sorted(c.get("duplicates_with", {})), "removed_at": None}
            for c in manifest["contributors"]]


def plan_rows(plan: dict) -> list[dict]:
    """The ``coalitions`` rows of a ``plan.json`` document plus the empty coalition; a coalition
    planned twice keeps its first position."""
    rows: dict[str, dict] = {}
    for i, c in enumerate(plan["coalitions"]):
        coalition = make_coalition(c["members"], c["kind"], i)
        rows.setdefault(coalition.key, coalition.as_row())
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


def register_contributor_rows(store: ResultStore, rows: list[dict]) -> int:
    """Upsert ``rows``; stamp ``removed_at`` on contributors no longer among them (their rows and
    past rounds stay)."""
    n = store.upsert("contributors", rows)
    placeholders = ", ".join("?" for _ in rows)
    store.execute(f"UPDATE contributors SET removed_at = current_timestamp WHERE removed_at IS NULL "
                  f"AND contributor NOT IN ({placeholders})", [r["contributor"] for r in rows])
    return n


def _upsert_by_columns(store: ResultStore, table: str, rows: list[dict]) -> int:
    """Upsert rows that may not all carry the same columns (records of older releases)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    return sum(store.upsert(table, group) for group in groups.values())


def ingest(workdir: str | Path, store: ResultStore) -> Ingested:
    """Upsert what the work directory's artifacts hold into ``store``: idempotent, and a no-op for
    artifacts that do not exist yet (a work directory before its first base run)."""
    layout = RunLayout.at(workdir)
    out = Ingested()
    manifest = layout.data_dir / "manifest.json"
    if manifest.is_file():
        out.contributors = register_contributor_rows(store, contributor_rows(json.loads(manifest.read_text())))
    plan = layout.workdir / "plan.json"
    if plan.is_file():
        out.coalitions = store.upsert("coalitions", plan_rows(json.loads(plan.read_text())))
    utilities, out.records, out.problems = utility_rows(layout.workdir)
    known = _known_utilities(store)
    fresh = [r for r in utilities if _utility_identity(r) not in known]
    out.utilities = _upsert_by_columns(store, "utilities", fresh) if fresh else 0
    return out


def _utility_identity(row: dict) -> tuple:
    return (*(row[k] for k in TABLE_KEYS["utilities"]), row.get("inputs_signature"), float(row["value"]))


def _known_utilities(store: ResultStore) -> set[tuple]:
    """Identities of the utility rows the database already holds (so an ingest writes only news)."""
    cols = ", ".join(TABLE_KEYS["utilities"])
    df = store.query(f"SELECT {cols}, inputs_signature, value FROM utilities")
    return {tuple(r) for r in df.iter_rows()} if len(df) else set()
