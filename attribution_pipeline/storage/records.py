"""Utility records: every utility row also lives as JSON beside the artifacts it was computed from.

DuckDB is an index, not the only home of a result: ``write_utility_records`` puts the rows a
coalition upserts into ``utilities`` under that coalition run's folder, as
``<run_dir>/utilities/<hash>.json`` (one file per set of rows: coalition, method, seed, properties and
inputs signature), written atomically. ``read_utility_records`` finds them all under a work
directory, so ``attribution_pipeline.reindex`` can rebuild the table from the work directory alone.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from attribution_pipeline.layout import signature
from attribution_pipeline.storage.artifacts import atomic_write_bytes

RECORDS_DIR = "utilities"
FORMAT = 1
# where run folders sit: coalitions/<key>/ (sFT), coalitions/<key>/<method>-seed<s>/, models/<x>/
RECORD_GLOBS = ("coalitions/*/utilities/*.json", "coalitions/*/*/utilities/*.json", "models/*/utilities/*.json",
                "models/*/*/utilities/*.json")  # the last: v(∅)'s replicates (models/untrained/replicate-j)


@dataclass(frozen=True)
class UtilityRecord:
    path: Path
    written_at_ns: int
    rows: list[dict[str, Any]]


def _jsonable(value: Any) -> Any:
    """Timestamps as ISO text, numpy scalars as Python numbers, non-finite floats as text (strict
    JSON has no NaN; ``_restore`` turns them back)."""
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _restore(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"float"}:
        return float(value["float"])
    if isinstance(value, list):
        return [_restore(v) for v in value]
    return value


def record_name(rows: list[dict[str, Any]]) -> str:
    """A stable file name for a set of rows: the same work re-recorded overwrites its own file."""
    first = rows[0]
    props = sorted(str(r["property"]) for r in rows)
    return signature(first["coalition_key"], first["method"], first["seed"], props, first.get("inputs_signature"))


def write_utility_records(run_dir: str | Path, rows: Iterable[dict[str, Any]]) -> Path | None:
    """Write ``rows`` (dicts as upserted into ``utilities``) atomically under ``run_dir/utilities/``;
    returns the file, or None when there is nothing to record."""
    rows = [dict(r) for r in rows]
    if not rows:
        return None
    path = Path(run_dir) / RECORDS_DIR / f"{record_name(rows)}.json"
    doc = {"format": FORMAT, "written_at_ns": time.time_ns(), "rows": [_jsonable(r) for r in rows]}
    atomic_write_bytes(path, (json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n").encode())
    return path


def _rows_of(paths: Iterable[Path], since_ns: int) -> list[dict[str, Any]]:
    found = []
    for path in sorted(paths):
        try:
            doc = json.loads(path.read_text())
            if int(doc["written_at_ns"]) >= since_ns:
                found.append((int(doc["written_at_ns"]),
                              [{k: _restore(v) for k, v in r.items()} for r in doc["rows"]]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return [row for _, rows in sorted(found, key=lambda f: f[0]) for row in rows]


def rows_in(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every row recorded under one run folder (``run_dir/utilities/*.json``), oldest record first;
    unreadable records are skipped (``read_utility_records`` reports them)."""
    return _rows_of((Path(run_dir) / RECORDS_DIR).glob("*.json"), 0)


def recorded_since(folder: str | Path, since_ns: int) -> list[dict[str, Any]]:
    """Rows recorded at or after ``since_ns`` under ``folder`` and its run folders (a coalition's
    folder holds one per method and seed): what a round measured there, for progress lines."""
    return _rows_of(Path(folder).glob(f"**/{RECORDS_DIR}/*.json"), since_ns)


def read_utility_records(workdir: str | Path) -> tuple[list[UtilityRecord], list[str]]:
    """Every utility record under ``workdir``, oldest first, and a problem line per unreadable file
    (a damaged record is reported, never fatal: the others still rebuild the table)."""
    root = Path(workdir)
    records, problems = [], []
    for pattern in RECORD_GLOBS:
        for path in sorted(root.glob(pattern)):
            try:
                doc = json.loads(path.read_text())
                rows = [{k: _restore(v) for k, v in r.items()} for r in doc["rows"]]
                records.append(UtilityRecord(path, int(doc["written_at_ns"]), rows))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                problems.append(f"{path}: unreadable utility record ({exc}); left out")
    records.sort(key=lambda r: (r.written_at_ns, str(r.path)))
    return records, problems
