"""Does sparsified fine-tuning earn its speed? sFT vs FT vs retraining on the embedded default.

Run:  python benchmarks/sft_vs_retrain.py                (the default: ≈ 1.5–2 h on 2 CPU cores)
      python benchmarks/sft_vs_retrain.py --quick        (tiny models, a smoke run of ≈ 2 min)
Writes benchmarks/results/sft_vs_retrain.md and sft_vs_retrain.png (``-quick`` suffix with --quick).
Resumable: every utility is cached by the pipeline (artifacts + DuckDB under --workdir), so a
killed run re-launched with the same arguments recomputes nothing it has.

What it measures, all on one game (10 digit contributors; properties quality = −FID and diversity):
1. Cost: wall seconds per coalition (train + generate 256 images + score) for ``retrain`` (the full
   model's recipe from scratch), ``ft`` (the full model fine-tuned k steps) and ``sft`` (the pruned
   base fine-tuned k steps): medians over the shared coalitions, run side by side in the same
   worker pool so machine noise hits all three alike.
2. Fidelity: Pearson and Spearman of ``sft`` and ``ft`` utilities against ``retrain`` over the shared
   coalitions (the first ``--shared`` of the coalition design plus the LDS test coalitions), and
   Pearson of the Shapley values fitted on the same design coalitions with each method.
3. LDS at equal compute (the paper's Fig. 2): budgets in units of one retrain. retrain-Shapley gets B
   design coalitions; ft-Shapley and sFT-Shapley get as many coalitions of the same prefix-stable
   design as B retrains pay for, after their one-off cost (sFT: pruning and fine-tuning the base).
   LDS on held-out coalitions keeping α = 0.5 of the contributors, retrained with 2 seeds, beside
   the test–retest ceiling. Every estimate uses the pipeline's default estimator ("auto").
4. Sweeps: sFT fidelity (Pearson vs retrain) and cost for several k (fine-tune steps) and pruning
   ratios, each in its own work directory sharing the data, full model and instruments.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Pool, elapsed, linked_workdir, prepare, utilities  # noqa: E402

from attribution_pipeline.config import PipelineConfig, load_preset  # noqa: E402
from attribution_pipeline.layout import RunLayout  # noqa: E402

QUICK = {
    "model": {"block_out_channels": [16, 32]},
    "train": {"steps": 60, "batch_size": 32, "warmup_steps": 10},
    "prune": {"finetune_steps": 20, "batch_size": 32},
    "finetune": {"steps": 10, "batch_size": 16},
    "sampling": {"n_images": 64, "ddim_steps": 5},
    "classifier": {"epochs": 2},
}


# ---- set-up -------------------------------------------------------------------------------------
def base_config(workdir: Path, quick: bool) -> PipelineConfig:
    cfg = PipelineConfig().override(load_preset("digits"))
    if quick:
        cfg = cfg.override(QUICK)
    return cfg.override({"workdir": str(workdir)})


def shapley(masks: np.ndarray, keys: list[str], util: dict, prop: str, v_empty: float, v_full: float) -> np.ndarray | None:
    from attribution_pipeline.valuation import estimate

    values = np.array([util[(k, prop)] for k in keys])
    try:
        return estimate(masks, values, empty_value=v_empty, full_value=v_full, estimator="auto", seed=0).values
    except ValueError:
        return None  # fewer coalitions than any Shapley estimator needs


def pearson(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 and a.std() > 0 and b.std() > 0 else float("nan")


# ---- main ---------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny models, a smoke run")
    ap.add_argument("--workdir", default=None, help="default: data/runs/bench_sft_vs_retrain[-quick]")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (one torch thread each)")
    ap.add_argument("--shared", type=int, default=20, help="design coalitions evaluated by all three methods")
    ap.add_argument("--n-test", type=int, default=10, help="held-out LDS test coalitions (2 retrain seeds each)")
    ap.add_argument("--budgets", default="5,10", help="equal-compute budgets, in retrains")
    ap.add_argument("--max-pool", type=int, default=150, help="cap on coalitions per method and budget")
    ap.add_argument("--ks", default="25,200", help="k values of the sweep (besides the default)")
    ap.add_argument("--ratios", default="0.5", help="pruning ratios of the sweep (besides the default)")
    ap.add_argument("--emas", default="continue", help="coalition fine-tune EMA modes of the sweep")
    ap.add_argument("--importances", default="taylor", help="pruning importances of the sweep")
    ap.add_argument("--skip-sweep", action="store_true")
    args = ap.parse_args()

    from attribution_pipeline.coalitions import EMPTY_KEY, make_coalition, masks_to_coalitions
    from attribution_pipeline.evaluation import draw_test_coalitions, lds_score
    from attribution_pipeline.stages import contributor_ids
    from attribution_pipeline.valuation import CoalitionDesign

    suffix = "-quick" if args.quick else ""
    workdir = Path(args.workdir or ROOT / "data" / "runs" / f"bench_sft_vs_retrain{suffix}").resolve()
    cfg = base_config(workdir, args.quick)
    t_start = time.perf_counter()
    print(f"[setup] work directory {workdir}", flush=True)
    costs = prepare(cfg)
    layout = RunLayout.at(workdir)
    ids = contributor_ids(layout)
    n = len(ids)
    props = list(cfg.valuation.properties)
    design = CoalitionDesign(n_players=n, seed=cfg.valuation.seed)
    budgets = [int(b) for b in args.budgets.split(",") if b]
    pool = Pool(args.workers)
    cfgd = cfg.to_dict()
    full = make_coalition(ids, "full", 0)
    seed_ft, seed_rt = cfg.finetune.seed, cfg.train.seed

    # 1-2. shared coalitions: design prefix + held-out LDS tests, by all three methods
    shared_masks = design.take(args.shared)
    shared = masks_to_coalitions(shared_masks, ids)
    index = {c: i for i, c in enumerate(ids)}
    fitted = {tuple(sorted(index[m] for m in c.members)) for c in shared}
    test_masks = draw_test_coalitions(n, cfg.lds.alphas[0], args.n_test, cfg.lds.seed, exclude=fitted)
    tests = masks_to_coalitions(test_masks, ids)
    everyone = [full, *shared, *tests]
    print(f"[1/4] {len(shared)} design + {len(tests)} LDS test coalitions by retrain, ft and sft "
          f"({args.workers} workers)", flush=True)
    jobs = []
    for c in everyone:  # interleaved so each method sees the same machine load
        jobs += [(cfgd, list(c.members), "sft", seed_ft), (cfgd, list(c.members), "ft", seed_ft),
                 (cfgd, list(c.members), "retrain", seed_rt)]
    jobs += [(cfgd, list(c.members), "retrain", seed_rt + 1) for c in tests]  # the second LDS seed
    pool.run(jobs, "shared")
    keys = [c.key for c in shared + tests]
    timed = {m: elapsed(cfg, m, keys, seed_rt if m == "retrain" else seed_ft) for m in ("retrain", "ft", "sft")}
    med = {m: statistics.median(v) for m, v in timed.items()}
    u = {m: utilities(cfg, m, [seed_rt] if m == "retrain" else None) for m in ("sft", "ft", "retrain")}
    empty = utilities(cfg, "sft")
    v0 = {p: empty[(EMPTY_KEY, p)] for p in props}
    fidelity = {}
    for p in props:
        r = [u["retrain"][(k, p)] for k in keys]
        for m in ("sft", "ft"):
            x = [u[m][(k, p)] for k in keys]
            from attribution_pipeline.evaluation import spearman
            fidelity[(m, p)] = (pearson(x, r), spearman(np.array(x), np.array(r)))
    shap_fid = {}
    skeys = [c.key for c in shared]
    for p in props:
        phi = {m: shapley(shared_masks, skeys, u[m], p, v0[p], u[m][(full.key, p)]) for m in ("sft", "ft", "retrain")}
        for m in ("sft", "ft"):
            shap_fid[(m, p)] = pearson(phi[m], phi["retrain"]) if phi[m] is not None and phi["retrain"] is not None else float("nan")

    # 3. LDS at equal compute
    print(f"[3/4] LDS at equal compute, budgets {budgets} retrains", flush=True)
    measured = {p: np.array([[utilities(cfg, "retrain", [s])[(c.key, p)] for c in tests] for s in (seed_rt, seed_rt + 1)])
                for p in props}
    one_off = {"retrain": 0.0, "ft": 0.0, "sft": costs["prune_ft_s"] / med["retrain"]}
    pools, affordable = {}, {}
    for b in budgets:
        for m in ("retrain", "ft", "sft"):
            count = b if m == "retrain" else int(max(0.0, b - one_off[m]) * med["retrain"] / med[m])
            affordable[(m, b)] = count
            pools[(m, b)] = min(count, args.max_pool, 2 ** n - 2)
    need = {m: max(pools[(m, b)] for b in budgets) for m in ("ft", "sft")}
    extra_jobs = []
    for m in ("sft", "ft"):
        for c in masks_to_coalitions(design.take(need[m]), ids):
            extra_jobs.append((cfgd, list(c.members), m, seed_ft))
    pool.run(extra_jobs, "equal-compute pools")
    lds_rows = []
    for b in budgets:
        for m in ("retrain", "ft", "sft"):
            um = utilities(cfg, m, [seed_rt] if m == "retrain" else None)
            count = pools[(m, b)]
            masks = design.take(count)
            cs = masks_to_coalitions(masks, ids)
            for p in props:
                phi = shapley(masks, [c.key for c in cs], um, p, v0[p], um[(full.key, p)]) if count else None
                if phi is None:
                    lds_rows.append((b, m, count, p, float("nan"), float("nan"), float("nan")))
                    continue
                res = lds_score(phi, test_masks, measured[p])
                lds_rows.append((b, m, count, p, res.lds, (res.hi - res.lo) / 2, res.ceiling))

    # 4. sweeps of k and pruning ratio (sFT only), each in its own work directory
    sweep = []
    if not args.skip_sweep:
        print("[4/4] sweeps of k and pruning ratio", flush=True)
        settings = [("k", int(k), {"finetune": {"steps": int(k)}}) for k in args.ks.split(",") if k]
        settings += [("ratio", float(r), {"prune": {"ratio": float(r)}}) for r in args.ratios.split(",") if r]
        settings += [("ema", e, {"finetune": {"ema": e}}) for e in args.emas.split(",") if e]
        settings += [("importance", i, {"prune": {"importance": i}}) for i in args.importances.split(",") if i]
        for kind, value, change in settings:
            wd = workdir.parent / f"{workdir.name}-{kind}{value}"
            reprune = kind in ("ratio", "importance")
            linked_workdir(workdir, wd, keep_pruned=not reprune)
            scfg = cfg.override({**change, "workdir": str(wd)})
            if reprune:
                from attribution_pipeline import stages

                stages.prune_base_model(scfg, RunLayout.at(wd), print)
            pool.run([(scfg.to_dict(), list(c.members), "sft", seed_ft) for c in [full, *shared, *tests]],
                     f"{kind}={value}")
            us = utilities(scfg, "sft")
            t = statistics.median(elapsed(scfg, "sft", keys, seed_ft))
            fids = [pearson([us[(k, p)] for k in keys], [u["retrain"][(k, p)] for k in keys]) for p in props]
            sweep.append((kind, value, t, *fids))
        sweep.append(("k", cfg.finetune.steps, med["sft"], *[fidelity[("sft", p)][0] for p in props]))
        sweep.append(("ratio", cfg.prune.ratio, med["sft"], *[fidelity[("sft", p)][0] for p in props]))
        sweep.append(("ema", cfg.finetune.ema, med["sft"], *[fidelity[("sft", p)][0] for p in props]))
        sweep.append(("importance", cfg.prune.importance, med["sft"], *[fidelity[("sft", p)][0] for p in props]))

    total = time.perf_counter() - t_start
    report = write_report(args, cfg, costs, med, timed, fidelity, shap_fid, lds_rows, affordable, sweep, props,
                          len(keys), total, suffix, u, keys)
    print(report)
    return 0


# ---- report -------------------------------------------------------------------------------------
def write_report(args, cfg, costs, med, timed, fidelity, shap_fid, lds_rows, affordable, sweep, props, n_shared,
                 total, suffix, u, keys) -> str:
    from attribution_pipeline import versions

    L = [f"# sFT vs FT vs retrain on the embedded default{' (quick)' if args.quick else ''}", "",
         f"`python benchmarks/sft_vs_retrain.py{' --quick' if args.quick else ''}`; {args.workers} worker processes "
         f"(1 torch thread each) on this machine; total wall {total / 60:.1f} min (cached utilities are not re-timed). "
         f"Model: {costs['params_full']:,} parameters ({costs['macs_full']:,} MACs) → pruned "
         f"{costs['params_pruned']:,} ({costs['macs_pruned']:,} MACs) at ratio {cfg.prune.ratio} "
         f"({cfg.prune.importance}); k = {cfg.finetune.steps}; retrain = {cfg.train.steps} steps × batch "
         f"{cfg.train.batch_size}; {cfg.sampling.n_images} images × {cfg.sampling.ddim_steps} DDIM steps.", "",
         "## Cost per coalition (train + generate + score, seconds)", "",
         "| method | median | min | max | coalitions | speed-up of sFT |", "|---|---|---|---|---|---|"]
    for m in ("retrain", "ft", "sft"):
        v = timed[m]
        L.append(f"| {m} | {med[m]:.2f} | {min(v):.2f} | {max(v):.2f} | {len(v)} | {med[m] / med['sft']:.1f}× |")
    L += ["", f"One-off costs: full model θ* {costs['train_s']:.0f} s (every method needs it: v(N)); pruning + "
              f"fine-tuning the base θ̃* {costs['prune_ft_s']:.0f} s (sFT only).", "",
          f"## Fidelity to retraining ({n_shared} shared coalitions; Shapley on the {args.shared} design coalitions)", "",
          "| method | property | Pearson (utility) | Spearman (utility) | Pearson (Shapley values) |", "|---|---|---|---|---|"]
    for m in ("sft", "ft"):
        for p in props:
            pr, sr = fidelity[(m, p)]
            L.append(f"| {m} | {p} | {pr:.3f} | {sr:.3f} | {shap_fid[(m, p)]:.3f} |")
    L += ["", "## LDS at equal compute (budget in retrains; α = 0.5, "
              f"{args.n_test} held-out coalitions × 2 retrain seeds)", "",
          f"The coalitions column is what the budget pays for after the method's one-off cost; pools above "
          f"--max-pool {args.max_pool} are capped (noted), which can only understate the fine-tuning methods.", "",
          "| budget | method | coalitions | property | LDS | ± | ceiling |", "|---|---|---|---|---|---|---|"]
    for b, m, count, p, lds, ci, ceil in lds_rows:
        txt = "n/a (fewer coalitions than contributors)" if np.isnan(lds) else f"{lds:.1f}"
        used = f"{count} (affordable {affordable[(m, b)]})" if affordable[(m, b)] > count else f"{count}"
        L.append(f"| {b} | {m} | {used} | {p} | {txt} | {'' if np.isnan(ci) else f'{ci:.1f}'} | "
                 f"{'' if np.isnan(ceil) else f'{ceil:.1f}'} |")
    if sweep:
        L += ["", "## Sweep: sFT fidelity and cost", "",
              "| knob | value | median s / coalition | " + " | ".join(f"Pearson {p}" for p in props) + " |",
              "|---|---|---|" + "---|" * len(props)]
        for kind, value, t, *fids in sorted(sweep, key=lambda r: (r[0], str(r[1]) if isinstance(r[1], str) else f"{r[1]:012.4f}")):
            L.append(f"| {kind} | {value} | {t:.2f} | " + " | ".join(f"{f:.3f}" for f in fids) + " |")
    L += ["", f"Versions: {json.dumps(versions.snapshot())}", ""]
    text = "\n".join(L)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"sft_vs_retrain{suffix}.md").write_text(text)
    plot(RESULTS / f"sft_vs_retrain{suffix}.png", props, u, keys, lds_rows, sweep)
    return text


def plot(path: Path, props, u, keys, lds_rows, sweep) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(props) + 2, figsize=(5 * (len(props) + 2), 4.2))
    for ax, p in zip(axes, props):
        r = [u["retrain"][(k, p)] for k in keys]
        for m, colour in (("sft", "tab:blue"), ("ft", "tab:orange")):
            ax.scatter(r, [u[m][(k, p)] for k in keys], s=14, label=m, color=colour)
        ax.set_xlabel(f"retrain {p}")
        ax.set_ylabel(f"fine-tuned {p}")
        ax.set_title(f"utilities: {p}")
        ax.legend()
    ax = axes[len(props)]
    for m, marker in (("retrain", "s"), ("ft", "^"), ("sft", "o")):
        for p, style in zip(props, ("-", "--")):
            pts = [(b, lds) for b, mm, _, pp, lds, _, _ in lds_rows if mm == m and pp == p and not np.isnan(lds)]
            if pts:
                ax.plot(*zip(*pts), style, marker=marker, label=f"{m} {p}")
    ax.set_xlabel("budget (retrains)")
    ax.set_ylabel("LDS")
    ax.set_title("LDS at equal compute")
    ax.legend(fontsize=7)
    ax = axes[-1]
    for kind, marker in (("k", "o"), ("ratio", "s"), ("ema", "^"), ("importance", "D")):
        pts = sorted(((t, fids[0], v) for kk, v, t, *fids in sweep if kk == kind), key=lambda x: x[0])
        if pts:
            ax.plot([t for t, _, _ in pts], [f for _, f, _ in pts], marker=marker, label=f"{kind} ({props[0]})")
            for t, f, v in pts:
                ax.annotate(str(v), (t, f), fontsize=7)
    ax.set_xlabel("s per coalition")
    ax.set_ylabel("Pearson vs retrain")
    ax.set_title("sFT sweep: fidelity vs cost")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
