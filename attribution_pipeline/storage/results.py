"""DuckDB results store: every number a valuation produces, queryable with SQL.

DuckDB lets one process write a database file at a time. Coalition runs may be many processes,
so every connection here is opened briefly under an inter-process file lock
(``attribution.duckdb.lock``) and closed at once: writers queue instead of failing. Writes are
idempotent upserts keyed by their natural keys, so a re-run after a crash adds no duplicates.
An external reader holding the file (an analyst's session) is waited for with back-off.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import duckdb
import polars as pl
from filelock import FileLock

from attribution_pipeline.storage.artifacts import temp_prefix

# "worker" in the runs that train, generate and score (set by the engine's launcher): they record their
# rows beside their artifacts (``storage/records.py``) and never open DuckDB (``storage/index.py``).
ROLE_ENV = "ATTRIBUTION_PIPELINE_ROLE"


class WorkerStoreError(RuntimeError):
    """A worker process tried to open the results database."""

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS contributors (
        contributor VARCHAR PRIMARY KEY,
        n_images INTEGER NOT NULL,
        data_hash VARCHAR NOT NULL,
        n_skipped_files INTEGER DEFAULT 0,
        path VARCHAR,
        registered_at TIMESTAMP DEFAULT current_timestamp
    )""",
    """CREATE TABLE IF NOT EXISTS coalitions (
        coalition_key VARCHAR PRIMARY KEY,
        members VARCHAR[] NOT NULL,
        size INTEGER NOT NULL,
        kind VARCHAR NOT NULL,          -- 'empty', 'full' or 'sampled'
        plan_index INTEGER,             -- position in the seeded coalition design (prefix-stable)
        planned_at TIMESTAMP DEFAULT current_timestamp
    )""",
    """CREATE TABLE IF NOT EXISTS utilities (
        coalition_key VARCHAR NOT NULL,
        property VARCHAR NOT NULL,
        value DOUBLE NOT NULL,
        method VARCHAR NOT NULL,        -- 'sft', 'untrained', 'full_model', ...
        seed INTEGER NOT NULL,          -- the coalition fine-tune seed
        elapsed_s DOUBLE,               -- fine-tune + generation + scoring, seconds
        base_version VARCHAR,           -- data version of the model the coalition started from
        n_images INTEGER,               -- generated images scored
        device VARCHAR,
        computed_at TIMESTAMP DEFAULT current_timestamp,
        PRIMARY KEY (coalition_key, property, method, seed)
    )""",
    """CREATE TABLE IF NOT EXISTS valuation_rounds (
        round_id VARCHAR PRIMARY KEY,
        computed_at TIMESTAMP NOT NULL,
        contributors VARCHAR[] NOT NULL,
        budget INTEGER NOT NULL,
        n_coalitions INTEGER NOT NULL,
        base_version VARCHAR,
        default_estimator VARCHAR,
        seed INTEGER,
        versions VARCHAR                -- JSON: package versions
    )""",
    """CREATE TABLE IF NOT EXISTS shapley_values (
        round_id VARCHAR NOT NULL,
        contributor VARCHAR NOT NULL,
        property VARCHAR NOT NULL,
        value DOUBLE NOT NULL,
        std_error DOUBLE,
        ci_low DOUBLE,
        ci_high DOUBLE,
        rank INTEGER,
        rank_low INTEGER,
        rank_high INTEGER,
        estimator VARCHAR NOT NULL,
        value_kind VARCHAR NOT NULL,    -- 'shapley' or 'banzhaf'
        is_default BOOLEAN NOT NULL,    -- the estimator the CLI prints
        n_coalitions INTEGER NOT NULL,
        v_full DOUBLE,
        v_empty DOUBLE,
        computed_at TIMESTAMP NOT NULL,
        PRIMARY KEY (round_id, contributor, property, estimator)
    )""",
    # P(contributor in the top k by value) across the bootstrap draws; added after the first release
    "ALTER TABLE shapley_values ADD COLUMN IF NOT EXISTS p_top DOUBLE",
    "ALTER TABLE shapley_values ADD COLUMN IF NOT EXISTS top_k INTEGER",
    # the signature of everything a utility was computed from (config, data, base, instruments):
    # a row whose signature differs from the current one is stale and is recomputed
    "ALTER TABLE utilities ADD COLUMN IF NOT EXISTS inputs_signature VARCHAR",
    # numeric precision of the model's forward passes ('bf16' autocast or 'fp32'), beside device
    "ALTER TABLE utilities ADD COLUMN IF NOT EXISTS precision VARCHAR",
    # the utility method the round's values were fitted on ('sft', 'ft' or 'retrain')
    "ALTER TABLE valuation_rounds ADD COLUMN IF NOT EXISTS method VARCHAR",
    "ALTER TABLE shapley_values ADD COLUMN IF NOT EXISTS method VARCHAR",
    """CREATE TABLE IF NOT EXISTS lds_results (
        round_id VARCHAR NOT NULL,      -- the valuation round whose values are scored
        method VARCHAR NOT NULL,        -- utility method the values were fitted on
        estimator VARCHAR NOT NULL,
        is_default BOOLEAN,
        property VARCHAR NOT NULL,
        alpha DOUBLE NOT NULL,          -- fraction of contributors each test coalition keeps
        n_test INTEGER NOT NULL,
        n_seeds INTEGER NOT NULL,       -- retrain seeds per test coalition
        test_seed INTEGER NOT NULL,     -- seed of the test-coalition draw
        lds DOUBLE,                     -- Spearman x 100, mean over seeds
        lds_ci DOUBLE,                  -- half the width of [lds_lo, lds_hi]
        per_seed DOUBLE[],
        ceiling DOUBLE,                 -- oracle: 100 * sqrt(test_retest / 100), what the expected utility scores
        test_coalitions VARCHAR[],
        computed_at TIMESTAMP NOT NULL,
        PRIMARY KEY (round_id, estimator, property, alpha, n_test, n_seeds, test_seed)
    )""",
    # LDS with honest intervals (evaluation/lds.py); `ceiling` was test-retest before these columns
    "ALTER TABLE lds_results ADD COLUMN IF NOT EXISTS test_retest DOUBLE",
    "ALTER TABLE lds_results ADD COLUMN IF NOT EXISTS lds_lo DOUBLE",
    "ALTER TABLE lds_results ADD COLUMN IF NOT EXISTS lds_hi DOUBLE",
    "ALTER TABLE lds_results ADD COLUMN IF NOT EXISTS random_lo DOUBLE",
    "ALTER TABLE lds_results ADD COLUMN IF NOT EXISTS random_hi DOUBLE",
    "ALTER TABLE lds_results ADD COLUMN IF NOT EXISTS n_random INTEGER",
    "ALTER TABLE lds_results ADD COLUMN IF NOT EXISTS inside_random BOOLEAN",
    "ALTER TABLE lds_results ADD COLUMN IF NOT EXISTS retrain_seeds INTEGER[]",
    "ALTER TABLE lds_results ADD COLUMN IF NOT EXISTS n_boot INTEGER",
    "ALTER TABLE lds_results ADD COLUMN IF NOT EXISTS interval_covers VARCHAR",
    "ALTER TABLE lds_results ADD COLUMN IF NOT EXISTS versus VARCHAR",
    "ALTER TABLE lds_results ADD COLUMN IF NOT EXISTS diff DOUBLE",
    "ALTER TABLE lds_results ADD COLUMN IF NOT EXISTS diff_lo DOUBLE",
    "ALTER TABLE lds_results ADD COLUMN IF NOT EXISTS diff_hi DOUBLE",
    # rows written before the columns above: their `ceiling` was the test-retest agreement; move it
    "UPDATE lds_results SET test_retest = ceiling, ceiling = 100 * sqrt(greatest(ceiling, 0) / 100) "
    "WHERE test_retest IS NULL AND lds_lo IS NULL AND ceiling IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS utility_fidelity (
        method VARCHAR NOT NULL,        -- the cheap utility method ('sft', 'ft') judged against retraining
        property VARCHAR NOT NULL,
        size INTEGER NOT NULL,          -- coalition size; 0 = pooled over sizes (mean weighted by coalitions)
        n INTEGER NOT NULL,             -- coalitions
        spearman DOUBLE,                -- within-size Spearman of the method's utilities vs retraining
        lo DOUBLE,                      -- 95% bootstrap over coalitions within size (pooled row only)
        hi DOUBLE,
        reference VARCHAR,              -- what the retrained utility is (the mean over which seeds)
        test_seed INTEGER NOT NULL,     -- the LDS test-coalition draw the coalitions come from
        computed_at TIMESTAMP NOT NULL,
        PRIMARY KEY (method, property, size, test_seed)
    )""",
    """CREATE TABLE IF NOT EXISTS counterfactual_results (
        round_id VARCHAR NOT NULL,
        property VARCHAR NOT NULL,
        scenario VARCHAR NOT NULL,      -- 'remove_top', 'keep_top' or 'remove_random'
        fraction DOUBLE NOT NULL,       -- of contributors removed (remove_*) or kept (keep_top)
        ranking VARCHAR NOT NULL,       -- 'shapley' (the round's default), 'shapley-<method>', 'loo' or 'random'
        repeat INTEGER NOT NULL,        -- 0, or the index of the random draw
        coalition_key VARCHAR NOT NULL, -- the retrained coalition
        removed VARCHAR[] NOT NULL,
        kept INTEGER NOT NULL,
        v_full DOUBLE NOT NULL,         -- retrained utility of all contributors, mean over seeds
        v_after DOUBLE NOT NULL,        -- mean over seeds
        relative_change DOUBLE,         -- mean over seeds of (v_after - v_full) / |v_full|, paired by seed
        rc_lo DOUBLE,                   -- t interval over the retrain seeds (NULL with one seed)
        rc_hi DOUBLE,
        per_seed DOUBLE[],
        retrain_seeds INTEGER[],
        n_seeds INTEGER NOT NULL,
        computed_at TIMESTAMP NOT NULL,
        PRIMARY KEY (round_id, property, scenario, fraction, ranking, repeat)
    )""",
    # re-valuation (stages/lineage.py): which contributors a utility's or a round's base never saw,
    # the policy and the estimator a round used, and contributors' duplicate images and removal
    "ALTER TABLE utilities ADD COLUMN IF NOT EXISTS base_predates VARCHAR[]",
    "ALTER TABLE valuation_rounds ADD COLUMN IF NOT EXISTS policy VARCHAR",
    "ALTER TABLE valuation_rounds ADD COLUMN IF NOT EXISTS estimator VARCHAR",
    "ALTER TABLE valuation_rounds ADD COLUMN IF NOT EXISTS base_trained_on VARCHAR[]",
    "ALTER TABLE valuation_rounds ADD COLUMN IF NOT EXISTS base_predates VARCHAR[]",
    # what the round's property instruments were built from: a trusted reference, or the fallback
    "ALTER TABLE valuation_rounds ADD COLUMN IF NOT EXISTS instrument VARCHAR",
    "ALTER TABLE contributors ADD COLUMN IF NOT EXISTS n_duplicate_images INTEGER DEFAULT 0",
    "ALTER TABLE contributors ADD COLUMN IF NOT EXISTS duplicates_with VARCHAR[]",
    "ALTER TABLE contributors ADD COLUMN IF NOT EXISTS removed_at TIMESTAMP",
    # what each interval covers (how it was obtained), what it leaves out, the estimator's known bias
    # and its warnings (valuation/scope.py); the round keeps every warning of its fits
    "ALTER TABLE shapley_values ADD COLUMN IF NOT EXISTS uncertainty VARCHAR",
    "ALTER TABLE shapley_values ADD COLUMN IF NOT EXISTS interval_excludes VARCHAR",
    "ALTER TABLE shapley_values ADD COLUMN IF NOT EXISTS known_bias VARCHAR",
    "ALTER TABLE shapley_values ADD COLUMN IF NOT EXISTS warnings VARCHAR[]",
    "ALTER TABLE valuation_rounds ADD COLUMN IF NOT EXISTS warnings VARCHAR[]",
    # where v(N) came from ('coalition' or 'full_model', valuation.v_full), and per property the share of
    # v(N) − v(∅) that is the jump from no data to one contributor's (mean over singletons; NULL without all)
    "ALTER TABLE valuation_rounds ADD COLUMN IF NOT EXISTS v_full_source VARCHAR",
    "ALTER TABLE shapley_values ADD COLUMN IF NOT EXISTS singleton_share DOUBLE",
    # when a run last ended on the round (a round computed earlier is current again when the inputs
    # return to what it was fitted on, e.g. a reference switched off and on again)
    "ALTER TABLE valuation_rounds ADD COLUMN IF NOT EXISTS confirmed_at TIMESTAMP",
    # the utility noise every interval of a row includes (σ of one measurement, its degrees of freedom;
    # NULL: unknown, no replicates), the measurements per replicated coalition and the plan's design
    "ALTER TABLE shapley_values ADD COLUMN IF NOT EXISTS noise_std DOUBLE",
    "ALTER TABLE shapley_values ADD COLUMN IF NOT EXISTS noise_dof INTEGER",
    "ALTER TABLE valuation_rounds ADD COLUMN IF NOT EXISTS replicates INTEGER",
    "ALTER TABLE valuation_rounds ADD COLUMN IF NOT EXISTS design VARCHAR",
    # cheaper attributions to compare Shapley values with (stages/baselines.py), one row per method,
    # property and contributor, for the θ* (``basis``, its content hash) they were computed on
    """CREATE TABLE IF NOT EXISTS attributions (
        basis VARCHAR NOT NULL,         -- content hash of the full model θ* (and so of the data it saw)
        method VARCHAR NOT NULL,        -- 'trak', 'pixel_sim_max', 'loo_sft', ... (config.BASELINE_METHODS)
        family VARCHAR NOT NULL,        -- 'size', 'similarity', 'own_data', 'gradient' or 'loo'
        property VARCHAR NOT NULL,      -- property-free methods repeat their values under every property
        contributor VARCHAR NOT NULL,
        value DOUBLE NOT NULL,          -- higher = more credit (signs as computed, never flipped)
        rank INTEGER,                   -- 1 = most credit
        cost_s DOUBLE,                  -- seconds to compute the method (shared caches counted in full)
        provenance VARCHAR,             -- JSON: instrument, timesteps, projection dim and seed, lambda, aggregation
        computed_at TIMESTAMP NOT NULL,
        PRIMARY KEY (basis, method, property, contributor)
    )""",
    """CREATE OR REPLACE VIEW latest_shapley_values AS
        SELECT s.* FROM shapley_values s
        WHERE s.round_id = (SELECT round_id FROM valuation_rounds
                            ORDER BY coalesce(confirmed_at, computed_at) DESC, computed_at DESC LIMIT 1)""",
    # every round's default-estimator value of every contributor beside the previous round's: how
    # each contributor's value moved as contributors arrived, changed or left
    """CREATE OR REPLACE VIEW shapley_history AS
        SELECT r.computed_at, s.round_id, r.policy, len(r.contributors) AS n_contributors, r.base_predates,
               s.property, s.contributor, s.value, s.rank,
               s.value - lag(s.value) OVER w AS change, s.rank - lag(s.rank) OVER w AS rank_change
        FROM shapley_values s JOIN valuation_rounds r USING (round_id)
        WHERE s.is_default
        WINDOW w AS (PARTITION BY s.property, s.contributor, coalesce(s.method, 'sft') ORDER BY r.computed_at)""",
    # one shape for every attribution of the latest round: its default Shapley values and the baselines
    # computed on the θ* the round's utilities started from
    """CREATE OR REPLACE VIEW latest_attributions AS
        SELECT 'shapley-' || coalesce(s.method, 'sft') AS method, 'shapley' AS family, s.property, s.contributor,
               s.value, s.rank, s.ci_low, s.ci_high, s.round_id AS source
        FROM latest_shapley_values s WHERE s.is_default
        UNION ALL
        SELECT a.method, a.family, a.property, a.contributor, a.value, a.rank, NULL, NULL, a.basis
        FROM attributions a
        WHERE a.computed_at = (SELECT max(computed_at) FROM attributions b
                               WHERE b.method = a.method AND b.property = a.property)""",
]

TABLE_KEYS = {
    "contributors": ("contributor",),
    "coalitions": ("coalition_key",),
    "utilities": ("coalition_key", "property", "method", "seed"),
    "valuation_rounds": ("round_id",),
    "shapley_values": ("round_id", "contributor", "property", "estimator"),
    "lds_results": ("round_id", "estimator", "property", "alpha", "n_test", "n_seeds", "test_seed"),
    "counterfactual_results": ("round_id", "property", "scenario", "fraction", "ranking", "repeat"),
    "utility_fidelity": ("method", "property", "size", "test_seed"),
    "attributions": ("basis", "method", "property", "contributor"),
}


def apply_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create or bring up to date every table and view. A ``counterfactual_results`` from before
    counterfactual curves (no ``fraction`` in its key) is kept as ``counterfactual_results_v1``."""
    cols = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                      "WHERE table_name = 'counterfactual_results'").fetchall()}
    if cols and "fraction" not in cols:
        con.execute("ALTER TABLE counterfactual_results RENAME TO counterfactual_results_v1")
    for stmt in SCHEMA:
        con.execute(stmt)


def published_path(path: str | Path) -> Path:
    """The read-only copy of a database: ``attribution.duckdb`` → ``attribution_published.duckdb``."""
    path = Path(path)
    return path.with_name(f"{path.stem}_published{path.suffix}")


class ResultStore:
    """All reads and writes of ``<workdir>/attribution.duckdb``.

    After every write the database is also *published*: checkpointed, copied to a temporary file
    and renamed onto ``attribution_published.duckdb``. An analyst opens that copy read-only
    (``duckdb.connect(path, read_only=True)`` or ``attribution-pipeline query --published``) for as
    long as they like: the rename never waits for them and they never block a writer; reconnect to
    see newer results.
    """

    def __init__(self, path: str | Path, lock_timeout_s: float = 600.0, publish: bool = True):
        if os.environ.get(ROLE_ENV) == "worker":
            raise WorkerStoreError(f"{ROLE_ENV}=worker: a worker never opens the results database ({path}); it "
                                   "writes utility records beside its artifacts, which the head ingests")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.path) + ".lock", timeout=lock_timeout_s)
        self._schema_ready = False
        self.publish_enabled = publish

    @property
    def published(self) -> Path:
        return published_path(self.path)

    def publish(self) -> Path:
        """Refresh the published read-only copy atomically (copy to a temporary name, then rename)."""
        with self._lock:
            con = self._open_with_backoff()
            try:
                if not self._schema_ready:
                    apply_schema(con)
                    self._schema_ready = True
                con.execute("CHECKPOINT")  # everything in the main file, nothing left in the WAL
            finally:
                con.close()
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix(self.published.name), dir=self.path.parent)
            os.close(fd)
            try:
                shutil.copyfile(self.path, tmp)
                os.replace(tmp, self.published)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return self.published

    @contextlib.contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection under the inter-process lock."""
        with self._lock:
            con = self._open_with_backoff()
            try:
                if not self._schema_ready:
                    apply_schema(con)
                    self._schema_ready = True
                yield con
            finally:
                con.close()

    def _open_with_backoff(self, attempts: int = 40) -> duckdb.DuckDBPyConnection:
        delay = 0.05
        for i in range(attempts):
            try:
                return duckdb.connect(str(self.path))
            except duckdb.IOException as exc:  # another process (not ours) holds the file
                if "lock" not in str(exc).lower() or i == attempts - 1:
                    raise
                time.sleep(delay)
                delay = min(delay * 1.5, 2.0)
        raise RuntimeError("unreachable")

    # ---- writes -------------------------------------------------------------------------
    def upsert(self, table: str, rows: Sequence[dict[str, Any]]) -> int:
        """Insert or replace ``rows`` by the table's natural key, in one transaction."""
        if not rows:
            return 0
        keys = TABLE_KEYS[table]
        columns = list(rows[0].keys())
        missing = [k for k in keys if k not in columns]
        if missing:
            raise ValueError(f"rows for {table} lack key column(s) {missing}")
        df = pl.DataFrame(rows, infer_schema_length=None)
        with self.connect() as con:
            con.register("incoming", df)
            con.execute("BEGIN TRANSACTION")
            try:
                on = " AND ".join(f"t.{k} = i.{k}" for k in keys)
                con.execute(f"DELETE FROM {table} t USING incoming i WHERE {on}")
                cols = ", ".join(columns)
                con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM incoming")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            finally:
                con.unregister("incoming")
        if self.publish_enabled:
            self.publish()
        return len(rows)

    def delete_where(self, table: str, where: str, params: Sequence[Any] = ()) -> None:
        self.execute(f"DELETE FROM {table} WHERE {where}", params)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """One write statement (UPDATE, DELETE); published afterwards like an upsert."""
        with self.connect() as con:
            con.execute(sql, list(params))
        if self.publish_enabled:
            self.publish()

    # ---- reads --------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
        with self.connect() as con:
            return con.execute(sql, list(params)).pl()

    def utilities_for(self, keys: Sequence[str], method: str = "sft") -> pl.DataFrame:
        """Rows of ``utilities`` for the given coalition keys and method."""
        if not keys:
            return pl.DataFrame()
        with self.connect() as con:
            con.register("wanted", pl.DataFrame({"coalition_key": list(keys)}))
            try:
                return con.execute(
                    "SELECT u.* FROM utilities u JOIN wanted w USING (coalition_key) WHERE u.method = ?",
                    [method],
                ).pl()
            finally:
                con.unregister("wanted")


# ---- the analyst's query surface ----------------------------------------------------------------
class QueryError(ValueError):
    """A query that was refused or failed; the message is one line and says what to do."""


WRITE_HINT = ("`query` opens the database read-only; to change it on purpose run "
              "`attribution-pipeline query --write \"...\"` (files stay out of reach unless --external-access)")
FILES_HINT = ("`query` cannot read or write files by default; pass --external-access to allow "
              "read_csv, COPY ... TO, ATTACH and extensions")


def run_query(db_path: str | Path, sql: str, *, write: bool = False, external_access: bool = False,
              lock_timeout_s: float = 600.0) -> pl.DataFrame | None:
    """Run ``sql`` on the database at ``db_path``; the last statement's result, or None.

    Read-only by default (``read_only=True``), and with DuckDB's external access off
    (``enable_external_access=false``: no COPY TO, read_csv, ATTACH or extension install), so an
    analyst's query can neither destroy results nor write files by accident. ``write=True`` opens it
    read-write; ``external_access=True`` allows files. The connection is taken under the store's
    inter-process lock (``attribution.duckdb.lock``): a running valuation's writers queue behind it
    for the duration of the query instead of failing on DuckDB's own file lock.
    """
    db_path = Path(db_path)
    if not db_path.is_file():
        raise QueryError(f"{db_path} does not exist")
    if not sql.strip():
        raise QueryError("the SQL statement is empty; e.g. `attribution-pipeline query \"SELECT * FROM utilities\"`")
    with FileLock(str(db_path) + ".lock", timeout=lock_timeout_s):
        return _execute(db_path, sql, write=write, external_access=external_access)


def _execute(path: Path, sql: str, *, write: bool, external_access: bool) -> pl.DataFrame | None:
    """One statement on a connection opened for it (read-only unless ``write``), closed at once."""
    try:
        con = duckdb.connect(str(path), read_only=not write,
                             config={"enable_external_access": bool(external_access)})
    except duckdb.Error as exc:
        raise QueryError(f"cannot open {path}: {_first_line(exc)}") from exc
    try:
        result = con.execute(sql)
        return result.pl() if result is not None and result.description else None
    except duckdb.Error as exc:
        raise QueryError(_explain(exc, write, external_access)) from exc
    finally:
        con.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _explain(exc: duckdb.Error, write: bool, external_access: bool) -> str:
    """DuckDB's error, with what to do when it is the read-only or the no-files guard."""
    text = _first_line(exc)
    if not write and "read-only" in text:
        return f"{text} ({WRITE_HINT})"
    if not external_access and isinstance(exc, duckdb.PermissionException):
        return f"{text} ({FILES_HINT})"
    return text


def run_published_query(db_path: str | Path, sql: str, *, external_access: bool = False) -> pl.DataFrame | None:
    """``run_query`` on the published copy: always read-only, never waits for a running valuation
    (the copy is replaced by rename, never written in place, so no lock is taken)."""
    published = published_path(db_path)
    if not published.is_file():
        raise QueryError(f"{published} does not exist yet (it is written after each write to {Path(db_path).name})")
    if not sql.strip():
        raise QueryError("the SQL statement is empty")
    return _execute(published, sql, write=False, external_access=external_access)
