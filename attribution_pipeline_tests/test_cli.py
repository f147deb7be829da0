"""The console script, end to end, in a subprocess as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

from attribution_pipeline_tests.conftest import TINY_OVERRIDES, write_digit_contributors


def _toml(d: dict, prefix: str = "") -> str:
    lines, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    out = "\n".join(lines) + "\n"
    for k, v in tables:
        out += f"\n[{prefix}{k}]\n" + _toml(v, f"{prefix}{k}.")
    return out


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "attribution-pipeline"
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_cli_run_show_query_and_rerun(tmp_path):
    contributors = write_digit_contributors(tmp_path / "contributors", classes=(2, 3, 5), per_class=16)
    preset = tmp_path / "tiny.toml"
    preset.write_text(_toml({"preset": "tiny", **TINY_OVERRIDES}))
    work = tmp_path / "work"
    common = ["--contributors", str(contributors), "--workdir", str(work), "--preset", str(preset)]
    first = _cli("run", *common, "--budget", "4", "--property", "diversity", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    table = first.stdout
    assert "diversity" in table and "quality" not in table.split("[shapley]")[-1]
    for c in ("digit_2", "digit_3", "digit_5"):
        assert c in table
    assert "[coalitions] 5 planned coalition(s) lack a current sft utility" in table  # the full coalition + 4

    again = _cli("run", *common, "--budget", "4", "--property", "diversity", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "is up to date" in again.stdout and "[coalitions]" not in again.stdout

    q = _cli("query", "--workdir", str(work), "SELECT count(*) AS n FROM latest_shapley_values WHERE is_default",
             cwd=tmp_path)
    assert q.returncode == 0 and "│ 3 " in q.stdout
    pub = _cli("query", "--published", "--workdir", str(work),
               "SELECT count(*) AS n FROM valuation_rounds WHERE policy = 'rebase'", cwd=tmp_path)
    assert pub.returncode == 0 and "│ 1 " in pub.stdout, pub.stderr
    show = _cli("show", "--workdir", str(work), cwd=tmp_path)
    assert show.returncode == 0 and "digit_5" in show.stdout

    ft = _cli("run", *common, "--budget", "4", "--property", "diversity", "--method", "ft", cwd=tmp_path)
    assert ft.returncode == 0, ft.stderr[-3000:]
    assert "[coalitions] 5 planned coalition(s) lack a current ft utility" in ft.stdout
    q = _cli("query", "--workdir", str(work), "SELECT string_agg(DISTINCT method, ',' ORDER BY method) AS m "
             "FROM utilities WHERE coalition_key <> 'empty'", cwd=tmp_path)
    assert "ft,full_model,sft" in q.stdout


def test_cli_reports_bad_input_and_bad_options(tmp_path):
    contributors = write_digit_contributors(tmp_path / "c", classes=(1,), per_class=4)
    r = _cli("run", "--contributors", str(contributors), "--workdir", str(tmp_path / "w"), cwd=tmp_path)
    assert r.returncode == 2 and "at least 2" in r.stderr
    ok = write_digit_contributors(tmp_path / "ok", classes=(1, 2, 3), per_class=4)
    r = _cli("run", "--contributors", str(ok), "--workdir", str(tmp_path / "w"), "--budget", "2", cwd=tmp_path)
    assert r.returncode == 2 and "--budget" in r.stderr and not (tmp_path / "w").exists()
    r = _cli("run", "--workdir", str(tmp_path / "w"), "--set", "train.nope=1", cwd=tmp_path)
    assert r.returncode == 2 and "unknown key" in r.stderr
    r = _cli("show", "--workdir", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = _cli("run", "--workdir", str(tmp_path / "w"), "--method", "distill", cwd=tmp_path)
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = _cli("evaluate", "--workdir", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_policy_option_reaches_the_configuration(tmp_path):
    from attribution_pipeline.cli import _parser, build_config

    args = _parser().parse_args(["run", "--workdir", str(tmp_path / "w"), "--policy", "incremental"])
    assert build_config(args).revaluation.policy == "incremental"
    args = _parser().parse_args(["run", "--workdir", str(tmp_path / "w")])
    assert build_config(args).revaluation.policy == "rebase"
