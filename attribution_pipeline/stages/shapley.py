"""The valuation round: fit Shapley (and Banzhaf) values from the plan's measured coalitions."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from attribution_pipeline import versions
from attribution_pipeline.coalitions import EMPTY_KEY, coalitions_to_masks
from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.layout import RunLayout, content_hash
from attribution_pipeline.stages.lineage import round_lineage
from attribution_pipeline.stages.reference import instrument_description
from attribution_pipeline.stages.result import Log, quiet
from attribution_pipeline.stages.round import Pool, gather_pool
from attribution_pipeline.stages.utility import FT, SFT
from attribution_pipeline.storage.results import ResultStore
from attribution_pipeline.valuation import applicable_estimators, estimate
from attribution_pipeline.valuation.scope import scope_columns


class MissingUtilitiesError(RuntimeError):
    """Some planned coalitions have no utility yet."""


@dataclass
class ShapleyOutcome:
    round_id: str
    rows: list[dict]
    n_coalitions: int
    skipped: bool
    warnings: list[str] = field(default_factory=list)


def _value_rows(res, is_default: bool, contributors: list[str], prop: str, common: dict) -> list[dict]:
    """One row per contributor of one estimator's result, ranked by value (1 = largest)."""
    n = len(contributors)
    scope = scope_columns(res)
    order = np.argsort(-res.values, kind="stable")
    rank = np.empty(n, dtype=int)
    rank[order] = np.arange(1, n + 1)
    return [{"contributor": c, "property": prop, "value": float(res.values[j]), "std_error": _f(res.std_errors, j),
             "ci_low": _f(res.ci_low, j), "ci_high": _f(res.ci_high, j), "rank": int(rank[j]),
             "rank_low": _i(res.rank_low, j), "rank_high": _i(res.rank_high, j), "p_top": _f(res.p_top, j),
             "top_k": int(res.top_k), "estimator": res.estimator, "value_kind": res.value_kind,
             "is_default": is_default, "n_coalitions": int(res.n_coalitions), **scope, **common}
            for j, c in enumerate(contributors)]


def _fit_property(cfg: PipelineConfig, pool: Pool, masks: np.ndarray, prop: str, common: dict):
    """Rows of every applicable estimator for one property (the default first), and warnings."""
    values = np.array([pool.utilities[(c.key, prop)] for c in pool.sampled], dtype=float)
    v0, vn = pool.utilities[(EMPTY_KEY, prop)], pool.utilities[(pool.full.key, prop)]
    common = {**common, "v_full": float(vn), "v_empty": float(v0), "singleton_share": _singleton_share(pool, prop, v0, vn)}
    noise = pool.utility_noise(prop)
    # Without replicates the noise is unknown; repeated plan rows (the kernel design's) are draws either way.
    fit = dict(empty_value=v0, full_value=vn, seed=cfg.valuation.seed, noise=noise, repeats_are_draws=True)
    common = {**common, "noise_std": None if noise is None else noise[0],
              "noise_dof": None if noise is None else noise[1]}
    default = estimate(masks, values, estimator=cfg.valuation.estimator, **fit)
    rows = _value_rows(default, True, pool.plan.contributors, prop, common)
    warnings = [f"{prop}: {w}" for w in default.warnings]
    for name in applicable_estimators(masks, len(pool.plan.contributors)):
        if name == default.estimator:
            continue
        if name == "kernelshap-paper" and cfg.valuation.design != "kernel":
            continue  # its weights assume i.i.d. kernel draws (valuation.design = "kernel")
        try:
            rows += _value_rows(estimate(masks, values, estimator=name, **fit), False, pool.plan.contributors,
                                prop, common)
        except ValueError as exc:  # an estimator that cannot run on this pool is skipped, with why
            warnings.append(f"{prop}/{name}: {exc}")
    return rows, warnings


def _singleton_share(pool: Pool, prop: str, v0: float, vn: float) -> float | None:
    """(mean v({i}) − v(∅)) / (v(N) − v(∅)): the share of the pot that is the jump from no data to any one
    contributor's data, when every singleton was evaluated (else None). Near 1, most of every value is
    that jump, which any contributor would have brought."""
    singles = [pool.utilities[(c.key, prop)] for c in pool.sampled if len(c.members) == 1]
    if len(singles) < len(pool.plan.contributors) or vn == v0:
        return None
    return float((np.mean(singles) - v0) / (vn - v0))


def _round_row(cfg: PipelineConfig, layout: RunLayout, pool: Pool, rows: list[dict], now, warnings: list[str]) -> dict:
    method = cfg.valuation.method
    base_dir = {SFT: layout.pruned_base_dir, FT: layout.full_model_dir}.get(method)
    return {"round_id": pool.round_id, "computed_at": now, "contributors": pool.plan.contributors,
            "budget": pool.plan.budget, "n_coalitions": len(pool.sampled),
            "base_version": content_hash(base_dir) if base_dir else None,
            "default_estimator": cfg.valuation.estimator, "seed": cfg.valuation.seed,
            "versions": json.dumps(versions.snapshot()), "method": method,
            "estimator": next((r["estimator"] for r in rows if r["is_default"]), None),
            "instrument": instrument_description(layout), "warnings": warnings, "v_full_source": cfg.valuation.v_full,
            "design": pool.plan.design, "replicates": cfg.valuation.replicates if pool.replicates else 1,
            "confirmed_at": now,
            **round_lineage(cfg, layout, pool.plan.contributors)}


def compute_shapley(cfg: PipelineConfig, layout: RunLayout, store: ResultStore, log: Log = quiet) -> ShapleyOutcome:
    """Estimate values per property with every applicable estimator over one shared pool of the
    utilities measured by ``cfg.valuation.method``.

    The default estimator (``cfg.valuation.estimator``, "auto") is flagged ``is_default``. For
    Shapley estimators that guarantee efficiency, values sum to v(N) − v(∅) per property. An
    identical pool (same plan, same utilities, same estimator settings) adds no new round.
    """
    pool = gather_pool(cfg, layout, store)
    if not pool.sampled:
        raise ValueError("the plan has no coalition besides the full one: raise the budget (--budget)")
    if pool.missing:
        m = pool.missing
        raise MissingUtilitiesError(
            f"{len(m)} coalition(s) have no {cfg.valuation.method} utility yet: {m[:8]}{'…' if len(m) > 8 else ''}; "
            "materialize their coalition partitions (or empty_coalition_utilities) first")
    if store.query("SELECT count(*) AS n FROM valuation_rounds WHERE round_id = ?", [pool.round_id])["n"][0]:
        confirm_round(store, pool.round_id)
        rows = store.query("SELECT * FROM shapley_values WHERE round_id = ?", [pool.round_id]).to_dicts()
        log(f"valuation round {pool.round_id} is up to date ({len(pool.sampled)} coalitions)")
        return ShapleyOutcome(pool.round_id, rows, len(pool.sampled), True)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    masks = coalitions_to_masks([c.members for c in pool.sampled], pool.plan.contributors)
    common = {"round_id": pool.round_id, "computed_at": now, "method": cfg.valuation.method}
    rows, warnings = [], []
    for prop in cfg.valuation.properties:
        prop_rows, prop_warnings = _fit_property(cfg, pool, masks, prop, common)
        rows += prop_rows
        warnings += prop_warnings
    store.upsert("shapley_values", rows)
    store.upsert("valuation_rounds", [_round_row(cfg, layout, pool, rows, now, warnings)])
    for w in warnings:
        log(f"warning: {w}")
    return ShapleyOutcome(pool.round_id, rows, len(pool.sampled), False, warnings)


def confirm_round(store: ResultStore, round_id: str) -> None:
    """Mark ``round_id`` as the round the current inputs give (``latest_shapley_values`` shows it):
    an existing round becomes current again when the inputs return to those it was fitted on."""
    store.execute("UPDATE valuation_rounds SET confirmed_at = ? WHERE round_id = ?",
                  [datetime.now(timezone.utc).replace(tzinfo=None), round_id])


def _f(arr, j) -> float | None:
    return None if arr is None else float(arr[j])


def _i(arr, j) -> int | None:
    return None if arr is None else int(arr[j])
