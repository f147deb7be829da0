"""The valuation round: fit Shapley (and Banzhaf) values from the plan's evaluated coalitions."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from attribution_pipeline import versions
from attribution_pipeline.coalitions import EMPTY_KEY, coalitions_to_masks
from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.layout import RunLayout, content_hash, signature
from attribution_pipeline.stages.base import Log, _quiet, read_contributors
from attribution_pipeline.stages.coalitions import FT, SFT, coalitions_by_key, read_plan, utility_spec
from attribution_pipeline.stages.revaluation import round_lineage
from attribution_pipeline.storage.results import ResultStore


class MissingUtilitiesError(RuntimeError):
    """Some planned coalitions have no utility yet."""


@dataclass
class ShapleyOutcome:
    round_id: str
    rows: list[dict]
    n_coalitions: int
    skipped: bool
    warnings: list[str] = field(default_factory=list)


def method_utilities(cfg: PipelineConfig, layout: RunLayout, store: ResultStore, keys: list[str],
                     properties: list[str], method: str) -> dict[tuple[str, str], float]:
    """{(coalition_key, property): utility} by ``method``, averaged over the method's seeds; a key
    is present only when every seed's utility is there (and, where recorded, current)."""
    df = store.utilities_for(keys, method=method)
    if not len(df):
        return {}
    seeds = set(cfg.utility_seeds(method))
    coalitions = coalitions_by_key(store, keys)
    data = {c["contributor"]: c["data_hash"] for c in read_contributors(layout)["contributors"]}
    expected = {(k, s): utility_spec(cfg, layout, coalitions[k], method, s, data).utility_signature
                for k in keys for s in seeds}
    by: dict[tuple[str, str], dict[int, float]] = {}
    for r in df.iter_rows(named=True):
        current = r.get("inputs_signature") in (None, expected.get((r["coalition_key"], r["seed"])))
        if r["seed"] in seeds and current:
            by.setdefault((r["coalition_key"], r["property"]), {})[r["seed"]] = r["value"]
    return {k: float(np.mean(list(v.values()))) for k, v in by.items() if set(v) == seeds and k[1] in properties}


@dataclass
class Pool:
    """The current plan's utilities by one method: what a valuation round would be fitted on."""

    plan: object
    full: object
    sampled: list
    have: dict  # {(coalition_key, property): utility}
    missing: list[str]  # coalition keys (∅ included) lacking a current utility
    round_id: str | None  # the id the round will have; None while utilities are missing


def gather_pool(cfg: PipelineConfig, layout: RunLayout, store: ResultStore, method: str | None = None) -> Pool:
    """Read the plan and its current utilities; raises when the plan is stale (contributors changed)."""
    method = method or cfg.valuation.method
    plan = read_plan(layout)
    current = [c["contributor"] for c in read_contributors(layout)["contributors"]]
    if current != plan.contributors:
        raise RuntimeError("the contributors changed since the coalition plan was made; "
                           "materialize `coalition_plan` (and the new coalition partitions) first")
    full, sampled = plan.coalitions[0], plan.coalitions[1:]
    keys = sorted({c.key for c in plan.coalitions})
    properties = list(cfg.valuation.properties)
    have = method_utilities(cfg, layout, store, keys, properties, method)
    # v(∅) is the untrained model's, the same for every method
    empty = store.utilities_for([EMPTY_KEY], method=SFT)
    for r in empty.iter_rows(named=True) if len(empty) else []:
        if r["seed"] == cfg.finetune.seed:
            have[(EMPTY_KEY, r["property"])] = r["value"]
    missing = sorted({k for k in [*keys, EMPTY_KEY] for p in properties if (k, p) not in have})
    round_id = None if missing else "r-" + signature(plan.content_hash, sorted(have.items()), cfg.valuation.estimator,
                                                     cfg.valuation.seed, method)
    return Pool(plan, full, sampled, have, missing, round_id)


def compute_shapley(cfg: PipelineConfig, layout: RunLayout, store: ResultStore, log: Log = _quiet,
                    method: str | None = None) -> ShapleyOutcome:
    """Estimate values per property with every applicable estimator over one shared pool.

    The default estimator (``cfg.valuation.estimator``, "auto") is flagged ``is_default``. For
    Shapley estimators that guarantee efficiency, values sum to v(N) − v(∅) per property. An
    identical pool (same plan, same utilities, same estimator settings) adds no new round.
    """
    from attribution_pipeline.valuation import applicable_methods, estimate

    method = method or cfg.valuation.method
    pool = gather_pool(cfg, layout, store, method)
    plan, full, sampled, have, round_id = pool.plan, pool.full, pool.sampled, pool.have, pool.round_id
    if not sampled:
        raise ValueError("the plan has no coalition besides the full one: raise the budget (--budget)")
    if pool.missing:
        missing = pool.missing
        raise MissingUtilitiesError(
            f"{len(missing)} coalition(s) have no {method} utility yet: {missing[:8]}{'…' if len(missing) > 8 else ''}; "
            "materialize their coalition partitions (or empty_coalition_utilities) first")
    properties = list(cfg.valuation.properties)
    masks = coalitions_to_masks([c.members for c in sampled], plan.contributors)
    n = len(plan.contributors)
    base_version = {SFT: lambda: content_hash(layout.pruned_base_dir),
                    FT: lambda: content_hash(layout.full_model_dir)}.get(method, lambda: None)()
    exists = store.query("SELECT count(*) AS n FROM valuation_rounds WHERE round_id = ?", [round_id])["n"][0]
    if exists:
        rows = store.query("SELECT * FROM shapley_values WHERE round_id = ?", [round_id]).to_dicts()
        log(f"valuation round {round_id} is up to date ({len(sampled)} coalitions)")
        return ShapleyOutcome(round_id, rows, len(sampled), True)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    rows: list[dict] = []
    warnings: list[str] = []
    for prop in properties:
        values = np.array([have[(c.key, prop)] for c in sampled], dtype=float)
        v0, vn = have[(EMPTY_KEY, prop)], have[(full.key, prop)]
        default = estimate(masks, values, empty_value=v0, full_value=vn, method=cfg.valuation.estimator,
                           seed=cfg.valuation.seed)
        results = [(default, True)]
        for m in applicable_methods(masks, n):
            if m != default.method:
                try:
                    results.append((estimate(masks, values, empty_value=v0, full_value=vn, method=m,
                                             seed=cfg.valuation.seed), False))
                except ValueError as exc:  # a method that cannot run on this pool is skipped, with why
                    warnings.append(f"{prop}/{m}: {exc}")
        warnings.extend(f"{prop}: {w}" for w in default.warnings)
        for res, is_default in results:
            order = np.argsort(-res.values, kind="stable")
            rank = np.empty(n, dtype=int)
            rank[order] = np.arange(1, n + 1)
            for j, contributor in enumerate(plan.contributors):
                rows.append({
                    "round_id": round_id, "contributor": contributor, "property": prop,
                    "value": float(res.values[j]), "std_error": _f(res.std_errors, j),
                    "ci_low": _f(res.ci_low, j), "ci_high": _f(res.ci_high, j), "rank": int(rank[j]),
                    "rank_low": _i(res.rank_low, j), "rank_high": _i(res.rank_high, j),
                    "p_top": _f(res.p_top, j), "top_k": int(res.top_k),
                    "estimator": res.method, "value_kind": res.value_kind, "is_default": is_default,
                    "n_coalitions": int(res.n_coalitions), "v_full": float(vn), "v_empty": float(v0),
                    "computed_at": now, "method": method,
                })
    store.upsert("shapley_values", rows)
    store.upsert("valuation_rounds", [{
        "round_id": round_id, "computed_at": now, "contributors": plan.contributors, "budget": plan.budget,
        "n_coalitions": len(sampled), "base_version": base_version, "default_estimator": cfg.valuation.estimator,
        "seed": cfg.valuation.seed, "versions": json.dumps(versions.snapshot()), "method": method,
        "estimator": next((r["estimator"] for r in rows if r["is_default"]), None),
        **round_lineage(cfg, layout, plan.contributors),
    }])
    for w in warnings:
        log(f"warning: {w}")
    return ShapleyOutcome(round_id, rows, len(sampled), False, warnings)


def _f(arr, j) -> float | None:
    return None if arr is None else float(arr[j])


def _i(arr, j) -> int | None:
    return None if arr is None else int(arr[j])
