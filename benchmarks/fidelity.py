"""Do sFT Shapley values track retraining? LDS and counterfactuals on `digits-fidelity`, at equal compute.

Run:  python benchmarks/fidelity.py              (the preset's 30 contributors; ≤ 2 h on 2 cores, measured
                                                 in fidelity.md; 2 LDS seeds, budgets 30 and 40 retrains)
      python benchmarks/fidelity.py --quick      (tiny models and counts, a smoke run of a few minutes)
      python benchmarks/fidelity.py --sweep-only (calibration, the test coalitions' retrains and section 7 only)
Writes benchmarks/results/fidelity.md and fidelity.png (``-quick`` suffix with --quick). Resumable:
every utility is cached by the pipeline under --workdir, so a killed run re-launched with the same
arguments recomputes nothing it has.

What it measures on one game (contributors of `digits-fidelity`, properties quality and diversity):
1. Cost per coalition (train + generate + score) of ``retrain`` (the full model's recipe from
   scratch), ``ft`` (θ* fine-tuned k steps) and ``sft`` (the pruned base fine-tuned k steps), from a
   calibration on the first design coalitions, and the one-off costs (θ*, pruning + base fine-tune).
2. Held-out test coalitions (``--n-test`` per α, none of them in any pool) retrained with
   ``lds.n_seeds`` seeds that built nothing else (``lds.retrain_seed``...), and measured by sFT and FT.
   Fidelity of the cheap utilities **within size**: Spearman against the seed-mean retrained utility
   (all test coalitions of one α have one size), pooled, with a bootstrap interval.
3. Shapley values at **equal compute**: for each budget B (in retrains), retrain-Shapley on the first B
   coalitions of the pipeline's design, sFT- and FT-Shapley on as many coalitions of the same design
   as B retrains pay for after their one-off cost; the pipeline's default estimator (``auto``).
4. LDS of each (budget, method, property): the score with its bootstrap interval (test coalitions and
   seeds), the random-attribution range on the same test set, the oracle ceiling, and the paired
   difference to retrain-Shapley at the same budget (``evaluation/lds.py``).
5. Shapley agreement on **disjoint pools**: sFT-Shapley fitted on a second design seed, without any
   coalition of retrain-Shapley's pool, against retrain-Shapley (Spearman), beside the same for two
   disjoint sFT pools (the noise floor of the comparison).
6. Counterfactuals: remove the top 10/20/30/40% by each method's values (largest budget), and as many
   at random (``--n-random`` draws), retrained with ``counterfactual.n_seeds`` seeds paired with the
   full coalition; relative change with a t interval over the seeds. A coalition that two rankings
   pick is retrained once.
7. With ``--sweep``: the sFT settings (k, the coalition learning rate, the pruning ratio, the EMA mode),
   one at a time from the preset's, each in its own work directory sharing the data, instruments and θ*
   (and the pruned base unless the pruning changes): the within-size Spearman of its utilities on the
   same test coalitions, and the LDS of its Shapley values at the smallest budget, at its own cost.
   Writes benchmarks/results/fidelity-sweep.md.
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

from common import Pool, elapsed, linked_workdir, per_seed_utilities, prepare, save_figure, utilities  # noqa: E402

from attribution_pipeline.config import PipelineConfig, load_preset  # noqa: E402
from attribution_pipeline.layout import RunLayout  # noqa: E402

METHODS = ("retrain", "ft", "sft")
QUICK = {
    "train": {"steps": 60, "batch_size": 32, "warmup_steps": 10, "shards": 1},
    "prune": {"finetune_steps": 20, "batch_size": 32, "shards": 1},
    "finetune": {"steps": 10, "batch_size": 16},
    "sampling": {"n_images": 64, "ddim_steps": 5},
    "classifier": {"epochs": 2},
}


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny models and counts, a smoke run")
    ap.add_argument("--workdir", default=None, help="default: data/runs/bench-fidelity[-quick]")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (one torch thread each)")
    ap.add_argument("--n-test", type=int, default=None, help="held-out test coalitions per alpha (default 50; quick 8)")
    ap.add_argument("--alphas", default="0.5", help="fractions of contributors the test coalitions keep")
    ap.add_argument("--budgets", default=None, help="equal-compute budgets in retrains (default 30,40; quick 6,12); retrain-Shapley needs >= 30")
    ap.add_argument("--max-pool", type=int, default=1500, help="cap on the coalitions of one method and budget")
    ap.add_argument("--calibrate", type=int, default=6, help="design coalitions timed by every method first")
    ap.add_argument("--fractions", default="0.1,0.2,0.3,0.4", help="counterfactual removal fractions")
    ap.add_argument("--n-random", type=int, default=3, help="random removals per fraction")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    ap.add_argument("--no-baselines", action="store_true", help="leave the baseline attributions out")
    ap.add_argument("--baseline-fractions", default="",
                    help="removal fractions of the baselines' counterfactuals, e.g. 0.4 (the Shapley methods get "
                         "--fractions); none by default: each baseline adds about 3 retrains x its fractions")
    ap.add_argument("--lds-seeds", type=int, default=2,
                    help="retrain seeds per LDS test coalition (lds.n_seeds; 2 keep the run within 2 h)")
    ap.add_argument("--sweep", action="store_true", help="also sweep the sFT settings (fidelity-sweep.md)")
    ap.add_argument("--sweep-only", action="store_true",
                    help="calibration, test coalitions and the sweep only (fidelity-sweep.md; fidelity.md untouched)")
    ap.add_argument("--ks", default="25,50,200", help="sweep: coalition fine-tune steps besides the preset's")
    ap.add_argument("--lrs", default="0.0003,0.003", help="sweep: coalition learning rates besides the preset's")
    ap.add_argument("--ratios", default="0.5", help="sweep: pruning ratios besides the preset's")
    ap.add_argument("--emas", default="none,continue", help="sweep: coalition EMA modes besides the preset's")
    return ap.parse_args()


def config(args) -> PipelineConfig:
    from attribution_pipeline.cli import parse_overrides

    cfg = PipelineConfig().override(load_preset("digits-fidelity"))
    if args.quick:
        cfg = cfg.override(QUICK)
    suffix = "-quick" if args.quick else ""
    workdir = Path(args.workdir or ROOT / "data" / "runs" / f"bench-fidelity{suffix}").resolve()
    cfg = cfg.override({"lds": {"n_seeds": args.lds_seeds}})
    return cfg.override({**parse_overrides(args.set), "workdir": str(workdir)})


def shapley(masks: np.ndarray, keys: list[str], util: dict, prop: str, v_empty: float, v_full: float):
    from attribution_pipeline.valuation import estimate

    try:
        return estimate(masks, np.array([util[(k, prop)] for k in keys]), empty_value=v_empty, full_value=v_full,
                        estimator="auto", seed=0).values
    except ValueError:
        return None  # fewer coalitions than any Shapley estimator needs


def main() -> int:
    args = parse()
    from attribution_pipeline.coalitions import make_coalition, masks_to_coalitions
    from attribution_pipeline.stages import contributor_ids
    from attribution_pipeline.valuation import CoalitionDesign

    cfg = config(args)
    t_start, started = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    cold = not Path(cfg.workdir).exists()  # a run from nothing: its wall time is the benchmark's cost
    print(f"[setup] {cfg.workdir}", flush=True)
    costs = prepare(cfg)
    layout = RunLayout.at(cfg.workdir)
    ids = contributor_ids(layout)
    n, props, cfgd = len(ids), list(cfg.valuation.properties), cfg.to_dict()
    pool = Pool(args.workers)
    full = make_coalition(ids, "full", 0)
    seed_of = {"retrain": cfg.train.seed, "ft": cfg.finetune.seed, "sft": cfg.finetune.seed}
    design = CoalitionDesign(n_players=n, seed=cfg.valuation.seed)
    budgets = [int(b) for b in (args.budgets or ("6,12" if args.quick else "30,40")).split(",") if b]
    n_test = args.n_test or (8 if args.quick else 50)

    # 1. calibration: the first design coalitions by every method, interleaved (same machine load)
    calib = masks_to_coalitions(design.take(args.calibrate), ids)
    print(f"[1/6] cost calibration: {len(calib)} coalitions by {', '.join(METHODS)}", flush=True)
    pool.run([(cfgd, list(c.members), m, seed_of[m]) for c in [full, *calib] for m in METHODS], "calibration")
    med = calibration(cfg, lambda: {m: statistics.median(elapsed(cfg, m, [c.key for c in calib], seed_of[m]))
                                    for m in METHODS})
    one_off = {"retrain": 0.0, "ft": 0.0, "sft": costs["prune_ft_s"] / med["retrain"]}  # in retrains
    affordable = {(m, b): (b if m == "retrain" else int(max(0.0, b - one_off[m]) * med["retrain"] / med[m]))
                  for b in budgets for m in METHODS}
    pools = {k: min(v, args.max_pool, 2 ** n - 2) for k, v in affordable.items()}
    biggest = max(pools.values())

    # 2. held-out test coalitions (outside every pool), retrained with the LDS seeds, and by sFT and FT
    from attribution_pipeline.evaluation import draw_test_coalitions

    second = CoalitionDesign(n_players=n, seed=cfg.valuation.seed + 1)
    held = {tuple(np.flatnonzero(r).tolist()) for r in np.vstack([design.take(biggest), second.take(biggest)])}
    lds_seeds = cfg.evaluation_seeds("lds")
    alphas = [float(a) for a in args.alphas.split(",") if a]
    tests = {a: draw_test_coalitions(n, a, n_test, cfg.lds.seed, exclude=held) for a in alphas}
    test_cs = {a: masks_to_coalitions(m, ids) for a, m in tests.items()}
    print(f"[2/6] {sum(len(v) for v in test_cs.values())} test coalitions: retrain x{len(lds_seeds)} "
          f"(seeds {lds_seeds}), sft, ft", flush=True)
    jobs = [(cfgd, list(c.members), "retrain", s) for cs in test_cs.values() for c in cs for s in lds_seeds]
    if not args.sweep_only:  # the sweep measures (and times) its own sFT on them; FT it does not use
        jobs += [(cfgd, list(c.members), m, seed_of[m]) for cs in test_cs.values() for c in cs for m in ("sft", "ft")]
    pool.run(jobs, "test coalitions")
    if args.sweep_only:
        measured, v0 = test_utilities(cfg, test_cs, lds_seeds, props)
        sweep(args, cfg, pool, ids, full, design, budgets[0], med, test_cs, measured, alphas, v0)
        record_wall(cfg, {"started": started, "wall_s": round(time.perf_counter() - t_start, 1), "cold": cold,
                          "sweep": True, "sweep_only": True, "argv": sys.argv[1:]})
        return 0

    # 3. pools at equal compute (prefixes of one design), and the second design's sFT pool
    print(f"[3/6] pools at equal compute, budgets {budgets} retrains: "
          + ", ".join(f"{m} {pools[(m, b)]}" for b in budgets for m in METHODS), flush=True)
    jobs = []
    for m in METHODS:
        count = max(pools[(m, b)] for b in budgets)
        jobs += [(cfgd, list(c.members), m, seed_of[m]) for c in masks_to_coalitions(design.take(count), ids)]
    retrain_pool = {tuple(np.flatnonzero(r).tolist()) for r in design.take(max(pools[("retrain", b)] for b in budgets))}
    disjoint = np.array([r for r in second.take(pools[("sft", budgets[-1])])
                         if tuple(np.flatnonzero(r).tolist()) not in retrain_pool], dtype=bool).reshape(-1, n)
    jobs += [(cfgd, list(c.members), "sft", seed_of["sft"]) for c in masks_to_coalitions(disjoint, ids)]
    pool.run(jobs, "pools")

    # 4-5. Shapley values, LDS, disjoint-pool agreement
    from attribution_pipeline.evaluation import lds_difference, lds_score, spearman, within_size_spearman

    u = {m: utilities(cfg, m, [seed_of[m]]) for m in METHODS}
    measured, v0 = test_utilities(cfg, test_cs, lds_seeds, props)
    phi = {}
    for b in budgets:
        for m in METHODS:
            masks = design.take(pools[(m, b)])
            keys = [c.key for c in masks_to_coalitions(masks, ids)]
            for p in props:
                phi[(b, m, p)] = shapley(masks, keys, u[m], p, v0[p], u[m][(full.key, p)]) if len(keys) else None
    lds_rows = []
    for a in alphas:
        for b in budgets:
            for m in METHODS:
                for p in props:
                    if phi[(b, m, p)] is None:  # fewer coalitions than the estimator needs: said, not dropped
                        lds_rows.append({"alpha": a, "budget": b, "method": m, "coalitions": pools[(m, b)],
                                         "affordable": affordable[(m, b)], "property": p, "res": None, "diff": None})
                        continue
                    res = lds_score(phi[(b, m, p)], tests[a], measured[a][p], seed=cfg.lds.seed)
                    diff = (lds_difference(phi[(b, m, p)], phi[(b, "retrain", p)], tests[a], measured[a][p],
                                           seed=cfg.lds.seed) if m != "retrain" and phi[(b, "retrain", p)] is not None else None)
                    lds_rows.append({"alpha": a, "budget": b, "method": m, "coalitions": pools[(m, b)],
                                     "affordable": affordable[(m, b)], "property": p, "res": res, "diff": diff})
    fidelity_rows = []
    for m in ("sft", "ft"):
        for p in props:
            sizes = np.concatenate([[c.size for c in test_cs[a]] for a in alphas])
            approx = np.concatenate([[u[m][(c.key, p)] for c in test_cs[a]] for a in alphas])
            retrain = np.concatenate([measured[a][p].mean(axis=0) for a in alphas])
            fidelity_rows.append((m, p, within_size_spearman(sizes, approx, retrain, seed=cfg.lds.seed)))
    agreement = []
    keys_d = [c.key for c in masks_to_coalitions(disjoint, ids)]
    half = len(disjoint) // 2
    for p in props:
        top = phi[(budgets[-1], "retrain", p)]
        other = shapley(disjoint, keys_d, u["sft"], p, v0[p], u["sft"][(full.key, p)])
        a1 = shapley(disjoint[:half], keys_d[:half], u["sft"], p, v0[p], u["sft"][(full.key, p)])
        a2 = shapley(disjoint[half:], keys_d[half:], u["sft"], p, v0[p], u["sft"][(full.key, p)])
        agreement.append((p, len(disjoint), spearman(other, top) if other is not None and top is not None else float("nan"),
                          half, spearman(a1, a2) if a1 is not None and a2 is not None else float("nan")))

    # 5b. the baseline attributions (stages/baselines.py), LOO's coalitions measured by the pool first
    cf_seeds = cfg.evaluation_seeds("counterfactual")
    base_values, base_costs, base_rows = {}, {}, []
    if not args.no_baselines:
        from attribution_pipeline.config import BASELINE_METHODS
        from attribution_pipeline.stages.baselines import compute_baselines
        from attribution_pipeline.storage.results import ResultStore

        without = [[c for c in ids if c != i] for i in ids]
        print(f"[5b] baselines: LOO coalitions ({len(ids)}) by sft and by retraining (seed {cf_seeds[0]}), then "
              f"{len(BASELINE_METHODS)} attributions", flush=True)
        pool.run([(cfgd, m, "sft", seed_of["sft"]) for m in without]
                 + [(cfgd, m, "retrain", cf_seeds[0]) for m in [ids, *without]], "LOO coalitions")
        bcfg = cfg.override({"baselines": {"methods": list(BASELINE_METHODS)}})
        out = compute_baselines(bcfg, layout, ResultStore(layout.database), log=print)
        base_values, base_costs = out.values, out.costs
        top = phi[(budgets[-1], "retrain", props[0])] is not None
        for a in alphas:
            for name, by_prop in base_values.items():
                for p in props:
                    res = lds_score(by_prop[p], tests[a], measured[a][p], seed=cfg.lds.seed)
                    ref = phi[(budgets[-1], "retrain", p)] if top else None
                    diff = (lds_difference(by_prop[p], ref, tests[a], measured[a][p], seed=cfg.lds.seed)
                            if ref is not None and np.isfinite(res.lds) else None)
                    base_rows.append({"alpha": a, "method": name, "property": p, "res": res, "diff": diff,
                                      "cost_s": base_costs.get(name, 0.0)})

    # 6. counterfactuals by each method's values at the largest budget (and each baseline's)
    from attribution_pipeline.evaluation import counterfactual_sets, random_removals

    fractions = [float(f) for f in args.fractions.split(",") if f]
    scen = []  # property, ranking, fraction, repeat, members
    for p in props:
        for m in METHODS:
            if phi[(budgets[-1], m, p)] is not None:
                for f in fractions:
                    scen.append((p, f"{m}-shapley", f, 0, counterfactual_sets(phi[(budgets[-1], m, p)], ids,
                                                                              remove_fraction=f, keep_fraction=0.5)["remove_top"]))
        for name, by_prop in base_values.items():
            if np.ptp(by_prop[p]) > 0:  # a constant attribution (equal size shares) ranks nobody first
                for f in [float(x) for x in args.baseline_fractions.split(",") if x]:
                    scen.append((p, name, f, 0, counterfactual_sets(by_prop[p], ids, remove_fraction=f,
                                                                    keep_fraction=0.5)["remove_top"]))
        for f in sorted({*fractions, *[float(x) for x in args.baseline_fractions.split(",") if x]}):
            for r, members in enumerate(random_removals(ids, f, args.n_random, cfg.counterfactual.seed + int(1000 * f))):
                scen.append((p, "random", f, r, members))
    print(f"[6/6] counterfactuals: {len({tuple(s[-1]) for s in scen})} coalitions x{len(cf_seeds)} seeds", flush=True)
    pool.run([(cfgd, list(members), "retrain", s) for members in [ids, *[sc[-1] for sc in scen]] for s in cf_seeds],
             "counterfactuals")
    cf_u = per_seed_utilities(cfg, "retrain", cf_seeds)
    cf_rows = []
    for p, ranking, f, r, members in scen:
        key = make_coalition(members, "sampled", 0).key
        rc = [(cf_u[(key, p, s)] - cf_u[(full.key, p, s)]) / abs(cf_u[(full.key, p, s)]) for s in cf_seeds]
        cf_rows.append((p, ranking, f, r, len(members), rc))
    if args.sweep:
        sweep(args, cfg, pool, ids, full, design, budgets[0], med, test_cs, measured, alphas, v0)
    walls = record_wall(cfg, {"started": started, "wall_s": round(time.perf_counter() - t_start, 1), "cold": cold,
                              "sweep": bool(args.sweep), "argv": sys.argv[1:]})
    text = report(args, cfg, costs, med, one_off, budgets, lds_rows, fidelity_rows, agreement, cf_rows,
                  lds_seeds, cf_seeds, n_test, alphas, walls, base_rows)
    print(text)
    return 0


def sweep(args, cfg, pool, ids, full, design, budget, med, test_cs, measured, alphas, v0) -> None:
    """Section 7: one sFT setting changed at a time; within-size fidelity and LDS at ``budget``."""
    from attribution_pipeline import stages
    from attribution_pipeline.coalitions import masks_to_coalitions
    from attribution_pipeline.evaluation import lds_difference, lds_score, within_size_spearman

    settings = [("finetune.steps", int(k), {"finetune": {"steps": int(k)}}) for k in args.ks.split(",") if k]
    settings += [("finetune.lr", float(x), {"finetune": {"lr": float(x)}}) for x in args.lrs.split(",") if x]
    settings += [("prune.ratio", float(r), {"prune": {"ratio": float(r)}}) for r in args.ratios.split(",") if r]
    settings += [("finetune.ema", e, {"finetune": {"ema": e}}) for e in args.emas.split(",") if e]
    settings.insert(0, ("preset", "", {}))
    props, workdir, rows = list(cfg.valuation.properties), Path(cfg.workdir), []
    a = alphas[0]
    test_masks = coalition_masks(test_cs[a], ids)
    reference = {}  # the preset's Shapley values: every other setting's LDS is compared with them, paired

    def write(pending: list[str]) -> None:  # after every setting, so a stopped sweep keeps what it measured
        L = [f"# sFT settings swept on `digits-fidelity`{' (quick)' if args.quick else ''}", "",
             f"One setting changed at a time from the preset's (`preset` row). Within-size Spearman of the setting's sFT "
             f"utilities against retraining on the {len(test_cs[a])} test coalitions of α = {a:g}; LDS of its Shapley values "
             f"on as many coalitions as {budget} retrains ({med['retrain']:.2f} s each, the work directory's calibration) pay "
             "for at its own cost (no one-off cost counted), with the 95% "
             "bootstrap interval and the random range. The last column is the setting's LDS minus the preset's, **paired** "
             "(both scored on every bootstrap resample of the same test coalitions and seeds); a setting is better than "
             "the preset only where that interval lies above 0. Wall: the setting's own work, summed over the "
             "invocations that measured it (`fidelity-sweep-walls.json` in the work directory).", "",
             "| setting | value | median s / coalition | coalitions | property | within-size Spearman [95%] | LDS [95%] "
             "| random 95% | LDS − preset [95%], paired | wall (min) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
        for name, value, t, count, p, w, res, diff, wall in rows:
            lds = "–" if res is None else f"{res.lds:.1f} [{res.lo:.1f}, {res.hi:.1f}]"
            rnd = "–" if res is None else f"{res.random_lo:.1f} to {res.random_hi:.1f}"
            dif = "–" if diff is None else f"{diff.difference:+.1f} [{diff.lo:+.1f}, {diff.hi:+.1f}]"
            L.append(f"| {name} | {value} | {t:.2f} | {count} | {p} | {w.pooled:.3f} [{w.lo:.3f}, {w.hi:.3f}] | {lds} "
                     f"| {rnd} | {dif} | {wall / 60:.1f} |")
        if pending:
            L += ["", "Still to run: " + ", ".join(pending) + "."]
        (RESULTS / f"fidelity-sweep{'-quick' if args.quick else ''}.md").write_text("\n".join(L) + "\n")
        if not pending:
            print("\n".join(L), flush=True)

    for i, (name, value, change) in enumerate(settings):
        t0 = time.perf_counter()
        wd = workdir if not change else workdir.parent / f"{workdir.name}-{name.split('.')[-1]}{value}"
        if change:
            linked_workdir(workdir, wd, keep_pruned=not name.startswith("prune."))
        scfg = cfg.override({**change, "workdir": str(wd)})
        if name.startswith("prune."):
            stages.prune_base_model(scfg, RunLayout.at(wd), print)
        first = [(scfg.to_dict(), list(c.members), "sft", scfg.finetune.seed) for c in [full, *test_cs[a]]]
        pool.run(first, f"sweep {name}={value}: test coalitions")
        t = sweep_cost(workdir, f"{name}={value}",
                       lambda: statistics.median(elapsed(scfg, "sft", [c.key for c in test_cs[a]], scfg.finetune.seed)))
        count = min(int(budget * med["retrain"] / t), args.max_pool, 2 ** len(ids) - 2)
        masks = design.take(count)
        cs = masks_to_coalitions(masks, ids)
        pool.run([(scfg.to_dict(), list(c.members), "sft", scfg.finetune.seed) for c in cs], f"sweep {name}={value}: pool")
        us = utilities(scfg, "sft")
        wall = sweep_wall(workdir, f"{name}={value}", time.perf_counter() - t0)
        for p in props:
            w = within_size_spearman(np.array([c.size for c in test_cs[a]]), np.array([us[(c.key, p)] for c in test_cs[a]]),
                                     measured[a][p].mean(axis=0), seed=cfg.lds.seed)
            phi = shapley(masks, [c.key for c in cs], us, p, v0[p], us[(full.key, p)])
            res = lds_score(phi, test_masks, measured[a][p], seed=cfg.lds.seed) if phi is not None else None
            if not change:
                reference[p] = phi
            diff = (lds_difference(phi, reference[p], test_masks, measured[a][p], seed=cfg.lds.seed)
                    if change and phi is not None and reference.get(p) is not None else None)
            rows.append((name, value, t, count, p, w, res, diff, wall))
        write([f"{n}={v}" for n, v, _ in settings[i + 1:]])


def test_utilities(cfg: PipelineConfig, test_cs: dict, lds_seeds: list[int], props: list[str]):
    """The test coalitions' retrained utilities (α → property → seeds × coalitions) and v(∅) by sFT."""
    from attribution_pipeline.coalitions import EMPTY_KEY

    ru = per_seed_utilities(cfg, "retrain", lds_seeds)
    measured = {a: {p: np.array([[ru[(c.key, p, s)] for c in cs] for s in lds_seeds]) for p in props}
                for a, cs in test_cs.items()}
    return measured, {p: utilities(cfg, "sft")[(EMPTY_KEY, p)] for p in props}


def sweep_cost(workdir: Path, setting: str, measure) -> float:
    """A sweep setting's median seconds per coalition, measured once per work directory
    (``fidelity-sweep-costs.json``): a rerun sizes its pool as the first run did, as ``calibration`` does."""
    path = workdir / "fidelity-sweep-costs.json"
    costs = json.loads(path.read_text()) if path.exists() else {}
    if setting not in costs:
        costs[setting] = measure()
        _write_json(path, costs)
    return costs[setting]


def sweep_wall(workdir: Path, setting: str, seconds: float) -> float:
    """Add this invocation's seconds for one sweep setting to ``<workdir>/fidelity-sweep-walls.json``; the
    total, so a setting measured across a stop and a resume reports all its work (a cached rerun adds little)."""
    path = workdir / "fidelity-sweep-walls.json"
    walls = json.loads(path.read_text()) if path.exists() else {}
    walls[setting] = walls.get(setting, 0.0) + seconds
    _write_json(path, walls)
    return walls[setting]


def coalition_masks(cs, ids) -> np.ndarray:
    """Boolean ``(m, n)`` masks of coalitions."""
    index = {c: i for i, c in enumerate(ids)}
    masks = np.zeros((len(cs), len(ids)), dtype=bool)
    for j, c in enumerate(cs):
        masks[j, [index[m] for m in c.members]] = True
    return masks


def calibration(cfg: PipelineConfig, measure) -> dict[str, float]:
    """Median seconds per coalition of each method: measured once per work directory, then read back, so a
    rerun sizes the pools exactly as the first run did (a cached utility's re-scoring shifts its seconds)."""
    path = Path(cfg.workdir) / "fidelity-calibration.json"
    if path.exists():
        return json.loads(path.read_text())
    med = measure()
    _write_json(path, med)
    return med


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def record_wall(cfg: PipelineConfig, entry: dict) -> list[dict]:
    """Append this invocation to ``<workdir>/fidelity-invocations.json`` (atomically); every entry so far.
    A rerun finds its utilities cached, so only a cold invocation's wall time is the benchmark's cost."""
    path = Path(cfg.workdir) / "fidelity-invocations.json"
    walls = json.loads(path.read_text()) if path.exists() else []
    walls.append(entry)
    _write_json(path, walls)
    return walls


def _wall_line(walls: list[dict]) -> str:
    cold = [w for w in walls if w["cold"] and not w["sweep"]]
    first = (f"the run from nothing (`{' '.join(['fidelity.py', *cold[0]['argv']])}`, {cold[0]['started']}) took "
             f"**{cold[0]['wall_s'] / 60:.1f} min** wall" if cold else "no run from nothing is recorded in this work directory")
    return (f"{first}; this invocation {walls[-1]['wall_s'] / 60:.1f} min (cached utilities are not re-timed; "
            "every invocation: `fidelity-invocations.json` in the work directory)")


def _t_interval(v: list[float]) -> tuple[float, float, float]:
    """Mean and Student-t 95% interval (the evaluation stage's), NaN bounds with one value."""
    from attribution_pipeline.stages.evaluation import _seed_interval

    lo, hi = _seed_interval(v)
    return float(np.mean(v)), float("nan") if lo is None else lo, float("nan") if hi is None else hi


def report(args, cfg, costs, med, one_off, budgets, lds_rows, fidelity_rows, agreement, cf_rows, lds_seeds, cf_seeds,
           n_test, alphas, walls, base_rows=()) -> str:
    from attribution_pipeline import versions

    suffix = "-quick" if args.quick else ""
    L = [f"# Fidelity of sFT Shapley values to retraining on `digits-fidelity`{' (quick)' if args.quick else ''}", "",
         f"`python benchmarks/fidelity.py{' --quick' if args.quick else ''}`; {args.workers} worker processes (one torch "
         f"thread each); {_wall_line(walls)}. Model: "
         f"{costs['params_full']:,} parameters → pruned {costs['params_pruned']:,} at ratio {cfg.prune.ratio}; "
         f"retrain = {cfg.train.steps} steps × batch {cfg.train.batch_size}; sFT/FT: k = {cfg.finetune.steps} steps × batch "
         f"{cfg.finetune.batch_size}, EMA {cfg.finetune.ema}; {cfg.sampling.n_images} images × {cfg.sampling.ddim_steps} "
         "DDIM steps per utility.", "",
         "## Cost", "", "| method | median s / coalition | relative to sFT |", "|---|---|---|"]
    for m in METHODS:
        L.append(f"| {m} | {med[m]:.2f} | {med[m] / med['sft']:.1f}× |")
    L += ["", f"One-off: θ* {costs['train_s']:.0f} s (every method: v(N) of retrain is θ*, FT starts from it); pruning + "
              f"base fine-tune {costs['prune_ft_s']:.0f} s (sFT only; {one_off['sft']:.2f} retrains of its budget).", "",
          "## Fidelity of the utilities, within size", "",
          f"Spearman of each cheap method's utility against the retrained one (mean of seeds {lds_seeds}) over the "
          f"{n_test} test coalitions of each α (all of one size), pooled over α; 95% bootstrap over coalitions.", "",
          "| method | property | within-size Spearman | 95% interval | coalitions |", "|---|---|---|---|---|"]
    for m, p, w in fidelity_rows:
        L.append(f"| {m} | {p} | {w.pooled:.3f} | {w.lo:.3f} – {w.hi:.3f} | {w.n} |")
    L += ["", "## LDS at equal compute", "",
          f"{n_test} held-out test coalitions per α, retrained with seeds {lds_seeds} (none built θ*, the base or a pool); "
          "interval: 95% bootstrap over test coalitions and seeds; random range: 95% of 2,000 random attributions on the "
          "same test set; ceiling: 100·√(test–retest), what the expected utility scores; difference: paired, to "
          "retrain-Shapley at the same budget. **Bold**: inside the random range.", "",
          "| α | budget (retrains) | method | coalitions | property | LDS | 95% interval | random 95% range | "
          "oracle ceiling | minus retrain-Shapley [95%] |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in lds_rows:
        res, d = r["res"], r["diff"]
        used = f"{r['coalitions']}" + (f" (of {r['affordable']})" if r["affordable"] > r["coalitions"] else "")
        if res is None:
            L.append(f"| {r['alpha']:g} | {r['budget']} | {r['method']} | {used} | {r['property']} | n/a: fewer "
                     "coalitions than the estimator needs | | | | |")
            continue
        score = f"**{res.lds:.1f}**" if res.inside_random else f"{res.lds:.1f}"
        diff = "–" if d is None else f"{d.difference:+.1f} [{d.lo:+.1f}, {d.hi:+.1f}]"
        L.append(f"| {r['alpha']:g} | {r['budget']} | {r['method']} | {used} | {r['property']} | {score} | "
                 f"{res.lo:.1f} – {res.hi:.1f} | {res.random_lo:.1f} to {res.random_hi:.1f} | {res.ceiling:.1f} | {diff} |")
    if base_rows:
        L += ["", "## LDS of the baseline attributions", "",
              "The paper's Table 1 rows on the same test set and retrain seeds (`stages/baselines.py`; gradient family: "
              f"{cfg.baselines.n_timesteps} timesteps, count sketch to {cfg.baselines.dim} dimensions, seed "
              f"{cfg.baselines.seed}, λ = {cfg.baselines.lam}, mean over a contributor's images; LOO by retraining with "
              f"seed {cf_seeds[0]}). Difference: paired, to retrain-Shapley at {budgets[-1]} retrains. Seconds: the "
              "method's own compute (a shared gradient cache counted in full; LOO counts its coalitions' training). "
              "**Bold**: inside the random range; n/a: the attribution is constant (it ranks no coalition above another).",
              "", "| α | baseline | seconds | property | LDS | 95% interval | random 95% range | minus retrain-Shapley [95%] |",
              "|---|---|---|---|---|---|---|---|"]
        for r in base_rows:
            res, d = r["res"], r["diff"]
            if not np.isfinite(res.lds):
                L.append(f"| {r['alpha']:g} | {r['method']} | {r['cost_s']:.0f} | {r['property']} | n/a | | "
                         f"{res.random_lo:.1f} to {res.random_hi:.1f} | |")
                continue
            score = f"**{res.lds:.1f}**" if res.inside_random else f"{res.lds:.1f}"
            diff = "–" if d is None else f"{d.difference:+.1f} [{d.lo:+.1f}, {d.hi:+.1f}]"
            L.append(f"| {r['alpha']:g} | {r['method']} | {r['cost_s']:.0f} | {r['property']} | {score} | "
                     f"{res.lo:.1f} – {res.hi:.1f} | {res.random_lo:.1f} to {res.random_hi:.1f} | {diff} |")
        inside = sorted({f"{r['method']} ({r['property']})" for r in base_rows if np.isfinite(r["res"].lds)
                         and r["res"].inside_random})
        L += ["", f"Inside the random range ({len(inside)}): {', '.join(inside) or 'none'}."]
    L += ["", "## Shapley values on disjoint pools", "",
          "sFT-Shapley fitted on a second design's coalitions (none in retrain-Shapley's pool) against retrain-Shapley at "
          f"the largest budget; beside it, two disjoint halves of that sFT pool against each other (the comparison's "
          "noise floor).", "", "| property | sFT pool | Spearman vs retrain-Shapley | half pools | Spearman half vs half |",
          "|---|---|---|---|---|"]
    for p, size, rho, half, floor in agreement:
        L.append(f"| {p} | {size} | {rho:.3f} | {half} | {floor:.3f} |")
    L += ["", "## Counterfactuals: remove the top fraction by each method's values", "",
          f"Retrained with seeds {cf_seeds}, each paired with the full coalition retrained with the same seed; relative "
          "change of the property (%), mean over seeds with a 95% t interval (retraining noise only); random: the mean of "
          f"{args.n_random} draws.", "", "| property | fraction removed | ranking | relative change (%) | 95% interval |",
          "|---|---|---|---|---|"]
    curves = {}
    for p, ranking, f, r, kept, rc in cf_rows:
        curves.setdefault((p, ranking, f), []).append(rc)
    for (p, ranking, f), draws in sorted(curves.items()):
        mean, lo, hi = _t_interval([np.mean(x) for x in draws] if ranking == "random" else draws[0])
        L.append(f"| {p} | {f:g} | {ranking} | {100 * mean:+.1f} | {100 * lo:+.1f} – {100 * hi:+.1f} |")
    L += ["", f"Versions: {json.dumps(versions.snapshot())}", ""]
    text = "\n".join(L)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"fidelity{suffix}.md").write_text(text)
    plot(RESULTS / f"fidelity{suffix}.png", lds_rows, curves, budgets)
    return text


STYLE = {"retrain": ("C0", "s"), "ft": ("C1", "^"), "sft": ("C2", "o"), "random": ("0.45", "o")}  # one per method


def _style(ranking: str, others: list[str]) -> tuple[str, str]:
    """A method's colour and marker, the same in every panel; baselines take the colours after C2."""
    name = ranking.removesuffix("-shapley")
    return STYLE[name] if name in STYLE else (f"C{3 + others.index(ranking) % 7}", "D")


def plot(path: Path, lds_rows, curves, budgets) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    props = sorted({r["property"] for r in lds_rows})
    fig, axes = plt.subplots(2, len(props), figsize=(5.5 * len(props), 8.4), squeeze=False)
    for j, p in enumerate(props):
        ax = axes[0][j]
        rows = [r for r in lds_rows if r["property"] == p and r["alpha"] == lds_rows[0]["alpha"] and r["res"] is not None]
        if rows:
            ax.axhspan(rows[0]["res"].random_lo, rows[0]["res"].random_hi, color="0.85", label="random 95%")
            ax.axhline(rows[0]["res"].ceiling, color="0.4", ls=":", label="oracle ceiling")
        for m in METHODS:
            pts = [r for r in rows if r["method"] == m]
            if pts:
                ax.errorbar([r["budget"] for r in pts], [r["res"].lds for r in pts],
                            yerr=[[r["res"].lds - r["res"].lo for r in pts], [r["res"].hi - r["res"].lds for r in pts]],
                            color=STYLE[m][0], marker=STYLE[m][1], capsize=3, label=f"{m}-Shapley")
        ax.set_xlabel("budget (retrains)")
        ax.set_ylabel("LDS")
        ax.set_title(f"LDS at equal compute: {p}")
        ax.legend(fontsize=7)
        ax = axes[1][j]
        rankings = sorted({k[1] for k in curves if k[0] == p})
        for ranking in rankings:
            fs = sorted(f for (pp, rr, f) in curves if pp == p and rr == ranking)
            stats = [_t_interval([np.mean(x) for x in curves[(p, ranking, f)]] if ranking == "random"
                                 else curves[(p, ranking, f)][0]) for f in fs]
            ax.errorbar([100 * f for f in fs], [100 * s[0] for s in stats],
                        yerr=[[100 * (s[0] - s[1]) for s in stats], [100 * (s[2] - s[0]) for s in stats]],
                        color=_style(ranking, rankings)[0], marker=_style(ranking, rankings)[1], capsize=3,
                        ls="--" if ranking == "random" else "-", label=ranking)
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xlabel("top % of contributors removed")
        ax.set_ylabel("relative change of the property (%)")
        ax.set_title(f"counterfactual: {p}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
