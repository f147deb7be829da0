"""Benchmark of the Shapley estimators: accuracy against budget and noise, and interval coverage.

Run:  python benchmarks/estimators.py            (full, ≈ 1 hour on one core: the 20-fold cross-fits)
      python benchmarks/estimators.py --quick    (smoke run, small n and budgets)
Writes benchmarks/results/estimators.md (estimators-quick.md with --quick) and prints the same tables.

The game. ``CoverageGame.random(n, seed=0)`` (``attribution_pipeline/valuation/games.py``):
v(S) = Σ_{i∈S} a_i + Σ_g w_g √|S ∩ G_g| + Σ_{i<j∈S} b_ij, with n/4 overlapping groups of 3–8
contributors carrying about half of v(N) and n/2 sparse synergies. Why: (1) its Shapley and Banzhaf
values are closed-form at any n, so n = 200 has an exact truth; (2) diminishing returns inside groups of
similar contributors is the structure we expect from data (a second artist of one style adds less than
the first), and it is an interaction of every order, so the game does not flatter paired KernelSHAP,
which is exact on games with interactions of order ≤ 2 (a pairwise game would); (3) the values are
heterogeneous, so rank correlations mean something.

The noise. Each evaluation, v(∅) and v(N) included, gets independent Gaussian noise of standard
deviation σ = ρ · sd(v(S)), where sd is taken over coalitions with every contributor in with
probability ½ (the hold-out coalitions of the LDS). ρ maps to a test–retest correlation of the utility,
1 / (1 + ρ²): ρ = 0.1 ("noisy", the acceptance level) is a test–retest of 0.99, ρ = 0.3 ("heavy",
B = 10n only) is 0.92. For scale: at n = 200, ρ = 0.1 is σ ≈ 0.75 of the mean contributor value.

Pools. Every estimator reads the pool it is designed for, with the same seeds: repeat r uses design seed r
and noise seed r, and the budget-B pool is the first B rows of the budget-20n pool (prefix-stable).
``paper`` is the paper's estimator: unpaired Shapley-kernel draws + constrained least squares
(``design="kernel"``, ``estimator="kernelshap-paper"``). ``loo`` evaluates the n leave-one-out coalitions
B/n times each. ``banzhaf-msr`` is scored against the Banzhaf values (its own target); ``loo`` against
the Shapley values (it is not an estimator of them; shown for scale). ``auto`` reads the default
paired-kernel pool (and, as a separate row, a leverage pool).

The real game (section "real game"): the utilities of every coalition of ``digits-classes`` as the
pipeline measured them by sFT (``benchmarks/data/digits-classes-sft.json``, made by
``benchmarks/enumerate_game.py``), per property. Its exact Shapley and Banzhaf values are those of the
measured table; each repeat draws a pool from it at B = 10n with design seed r (no added noise: the table
is one measurement, so only the coalition sampling varies) and scores every row against the exact values:
mean relative error with a 95% interval over repeats, bias (‖mean φ̂ − φ‖ / ‖φ‖: what averaging pools
cannot remove), coverage of the 95% intervals, and design-seed reproducibility (mean Spearman between the
estimates of pools r and r + 1). A second table follows ``auto`` and the paper's estimator over budgets
5n…50n (``--real-game-only`` writes both to results/estimators-real-game.md); the default budget is read
off it.

Coverage is measured at n = 20, B = 10n on the coverage game and on an airport game (v(S) = the costliest
member's cost: a saturating game, where the kernel's complete sizes matter most), each noise-free and at ρ = 0.1,
with the noise estimate the pipeline's default replicates give (∅, N and 3 coalitions measured 3 times: 10
degrees of freedom, simulated with the game's σ), so every interval includes the noise of v(∅) and v(N).

Metrics: relative error ‖φ̂ − φ‖₂ / ‖φ‖₂ and Spearman correlation with the truth, means over repeats;
coverage of the 95% intervals at n = 20, B = 10n, ρ = 0.1 over ≥ 200 repeats (fraction of
(contributor, repeat) pairs whose true value lies inside), plus how often the 95% rank interval holds
the true rank.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.stats import rankdata, spearmanr

from attribution_pipeline.valuation import CoalitionDesign, estimate, select_estimator
from attribution_pipeline.valuation.games import AirportGame, CoverageGame, load_measured_game, noisy_values
from attribution_pipeline.valuation.pool import build_pool

RESULTS = Path(__file__).resolve().parent / "results"
REAL_GAME = Path(__file__).resolve().parent / "data" / "digits-classes-sft.json"

# label, estimator, pool design, estimate() keyword arguments
ROWS = [
    ("paper (kernel draws + constrained LS)", "kernelshap-paper", "kernel", {}),
    ("kernelshap (paired)", "kernelshap", "paired-kernel", {}),
    ("leverage", "leverage", "leverage", {}),
    ("regression-msr, tree proxy", "regression-msr", "paired-kernel", {"proxy": "tree"}),
    ("regression-msr, tree proxy, leverage pool", "regression-msr", "leverage", {"proxy": "tree"}),
    ("regression-msr, linear proxy", "regression-msr", "paired-kernel", {"proxy": "linear"}),
    ("proxy (tree alone)", "proxy", "paired-kernel", {"proxy": "tree"}),
    ("permutation (antithetic)", "permutation", "permutation", {}),
    ("banzhaf-msr (vs Banzhaf)", "banzhaf-msr", "bernoulli", {}),
    ("loo (vs Shapley, for scale)", "loo", "loo", {}),
    ("auto", "auto", "paired-kernel", {}),
    ("auto, leverage pool", "auto", "leverage", {}),
]
PAPER, AUTO = ROWS[0][0], "auto"


def noise_sd(game: CoverageGame, rho: float) -> float:
    """σ = ρ · sd of v over 4000 Bernoulli(½) coalitions (fixed seed)."""
    half = CoalitionDesign(game.n_players, seed=12345, design="bernoulli").take(4000)
    return float(rho * game(half).std())


class Pools:
    """Masks and noisy utilities per (design, seed), generated once at the largest budget."""

    def __init__(self, game: CoverageGame, max_budget: int, sigma: float):
        self.game, self.max_budget, self.sigma = game, max_budget, sigma
        self._cache: dict = {}

    def get(self, design: str, seed: int, budget: int):
        key = (design, seed)
        if key not in self._cache:
            n = self.game.n_players
            if design == "loo":
                masks = np.tile(~np.eye(n, dtype=bool), (max(1, self.max_budget // n), 1))
            else:
                masks = CoalitionDesign(n, seed=seed, design=design).take(self.max_budget)
            values = noisy_values(self.game, masks, self.sigma, seed=seed)
            ends = noisy_values(self.game, np.stack([np.zeros(n, bool), np.ones(n, bool)]), self.sigma,
                                seed=10_000 + seed)
            self._cache[key] = (masks, values, float(ends[0]), float(ends[1]))
        masks, values, v0, v_n = self._cache[key]
        rows = (budget // self.game.n_players) * self.game.n_players if design == "loo" else budget
        return masks[:rows], values[:rows], v0, v_n


def run_cell(pools: Pools, seed: int, budget: int, n_bootstrap: int, timings: dict, noise=None) -> dict:
    """All rows for one (pool seed, budget): label → ValuationResult; auto reuses what it picked.
    noise: (σ̂, dof, source) passed to every estimate (the pipeline's replicates), or None."""
    out, done = {}, {}
    for label, estimator, design, kwargs in ROWS:
        masks, values, v0, v_n = pools.get(design, seed, budget)
        chosen = estimator
        if estimator == "auto":
            chosen = select_estimator(build_pool(masks, values, v0, v_n))
        key = (chosen, design, tuple(sorted({"proxy": "tree", **kwargs}.items())))
        if key not in done:
            start = time.perf_counter()
            done[key] = estimate(masks, values, empty_value=v0, full_value=v_n, estimator=chosen, seed=seed,
                                 n_bootstrap=n_bootstrap, noise=noise, **kwargs)
            timings.setdefault(label, []).append(time.perf_counter() - start)
        out[label] = done[key]
    return out


def score(result, phi: np.ndarray, banzhaf: np.ndarray) -> tuple[float, float]:
    truth = banzhaf if result.value_kind == "banzhaf" else phi
    err = float(np.linalg.norm(result.values - truth) / np.linalg.norm(truth))
    rho = float(spearmanr(result.values, truth).statistic)
    return err, rho


def accuracy(n: int, multipliers, rhos, repeats: int, heavy_rho: float | None, timings: dict) -> list:
    """Rows (n, ρ, B multiplier, label, mean error, mean Spearman, picked estimators)."""
    game = CoverageGame.random(n, seed=0)
    phi, banzhaf = game.shapley_values(), game.banzhaf_values()
    records = []
    settings = [(rho, m) for rho in rhos for m in multipliers]
    if heavy_rho is not None:
        settings += [(heavy_rho, 10)]
    pools_by_rho = {rho: Pools(game, max(multipliers) * n, noise_sd(game, rho)) for rho in {r for r, _ in settings}}
    for rho, mult in settings:
        pools = pools_by_rho[rho]
        scores: dict = {}
        for seed in range(repeats):
            for label, res in run_cell(pools, seed, mult * n, 0, timings).items():
                err, sp = score(res, phi, banzhaf)
                entry = scores.setdefault(label, {"err": [], "sp": [], "picked": set()})
                entry["err"].append(err)
                entry["sp"].append(sp)
                entry["picked"].add(res.estimator)
        for label, entry in scores.items():
            records.append((n, rho, mult, label, float(np.mean(entry["err"])), float(np.nanmean(entry["sp"])),
                            ",".join(sorted(entry["picked"]))))
    return records


COVERAGE_SETTINGS = [("coverage game", 0.1), ("coverage game", 0.0), ("airport game (saturating)", 0.0),
                     ("airport game (saturating)", 0.1)]


def _coverage_game(name: str, n: int):
    if name.startswith("airport"):
        return AirportGame(np.linspace(1.0, 3.0, n))  # v(S) = the costliest member's cost: saturates at once
    return CoverageGame.random(n, seed=0)


def coverage(repeats: int, n: int = 20, mult: int = 10, rho: float = 0.1, n_bootstrap: int = 200,
             game_name: str = "coverage game") -> list:
    """Rows (label, coverage, rank-interval coverage, mean relative half-width, mean error)."""
    game = _coverage_game(game_name, n)
    phi, banzhaf = game.shapley_values(), game.banzhaf_values()
    sigma = noise_sd(game, rho)
    pools = Pools(game, mult * n, sigma)
    hits: dict = {}
    for seed in range(repeats):
        # the pipeline's default replicates: ∅, N and 3 coalitions measured 3 times (10 dof)
        replicates = sigma * np.random.default_rng([seed, 0x2E9]).standard_normal((5, 3))
        noise = (float(np.sqrt(replicates.var(axis=1, ddof=1).mean())), 10, "simulated replicates")
        for label, res in run_cell(pools, seed, mult * n, n_bootstrap, {}, noise).items():
            truth = banzhaf if res.value_kind == "banzhaf" else phi
            inside = (res.ci_low <= truth) & (truth <= res.ci_high)
            true_rank = rankdata(-truth, method="min")
            rank_inside = (res.rank_low <= true_rank) & (true_rank <= res.rank_high)
            width = np.nanmean((res.ci_high - res.ci_low) / 2) / np.mean(np.abs(truth))
            entry = hits.setdefault(label, {"in": [], "rank": [], "width": [], "err": []})
            entry["in"].append(np.mean(inside))
            entry["rank"].append(np.mean(rank_inside))
            entry["width"].append(width)
            entry["err"].append(score(res, phi, banzhaf)[0])
    return [(label, float(np.mean(e["in"])), float(np.mean(e["rank"])), float(np.mean(e["width"])),
             float(np.mean(e["err"]))) for label, e in hits.items()]


def real_game(path: Path, repeats: int, mult: int = 10, n_bootstrap: int = 200) -> dict:
    """{property: rows (label, error mean, error CI half-width, bias, coverage, reproducibility, picked)}."""
    out = {}
    for prop in json.loads(path.read_text())["properties"]:
        game, _ = load_measured_game(path, prop)
        phi, banzhaf = game.shapley_values(), game.banzhaf_values()
        pools = Pools(game, mult * game.n_players, 0.0)
        per: dict = {}
        for seed in range(repeats):
            for label, res in run_cell(pools, seed, mult * game.n_players, n_bootstrap, {}).items():
                truth = banzhaf if res.value_kind == "banzhaf" else phi
                e = per.setdefault(label, {"err": [], "est": [], "in": [], "picked": set(), "truth": truth})
                e["err"].append(score(res, phi, banzhaf)[0])
                e["est"].append(res.values)
                e["in"].append(np.mean((res.ci_low <= truth) & (truth <= res.ci_high)))
                e["picked"].add(res.estimator)
        rows = []
        for label, e in per.items():
            est, truth = np.array(e["est"]), e["truth"]
            bias = float(np.linalg.norm(est.mean(axis=0) - truth) / np.linalg.norm(truth))
            repro = [spearmanr(est[r], est[r + 1]).statistic for r in range(0, len(est) - 1, 2)]
            err = np.array(e["err"])
            rows.append((label, float(err.mean()), float(1.96 * err.std(ddof=1) / np.sqrt(len(err))), bias,
                         float(np.mean(e["in"])), float(np.nanmean(repro)), ",".join(sorted(e["picked"]))))
        out[prop] = {"rows": rows, "n": game.n_players, "v0": game.empty_value, "vN": game.full_value,
                     "paired": {lab: np.array(per[lab]["err"]) for lab in (PAPER, AUTO, "kernelshap (paired)")}}
    return out


SWEEP_MULTS = (5, 10, 20, 30, 50)


def real_budget_sweep(path: Path, repeats: int, mults=SWEEP_MULTS, n_bootstrap: int = 200) -> dict:
    """{property: rows (B/n, label, error, error CI half-width, coverage, reproducibility)} for auto
    (paired-kernel pool) and the paper's estimator (its kernel pool) at several budgets of the real game."""
    out = {}
    for prop in json.loads(path.read_text())["properties"]:
        game, _ = load_measured_game(path, prop)
        phi = game.shapley_values()
        n = game.n_players
        pools = Pools(game, max(mults) * n, 0.0)
        rows = []
        for mult in mults:
            for label, name, design in ((AUTO, "auto", "paired-kernel"), (PAPER, "kernelshap-paper", "kernel")):
                err, inside, est = [], [], []
                for seed in range(repeats):
                    masks, values, v0, v_n = pools.get(design, seed, mult * n)
                    res = estimate(masks, values, empty_value=v0, full_value=v_n, estimator=name, seed=seed,
                                   n_bootstrap=n_bootstrap)
                    err.append(np.linalg.norm(res.values - phi) / np.linalg.norm(phi))
                    inside.append(np.mean((res.ci_low <= phi) & (phi <= res.ci_high)))
                    est.append(res.values)
                repro = [spearmanr(est[r], est[r + 1]).statistic for r in range(0, len(est) - 1, 2)]
                err = np.array(err)
                rows.append((mult, label, float(err.mean()), float(1.96 * err.std(ddof=1) / np.sqrt(len(err))),
                             float(np.mean(inside)), float(np.nanmean(repro))))
        out[prop] = rows
    return out


def render_budget_sweep(sweep: dict, repeats: int) -> list[str]:
    if not sweep:
        return []
    parts = [f"## Real game by budget: auto (paired-kernel pool) and the paper (kernel pool), {repeats} pools each",
             "", "Same metrics as above; B counts coalitions drawn (the kernel pool's repeats included), out of "
             "2^n − 2 = 1022.", ""]
    for prop, rows in sweep.items():
        parts += [f"### {prop}", ""]
        parts += [_table(["B", "estimator", "rel. error", "coverage", "reproducibility"],
                         [[f"{m}n", lab, f"{e:.3f} ± {h:.3f}", f"{c:.3f}", f"{rp:.2f}"]
                          for m, lab, e, h, c, rp in rows]), ""]
    return parts


def render_real_game(real: dict, path: Path, repeats: int) -> list[str]:
    if not real:
        return []
    prov = json.loads(path.read_text())["provenance"]
    parts = [f"## Real game: `{path.name}`, every coalition measured by sFT; B = 10n, {repeats} pools", "",
             f"The table: {prov['sampled_coalitions']} coalitions besides ∅ and N, measured by the pipeline at commit "
             f"{prov['commit'][:7]} (`benchmarks/enumerate_game.py`, two local workers of one torch thread); their "
             f"recorded work summed to {prov['coalition_work_s'] / 3600:.1f} core-hours "
             f"({prov['coalition_work_s'] / prov['sampled_coalitions']:.1f} s per coalition).", "",
             "Truth: the exact values of the measured table (coalition sampling is all that varies; the "
             "sFT-vs-retraining gap and the utilities' own noise are not in it). Error: mean relative error ± "
             "95% interval over pools; bias: ‖mean φ̂ − φ‖/‖φ‖; coverage of the 95% intervals; reproducibility: "
             "Spearman of two pools' estimates (design seeds r, r + 1).", ""]
    for prop, r in real.items():
        parts += [f"### {prop} (n = {r['n']}, v(∅) = {r['v0']:.4g}, v(N) = {r['vN']:.4g})", ""]
        rows = [[lab, f"{m:.3f} ± {h:.3f}", f"{b:.3f}", f"{c:.3f}", f"{rp:.2f}", pk]
                for lab, m, h, b, c, rp, pk in r["rows"]]
        parts += [_table(["estimator", "rel. error", "bias", "coverage", "reproducibility", "computed by"], rows), ""]
        paper = r["paired"][PAPER]
        for lab in (AUTO, "kernelshap (paired)"):
            ratio = r["paired"][lab] / paper
            boot = np.random.default_rng(0).choice(len(paper), (2000, len(paper)))
            lo, hi = np.quantile(r["paired"][lab][boot].mean(1) / paper[boot].mean(1), [0.025, 0.975])
            parts += [f"- {lab} / paper, ratio of mean errors over the same pools: "
                      f"{r['paired'][lab].mean() / paper.mean():.3f} (95% bootstrap interval {lo:.3f}–{hi:.3f}; "
                      f"median per-pool ratio {np.median(ratio):.3f}; the issue's target for auto: ≤ 0.2)"]
        parts += [""]
    return parts


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render(records, cover, timings, args, elapsed: float, real: dict | None = None) -> str:
    parts = [
        "# Shapley estimator benchmark",
        "",
        f"Generated by `python benchmarks/estimators.py{' --quick' if args.quick else ''}` "
        f"(repeats: {args.repeats_note}; {elapsed:.0f} s on this machine). Game, noise and pools are "
        "described in the script's docstring. Cells: mean relative error ‖φ̂ − φ‖/‖φ‖ / mean Spearman.",
        "",
    ]
    by_key = {(r[0], r[1], r[2], r[3]): r for r in records}
    ns = sorted({r[0] for r in records})
    rhos = sorted({r[1] for r in records})
    labels = [row[0] for row in ROWS]
    for rho in rhos:
        for n in ns:
            mults = sorted({r[2] for r in records if r[0] == n and r[1] == rho})
            if not mults:
                continue
            title = "noise-free" if rho == 0 else f"noise ρ = {rho}"
            parts += [f"## n = {n}, {title}", ""]
            rows = []
            for label in labels:
                cells = []
                for m in mults:
                    rec = by_key.get((n, rho, m, label))
                    cells.append("—" if rec is None else f"{rec[4]:.3f} / {rec[5]:.2f}")
                rows.append([label] + cells)
            parts += [_table(["estimator"] + [f"B = {m}n" for m in mults], rows), ""]
            picked = {m: by_key[(n, rho, m, AUTO)][6] for m in mults if (n, rho, m, AUTO) in by_key}
            parts += ["auto picked: " + "; ".join(f"{m}n: {p}" for m, p in picked.items()), ""]
    parts += ["## Acceptance: auto vs the paper's estimator at B = 10n (ratio of mean relative errors)", ""]
    rows = []
    for rho in rhos:
        for n in ns:
            auto, paper = by_key.get((n, rho, 10, AUTO)), by_key.get((n, rho, 10, PAPER))
            lev = by_key.get((n, rho, 10, "auto, leverage pool"))
            if auto and paper:
                rows.append([f"{rho}", f"{n}", f"{auto[4]:.3f}", f"{paper[4]:.3f}", f"{auto[4] / paper[4]:.2f}",
                             f"{lev[4] / paper[4]:.2f}" if lev else "—"])
    parts += [_table(["ρ", "n", "auto error", "paper error", "auto / paper", "auto (leverage pool) / paper"], rows), ""]
    for (game_name, rho), rows_of in cover.items():
        parts += [f"## Coverage of 95% intervals: {game_name}, n = 20, B = 10n, ρ = {rho}, "
                  f"{args.coverage_repeats} repeats", ""]
        rows = [[label, f"{c:.3f}", f"{rk:.3f}", f"{w:.3f}", f"{e:.3f}"] for label, c, rk, w, e in rows_of]
        parts += [_table(["estimator", "value coverage", "rank-interval coverage", "half-width / mean |φ|",
                          "rel. error"], rows), ""]
    parts += render_real_game(real or {}, REAL_GAME, args.real_repeats)
    parts += ["## Time per estimate (point estimate, no bootstrap; mean over all cells)", "",
              "`proxy` and `regression-msr` share one cached cross-fit per pool; the row computed first "
              "(regression-msr) pays for the tree fits, so `proxy` alone costs about what `regression-msr, tree "
              "proxy` costs. Wall-clock times on a machine shared with other work.", ""]
    rows = [[label, f"{np.mean(t) * 1000:.0f} ms"] for label, t in timings.items()]
    parts += [_table(["estimator", "time"], rows), ""]
    return "\n".join(parts)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: n in (10, 50), B in (5n, 10n)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per cell (default by n)")
    parser.add_argument("--coverage-repeats", type=int, default=None, help="repeats of the coverage study")
    parser.add_argument("--real-repeats", type=int, default=None, help="pools drawn from the real game")
    parser.add_argument("--real-game-only", action="store_true",
                        help="only the real-game section, to results/estimators-real-game.md (about 25 minutes)")
    args = parser.parse_args(argv)
    if args.quick:
        plan = {10: 2, 50: 2}
        multipliers, rhos, heavy = (5, 10), (0.0, 0.1), None
        args.coverage_repeats = args.coverage_repeats or 20
        args.real_repeats = args.real_repeats or 6
    else:
        plan = {10: 10, 50: 10, 200: 4}
        multipliers, rhos, heavy = (2, 5, 10, 20), (0.0, 0.1), 0.3
        args.coverage_repeats = args.coverage_repeats or 200
        args.real_repeats = args.real_repeats or 100
    if args.repeats:
        plan = {n: args.repeats for n in plan}
    if args.real_game_only:
        if not REAL_GAME.is_file():
            raise SystemExit(f"{REAL_GAME} does not exist: run benchmarks/enumerate_game.py first")
        start = time.perf_counter()
        real = real_game(REAL_GAME, args.real_repeats)
        sweep = real_budget_sweep(REAL_GAME, args.real_repeats)
        text = "\n".join(["# Shapley estimators on the enumerated real game", "",
                          f"Generated by `python benchmarks/estimators.py --real-game-only` "
                          f"({time.perf_counter() - start:.0f} s). Pools and metrics: the script's docstring.", "",
                          *render_real_game(real, REAL_GAME, args.real_repeats),
                          *render_budget_sweep(sweep, args.real_repeats)])
        out = RESULTS / "estimators-real-game.md"
        out.write_text(text + "\n")
        print(text)
        return
    args.repeats_note = ", ".join(f"n={n}: {r}" for n, r in plan.items())
    start = time.perf_counter()
    timings: dict = {}
    records = []
    for n, repeats in plan.items():
        records += accuracy(n, multipliers, rhos, repeats, heavy, timings)
        print(f"n = {n} done at {time.perf_counter() - start:.0f} s", flush=True)
    cover = {(g, rho): coverage(args.coverage_repeats, rho=rho, game_name=g) for g, rho in COVERAGE_SETTINGS}
    real = real_game(REAL_GAME, args.real_repeats) if REAL_GAME.is_file() else {}
    text = render(records, cover, timings, args, time.perf_counter() - start, real)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("estimators-quick.md" if args.quick else "estimators.md")
    out.write_text(text + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
