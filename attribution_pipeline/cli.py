"""``attribution-pipeline``: value data contributors from the command line.

    attribution-pipeline run            value the embedded default (10 digit contributors)
    attribution-pipeline evaluate       baseline attributions, LDS and counterfactuals against retraining
    attribution-pipeline report         write the HTML report (Shapley tables, baselines, LDS, figures)
    attribution-pipeline show           print the latest Shapley table of a work directory
    attribution-pipeline query SQL      run read-only SQL against the work directory's DuckDB
                                        (--write to change it on purpose, --external-access for files)
    attribution-pipeline reindex        rebuild the database's tables from the work directory's files
    attribution-pipeline ui             open the Dagster UI on the same work directory
    attribution-pipeline init-data      (re)write the embedded data sets (contributors, reference)

``run`` materializes the Dagster assets in a persistent instance under ``<workdir>/dagster_home``
(so the UI shows these runs), evaluates only the coalitions that have no utility yet, and prints
the table. Its runs go to a Ray started on this machine, one worker per core (``--engine local``),
to a Ray cluster (``--engine ray --ray-address URL``, docs/scaleout.md) or stay in the CLI's own
process (``--engine in-process``). Running it again recomputes nothing; a larger ``--budget`` computes only new coalitions.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from attribution_pipeline.config import (
    DEFAULT_DATA_DIR,
    UTILITY_METHODS,
    ConfigError,
    PipelineConfig,
    load_preset,
)
from attribution_pipeline.data.digits import DATA_SETS

EXIT_BAD_INPUT = 2


class UsageError(ValueError):
    """A command line argparse refuses; reported as one ``error:`` line, exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing its usage and exiting, so ``main`` reports every
    bad input the same way: one ``error:`` line on stderr and exit code 2."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def _parse_value(text: str):
    """A ``--set`` value as JSON (numbers, true/false, null, lists), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:  # not JSON, or an integer past Python's digit limit: keep it as text
        return text


def parse_overrides(pairs: list[str]) -> dict:
    """``train.steps=200`` → ``{"train": {"steps": 200}}``."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        parts = key.split(".")
        if not sep or not all(parts):
            raise UsageError(f"--set expects KEY=VALUE with a dotted key (e.g. train.steps=200), got {pair!r}")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UsageError(f"--set {pair!r}: {p!r} was already given a value, not a table of fields")
        if isinstance(node.get(parts[-1]), dict):
            raise UsageError(f"--set {pair!r}: {key!r} is a table of fields; set them one at a time")
        node[parts[-1]] = _parse_value(value)
    return out


def build_config(args: argparse.Namespace) -> PipelineConfig:
    """The run's configuration: defaults, the preset, the flags, then every ``--set``."""
    cfg = PipelineConfig().override(load_preset(args.preset))
    changes: dict = {"workdir": str(Path(args.workdir).resolve())}
    if args.contributors:
        changes["contributors_dir"] = str(Path(args.contributors).resolve())
    if getattr(args, "reference", None):
        changes["reference"] = {"dir": str(Path(args.reference).resolve())}
    valuation: dict = {}
    if args.budget is not None:
        valuation["budget"] = args.budget
    if args.seed is not None:
        valuation["seed"] = args.seed
    if args.property:
        valuation["properties"] = list(dict.fromkeys(args.property))
    if args.method is not None:
        valuation["method"] = args.method
    if getattr(args, "policy", None) is not None:
        changes["revaluation"] = {"policy": args.policy}
    if valuation:
        changes["valuation"] = valuation
    cfg = cfg.override(changes)
    if args.set:
        cfg = cfg.override(parse_overrides(args.set))
    return cfg


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default=str(DEFAULT_DATA_DIR / "runs" / "default"),
                   help="folder for checkpoints, images, DuckDB and the Dagster home (default: data/runs/default)")


def _add_run(sub) -> None:
    run = sub.add_parser("run", help="value the contributors (default: the embedded digits)")
    _add_common(run)
    run.add_argument("--contributors", help="contributors directory: one sub-folder of images per contributor "
                                            "(default: data/contributors, the embedded digits)")
    run.add_argument("--reference", metavar="DIR",
                     help="trusted reference folder (one sub-folder of images per class, at the model's resolution) "
                          "the property instruments are built from; no contributor may have made it (default: "
                          "the preset's, data/reference for the digits presets; none: a weaker fallback)")
    run.add_argument("--property", action="append", help="property to value (repeatable; default: all of the preset)")
    run.add_argument("--budget", type=int, help="coalitions evaluated besides the empty and the full one (default 60)")
    run.add_argument("--seed", type=int, help="seed of the coalition design and the bootstrap (default 0)")
    run.add_argument("--method", choices=list(UTILITY_METHODS),
                     help="utility of a coalition: sft = fine-tune the pruned base k steps (default), "
                          "ft = fine-tune the full model k steps, retrain = train from scratch "
                          "(retrain.n_seeds seeds, e.g. --set retrain.n_seeds=2); each is cached side by side")
    run.add_argument("--policy", choices=["rebase", "incremental"],
                     help="when contributors changed since the last round: rebase = retrain the base and "
                          "recompute every coalition (default), incremental = keep the base and compute only "
                          "coalitions involving new or changed contributors (README: re-valuation)")
    run.add_argument("--preset", default="digits", help="preset name or TOML file (default: digits)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override any config field with a JSON value, e.g. --set train.steps=300 "
                          "--set finetune.steps=50")
    run.add_argument("--quiet", action="store_true", help="print only the final table")
    run.add_argument("--verbose", action="store_true",
                     help="show Dagster's own log lines (by default in <workdir>/logs/ with the local and ray engines)")
    engine = run.add_argument_group("engine (docs/scaleout.md)")
    engine.add_argument("--engine", choices=["local", "ray", "in-process"],
                        help="local: a Ray started on this machine, --workers runs at once (default, or "
                             "$ATTRIBUTION_PIPELINE_ENGINE); ray: the running Ray cluster at --ray-address; "
                             "in-process: everything in this process, one run after another (debugging)")
    engine.add_argument("--workers", type=int, metavar="N",
                        help="runs at once (local: processes of one torch thread; default: this machine's cores; "
                             "ray: the cluster's GPUs or worker slots, default 1)")
    engine.add_argument("--ray-address", metavar="URL",
                        help="the Ray head's job-submission (dashboard) URL, e.g. http://head:8265 (--engine ray)")
    engine.add_argument("--gpus-per-run", type=float, metavar="G",
                        help="GPUs each training run asks Ray for (default: 1 where this machine sees CUDA and the "
                             "preset does not force the CPU, else 0)")


def _add_query(sub) -> None:
    query = sub.add_parser("query", help="run SQL against <workdir>/attribution.duckdb (read-only by default)")
    _add_common(query)
    query.add_argument("sql")
    query.add_argument("--published", action="store_true",
                       help="read the published copy attribution_published.duckdb read-only: never waits for "
                            "or blocks a running valuation")
    query.add_argument("--write", action="store_true",
                       help="open the database read-write, to change results on purpose (files stay out of "
                            "reach unless --external-access)")
    query.add_argument("--external-access", action="store_true",
                       help="allow reading and writing files (read_csv, COPY ... TO, ATTACH, extensions)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="attribution-pipeline", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    ev = sub.add_parser("evaluate", help="LDS and counterfactual evaluation of a valued work directory "
                                         "(retrains models from scratch: slow)")
    _add_common(ev)
    ev.add_argument("--only", choices=["baselines", "lds", "counterfactual"],
                    help="one step: the baseline attributions (minutes), LDS or counterfactuals (retrains); "
                         "default: all three, baselines first so LDS scores them too")
    ev.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a field, e.g. --set lds.n_test=50 --set 'lds.alphas=[0.25, 0.5, 0.75]' "
                         "--set 'counterfactual.remove_fractions=[0.1, 0.2, 0.3, 0.4]' --set counterfactual.n_seeds=3")
    rep = sub.add_parser("report", help="write the attribution report (HTML + PNG) under <workdir>/report/ "
                                        "(computes the baseline attributions first, minutes on the default)")
    _add_common(rep)
    rep.add_argument("--skip-baselines", action="store_true",
                     help="do not compute the baseline attributions; report what the database already holds")
    show = sub.add_parser("show", help="print the latest Shapley table")
    _add_common(show)
    show.add_argument("--all-estimators", action="store_true", help="every estimator, not only the default")
    _add_query(sub)
    reindex = sub.add_parser("reindex", help="rebuild the contributors, coalitions and utilities tables from the "
                                             "work directory's files (after the database was lost or damaged)")
    _add_common(reindex)
    ui = sub.add_parser("ui", help="start the Dagster UI (dagster dev) on the work directory")
    _add_common(ui)
    ui.add_argument("--port", type=int, default=3000)
    init = sub.add_parser("init-data", help="write an embedded data set built from scikit-learn's digits")
    init.add_argument("--set", dest="data_set", default="default", choices=DATA_SETS,
                      help="default: 11 contributors of varied quality; classes: one per digit class; fidelity: 30 "
                           "contributors; reference: the trusted reference split (default: default)")
    init.add_argument("--to", help="target folder (default: the set's folder under data/)")
    init.add_argument("--overwrite", action="store_true")
    return parser


def _fail(message: str) -> int:
    """One ``error:`` headline (the first line), any detail lines indented under it; exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _checked(cfg: PipelineConfig, check_paths: bool = True) -> PipelineConfig:
    """``cfg`` after ``validate_config``: raises ConfigError listing every problem."""
    from attribution_pipeline.validation import validate_config

    validate_config(cfg, check_paths=check_paths)
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    try:  # every check before anything is written or trained
        cfg = _checked(build_config(args))
    except (ValueError, OSError) as exc:  # ConfigError, UsageError, a missing or unreadable preset
        return _fail(str(exc))
    try:
        engine = _engine(args, cfg)
    except ValueError as exc:
        return _fail(str(exc))
    from attribution_pipeline.runner import run_valuation

    return run_valuation(cfg, quiet=args.quiet, engine=engine, verbose=args.verbose)


def _engine(args: argparse.Namespace, cfg: PipelineConfig):
    """The engine settings of ``run``'s flags (``workdir.EngineSettings``); ValueError on bad ones."""
    import dataclasses

    from attribution_pipeline.workdir import EngineSettings, default_engine

    settings = default_engine()
    if args.engine:
        settings = dataclasses.replace(settings, engine=args.engine)
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers {args.workers}: at least 1")
    if args.ray_address and settings.engine != "ray":
        raise ValueError(f"--ray-address is for --engine ray (the engine is {settings.engine})")
    if settings.engine == "ray" and not args.ray_address:
        raise ValueError("--engine ray needs --ray-address http://HEAD:8265 (the Ray head's dashboard URL); "
                         "--engine local starts a Ray on this machine")
    gpus = args.gpus_per_run if args.gpus_per_run is not None else _local_gpus_per_run(cfg)
    if gpus < 0:
        raise ValueError(f"--gpus-per-run {gpus:g}: not negative")
    workers = args.workers or (1 if settings.engine == "ray" else settings.workers)
    if settings.engine == "local" and gpus > 0 and args.workers is None:  # one run per GPU (or per share)
        import torch

        workers = max(1, int(torch.cuda.device_count() / gpus))
    return EngineSettings(engine=settings.engine, workers=workers, address=args.ray_address, gpus_per_run=gpus)


def _local_gpus_per_run(cfg: PipelineConfig) -> float:
    if cfg.hardware.device == "cpu":
        return 0.0
    import torch

    return 1.0 if torch.cuda.is_available() else 0.0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from attribution_pipeline.workdir import read_pipeline_config

    try:
        cfg = read_pipeline_config(args.workdir)
        if args.set:
            cfg = cfg.override(parse_overrides(args.set))
        # paths unchecked: evaluation retrains from the work directory's cached arrays, and the
        # contributors folder of a valued work directory may have moved since
        cfg = _checked(cfg, check_paths=False)
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    from attribution_pipeline.runner import run_evaluation

    assets = {"baselines": ("baseline_attributions",), "lds": ("lds_results",),
              "counterfactual": ("counterfactual_results",)}.get(
        args.only, ("baseline_attributions", "lds_results", "counterfactual_results"))
    return run_evaluation(cfg, assets)


def cmd_report(args: argparse.Namespace) -> int:
    from attribution_pipeline.workdir import read_pipeline_config

    try:
        cfg = _checked(read_pipeline_config(args.workdir), check_paths=False)
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    from attribution_pipeline.runner import run_report

    return run_report(cfg, with_baselines=not args.skip_baselines)


def cmd_show(args: argparse.Namespace) -> int:
    from attribution_pipeline.report import print_table

    return print_table(args.workdir, all_estimators=args.all_estimators)


def cmd_query(args: argparse.Namespace) -> int:
    """Read-only, without file access, unless ``--write`` / ``--external-access`` ask for more."""
    import polars as pl

    from attribution_pipeline.layout import RunLayout
    from attribution_pipeline.storage.results import QueryError, run_published_query, run_query

    db = RunLayout.at(args.workdir).database
    if not db.is_file():
        return _fail(f"{db} does not exist; run `attribution-pipeline run --workdir {args.workdir}` first")
    if args.published and args.write:
        return _fail("--published is a read-only snapshot, replaced after every write; drop --published to write")
    try:
        if args.published:
            df = run_published_query(db, args.sql, external_access=args.external_access)
        else:
            df = run_query(db, args.sql, write=args.write, external_access=args.external_access)
    except QueryError as exc:
        return _fail(str(exc))
    if df is not None:
        with pl.Config(tbl_rows=200, tbl_cols=30, fmt_str_lengths=60):
            print(df)
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    from attribution_pipeline.reindex import ReindexError, reindex

    try:
        report = reindex(args.workdir)
    except (ReindexError, OSError, ValueError) as exc:
        return _fail(str(exc))
    for line in report.lines():
        print(line)
    print(f"next: `attribution-pipeline run --workdir {args.workdir}` fits the Shapley table from these utilities")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """``dagster dev`` on the work directory. A work directory last run on the ``local`` engine gets a
    fresh local Ray for the UI's lifetime (the one its ``run`` started is gone), so that runs launched
    from the UI, the sensor and the schedule go where the CLI's went; on ``ray`` the cluster is checked."""
    import dataclasses
    import subprocess

    from attribution_pipeline.workdir import WORKDIR_ENV, prepare_dagster_home, read_engine, write_instance

    workdir = Path(args.workdir).resolve()
    home = prepare_dagster_home(workdir)
    env = {**os.environ, "DAGSTER_HOME": str(home), WORKDIR_ENV: str(workdir)}
    repo = Path(__file__).resolve().parent.parent
    # the dagster beside this interpreter, so `.venv/bin/attribution-pipeline ui` works unactivated
    dagster = Path(sys.executable).parent / "dagster"
    cmd = [str(dagster) if dagster.exists() else "dagster", "dev", "-w", str(repo / "workspace.yaml"),
           "-p", str(args.port)]
    settings = read_engine(workdir)
    print(f"DAGSTER_HOME={home} {WORKDIR_ENV}={env[WORKDIR_ENV]} {' '.join(cmd)} (engine {settings.engine})")
    if settings.engine == "in-process":
        os.chdir(repo)
        os.execvpe(cmd[0], cmd, env)
    from attribution_pipeline.engine import EngineError, LocalRay, check_cluster, engine_env

    ray = LocalRay(settings.workers, settings.local_gpus) if settings.engine == "local" else None
    try:
        if ray is not None:
            write_instance(workdir, dataclasses.replace(settings, address=ray.start()))
            print(f"a local Ray for the UI's runs at {ray.address} ({settings.workers} worker(s)); stopped with the UI")
        else:
            check_cluster(settings.address or "(no address recorded)")
        return subprocess.run(cmd, env=engine_env(workdir, home), cwd=repo).returncode
    except EngineError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 0
    finally:
        if ray is not None:
            ray.stop()


def cmd_init_data(args: argparse.Namespace) -> int:
    from attribution_pipeline.data.digits import FOLDERS, write_data_set

    try:
        root = write_data_set(args.data_set, args.to or DEFAULT_DATA_DIR / FOLDERS[args.data_set],
                              overwrite=args.overwrite)
    except FileExistsError as exc:
        return _fail(str(exc))
    print(f"wrote the {args.data_set!r} data set ({len([p for p in root.iterdir() if p.is_dir()])} folders) "
          f"under {root}")
    return 0


COMMANDS = {"run": cmd_run, "evaluate": cmd_evaluate, "report": cmd_report, "show": cmd_show, "query": cmd_query,
            "reindex": cmd_reindex, "ui": cmd_ui, "init-data": cmd_init_data}


def _stop_on_terminate(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except UsageError as exc:
        return _fail(str(exc))
    except SystemExit as exc:  # --help printed its text
        return exc.code if isinstance(exc.code, int) else 0
    # A stop from a scheduler or `kill` (SIGTERM) unwinds like Ctrl-C, so the local Ray, the Dagster
    # daemon and code server and the runs they launched are shut down; before, SIGTERM left them running.
    previous = signal.signal(signal.SIGTERM, _stop_on_terminate) if _main_thread() else None
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted: the engine is stopped and nothing half-written is kept; run the same command "
              "again to resume (finished coalitions are cached)", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
