"""A real game with known exact values: every coalition of a 10-contributor embedded game, by sFT.

Run:  python benchmarks/enumerate_game.py                 (digits-classes; ≈ 1–1.5 h on 2 CPU cores)
      python benchmarks/enumerate_game.py --quick         (tiny models, 4 contributors: a smoke run)
      python benchmarks/enumerate_game.py --workdir DIR   (resume, or export a run already made there)

It values the preset through the pipeline itself (``run_valuation``, the default local engine) with a
budget of 2^n − 2, so the seeded design holds every coalition; the coalition cache makes a killed run
resume where it stopped. Then it exports every utility (∅ and N included) to a small committed file,
``benchmarks/data/<preset>-sft.json`` (with --quick, into the run's work directory), in the format
``attribution_pipeline.valuation.games.load_measured_game`` reads: per property, the 2^n utilities
listed by coalition code (bit i set when ``contributors[i]`` is in), the exact Shapley and Banzhaf
values of that table, and provenance (the run's config, seeds, package versions, the time from the
first coalition's utility to the last one's, and the coalitions' summed work).

The exact values are those of the *measured* utilities: each coalition measured once, with the
pipeline's seeds. They are the truth an estimator on a subsample of the same table should recover
(``benchmarks/estimators.py``, section "real game"); they say nothing of how far sFT is from retraining
(``benchmarks/fidelity.py``) or of the utilities' own noise.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from attribution_pipeline.cli import _stop_on_terminate  # noqa: E402
from attribution_pipeline.config import PipelineConfig, load_preset  # noqa: E402
from attribution_pipeline.layout import RunLayout  # noqa: E402
from attribution_pipeline.runner import run_valuation  # noqa: E402
from attribution_pipeline.storage.artifacts import atomic_write_json  # noqa: E402
from attribution_pipeline.storage.results import ResultStore  # noqa: E402
from attribution_pipeline.valuation.games import MeasuredGame  # noqa: E402
from attribution_pipeline.versions import snapshot  # noqa: E402

DATA = ROOT / "benchmarks" / "data"
QUICK = {"model": {"block_out_channels": [16, 32]}, "train": {"steps": 60, "batch_size": 32, "shards": 1},
         "prune": {"finetune_steps": 20, "batch_size": 32, "shards": 1},
         "finetune": {"steps": 10, "batch_size": 16}, "sampling": {"n_images": 64, "ddim_steps": 5},
         "classifier": {"epochs": 2}}


def utility_table(store: ResultStore, contributors: list[str], prop: str, method: str) -> np.ndarray:
    """(2^n,) utilities by coalition code; v(∅) from the untrained model's row, the rest by ``method``."""
    rows = store.query(
        "SELECT c.members, u.value, u.method FROM utilities u JOIN coalitions c USING (coalition_key) "
        "WHERE u.property = ? AND (u.method = ? OR c.kind = 'empty')", [prop, method]).to_dicts()
    bit = {name: 1 << i for i, name in enumerate(contributors)}
    table = np.full(2 ** len(contributors), np.nan)
    for r in rows:
        code = sum(bit[m] for m in r["members"])
        if code and r["method"] != method:
            continue
        if not np.isnan(table[code]) and table[code] != r["value"]:
            raise SystemExit(f"coalition {sorted(r['members'])} has two {prop} utilities; export one seed")
        table[code] = r["value"]
    missing = int(np.isnan(table).sum())
    if missing:
        raise SystemExit(f"{prop}: {missing} of {len(table)} coalitions have no {method} utility; "
                         "run the enumeration to the end first")
    return table


def export(cfg: PipelineConfig, preset: str, out: Path, wall_s: float | None) -> dict:
    store = ResultStore(RunLayout.at(cfg.workdir).database)
    contributors = sorted(store.query("SELECT contributor FROM contributors WHERE removed_at IS NULL")
                          .get_column("contributor").to_list())
    work = store.query("SELECT sum(elapsed_s) AS s, count(*) AS k, "
                       "epoch(max(computed_at)) - epoch(min(computed_at)) AS span FROM utilities u "
                       "JOIN coalitions c USING (coalition_key) WHERE c.kind = 'sampled' AND u.property = ?",
                       [cfg.valuation.properties[0]]).to_dicts()[0]
    properties = {}
    for prop in cfg.valuation.properties:
        game = MeasuredGame(utility_table(store, contributors, prop, cfg.valuation.method))
        properties[prop] = {"values": game.table.tolist(), "shapley": game.shapley_values().tolist(),
                            "banzhaf": game.banzhaf_values().tolist()}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    doc = {
        "format": "attribution_pipeline.measured_game/1",
        "preset": preset, "method": cfg.valuation.method, "contributors": contributors,
        "properties": properties,
        "provenance": {
            "commit": commit, "coalition_seed": cfg.finetune.seed, "generation_seed": cfg.sampling.seed,
            "design_seed": cfg.valuation.seed, "versions": snapshot(),
            "config": {k: v for k, v in cfg.to_dict().items() if k not in ("workdir", "contributors_dir")},
            "coalitions": len(properties[cfg.valuation.properties[0]]["values"]),
            "coalition_work_s": work["s"], "sampled_coalitions": work["k"],
            "coalitions_span_s": work["span"], "last_invocation_wall_s": wall_s,
        },
    }
    atomic_write_json(out, doc)
    return doc


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits-classes")
    parser.add_argument("--quick", action="store_true", help="tiny models, the first 4 contributors' game")
    parser.add_argument("--workdir", default=None, help="default: data/runs/enumerate-<preset>[-quick]")
    args = parser.parse_args(argv)
    os.environ.setdefault("ATTRIBUTION_PIPELINE_TORCH_THREADS", "1")
    name = args.preset + ("-quick" if args.quick else "")
    cfg = PipelineConfig().override(load_preset(args.preset))
    if args.quick:
        quick_dir = ROOT / "data" / "runs" / f"{name}-contributors"
        if not quick_dir.exists():
            quick_dir.mkdir(parents=True)
            for folder in sorted(cfg.contributors_path.iterdir())[:4]:
                os.symlink(folder, quick_dir / folder.name)
        cfg = cfg.override(QUICK).override({"contributors_dir": str(quick_dir)})
    n = sum(1 for p in cfg.contributors_path.iterdir() if p.is_dir())
    workdir = args.workdir or str(ROOT / "data" / "runs" / f"enumerate-{name}")
    cfg = cfg.override({"workdir": workdir, "valuation": {"budget": 2 ** n - 2, "coalitions_per_run": 32}})
    start = time.perf_counter()
    log = io.StringIO() if args.quick else sys.stdout
    signal.signal(signal.SIGTERM, _stop_on_terminate)  # a kill stops the engine like Ctrl-C; re-run resumes
    code = run_valuation(cfg, out=log)
    if code != 0:
        raise SystemExit(f"the enumeration run failed (exit {code}); re-run to resume")
    wall = time.perf_counter() - start
    out = (Path(workdir) if args.quick else DATA) / f"{name}-sft.json"
    doc = export(cfg, args.preset, out, wall)
    p = doc["provenance"]
    print(f"{n} contributors, {p['coalitions']} coalitions; this invocation {wall:.0f} s wall, "
          f"coalition work {p['coalition_work_s']:.0f} s summed; wrote {out}")


if __name__ == "__main__":
    main()
