"""The coalition plan: which coalitions a round evaluates.

The full coalition plus the first ``budget`` coalitions of a seeded, prefix-stable, paired design
(``valuation/design.py``); under the incremental policy the previous plan grows instead
(``plan_incremental``). The plan records the pruned base it was made with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from attribution_pipeline.coalitions import Coalition, make_coalition, masks_to_coalitions
from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.layout import RunLayout, content_hash, signature
from attribution_pipeline.stages.contributors import contributor_ids, read_contributors
from attribution_pipeline.stages.lineage import INCREMENTAL, base_decision
from attribution_pipeline.storage.artifacts import atomic_write_json, is_complete
from attribution_pipeline.storage.results import ResultStore
from attribution_pipeline.valuation import CoalitionDesign


@dataclass
class Plan:
    contributors: list[str]
    budget: int
    seed: int
    design: str
    coalitions: list[Coalition]  # the full coalition first, then the design's draws in order
    base_version: str | None = None  # the pruned base the plan was made with (incremental plans grow from it)

    @property
    def content_hash(self) -> str:
        return signature(self.contributors, [c.key for c in self.coalitions])


def budget_problem(budget: int, n: int) -> str | None:
    """The budget rule, for every entry point: why ``budget`` coalitions cannot value ``n``
    contributors (Shapley regression needs at least n distinct coalitions unless the budget covers
    all 2^n − 2 proper ones), or None."""
    if budget < 0:
        return f"valuation.budget must be >= 0, got {budget}"
    if budget < n and budget < 2**n - 2:
        return (f"a budget of {budget} coalitions cannot value {n} contributors: Shapley regression needs at "
                f"least n = {n} (use --budget {5 * n} or more)")
    return None


def _fresh_plan(ids: list[str], budget: int, seed: int, design_name: str = "paired-kernel") -> Plan:
    n = len(ids)
    design = CoalitionDesign(n_players=n, seed=seed, design=design_name)
    masks = design.take(budget) if budget > 0 else np.zeros((0, n), dtype=bool)
    full = make_coalition(ids, "full", 0)
    sampled = masks_to_coalitions(masks, ids, start_index=1)
    return Plan(ids, budget, seed, getattr(design, "design", "paired-kernel"), [full, *sampled])


def plan_coalitions(cfg: PipelineConfig, layout: RunLayout) -> Plan:
    """The full coalition plus the first ``valuation.budget`` coalitions of the seeded design
    (``valuation.design``; paired-kernel by default). The paper's ``kernel`` design draws with
    replacement: a coalition drawn twice is planned twice (same key, measured once) and counts twice
    in the fit, as a draw of the design, never as a second measurement.

    Prefix-stable: a larger budget keeps every coalition of a smaller one. When the budget covers
    all 2^n − 2 proper coalitions, every one of them is planned (exact Shapley values).
    Writes ``plan.json``; the head process registers its coalitions in DuckDB
    (``storage/index.py:ingest``).
    """
    budget, seed = cfg.valuation.budget, cfg.valuation.seed
    ids = contributor_ids(layout)
    problem = budget_problem(budget, len(ids))
    if problem:
        raise ValueError(problem)
    plan = plan_incremental(cfg, layout, budget, seed) if cfg.revaluation.policy == INCREMENTAL else None
    plan = plan or _fresh_plan(ids, budget, seed, cfg.valuation.design)
    plan.base_version = content_hash(layout.pruned_base_dir) if is_complete(layout.pruned_base_dir) else None
    atomic_write_json(layout.workdir / "plan.json", {
        "contributors": plan.contributors, "budget": plan.budget, "seed": seed, "design": plan.design,
        "base_version": plan.base_version,
        "coalitions": [{"key": c.key, "members": list(c.members), "kind": c.kind} for c in plan.coalitions],
    })
    return plan


def read_plan(layout: RunLayout) -> Plan:
    path = layout.workdir / "plan.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: materialize the `coalition_plan` asset first")
    d = json.loads(path.read_text())
    coalitions = [make_coalition(c["members"], c["kind"], i) for i, c in enumerate(d["coalitions"])]
    return Plan(d["contributors"], d["budget"], d["seed"], d["design"], coalitions, d.get("base_version"))


def planned_coalitions(layout: RunLayout, keys: list[str]) -> dict[str, Coalition]:
    """Members of coalition partitions, from ``plan.json`` (what a worker reads: never DuckDB)."""
    known = {c.key: c for c in reversed(read_plan(layout).coalitions)}  # first occurrence wins
    missing = [k for k in keys if k not in known]
    if missing:
        raise KeyError(f"coalition partition(s) {missing} are not in the current plan ({layout.workdir / 'plan.json'}); "
                       "materialize `coalition_plan` first")
    return {k: known[k] for k in keys}


def coalitions_by_key(store: ResultStore, keys: list[str]) -> dict[str, Coalition]:
    """Members of coalition partitions, from the ``coalitions`` table."""
    df = store.query("SELECT coalition_key, members, kind, plan_index FROM coalitions")
    known = {r["coalition_key"]: r for r in df.iter_rows(named=True)}
    missing = [k for k in keys if k not in known]
    if missing:
        raise KeyError(f"coalition partition(s) {missing} are not in the coalitions table; "
                       "materialize `coalition_plan` first")
    return {k: Coalition(k, tuple(known[k]["members"]), known[k]["kind"], known[k]["plan_index"]) for k in keys}


def extend_pool(previous: Sequence[Iterable[str]], players: Sequence[str], arriving: Sequence[str],
                removed: Iterable[str]) -> list[frozenset[str]]:
    """The coalitions of an incremental plan, in order (the full coalition of ``players`` first).

    previous: the member sets of the previous plan (its full coalition included). Every coalition
    holding a removed contributor is dropped. Then for each arriving contributor p, in order, every
    coalition S of the pool, and ∅, gets its partner S ∪ {p}. A paired previous pool stays paired:
    the complement of S in the new game is (N∖S) ∪ {p}, the partner of S's old complement.
    """
    removed = set(removed)
    pool: list[frozenset[str]] = []
    seen: set[frozenset[str]] = set()

    def add(s: frozenset[str]) -> None:
        if s and s not in seen:
            seen.add(s)
            pool.append(s)

    full = frozenset(players)
    add(full)
    for s in previous:
        s = frozenset(s)
        if not s & removed:
            add(s)
    for p in arriving:
        for s in [frozenset(), *pool]:
            add(s | {p})
    pool.remove(full)
    return [full, *pool]


def plan_incremental(cfg: PipelineConfig, layout: RunLayout, budget: int, seed: int):
    """The incremental plan, or None when this round must plan afresh (then the caller does).

    Grows the previous plan (``extend_pool``) when the previous plan was made with the current base;
    tops it up from the seeded design for the current n when fewer than ``budget`` coalitions remain.
    """
    manifest = read_contributors(layout)
    decision = base_decision(cfg, layout, manifest)
    plan_path = layout.workdir / "plan.json"
    if not decision.keep or not plan_path.is_file() or not is_complete(layout.pruned_base_dir):
        return None
    previous = json.loads(plan_path.read_text())
    if previous.get("base_version") != content_hash(layout.pruned_base_dir):
        return None
    ids = [c["contributor"] for c in manifest["contributors"]]
    arriving = [c for c in ids if c not in previous["contributors"]]
    removed = [c for c in previous["contributors"] if c not in ids]
    sets = extend_pool([c["members"] for c in previous["coalitions"]], ids, arriving, removed)
    coalitions = [make_coalition(sorted(sets[0]), "full", 0)]
    coalitions += [make_coalition(sorted(s), "sampled", i) for i, s in enumerate(sets[1:], 1)]
    if len(coalitions) - 1 < budget:  # top up from the fresh design (prefix-stable, so re-runs agree)
        have = {c.key for c in coalitions}
        for c in masks_to_coalitions(CoalitionDesign(n_players=len(ids), seed=seed).take(budget), ids):
            if len(coalitions) - 1 >= budget:
                break
            if c.key not in have:
                have.add(c.key)
                coalitions.append(make_coalition(c.members, "sampled", len(coalitions)))
    design = previous["design"] if previous["design"].startswith("incremental") else f"incremental({previous['design']})"
    return Plan(ids, len(coalitions) - 1, seed, design, coalitions)


def plan_up_to_date(cfg: PipelineConfig, layout: RunLayout) -> bool:
    """Whether ``plan.json`` is the plan ``plan_coalitions`` would write now: same contributors,
    made with the current pruned base, with this budget and seed (incremental plans: at least
    the budget)."""
    if not (layout.workdir / "plan.json").is_file() or not is_complete(layout.pruned_base_dir):
        return False
    plan = read_plan(layout)
    if plan.contributors != contributor_ids(layout) or plan.base_version != content_hash(layout.pruned_base_dir):
        return False
    if plan.design.startswith("incremental"):
        return plan.budget >= cfg.valuation.budget
    return (plan.budget == cfg.valuation.budget and plan.seed == cfg.valuation.seed
            and plan.design == cfg.valuation.design)
