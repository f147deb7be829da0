"""A seeded fuzz of the front door: ``run`` arguments and ``--set`` values from a generator.

Every case calls ``cli.main`` in-process with ``runner.run_valuation`` replaced by a recorder (so
nothing trains). A case either returns 0, and the configuration it would have run passes
``validate_config``, or returns 2 with exactly one ``error:`` headline on stderr and without starting
the run. No exception escapes. A seeded generator (not hypothesis) keeps the cases the same on every
machine and the test dependency-free.
"""

from __future__ import annotations

import dataclasses
import random
import time

import pytest

from attribution_pipeline import cli
from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.validation import validate_config

N_CASES = 600
SEED = 16


def _field_paths() -> list[str]:
    cfg = PipelineConfig()
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out += [f"{f.name}.{g.name}" for g in dataclasses.fields(value)]
    return out


FIELDS = _field_paths()
ODD_TEXT = ["", " ", "abc", "ü", "北京 archive", "Zoë", "\u202etxet", "a\nb", "\t", "'; drop table utilities; --",
            "../../etc/passwd", "x" * 3000, "\U0001f600", "\x00", "-1", "--quiet", "=", "a=b", "None", "nan"]
NUMBERS = ["0", "1", "-1", "2", "7", "100", "-100", "2147483647", "2147483648", "9223372036854775808",
           "1" * 5000, "0.5", "-0.5", "1e-3", "1e999", "-1e999", "NaN", "Infinity", "-Infinity", "3.0", "1e308"]
JSONISH = ["true", "false", "null", "[]", "{}", "[1, 2]", "[16, 32]", '["quality"]', '["nosuch"]', '{"a": 1}',
           '"quoted"', "[[]]", '["DownBlock2D", "AttnDownBlock2D"]']
CHOICES = ["sft", "ft", "retrain", "rebase", "incremental", "auto", "kernelshap", "reset", "magnitude", "cpu",
           "cuda:0", "fp32", "folders", "linear", "quality", "diversity"]
PROPERTIES = ["quality", "diversity", "diversity_mean_prob", "quality_kid", "nosuch", "", ":", "os:getcwd",
              "json:nosuch", "..:x", "QUALITY", "quality ", "ü"]
PRESETS = ["digits", "cifar20", "nosuch", "", "../../etc/passwd", "ü", "digits.toml", "/nonexistent/p.toml"]


def _value(rng: random.Random) -> str:
    pool = rng.choice([ODD_TEXT, NUMBERS, JSONISH, CHOICES])
    if rng.random() < 0.1:  # random unicode, including control and surrogate-free astral characters
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000),
                                       rng.randrange(0x1F300, 0x1F6FF)])) for _ in range(rng.randrange(0, 12)))
    return rng.choice(pool)


def _key(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.75:
        return rng.choice(FIELDS)
    return rng.choice(["train.stepz", "nosuch", "train", "train.steps.x", "model..channels", ".x", "",
                       "valuation.properties.0", "ü.é", "preset", "workdir", "TRAIN.steps"])


def _option(rng: random.Random) -> list[str]:
    kind = rng.choice(["set", "set", "set", "budget", "seed", "method", "policy", "preset", "property", "quiet",
                       "junk"])
    if kind == "set":
        return ["--set", f"{_key(rng)}={_value(rng)}"]
    if kind in ("budget", "seed"):
        return [f"--{kind}", rng.choice(NUMBERS + ODD_TEXT[:4])]
    if kind in ("method", "policy"):
        return [f"--{kind}", rng.choice(CHOICES + ODD_TEXT[:3])]
    if kind == "preset":
        return ["--preset", rng.choice(PRESETS)]
    if kind == "property":
        return ["--property", rng.choice(PROPERTIES)]
    if kind == "quiet":
        return ["--quiet"]
    return [rng.choice(["--nosuch", "-x", "extra", "--budget", "--set"])]


def cases(n: int = N_CASES, seed: int = SEED) -> list[list[str]]:
    """``n`` argument lists after ``run --workdir W --contributors C``: mostly a few good options with
    one bad one, so both outcomes are frequent."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        args: list[str] = []
        for _ in range(rng.randrange(0, 5)):
            args += _option(rng) if rng.random() < 0.6 else rng.choice(
                [["--set", "finetune.steps=5"], ["--budget", "6"], ["--property", "quality"], ["--method", "ft"],
                 ["--set", "train.lr=0.01"], ["--set", "valuation.properties=[\"diversity\"]"]])
        out.append(args)
    return out


def test_every_generated_run_command_runs_or_exits_2_with_one_error_line(tmp_path, monkeypatch, capsys):
    import attribution_pipeline.runner as runner

    recorded: list[PipelineConfig] = []

    def record(cfg, quiet=False, **kwargs):
        recorded.append(cfg)
        return 0

    monkeypatch.setattr(runner, "run_valuation", record)
    contributors = tmp_path / "contributors"
    contributors.mkdir()
    work = tmp_path / "work"
    outcomes = {0: 0, 2: 0}
    start = time.perf_counter()
    for args in cases():
        argv = ["run", "--workdir", str(work), "--contributors", str(contributors), *args]
        before = len(recorded)
        try:
            rc = cli.main(argv)
        except BaseException as exc:  # noqa: BLE001 - the point: nothing may escape
            pytest.fail(f"{type(exc).__name__} escaped cli.main({argv!r}): {exc}")
        err = capsys.readouterr().err
        assert rc in (0, 2), (argv, rc, err)
        outcomes[rc] += 1
        if rc == 0:
            assert len(recorded) == before + 1 and "error:" not in err, (argv, err)
            validate_config(recorded[-1])
        else:
            headlines = [line for line in err.splitlines() if line.startswith("error:")]
            assert len(headlines) == 1 and err.startswith("error:"), (argv, err)
            assert len(recorded) == before, argv  # refused before the run started
        assert not work.exists(), argv  # validation writes nothing
    elapsed = time.perf_counter() - start
    assert sum(outcomes.values()) >= 500 and min(outcomes.values()) >= 50, outcomes
    assert elapsed < 60, elapsed
    print(f"{sum(outcomes.values())} cases: {outcomes[0]} ran, {outcomes[2]} refused, {elapsed:.1f}s")
