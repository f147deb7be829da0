"""``attribution-pipeline``: value data contributors from the command line.

    attribution-pipeline run            value the embedded default (10 digit contributors)
    attribution-pipeline evaluate       LDS and counterfactual evaluation against retraining
    attribution-pipeline show           print the latest Shapley table of a work directory
    attribution-pipeline query SQL      run SQL against the work directory's DuckDB
    attribution-pipeline ui             open the Dagster UI on the same work directory
    attribution-pipeline init-data      (re)write the embedded default contributors

``run`` materializes the Dagster assets in a persistent instance under ``<workdir>/dagster_home``
(so the UI shows these runs), evaluates only the coalitions that have no utility yet, and prints
the table. Running it again recomputes nothing; a larger ``--budget`` computes only new coalitions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from attribution_pipeline.config import DEFAULT_DATA_DIR, PipelineConfig, load_preset

EXIT_BAD_INPUT = 2


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _overrides(pairs: list[str]) -> dict:
    """``train.steps=200`` → ``{"train": {"steps": 200}}``."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set expects KEY=VALUE (e.g. train.steps=200), got {pair!r}")
        key, value = pair.split("=", 1)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _parse_value(value)
    return out


def build_config(args: argparse.Namespace) -> PipelineConfig:
    cfg = PipelineConfig().override(load_preset(args.preset))
    changes: dict = {"workdir": str(Path(args.workdir).resolve())}
    if args.contributors:
        changes["contributors_dir"] = str(Path(args.contributors).resolve())
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
        cfg = cfg.override(_overrides(args.set))
    return cfg


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default=str(DEFAULT_DATA_DIR / "runs" / "default"),
                   help="folder for checkpoints, images, DuckDB and the Dagster home (default: data/runs/default)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attribution-pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="value the contributors (default: the embedded digits)")
    _add_common(run)
    run.add_argument("--contributors", help="contributors directory: one sub-folder of images per contributor "
                                            "(default: data/contributors, the embedded digits)")
    run.add_argument("--property", action="append", help="property to value (repeatable; default: all of the preset)")
    run.add_argument("--budget", type=int, help="coalitions evaluated besides the empty and the full one (default 60)")
    run.add_argument("--seed", type=int, help="seed of the coalition design and the bootstrap (default 0)")
    run.add_argument("--method", choices=["sft", "ft", "retrain"],
                     help="utility of a coalition: sft = fine-tune the pruned base k steps (default), "
                          "ft = fine-tune the full model k steps, retrain = train from scratch "
                          "(retrain.n_seeds seeds, e.g. --set retrain.n_seeds=2); each is cached side by side")
    run.add_argument("--policy", choices=["rebase", "incremental"],
                     help="when contributors changed since the last round: rebase = retrain the base and "
                          "recompute every coalition (default), incremental = keep the base and compute only "
                          "coalitions involving new or changed contributors (README: re-valuation)")
    run.add_argument("--preset", default="digits", help="preset name or TOML file (default: digits)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override any config field, e.g. --set train.steps=300 --set finetune.steps=50")
    run.add_argument("--quiet", action="store_true", help="print only the final table")
    ev = sub.add_parser("evaluate", help="LDS and counterfactual evaluation of a valued work directory "
                                         "(retrains models from scratch: slow)")
    _add_common(ev)
    ev.add_argument("--only", choices=["lds", "counterfactual"],
                    help="one of the two evaluations (default: both)")
    ev.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a field, e.g. --set lds.n_test=20 --set lds.n_seeds=3 "
                         "--set counterfactual.n_random=5")
    show = sub.add_parser("show", help="print the latest Shapley table")
    _add_common(show)
    show.add_argument("--all-estimators", action="store_true", help="every estimator, not only the default")
    query = sub.add_parser("query", help="run SQL against <workdir>/attribution.duckdb")
    _add_common(query)
    query.add_argument("sql")
    query.add_argument("--published", action="store_true",
                       help="read the published copy attribution_published.duckdb read-only: never waits for "
                            "or blocks a running valuation")
    ui = sub.add_parser("ui", help="start the Dagster UI (dagster dev) on the work directory")
    _add_common(ui)
    ui.add_argument("--port", type=int, default=3000)
    init = sub.add_parser("init-data", help="write the embedded default contributors (scikit-learn digits)")
    init.add_argument("--to", default=str(DEFAULT_DATA_DIR / "contributors"))
    init.add_argument("--overwrite", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        from attribution_pipeline.runner import run_valuation

        try:
            cfg = build_config(args)
        except (ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        return run_valuation(cfg, quiet=args.quiet)
    if args.command == "evaluate":
        from attribution_pipeline.workdir import read_pipeline_config
        from attribution_pipeline.runner import run_evaluation

        try:
            cfg = read_pipeline_config(args.workdir)
            if args.set:
                cfg = cfg.override(_overrides(args.set))
        except (ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        assets = {"lds": ("lds_results",), "counterfactual": ("counterfactual_results",)}.get(
            args.only, ("lds_results", "counterfactual_results"))
        return run_evaluation(cfg, assets)
    if args.command == "show":
        from attribution_pipeline.report import print_table

        return print_table(args.workdir, all_estimators=args.all_estimators)
    if args.command == "query":
        from attribution_pipeline.layout import RunLayout
        from attribution_pipeline.storage.results import ResultStore

        import polars as pl

        db = RunLayout.at(args.workdir).database
        if not db.is_file():
            print(f"error: {db} does not exist; run `attribution-pipeline run --workdir {args.workdir}` first",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
        with pl.Config(tbl_rows=200, tbl_cols=30, fmt_str_lengths=60):
            if args.published:
                import duckdb

                from attribution_pipeline.storage.results import published_path

                if not published_path(db).is_file():
                    print(f"error: {published_path(db)} does not exist yet (it is written after each write)",
                          file=sys.stderr)
                    return EXIT_BAD_INPUT
                with duckdb.connect(str(published_path(db)), read_only=True) as con:
                    print(con.execute(args.sql).pl())
            else:
                print(ResultStore(db).query(args.sql))
        return 0
    if args.command == "ui":
        from attribution_pipeline.workdir import WORKDIR_ENV, prepare_dagster_home

        home = prepare_dagster_home(Path(args.workdir))
        env = {**os.environ, "DAGSTER_HOME": str(home), WORKDIR_ENV: str(Path(args.workdir).resolve())}
        repo = Path(__file__).resolve().parent.parent
        # the dagster beside this interpreter, so `.venv/bin/attribution-pipeline ui` works unactivated
        dagster = Path(sys.executable).parent / "dagster"
        cmd = [str(dagster) if dagster.exists() else "dagster", "dev", "-w", str(repo / "workspace.yaml"),
               "-p", str(args.port)]
        print(f"DAGSTER_HOME={home} {WORKDIR_ENV}={env[WORKDIR_ENV]} {' '.join(cmd)}")
        os.chdir(repo)
        os.execvpe(cmd[0], cmd, env)
    if args.command == "init-data":
        from attribution_pipeline.data.digits import write_default_contributors

        try:
            root = write_default_contributors(args.to, overwrite=args.overwrite)
        except FileExistsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"wrote 10 digit contributors under {root}")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
