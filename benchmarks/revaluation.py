"""What does a newcomer cost, and what does the incremental policy give up? Measured on the default.

Run:  python benchmarks/revaluation.py              (the default preset: ≈ 30–40 min on 2 busy CPU cores)
      python benchmarks/revaluation.py --quick      (tiny models, a smoke run of ≈ 2 min)
Writes benchmarks/results/revaluation.md (``-quick`` suffix with --quick). Resumable: the
pipeline's caches make a re-launch recompute nothing it has.

1. Round 1: the 10 digit contributors valued from scratch (work directory ``incremental/``).
2. The newcomer ``mirror_3``: every image of digit 3 mirrored left-right (183 images of a shape no
   other contributor has, an "Ɛ"), added to the contributors directory.
3. ``incremental``: round 2 in ``incremental/`` keeps the base; we count the coalitions fine-tuned
   (each must contain the newcomer) and those only re-scored, and time the round.
4. ``rebase``: round 2 in a copy of round 1 (``rebase/``): retrains the base and recomputes the
   plan drawn afresh for 11 contributors; timed.
5. Agreement: Spearman and Pearson between the two policies' Shapley values per property (the
   default estimator), and the largest rank change.
6. The noise floor of that agreement: a second rebase with another coalition design
   (``valuation.seed = 1``, work directory ``rebase_seed1/``, a copy of ``rebase/`` after its round 2:
   same base, new coalitions). Two rebases disagree this much by sampling alone.
7. Compute accounting from the artifacts' manifests (fine-tune, generation, base training seconds),
   less sensitive than wall time to what else the machine runs.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ATTRIBUTION_PIPELINE_TORCH_THREADS", "1")

from attribution_pipeline.config import PipelineConfig, load_preset  # noqa: E402
from attribution_pipeline.layout import RunLayout  # noqa: E402

QUICK = {
    "model": {"block_out_channels": [16, 32]},
    "train": {"steps": 60, "batch_size": 32, "warmup_steps": 10},
    "prune": {"finetune_steps": 20, "batch_size": 32},
    "finetune": {"steps": 10, "batch_size": 16},
    "sampling": {"n_images": 64, "ddim_steps": 5},
    "classifier": {"epochs": 2},
    "valuation": {"budget": 20},
}
NEWCOMER = "mirror_3"


def write_newcomer(root: Path) -> None:
    """``mirror_3``: digit 3's images mirrored left-right, as 8-bit PNGs (atomic: temp dir + rename)."""
    from PIL import Image

    from attribution_pipeline.data.digits import digits_arrays

    if (root / NEWCOMER).is_dir():
        return
    images, labels = digits_arrays()
    tmp = root / f".{NEWCOMER}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for i in np.flatnonzero(labels == 3):
        Image.fromarray(np.ascontiguousarray(images[i][:, ::-1]), mode="L").save(tmp / f"img_{i:04d}.png")
    tmp.rename(root / NEWCOMER)


def run_round(cfg: PipelineConfig, log_path: Path) -> tuple[float, str]:
    from attribution_pipeline.runner import run_valuation

    out = io.StringIO()
    t0 = time.perf_counter()
    code = run_valuation(cfg, quiet=False, out=out)
    elapsed = time.perf_counter() - t0
    log_path.write_text(out.getvalue())
    if code != 0:
        raise SystemExit(f"valuation failed ({code}); see {log_path}")
    return elapsed, out.getvalue()


def counts(text: str) -> tuple[int, int]:
    line = next((ln for ln in text.splitlines() if "to train," in ln), None)
    if line is None:
        return 0, 0
    words = line.split()
    return int(words[0]), int(words[3])


def compute(workdir: Path, newcomer_only: bool) -> tuple[float, float, float, float]:
    """Seconds of the round-2 work recorded in manifests: coalition fine-tunes and generation (the
    coalitions trained this round), and the base's training when it was retrained this round."""
    import json

    from attribution_pipeline.stages import read_plan

    def manifest(folder: Path) -> dict:
        path = folder / "manifest.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    layout = RunLayout.at(workdir)
    trained = [c for c in read_plan(layout).coalitions if not newcomer_only or NEWCOMER in c.members]
    ft = sum(manifest(layout.coalition_checkpoint_dir(c.key)).get("finetune_seconds", 0.0) for c in trained)
    gen = sum(manifest(layout.coalition_images_dir(c.key)).get("generate_seconds", 0.0) for c in trained)
    full, pruned = manifest(layout.full_model_dir), manifest(layout.pruned_base_dir)
    kept = NEWCOMER not in full.get("trained_on", {})
    return ft, gen, 0.0 if kept else full.get("train_seconds", 0.0), 0.0 if kept else pruned.get("finetune_seconds", 0.0)


def latest_values(workdir: Path) -> dict[tuple[str, str], float]:
    from attribution_pipeline.storage.results import ResultStore

    df = ResultStore(RunLayout.at(workdir).database).query(
        "SELECT property, contributor, value FROM latest_shapley_values WHERE is_default")
    return {(r["property"], r["contributor"]): r["value"] for r in df.iter_rows(named=True)}


def main() -> None:
    from scipy.stats import pearsonr, spearmanr

    from attribution_pipeline.data.digits import write_default_contributors
    from attribution_pipeline.stages import read_plan

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=str(ROOT / "data" / "runs" / "revaluation"))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    base = Path(args.workdir) / ("quick" if args.quick else "default")
    contributors = base / "contributors"
    if not contributors.is_dir():
        write_default_contributors(contributors)
    inc_dir, reb_dir = base / "incremental", base / "rebase"
    cfg = PipelineConfig().override(load_preset("digits")).override(QUICK if args.quick else {})
    cfg = cfg.override({"contributors_dir": str(contributors), "revaluation": {"policy": "incremental"}})

    timings: dict[str, float] = {}
    texts: dict[str, str] = {}
    # round 1: 10 contributors (the newcomer's folder must not exist yet)
    if not (reb_dir / "round1.done").is_file():
        shutil.rmtree(contributors / NEWCOMER, ignore_errors=True)
        timings["round1"], texts["round1"] = run_round(cfg.override({"workdir": str(inc_dir)}), base / "round1.log")
        shutil.rmtree(reb_dir, ignore_errors=True)
        shutil.copytree(inc_dir, reb_dir, symlinks=True)
        (reb_dir / "round1.done").write_text(f"{timings['round1']:.1f} {len(read_plan(RunLayout.at(inc_dir)).coalitions)}\n")
    timings["round1"], n_plan1 = (float(w) for w in (reb_dir / "round1.done").read_text().split())
    texts["round1"] = (base / "round1.log").read_text()
    write_newcomer(contributors)

    for name, workdir, policy in (("incremental", inc_dir, "incremental"), ("rebase", reb_dir, "rebase")):
        done = workdir / "round2.done"
        if done.is_file():
            timings[name] = float(done.read_text().split()[0])
            texts[name] = (base / f"{name}.log").read_text()
            continue
        timings[name], texts[name] = run_round(
            cfg.override({"workdir": str(workdir), "revaluation": {"policy": policy}}), base / f"{name}.log")
        done.write_text(f"{timings[name]:.1f}\n")

    seed_dir = base / "rebase_seed1"
    if not (seed_dir / "round2.done").is_file():
        shutil.rmtree(seed_dir, ignore_errors=True)
        shutil.copytree(reb_dir, seed_dir, symlinks=True)
        timings["rebase_seed1"], texts["rebase_seed1"] = run_round(cfg.override({
            "workdir": str(seed_dir), "valuation": {"seed": 1}, "revaluation": {"policy": "rebase"}}),
            base / "rebase_seed1.log")
        (seed_dir / "round2.done").write_text(f"{timings['rebase_seed1']:.1f}\n")
    timings["rebase_seed1"] = float((seed_dir / "round2.done").read_text().split()[0])
    texts["rebase_seed1"] = (base / "rebase_seed1.log").read_text()

    plan_inc, plan_reb = read_plan(RunLayout.at(inc_dir)), read_plan(RunLayout.at(reb_dir))
    trained, rescored = counts(texts["incremental"])
    with_new = sum(NEWCOMER in c.members for c in plan_inc.coalitions)
    a, b, b1 = latest_values(inc_dir), latest_values(reb_dir), latest_values(seed_dir)
    lines = [
        "# Re-valuation after one newcomer: incremental vs rebase" + (" (quick)" if args.quick else ""),
        "",
        f"Default preset{' (quick overrides)' if args.quick else ''}; 10 digit contributors, then `{NEWCOMER}` "
        "(digit 3 mirrored) arrives. `ATTRIBUTION_PIPELINE_TORCH_THREADS=1`; wall times on a shared 2-core "
        "machine (other jobs were running), so compare them as ratios.",
        "",
        "| round | coalitions in plan | fine-tuned | only re-scored | wall s |",
        "|---|---|---|---|---|",
        f"| round 1 (10 contributors) | {int(n_plan1)} | {counts(texts['round1'])[0]} | - | {timings['round1']:.0f} |",
        f"| round 2 incremental | {len(plan_inc.coalitions)} | {trained} (all contain {NEWCOMER}: {with_new} do) | {rescored} | {timings['incremental']:.0f} |",
        f"| round 2 rebase | {len(plan_reb.coalitions)} | {counts(texts['rebase'])[0]} | {counts(texts['rebase'])[1]} | {timings['rebase']:.0f} |",
        f"| round 2 rebase, design seed 1 (noise floor; the rebased base and shared coalitions reused) "
        f"| {len(read_plan(RunLayout.at(seed_dir)).coalitions)} | {counts(texts['rebase_seed1'])[0]} | "
        f"{counts(texts['rebase_seed1'])[1]} | {timings['rebase_seed1']:.0f} |",
        "",
        f"incremental / rebase wall time: {timings['incremental'] / timings['rebase']:.2f}; "
        f"incremental / round 1: {timings['incremental'] / timings['round1']:.2f}",
        "",
        "Compute (seconds summed from the manifests of the artifacts each round produced):",
        "",
        "| round 2 | coalition fine-tunes | generation | full model training | pruned-base fine-tune |",
        "|---|---|---|---|---|",
        *[f"| {name} | " + " | ".join(f"{v:.0f}" for v in compute(d, name == "incremental")) + " |"
          for name, d in (("incremental", inc_dir), ("rebase", reb_dir))],
        "",
        "| property | Spearman (incremental vs rebase) | Pearson | largest rank change | newcomer rank inc / rebase "
        "| noise floor: Spearman (rebase vs rebase, design seed 1) | Spearman (incremental vs rebase seed 1) |",
        "|---|---|---|---|---|---|---|",
    ]
    for prop in sorted({p for p, _ in a}):
        names = sorted(c for p, c in a if p == prop)
        x = np.array([a[(prop, c)] for c in names])
        y = np.array([b[(prop, c)] for c in names])
        rx, ry = (np.argsort(np.argsort(-x)) + 1), (np.argsort(np.argsort(-y)) + 1)
        j = names.index(NEWCOMER)
        z = np.array([b1[(prop, c)] for c in names])
        lines.append(f"| {prop} | {spearmanr(x, y)[0]:.3f} | {pearsonr(x, y)[0]:.3f} | {int(np.abs(rx - ry).max())} "
                     f"| {rx[j]} / {ry[j]} | {spearmanr(y, z)[0]:.3f} | {spearmanr(x, z)[0]:.3f} |")
    lines += ["", "Values (default estimator):", "", "| property | contributor | incremental | rebase |", "|---|---|---|---|"]
    for (prop, c), v in sorted(a.items()):
        lines.append(f"| {prop} | {c} | {v:.4g} | {b[(prop, c)]:.4g} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"revaluation{'-quick' if args.quick else ''}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
