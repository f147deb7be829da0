"""Evaluation stages: does an attribution predict what retraining does?

- ``evaluate_lds``: held-out coalitions (each α of ``lds.alphas``) retrained with several seeds
  that built nothing else; LDS of every valuation round's values (per method and estimator) with a
  bootstrap interval, the random range, the oracle ceiling and the paired difference to the default.
- ``evaluate_counterfactual``: retrain without the top fractions of contributors by each method's
  Shapley values and by LOO, with only the top ones, and without random ones; relative changes
  with an interval over the retrain seeds.

Every retrain goes through ``measure_utility(method="retrain")``: cached per coalition and
seed in ``utilities`` like any other utility, so a second evaluation retrains nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from attribution_pipeline.coalitions import Coalition, make_coalition
from attribution_pipeline.config import PipelineConfig, built_seeds
from attribution_pipeline.evaluation import (
    counterfactual_sets, draw_test_coalitions, lds_difference, lds_score, random_removals, relative_change,
    within_size_spearman,
)
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.stages.contributors import contributor_ids
from attribution_pipeline.stages.measure import measure_utility
from attribution_pipeline.stages.plan import read_plan
from attribution_pipeline.stages.result import Log, quiet
from attribution_pipeline.stages.utility import RETRAIN, UTILITY_METHODS
from attribution_pipeline.storage.results import ResultStore

BASELINE = "baseline"  # lds_results.method of a baseline attribution (its name is in ``estimator``)


@dataclass
class EvaluationOutcome:
    rows: list[dict]
    n_retrains: int  # retrained models this call trained (cached ones excluded)
    warnings: list[str] = field(default_factory=list)
    fidelity: list[dict] = field(default_factory=list)  # within-size Spearman of cheap utilities vs retraining


def latest_round(store: ResultStore, method: str, contributors: list[str]) -> str | None:
    """The newest valuation round fitted on ``method`` over exactly ``contributors``."""
    df = store.query("SELECT round_id, contributors FROM valuation_rounds WHERE coalesce(method, 'sft') = ? "
                     "ORDER BY computed_at DESC", [method])
    for r in df.iter_rows(named=True):
        if list(r["contributors"]) == contributors:
            return r["round_id"]
    return None


def _register(store: ResultStore, coalitions: list[Coalition]) -> None:
    """Add evaluation coalitions to ``coalitions`` without relabelling planned ones."""
    known = set(store.query("SELECT coalition_key FROM coalitions")["coalition_key"])
    rows = [c.as_row() for c in {c.key: c for c in coalitions}.values() if c.key not in known]
    if rows:
        store.upsert("coalitions", rows)


def _retrain(cfg: PipelineConfig, layout: RunLayout, store: ResultStore, coalition: Coalition, seeds: list[int],
             log: Log) -> tuple[dict[int, dict[str, float]], int]:
    """Retrained utilities per seed, and how many models had to be trained."""
    out, trained = {}, 0
    for s in seeds:
        o = measure_utility(cfg, layout, store, coalition, log, method=RETRAIN, seed=s)
        out[s] = o.utilities
        trained += 0 if o.checkpoint.skipped else 1
    return out, trained


def _seeds_or_fail(cfg: PipelineConfig, kind: str) -> list[int]:
    seeds = cfg.evaluation_seeds(kind)
    clash = sorted(set(seeds) & built_seeds(cfg))
    if clash:  # the config refuses this too; kept here for configs built around the checks
        raise ValueError(f"{kind} retrain seeds {seeds} include {clash}, seed(s) that built θ*, the base or the pools")
    return seeds


def _round_values(store: ResultStore, rounds: dict[str, str], ids: list[str]) -> dict:
    """(method, property, estimator) → (values in ``ids`` order, is_default, round_id)."""
    values = {}
    for method, round_id in rounds.items():
        vals = store.query("SELECT contributor, property, estimator, is_default, value FROM shapley_values "
                           "WHERE round_id = ?", [round_id])
        for (prop, est), grp in vals.group_by("property", "estimator", maintain_order=True):
            by = dict(zip(grp["contributor"], grp["value"]))
            if all(c in by and by[c] is not None for c in ids):
                values[(method, prop, est)] = (np.array([by[c] for c in ids], dtype=float),
                                               bool(grp["is_default"][0]), round_id)
    return values


def _baseline_values(store: ResultStore, layout: RunLayout, ids: list[str], round_id: str,
                     only: tuple[str, ...] | None = None) -> dict:
    """("baseline", property, method) → (values in ``ids`` order, False, ``round_id``): the baselines
    stored for the current θ* (``stages/baselines.py``), each scored beside the round it is compared with."""
    from attribution_pipeline.layout import content_hash
    from attribution_pipeline.stages.baselines import read_baselines

    if not (layout.full_model_dir / "manifest.json").is_file():
        return {}
    out = {}
    for method, by_prop in read_baselines(store, content_hash(layout.full_model_dir)).items():
        if only is not None and method not in only:
            continue
        for prop, by in by_prop.items():
            if all(c in by for c in ids):
                out[(BASELINE, prop, method)] = (np.array([by[c] for c in ids], dtype=float), False, round_id)
    return out


@dataclass
class _TestSet:
    """One α's held-out coalitions, their retrained utilities per property ``(seeds, m)``, and the
    cheap methods' utilities of the same coalitions (for the within-size fidelity)."""

    alpha: float
    masks: np.ndarray
    coalitions: list[Coalition]
    measured: dict[str, np.ndarray] = field(default_factory=dict)
    approx: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (method, property) → per coalition
    trained: int = 0


def _measure_test_set(cfg: PipelineConfig, layout: RunLayout, store: ResultStore, test: _TestSet, seeds: list[int],
                      approx_methods: list[str], ids: list[str], log: Log) -> None:
    for j, c in enumerate(test.coalitions):
        log(f"LDS test coalition {j + 1}/{len(test.coalitions)} at alpha {test.alpha} ({c.size} of {len(ids)} "
            f"contributors): retrain x{len(seeds)} (seeds {seeds[0]}..{seeds[-1]})")
        per_seed, trained = _retrain(cfg, layout, store, c, seeds, log)
        test.trained += trained
        for p in cfg.valuation.properties:
            test.measured.setdefault(p, np.zeros((len(seeds), len(test.coalitions))))[:, j] = [per_seed[s][p] for s in seeds]
        for m in approx_methods:  # the same coalition by the cheap method: fidelity within size
            approx = measure_utility(cfg, layout, store, c, log, method=m, seed=cfg.utility_seeds(m)[0]).utilities
            for p in cfg.valuation.properties:
                test.approx.setdefault((m, p), []).append(float(approx[p]))


def _lds_rows(cfg: PipelineConfig, test: _TestSet, values: dict, reference, seeds: list[int], now) -> list[dict]:
    lc, rows = cfg.lds, []
    for (method, prop, est), (phi, is_default, round_id) in values.items():
        if prop not in test.measured:
            continue
        measured = test.measured[prop]
        res = lds_score(phi, test.masks, measured, n_boot=lc.n_boot, n_random=lc.n_random, seed=lc.seed)
        diff = None
        if reference is not None and (method, est) != reference and (reference[0], prop, reference[1]) in values:
            base = values[(reference[0], prop, reference[1])][0]
            diff = lds_difference(phi, base, test.masks, measured, n_boot=lc.n_boot, seed=lc.seed)
        rows.append({"round_id": round_id, "method": method, "estimator": est, "is_default": is_default,
                     "property": prop, "alpha": test.alpha, "n_test": res.n_test, "n_seeds": res.n_seeds,
                     "test_seed": lc.seed, "lds": res.lds, "lds_lo": res.lo, "lds_hi": res.hi,
                     "lds_ci": (res.hi - res.lo) / 2, "per_seed": res.per_seed,
                     "random_lo": res.random_lo, "random_hi": res.random_hi, "n_random": res.n_random,
                     "inside_random": res.inside_random, "test_retest": res.test_retest, "ceiling": res.ceiling,
                     "retrain_seeds": seeds, "n_boot": res.n_boot,
                     "interval_covers": f"{res.covers}; not: {res.not_covered}",
                     "versus": None if diff is None else f"{reference[0]}/{reference[1]}",
                     "diff": None if diff is None else diff.difference,
                     "diff_lo": None if diff is None else diff.lo, "diff_hi": None if diff is None else diff.hi,
                     "test_coalitions": [c.key for c in test.coalitions], "computed_at": now})
        # an attribution constant on the test set (e.g. equal data-size shares: every test coalition
        # has the same size) ranks nothing: its LDS is undefined, stored as NULL rather than NaN
        rows[-1].update({k: None for k in ("lds", "lds_lo", "lds_hi", "lds_ci", "diff", "diff_lo", "diff_hi")
                         if isinstance(rows[-1][k], float) and not np.isfinite(rows[-1][k])})
        if rows[-1]["lds"] is None:
            rows[-1]["inside_random"] = None
    return rows


def _fidelity_rows(cfg: PipelineConfig, tests: list[_TestSet], seeds: list[int], now, warnings: list[str]) -> list[dict]:
    """Within-size Spearman of each cheap method's utilities against the seed-mean retrained ones."""
    rows = []
    for m, p in dict.fromkeys(k for t in tests for k in t.approx):
        sizes = np.concatenate([[c.size for c in t.coalitions] for t in tests if (m, p) in t.approx])
        approx = np.concatenate([t.approx[(m, p)] for t in tests if (m, p) in t.approx])
        retrain = np.concatenate([t.measured[p].mean(axis=0) for t in tests if (m, p) in t.approx])
        try:
            w = within_size_spearman(sizes, approx, retrain, n_boot=cfg.lds.n_boot, seed=cfg.lds.seed)
        except ValueError as exc:  # fewer than 3 test coalitions of any size
            warnings.append(f"within-size fidelity of {m} on {p}: {exc}")
            continue
        per = [(k, rho, n, None, None) for k, (rho, n) in sorted(w.per_size.items())]
        for size, rho, n, lo, hi in [(0, w.pooled, w.n, w.lo, w.hi), *per]:
            rows.append({"method": m, "property": p, "size": size, "n": n, "spearman": rho, "lo": lo, "hi": hi,
                         "reference": f"retrain, mean of seeds {seeds}", "test_seed": cfg.lds.seed, "computed_at": now})
    return rows


def evaluate_lds(cfg: PipelineConfig, layout: RunLayout, store: ResultStore, log: Log = quiet,
                 methods: tuple[str, ...] = UTILITY_METHODS) -> EvaluationOutcome:
    """LDS of the latest round of each of ``methods`` (those that have one), every estimator, at each
    α of ``lds.alphas``: held-out test coalitions retrained with seeds disjoint from every seed that
    built the valuation, scored with a bootstrap interval, the random range, the oracle ceiling and
    the paired difference to the valuation method's default estimate (``evaluation/lds.py``); and the
    within-size Spearman of the cheap methods' utilities of the same coalitions (``utility_fidelity``)."""
    ids = contributor_ids(layout)
    index = {c: i for i, c in enumerate(ids)}
    fitted = {tuple(sorted(index[m] for m in c.members)) for c in read_plan(layout).coalitions}
    rounds = {m: r for m in methods if (r := latest_round(store, m, ids))}
    if not rounds:
        raise RuntimeError("no valuation round over the current contributors yet: materialize `shapley_values` first")
    seeds = _seeds_or_fail(cfg, "lds")
    values = _round_values(store, rounds, ids)
    values.update(_baseline_values(store, layout, ids, rounds.get(cfg.valuation.method) or next(iter(rounds.values()))))
    reference = next(((m, e) for (m, p, e), (_, d, _) in values.items() if m == cfg.valuation.method and d), None)
    approx_methods = [m for m in dict.fromkeys([cfg.valuation.method, *rounds]) if m != RETRAIN]
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    rows, warnings, tests = [], [], []
    for alpha in cfg.lds.alphas:
        masks = draw_test_coalitions(len(ids), alpha, cfg.lds.n_test, cfg.lds.seed, exclude=fitted)
        overlap = sum(tuple(np.flatnonzero(m).tolist()) in fitted for m in masks)
        if overlap:
            warnings.append(f"alpha {alpha}: {overlap} of {len(masks)} test coalitions were also fitted on: too few "
                            "contributors to hold enough coalitions out")
        test = _TestSet(alpha, masks, [make_coalition([ids[i] for i in np.flatnonzero(m)], "lds_test", -2) for m in masks])
        _register(store, test.coalitions)
        _measure_test_set(cfg, layout, store, test, seeds, approx_methods, ids, log)
        rows += _lds_rows(cfg, test, values, reference, seeds, now)
        tests.append(test)
    store.upsert("lds_results", rows)
    fidelity = _fidelity_rows(cfg, tests, seeds, now, warnings)
    store.upsert("utility_fidelity", fidelity)
    return EvaluationOutcome(rows, sum(t.trained for t in tests), warnings, fidelity)


def _loo_values(cfg: PipelineConfig, layout: RunLayout, store: ResultStore, ids: list[str], prop_names: list[str],
                log: Log) -> dict[str, np.ndarray]:
    """Leave-one-out values v(N) − v(N∖{i}) by the valuation's utility method (cheap for sFT)."""
    method = cfg.valuation.method
    full = make_coalition(ids, "full", 0)
    without = [make_coalition([c for c in ids if c != i], "loo", -3) for i in ids]
    _register(store, without)
    seeds = cfg.utility_seeds(method)

    def utility(c: Coalition) -> dict[str, float]:
        outs = [measure_utility(cfg, layout, store, c, log, method=method, seed=s) for s in seeds]
        return {p: float(np.mean([o.utilities[p] for o in outs])) for p in prop_names}

    vn = utility(full)
    minus = [utility(c) for c in without]
    return {p: np.array([vn[p] - m[p] for m in minus]) for p in prop_names}


def _seed_interval(values: list[float], level: float = 0.95) -> tuple[float | None, float | None]:
    """Student-t interval of a mean over retrain seeds; None with one seed (nothing to say)."""
    from scipy.stats import t as student

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return None, None
    half = float(student.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return float(v.mean() - half), float(v.mean() + half)


def _rankings(cfg: PipelineConfig, layout: RunLayout, store: ResultStore, ids: list[str], round_id: str,
              props: list[str], log: Log) -> dict[str, dict[str, np.ndarray]]:
    """ranking name → property → values: every utility method's default Shapley values, and LOO."""
    method = cfg.valuation.method
    rankings: dict[str, dict[str, np.ndarray]] = {}
    for m in UTILITY_METHODS:
        rid = round_id if m == method else latest_round(store, m, ids)
        if rid is None:
            continue
        vals = store.query("SELECT contributor, property, value FROM shapley_values WHERE round_id = ? AND is_default",
                           [rid])
        name = "shapley" if m == method else f"shapley-{m}"
        rankings[name] = {}
        for p in props:
            sub = vals.filter(vals["property"] == p)
            by = dict(zip(sub["contributor"], sub["value"]))
            if all(c in by for c in ids):
                rankings[name][p] = np.array([by[c] for c in ids], dtype=float)
    rankings["loo"] = _loo_values(cfg, layout, store, ids, props, log)
    if cfg.counterfactual.baselines:
        found = _baseline_values(store, layout, ids, round_id, cfg.counterfactual.baselines)
        missing = sorted(set(cfg.counterfactual.baselines) - {m for _, _, m in found})
        if missing:
            raise RuntimeError(f"counterfactual.baselines names {missing}, which have no rows for the current full "
                               "model: materialize `baseline_attributions` (attribution-pipeline baselines) first")
        for (_, p, m), (v, _, _) in found.items():
            rankings.setdefault(m, {})[p] = v
    return rankings


def _scenarios(cfg: PipelineConfig, ids: list[str], props: list[str], rankings: dict) -> list[tuple]:
    """(property, scenario, fraction, ranking, repeat, members) of every coalition to retrain."""
    cf, out = cfg.counterfactual, []
    for p in props:
        for ranking, by_prop in rankings.items():
            if p not in by_prop:
                continue
            for f in cf.remove_fractions:
                out.append((p, "remove_top", f, ranking, 0,
                            counterfactual_sets(by_prop[p], ids, remove_fraction=f, keep_fraction=0.5)["remove_top"]))
            if ranking != "loo":
                for f in cf.keep_fractions:
                    out.append((p, "keep_top", f, ranking, 0,
                                counterfactual_sets(by_prop[p], ids, remove_fraction=0.5, keep_fraction=f)["keep_top"]))
        for f in cf.remove_fractions:
            for r, members in enumerate(random_removals(ids, f, cf.n_random, cf.seed + int(round(1000 * f)))):
                out.append((p, "remove_random", f, "random", r, members))
    return out


def evaluate_counterfactual(cfg: PipelineConfig, layout: RunLayout, store: ResultStore,
                            log: Log = quiet) -> EvaluationOutcome:
    """Relative change of each property after retraining without the top ``remove_fractions`` of
    contributors by each ranking (the default Shapley values of every utility method's latest round,
    and LOO by the valuation's method), with only the top ``keep_fractions``, and without random ones
    of the same number; each coalition retrained with ``counterfactual.n_seeds`` seeds (disjoint from
    the seeds that built the valuation), paired with the full coalition retrained with the same seed.
    A coalition that two rankings pick is retrained once."""
    ids = contributor_ids(layout)
    round_id = latest_round(store, cfg.valuation.method, ids)
    if round_id is None:
        raise RuntimeError(f"no {cfg.valuation.method} valuation round over the current contributors yet: "
                           "materialize `shapley_values` first")
    props = list(cfg.valuation.properties)
    seeds = _seeds_or_fail(cfg, "counterfactual")
    scenarios = _scenarios(cfg, ids, props, _rankings(cfg, layout, store, ids, round_id, props, log))
    coalitions = {tuple(m): make_coalition(m, "counterfactual", -4) for *_, m in scenarios}
    full = make_coalition(ids, "full", 0)
    _register(store, list(coalitions.values()))
    utilities: dict[str, dict[int, dict[str, float]]] = {}
    n_trained = 0
    todo = [full, *[c for c in coalitions.values() if c.key != full.key]]
    for j, c in enumerate(todo, 1):
        log(f"counterfactual retrain {j}/{len(todo)}: {c.size} of {len(ids)} contributors, seeds {seeds[0]}..{seeds[-1]}")
        utilities[c.key], trained = _retrain(cfg, layout, store, c, seeds, log)
        n_trained += trained
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    rows = []
    for p, scenario, fraction, ranking, repeat, members in scenarios:
        c = coalitions[tuple(members)]
        per_seed = [relative_change(utilities[c.key][s][p], utilities[full.key][s][p]) for s in seeds]
        lo, hi = _seed_interval(per_seed)
        rows.append({"round_id": round_id, "property": p, "scenario": scenario, "fraction": fraction,
                     "ranking": ranking, "repeat": repeat, "coalition_key": c.key,
                     "removed": [i for i in ids if i not in members], "kept": len(members),
                     "v_full": float(np.mean([utilities[full.key][s][p] for s in seeds])),
                     "v_after": float(np.mean([utilities[c.key][s][p] for s in seeds])),
                     "relative_change": float(np.mean(per_seed)), "rc_lo": lo, "rc_hi": hi, "per_seed": per_seed,
                     "retrain_seeds": seeds, "n_seeds": len(seeds), "computed_at": now})
    store.upsert("counterfactual_results", rows)
    return EvaluationOutcome(rows, n_trained)
