"""Artifacts are the source of truth: a lost or damaged database is rebuilt from the work directory
(``attribution-pipeline reindex``) and the next run fits the same Shapley table without a fine-tune."""

from __future__ import annotations

import io

from attribution_pipeline import cli
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.runner import run_valuation
from attribution_pipeline.storage.records import read_utility_records
from attribution_pipeline.storage.results import ResultStore

SHAPLEY = ("SELECT contributor, property, estimator, value, v_full, v_empty FROM latest_shapley_values "
           "ORDER BY property, estimator, contributor")


def _checkpoints(layout: RunLayout) -> dict:
    """Every checkpoint folder's manifest and its modification time: a fine-tune rewrites it."""
    return {p: p.stat().st_mtime_ns for p in layout.workdir.glob("coalitions/**/checkpoint/manifest.json")}


def test_reindex_rebuilds_a_deleted_then_a_damaged_database_and_the_run_trains_nothing(tiny_config, capsys):
    out = io.StringIO()
    assert run_valuation(tiny_config, out=out) == 0, out.getvalue()
    layout = RunLayout.at(tiny_config.workdir)
    store = ResultStore(layout.database)
    table = store.query(SHAPLEY)
    utilities = store.query("SELECT * EXCLUDE (computed_at) FROM utilities ORDER BY ALL")
    checkpoints = _checkpoints(layout)
    records, problems = read_utility_records(layout.workdir)
    assert len(checkpoints) == 7 and not problems  # the full coalition and a budget of 6
    assert sum(len(r.rows) for r in records) == len(utilities)  # every row has its record

    for path in (layout.database, store.published):
        path.unlink()
    assert cli.main(["reindex", "--workdir", str(layout.workdir)]) == 0
    assert f"{len(utilities)} utility row(s)" in capsys.readouterr().out
    rebuilt = store.query("SELECT * EXCLUDE (computed_at) FROM utilities ORDER BY ALL")
    assert rebuilt.equals(utilities)

    again = io.StringIO()
    assert run_valuation(tiny_config, out=again) == 0, again.getvalue()
    assert "[shapley]" in again.getvalue()  # only the table is fitted again: nothing trained, nothing re-scored
    assert "[base]" not in again.getvalue() and "[coalitions]" not in again.getvalue()
    assert store.query(SHAPLEY).equals(table)
    assert _checkpoints(layout) == checkpoints  # no fine-tune: no checkpoint rewritten, none added

    current = store.query("SELECT * EXCLUDE (computed_at) FROM utilities ORDER BY ALL")  
    layout.database.write_bytes(b"not a duckdb file" * 100)  # damaged: moved aside, never deleted
    assert cli.main(["reindex", "--workdir", str(layout.workdir)]) == 0
    assert "moved the damaged database aside" in capsys.readouterr().out
    aside = list(layout.workdir.glob("attribution.duckdb.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"not a duckdb file")
    assert store.query("SELECT * EXCLUDE (computed_at) FROM utilities ORDER BY ALL").equals(current)
