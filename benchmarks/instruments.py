"""Do the instruments judge image quality rather than the players? Measured on the digits.

Run:  python benchmarks/instruments.py            (≈ 15–20 min on 2 CPU cores)
      python benchmarks/instruments.py --quick    (tiny models, a smoke run)
Writes benchmarks/results/instruments.md (``-quick`` suffix with --quick). Resumable: the pipeline's
caches make a re-launch recompute nothing it has.

1. The embedded default (``attribution-pipeline run``: 11 contributors, six clean and five with
   defects, instruments from the trusted reference ``data/reference``): wall time and the table.
2. A random split of the digits pool into 5 honest contributors (mixed classes, ~70 images each) plus
   two junk contributors, ``noise`` (uniform pixel noise) and ``scrambled`` (real digits with their
   pixels shuffled): valued with the trusted reference, then with ``--reference`` unset (the fallback
   built from the contributors' own images; same models, so only the instruments and the utilities'
   scores change). The quality ranking under each.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ATTRIBUTION_PIPELINE_TORCH_THREADS", "1")

from attribution_pipeline.config import PipelineConfig, load_preset  # noqa: E402
from attribution_pipeline.data.digits import SEED, data_set, scramble  # noqa: E402
from attribution_pipeline.layout import RunLayout  # noqa: E402
from attribution_pipeline.runner import run_valuation  # noqa: E402
from attribution_pipeline.storage.results import ResultStore  # noqa: E402

QUICK = {"model": {"block_out_channels": [16, 32]}, "train": {"steps": 60, "batch_size": 32},
         "prune": {"finetune_steps": 20, "batch_size": 32}, "finetune": {"steps": 10, "batch_size": 16},
         "sampling": {"n_images": 64, "ddim_steps": 5}, "classifier": {"epochs": 2}, "valuation": {"budget": 20}}


def random_split_with_junk(root: Path) -> Path:
    """5 honest contributors drawn at random from the digits pool, plus ``noise`` and ``scrambled``."""
    from PIL import Image

    if root.is_dir():
        return root
    pool = np.concatenate(list(data_set("classes").values()))
    rng = np.random.default_rng(SEED + 1)
    order = rng.permutation(len(pool))
    folders = {f"honest_{i + 1}": pool[order[i * 70:(i + 1) * 70]] for i in range(5)}
    folders["noise"] = rng.integers(0, 256, (70, 8, 8), dtype=np.uint8)
    folders["scrambled"] = scramble(pool[order[350:420]], rng)
    tmp = root.with_name(root.name + ".tmp")
    for name, images in folders.items():
        (tmp / name).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            Image.fromarray(image, mode="L").save(tmp / name / f"{i:03d}.png")
    tmp.rename(root)
    return root


def _table(cfg: PipelineConfig, prop: str) -> list[dict]:
    store = ResultStore(RunLayout.at(cfg.workdir).database)
    return store.query("SELECT contributor, value, ci_low, ci_high, rank FROM latest_shapley_values "
                       "WHERE is_default AND property = ? ORDER BY rank", [prop]).to_dicts()


def _estimator(cfg: PipelineConfig) -> str:
    store = ResultStore(RunLayout.at(cfg.workdir).database)
    row = store.query("SELECT estimator, uncertainty, interval_excludes FROM latest_shapley_values "
                      "WHERE is_default LIMIT 1").row(0, named=True)
    return f"`{row['estimator']}`; interval by {row['uncertainty']}; not in it: {row['interval_excludes']}"


def _value(cfg: PipelineConfig, label: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = io.StringIO()
    code = run_valuation(cfg, out=out)
    if code != 0:
        raise SystemExit(f"{label}: run failed with exit code {code}\n{out.getvalue()[-3000:]}")
    return time.perf_counter() - t0, out.getvalue()


def _work_minutes(cfg: PipelineConfig) -> float:
    """Σ of the coalitions' own work (fine-tune + generate + score) recorded in the workdir, minutes."""
    store = ResultStore(RunLayout.at(cfg.workdir).database)
    s = store.query("SELECT sum(elapsed_s) AS s FROM utilities WHERE property = ?", [cfg.valuation.properties[0]])
    return float(s["s"][0] or 0.0) / 60


def _md(rows: list[dict]) -> list[str]:
    lines = ["| rank | contributor | value | 95% interval |", "|---|---|---|---|"]
    lines += [f"| {r['rank']} | {r['contributor']} | {r['value']:.3g} | [{r['ci_low']:.3g}, {r['ci_high']:.3g}] |"
              for r in rows]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", default=str(ROOT / "data" / "runs" / "bench-instruments"))
    args = parser.parse_args()
    work = Path(args.workdir) / ("quick" if args.quick else "full")
    base = PipelineConfig().override(load_preset("digits")).override(QUICK if args.quick else {})
    default = base.override({"workdir": str(work / "default")})
    wall, _ = _value(default, "default")
    lines = ["# Instruments: trusted reference vs the contributors' own images", "",
             f"`python benchmarks/instruments.py{' --quick' if args.quick else ''}` (2 CPU cores, one torch thread "
             "each process; wall times include whatever else ran on the machine).", "",
             f"## 1. The embedded default: {len(_table(default, 'quality'))} contributors, "
             f"`attribution-pipeline run`", "",
             f"This invocation {wall / 60:.1f} min (a re-launch recomputes nothing cached); the coalitions' "
             f"own work recorded in the workdir: {_work_minutes(default):.1f} min summed. Estimator: "
             f"{_estimator(default)}.", ""]
    for prop in default.valuation.properties:
        lines += [f"### {prop}", "", *_md(_table(default, prop)), ""]
    split = base.override({"contributors_dir": str(random_split_with_junk(work / "split-contributors")),
                           "workdir": str(work / "split")})
    lines += ["## 2. A random split of the digits into 5 honest contributors, plus `noise` and `scrambled`", ""]
    for label, cfg in (("trusted reference `data/reference`", split),
                       ("no reference: the fallback", split.override({"reference": {"dir": None}}))):
        wall, _ = _value(cfg, label)
        lines += [f"### quality, {label} (this invocation {wall / 60:.1f} min)", "", *_md(_table(cfg, "quality")), ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"instruments{'-quick' if args.quick else ''}.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
