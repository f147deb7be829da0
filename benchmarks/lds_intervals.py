"""Do the LDS intervals and the random range mean what they say? Simulated games with a known population LDS.

Run:  python benchmarks/lds_intervals.py            (≈ 5 min on one core)
      python benchmarks/lds_intervals.py --quick    (fewer simulations, a smoke run)
Writes benchmarks/results/lds-intervals.md (``-quick`` suffix with --quick).

For each game of ``attribution_pipeline/evaluation/simulate.py`` (30 or 10 contributors, α = 0.5;
retraining noise σ, a seed effect κ that a retrain seed shares across the coalitions it trains, an
attribution with estimation error τ) and each simulation: draw a test set of m coalitions, measure it
with 3 retrain seeds, compute the LDS with its bootstrap interval (test coalitions and seeds resampled)
and the random range (2,000 random attributions in the pipeline, 1,000 here), then check
1. whether the interval holds the population LDS (the expected per-seed Spearman over all coalitions
   of that size and all seeds), and
2. how many fresh random attributions land inside the random range.
Also the known answer: the LDS of an additive game's true values, measured without noise.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np

from attribution_pipeline.evaluation.lds import draw_test_coalitions, lds_score
from attribution_pipeline.evaluation.simulate import AdditiveGame, interval_coverage

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

GAMES = [
    ("30 contributors, no seed effect", AdditiveGame(n=30, noise=1.5, error=1.0, seed_effect=0.0)),
    ("30 contributors, noisy retrains", AdditiveGame(n=30, noise=4.0, error=0.5, seed_effect=0.0)),
    ("30 contributors, seed effect κ = 0.5", AdditiveGame(n=30, noise=1.5, error=1.0, seed_effect=0.5)),
    ("30 contributors, seed effect κ = 1 dominates", AdditiveGame(n=30, noise=0.5, error=1.0, seed_effect=1.0)),
    ("10 contributors, seed effect κ = 0.5", AdditiveGame(n=10, noise=1.0, error=1.5, seed_effect=0.5)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--simulations", type=int, default=None)
    args = parser.parse_args()
    sims = args.simulations or (40 if args.quick else 400)
    t0 = time.perf_counter()
    lines = ["# LDS intervals and the random range, checked against known answers", "",
             f"Measured {date.today()} by `python benchmarks/lds_intervals.py{' --quick' if args.quick else ''}` "
             f"({platform.machine()}, numpy {np.__version__}); {sims} simulations per game, m = 50 test coalitions "
             "at α = 0.5, 3 retrain seeds, 1,000 bootstrap resamples, 1,000 random attributions per test set and "
             "50 fresh ones scored against its range.", ""]
    rng = np.random.default_rng(0)
    phi = rng.normal(size=30)
    masks = draw_test_coalitions(30, 0.5, 50, seed=1)
    exact = lds_score(phi, masks, np.stack([masks @ phi] * 3))
    lines += [f"- Known answer: the LDS of an additive game's true values, measured without noise: **{exact.lds:.1f}** "
              f"(interval {exact.lo:.1f}–{exact.hi:.1f}; random range {exact.random_lo:.1f} to {exact.random_hi:.1f}).", ""]
    lines += ["| game | σ | κ | τ | population LDS (mean) | interval coverage (95% nominal) | mean width | "
              "coalitions resampled alone: coverage | fresh random attributions inside the random range |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, game in GAMES:
        rep = interval_coverage(game, simulations=sims, seed=1)
        se = np.sqrt(rep.interval_coverage * (1 - rep.interval_coverage) / sims)
        lines.append(f"| {name} | {game.noise} | {game.seed_effect} | {game.error} | {rep.mean_population:.1f} | "
                     f"**{rep.interval_coverage:.3f}** (± {1.96 * se:.3f}) | {rep.mean_width:.1f} | {rep.rows_only_coverage:.3f} | "
                     f"{rep.random_inclusion:.4f} of {rep.random_draws} |")
        print(lines[-1], flush=True)
    lines += ["", "- The interval resamples test coalitions and retrain seeds. Where a seed shares an effect across "
              "the coalitions it trains (κ > 0: the same initialisation and data order for every coalition), that "
              "is what makes it nominal; where retrains share nothing (κ = 0) resampling the seeds counts their "
              "noise twice and the interval is conservative (above 95%). Resampling the coalitions alone (the "
              "column before last) is nominal without a seed effect and under-covers once κ matters, so the "
              "pipeline resamples both: it errs on the side of wider intervals.",
              "- The random range's bounds are order statistics chosen so that a new random attribution falls "
              "inside with probability (K + 1 − 2a)/(K + 1) = 951/1001 = 0.9500 for K = 1,000 (exchangeability; ties "
              "only add to it): the inclusion rates above scatter around it by binomial noise (s.e. 0.0015 at "
              "20,000 draws).",
              f"- Wall time {time.perf_counter() - t0:.0f} s."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"lds-intervals{'-quick' if args.quick else ''}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
