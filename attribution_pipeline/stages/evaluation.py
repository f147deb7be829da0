"""Evaluation stages: does an attribution predict what retraining does?

- ``evaluate_lds``: held-out coalitions retrained with several seeds; LDS of every valuation
  round's values (per method and estimator) against them, with the test–retest ceiling.
- ``evaluate_counterfactual``: retrain without the top contributors by the round's default
  Shapley values, with only the top ones, without random ones and without the top by LOO.

Every retrain goes through ``measure_utility(method="retrain")``: cached per coalition and
seed in ``utilities`` like any other utility, so a second evaluation retrains nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from attribution_pipeline.coalitions import Coalition, make_coalition
from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.evaluation import (
    counterfactual_sets, draw_test_coalitions, lds_score, random_removals, relative_change,
)
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.stages.contributors import contributor_ids
from attribution_pipeline.stages.measure import measure_utility
from attribution_pipeline.stages.plan import read_plan
from attribution_pipeline.stages.result import Log, quiet
from attribution_pipeline.stages.utility import RETRAIN, UTILITY_METHODS
from attribution_pipeline.storage.results import ResultStore


@dataclass
class EvaluationOutcome:
    rows: list[dict]
    n_retrains: int  # retrained models this call trained (cached ones excluded)
    warnings: list[str] = field(default_factory=list)


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


def evaluate_lds(cfg: PipelineConfig, layout: RunLayout, store: ResultStore, log: Log = quiet,
                 methods: tuple[str, ...] = UTILITY_METHODS) -> EvaluationOutcome:
    """LDS of the latest round of each of ``methods`` (those that have one), every estimator."""
    ids = contributor_ids(layout)
    plan = read_plan(layout)
    index = {c: i for i, c in enumerate(ids)}
    fitted = {tuple(sorted(index[m] for m in c.members)) for c in plan.coalitions}
    lc = cfg.lds
    masks = draw_test_coalitions(len(ids), lc.alpha, lc.n_test, lc.seed, exclude=fitted)
    warnings = []
    overlap = sum(tuple(np.flatnonzero(m).tolist()) in fitted for m in masks)
    if overlap:
        warnings.append(f"{overlap} of {len(masks)} test coalitions were also fitted on: too few contributors "
                        "to hold enough coalitions out")
    tests = [make_coalition([ids[i] for i in np.flatnonzero(m)], "lds_test", -2) for m in masks]
    _register(store, tests)
    seeds = [cfg.train.seed + i for i in range(lc.n_seeds)]
    measured: dict[str, np.ndarray] = {}
    n_trained = 0
    for j, c in enumerate(tests, 1):
        log(f"LDS test coalition {j}/{len(tests)} ({c.size} of {len(ids)} contributors): retrain x{len(seeds)}")
        per_seed, trained = _retrain(cfg, layout, store, c, seeds, log)
        n_trained += trained
        for p in cfg.valuation.properties:
            measured.setdefault(p, np.zeros((len(seeds), len(tests))))[:, j - 1] = [per_seed[s][p] for s in seeds]
    rounds = {m: r for m in methods if (r := latest_round(store, m, ids))}
    if not rounds:
        raise RuntimeError("no valuation round over the current contributors yet: materialize `shapley_values` first")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    rows = []
    for method, round_id in rounds.items():
        vals = store.query("SELECT contributor, property, estimator, is_default, value FROM shapley_values "
                           "WHERE round_id = ?", [round_id])
        for (prop, est), grp in vals.group_by("property", "estimator", maintain_order=True):
            if prop not in measured:
                continue
            by = dict(zip(grp["contributor"], grp["value"]))
            phi = np.array([by[c] for c in ids])
            res = lds_score(phi, masks, measured[prop])
            rows.append({"round_id": round_id, "method": method, "estimator": est,
                         "is_default": bool(grp["is_default"][0]), "property": prop, "alpha": lc.alpha,
                         "n_test": res.n_test, "n_seeds": res.n_seeds, "test_seed": lc.seed, "lds": res.lds,
                         "lds_ci": res.ci_half_width, "per_seed": res.per_seed, "ceiling": res.ceiling,
                         "test_coalitions": [c.key for c in tests], "computed_at": now})
    store.upsert("lds_results", rows)
    return EvaluationOutcome(rows, n_trained, warnings)


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


def evaluate_counterfactual(cfg: PipelineConfig, layout: RunLayout, store: ResultStore,
                            log: Log = quiet) -> EvaluationOutcome:
    """Relative change of each property after retraining without the top contributors (by the
    latest round's default Shapley values, and by LOO), with only the top ones, and without
    random ones of the same number."""
    ids = contributor_ids(layout)
    method = cfg.valuation.method
    round_id = latest_round(store, method, ids)
    if round_id is None:
        raise RuntimeError(f"no {method} valuation round over the current contributors yet: "
                           "materialize `shapley_values` first")
    props = list(cfg.valuation.properties)
    vals = store.query("SELECT contributor, property, value FROM shapley_values WHERE round_id = ? AND is_default",
                       [round_id])
    shap = {p: np.array([vals.filter((vals["property"] == p) & (vals["contributor"] == c))["value"][0] for c in ids])
            for p in props}
    cf = cfg.counterfactual
    loo = _loo_values(cfg, layout, store, ids, props, log)
    seeds = [cfg.train.seed + i for i in range(cfg.retrain.n_seeds)]
    scenarios: list[tuple[str, str, str, int, list[str]]] = []  # property, scenario, ranking, repeat, members
    for p in props:
        for ranking, values in (("shapley", shap[p]), ("loo", loo[p])):
            sets = counterfactual_sets(values, ids, remove_fraction=cf.remove_fraction, keep_fraction=cf.keep_fraction)
            scenarios.append((p, "remove_top", ranking, 0, sets["remove_top"]))
            if ranking == "shapley":
                scenarios.append((p, "keep_top", ranking, 0, sets["keep_top"]))
        for r, members in enumerate(random_removals(ids, cf.remove_fraction, cf.n_random, cf.seed)):
            scenarios.append((p, "remove_random", "random", r, members))
    coalitions = {tuple(m): make_coalition(m, "counterfactual", -4) for *_, m in scenarios}
    full = make_coalition(ids, "full", 0)
    _register(store, list(coalitions.values()))
    utilities: dict[str, dict[str, float]] = {}
    n_trained = 0
    for j, c in enumerate([full, *coalitions.values()], 1):
        if c.key in utilities:
            continue
        log(f"counterfactual retrain {j}/{len(coalitions) + 1}: {c.size} of {len(ids)} contributors")
        per_seed, trained = _retrain(cfg, layout, store, c, seeds, log)
        n_trained += trained
        utilities[c.key] = {p: float(np.mean([per_seed[s][p] for s in seeds])) for p in props}
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    rows = []
    for p, scenario, ranking, repeat, members in scenarios:
        c = coalitions[tuple(members)]
        v_full, v_after = utilities[full.key][p], utilities[c.key][p]
        rows.append({"round_id": round_id, "property": p, "scenario": scenario, "ranking": ranking,
                     "repeat": repeat, "coalition_key": c.key, "removed": [i for i in ids if i not in members],
                     "kept": len(members), "v_full": v_full, "v_after": v_after,
                     "relative_change": relative_change(v_after, v_full), "n_seeds": len(seeds), "computed_at": now})
    store.upsert("counterfactual_results", rows)
    return EvaluationOutcome(rows, n_trained)
