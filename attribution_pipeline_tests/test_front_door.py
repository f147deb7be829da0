"""Issue 16: nothing a user types destroys results or starts work it cannot finish.

Config validation (every problem at once), the read-only ``query``, the probes of the issue, and the
leftovers of a killed writer. None of these tests trains a model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from attribution_pipeline import cli
from attribution_pipeline.config import ConfigError, PipelineConfig, load_preset
from attribution_pipeline.storage.artifacts import atomic_folder, clean_leftovers, find_leftovers
from attribution_pipeline.storage.results import ResultStore, published_path
from attribution_pipeline.validation import validate_config


def _digits() -> PipelineConfig:
    return PipelineConfig().override(load_preset("digits"))


def test_every_type_problem_is_listed_at_once_with_field_value_and_fix():
    with pytest.raises(ConfigError) as info:
        _digits().override({"finetune": {"steps": "abc", "lr": True}, "train": {"stepz": 1},
                            "model": {"block_out_channels": [8, "x"]}, "valuation": {"properties": "quality"}})
    problems = info.value.problems
    assert len(problems) == 5
    assert any(p.startswith("finetune.steps: got 'abc'; expected an integer; fix: --set finetune.steps=100")
               for p in problems)
    assert any(p.startswith("finetune.lr: got True; expected a number") for p in problems)  # a bool is no number
    assert any("unknown key(s) ['stepz'] in config.train" in p for p in problems)
    assert any(p.startswith("valuation.properties: got 'quality'; expected a list of strings") for p in problems)
    assert all("\n" not in p for p in problems)


def test_ints_are_numbers_and_optional_fields_take_null():
    cfg = _digits().override({"train": {"lr": 1}, "model": {"autoencoder_path": None, "lora_alpha": 2}})
    assert cfg.train.lr == 1 and cfg.model.lora_alpha == 2
    validate_config(cfg)


def test_domain_rules_are_collected_by_validate_config():
    cfg = _digits().override({"finetune": {"steps": 0, "lr": float("nan")}, "train": {"seed": -1},
                              "sampling": {"n_images": 2**40}, "valuation": {"properties": ["nosuch", "quality"],
                                                                             "estimator": "magic"},
                              "hardware": {"device": "gpu"}, "prune": {"ratio": 1.5}})
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    fields = [p.split(":", 1)[0] for p in info.value.problems]
    assert sorted(fields) == sorted(["train.seed", "finetune.steps", "sampling.n_images", "prune.ratio",
                                     "finetune.lr", "hardware.device", "valuation.estimator",
                                     "valuation.properties"]), info.value.problems
    assert "'nosuch'" in info.value.problems[-1]


def test_construction_checks_list_every_problem_too():
    with pytest.raises(ConfigError) as info:
        _digits().override({"valuation": {"method": "distill"}, "lds": {"n_seeds": 1}})
    assert [p.split(":", 1)[0] for p in info.value.problems] == ["valuation.method", "lds.n_seeds"]


# ---- the probes of the issue ------------------------------------------------------------------
@pytest.fixture
def valued_db(tmp_path) -> Path:
    """A work directory whose database holds three utility rows (no valuation needed to test query)."""
    store = ResultStore(tmp_path / "work" / "attribution.duckdb")
    store.upsert("utilities", [{"coalition_key": f"c-{i}", "property": "quality", "value": float(i), "method": "sft",
                                "seed": 0} for i in range(3)])
    return store.path


def _count(db: Path) -> int:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT count(*) FROM utilities").fetchone()[0]


def test_query_delete_is_refused_and_no_row_is_lost(valued_db, capsys):
    rc = cli.main(["query", "--workdir", str(valued_db.parent), "delete from utilities where true"])
    err = capsys.readouterr().err
    assert rc == 2 and _count(valued_db) == 3
    assert err.count("error:") == 1 and len(err.strip().splitlines()) == 1 and "--write" in err
    rc = cli.main(["query", "--published", "--workdir", str(valued_db.parent), "delete from utilities where true"])
    assert rc == 2 and capsys.readouterr().err.startswith("error:")
    assert cli.main(["query", "--write", "--workdir", str(valued_db.parent), "delete from utilities where seed = 0 "
                     "and coalition_key = 'c-0'"]) == 0
    assert _count(valued_db) == 2  # on purpose, it writes


def test_query_copy_to_a_file_writes_nothing(valued_db, tmp_path, capsys):
    target = tmp_path / "outside.csv"
    for extra in ([], ["--write"], ["--published"]):
        rc = cli.main(["query", *extra, "--workdir", str(valued_db.parent), f"copy (select 1) to '{target}'"])
        err = capsys.readouterr().err
        assert rc == 2 and not target.exists(), extra
        assert err.count("error:") == 1 and "--external-access" in err
    assert cli.main(["query", "--external-access", "--workdir", str(valued_db.parent),
                     f"copy (select 1 AS x) to '{target}'"]) == 0 and target.is_file()
    assert published_path(valued_db).is_file()


def test_query_reads_and_reports_sql_errors_in_one_line(valued_db, capsys):
    assert cli.main(["query", "--workdir", str(valued_db.parent), "select count(*) AS n from utilities"]) == 0
    assert "3" in capsys.readouterr().out
    assert cli.main(["query", "--workdir", str(valued_db.parent), "select * from nosuch"]) == 2
    assert capsys.readouterr().err.count("error:") == 1


@pytest.mark.parametrize("args, field", [(["--property", "nosuch"], "valuation.properties"),
                                         (["--set", "finetune.steps=abc"], "finetune.steps")])
def test_bad_run_input_exits_2_fast_naming_the_field_and_writes_nothing(tmp_path, monkeypatch, capsys, args, field):
    import attribution_pipeline.runner as runner

    monkeypatch.setattr(runner, "run_valuation", lambda *a, **k: pytest.fail("the run must not start"))
    work = tmp_path / "work"
    start = time.perf_counter()
    rc = cli.main(["run", "--workdir", str(work), *args])
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert rc == 2 and elapsed < 10, (rc, elapsed)
    assert err.count("error:") == 1 and f"\n  {field}: got" in err
    assert not work.exists()


# ---- leftovers of a killed writer -------------------------------------------------------------
WRITER = """
import sys, time
from pathlib import Path
from attribution_pipeline.storage.artifacts import atomic_folder
with atomic_folder(Path(sys.argv[1])) as tmp:
    (tmp / "half.bin").write_bytes(b"x" * 1000)
    print(tmp, flush=True)
    time.sleep(600)
"""


def _writer(final: Path) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(final)], stdout=subprocess.PIPE, text=True, env=env)
    return proc, Path(proc.stdout.readline().strip())


def test_a_killed_writers_temporary_is_removed_and_a_live_writers_kept(tmp_path):
    killed, killed_tmp = _writer(tmp_path / "models" / "full")
    live, live_tmp = _writer(tmp_path / "coalitions" / "c-1" / "images")
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)  # reaped: its pid is gone
        assert killed_tmp.is_dir() and live_tmp.is_dir()
        assert {p: alive for p, alive in find_leftovers(tmp_path)} == {killed_tmp: False, live_tmp: True}
        assert clean_leftovers(tmp_path) == [killed_tmp]
        assert not killed_tmp.exists() and live_tmp.is_dir()
        with atomic_folder(tmp_path / "mine") as mine:  # this process is alive: its temporary stays
            assert clean_leftovers(tmp_path) == [] and mine.is_dir()
    finally:
        live.kill()
        live.wait(timeout=30)
    assert clean_leftovers(tmp_path) == [live_tmp]
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
