"""The round: what a valuation round still needs, decided in one place.

``next_step`` compares the contributors a round values (a snapshot) with the work directory and
DuckDB and answers one of: ``base`` (register the contributors, build the instruments, the full
model, the pruned base, the plan and v(∅)), ``coalitions`` (exactly which coalition partitions lack
a current utility), ``shapley`` (fit a new round), ``idle`` (up to date) or ``wait`` (nothing can
run, with why). The CLI, the contributors sensor and the re-valuation schedule all ask it and only
launch what it says (``runner.py``, ``defs/sensors.py``, ``defs/schedules.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from attribution_pipeline.coalitions import EMPTY_KEY, Coalition, make_coalition
from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.layout import RunLayout, current_signature, signature
from attribution_pipeline.stages.contributors import data_versions, read_contributors, too_few
from attribution_pipeline.stages.measure import full_model_utility_signature
from attribution_pipeline.stages.models import models_up_to_date
from attribution_pipeline.stages.plan import Plan, budget_problem, coalitions_by_key, plan_up_to_date, read_plan
from attribution_pipeline.stages.reference import reference_up_to_date
from attribution_pipeline.stages.utility import (
    EMPTY_METHOD, empty_seed, empty_utility_signature, is_replicated, replicate_seeds, replicates_apply, utility_spec,
)
from attribution_pipeline.storage.results import ResultStore
from attribution_pipeline.valuation import ESTIMATORS_VERSION


def _current(row: dict, expected: str | None) -> bool:
    """Rows written before utilities carried signatures count as current."""
    return row.get("inputs_signature") in (None, expected)


def empty_utilities(cfg: PipelineConfig, layout: RunLayout, store: ResultStore) -> dict[tuple[str, str], float]:
    """{(EMPTY_KEY, property): v(∅)}: the untrained model's, the same for every method, when current."""
    df = store.utilities_for([EMPTY_KEY], method=EMPTY_METHOD)
    expected = empty_utility_signature(cfg, layout)
    return {(EMPTY_KEY, r["property"]): r["value"] for r in (df.iter_rows(named=True) if len(df) else [])
            if r["seed"] == empty_seed(cfg) and _current(r, expected)}


def method_utilities(cfg: PipelineConfig, layout: RunLayout, store: ResultStore, keys: list[str],
                     properties: list[str], method: str) -> dict[tuple[str, str], float]:
    """{(coalition_key, property): utility} by ``method``, averaged over the method's seeds; a key
    is present only when every seed's utility is there (and, where recorded, current)."""
    df = store.utilities_for(keys, method=method)
    if not len(df):
        return {}
    seeds = set(cfg.utility_seeds(method))
    coalitions = coalitions_by_key(store, keys)
    data = data_versions(read_contributors(layout))
    expected = {(k, s): utility_spec(cfg, layout, coalitions[k], method, s, data).utility_signature
                for k in keys for s in seeds}
    by: dict[tuple[str, str], dict[int, float]] = {}
    for r in df.iter_rows(named=True):
        current = _current(r, expected.get((r["coalition_key"], r["seed"])))
        if r["seed"] in seeds and current:
            by.setdefault((r["coalition_key"], r["property"]), {})[r["seed"]] = r["value"]
    return {k: float(np.mean(list(v.values()))) for k, v in by.items() if set(v) == seeds and k[1] in properties}


def replicate_utilities(cfg: PipelineConfig, layout: RunLayout, store: ResultStore, coalitions: list[Coalition],
                        properties: list[str]) -> dict[tuple[str, str], list[float]]:
    """{(coalition_key, property): [replicate 1, …, r − 1]} of the replicated ``coalitions`` (∅ as a
    Coalition of kind "empty"), current rows only; a key is present only with every replicate."""
    out: dict[tuple[str, str], list[float]] = {}
    method = cfg.valuation.method
    data = data_versions(read_contributors(layout))
    for c in coalitions:
        reps = replicate_seeds(cfg, c)
        if not reps:
            continue
        m = EMPTY_METHOD if c.kind == "empty" else method
        df = store.utilities_for([c.key], method=m)
        rows = {(r["seed"], r["property"]): r for r in (df.iter_rows(named=True) if len(df) else [])}
        for prop in properties:
            values = []
            for j, (rcfg, seed) in enumerate(reps, 1):
                expected = (empty_utility_signature(rcfg, layout) if c.kind == "empty"
                            else utility_spec(rcfg, layout, c, m, seed, data).utility_signature)
                row = rows.get((empty_seed(cfg) + j if c.kind == "empty" else seed, prop))
                if row is None or not _current(row, expected):
                    break
                values.append(float(row["value"]))
            else:
                out[(c.key, prop)] = values
    return out


@dataclass
class Pool:
    """The current plan's utilities by one method: what a valuation round would be fitted on."""

    plan: Plan
    full: Coalition
    sampled: list[Coalition]
    utilities: dict[tuple[str, str], float]  # {(coalition_key, property): utility}
    missing: list[str]  # coalition keys (∅ included) lacking a current utility or replicate
    round_id: str | None  # the id the round will have; None while utilities are missing
    # {(coalition_key, property): [replicates 1..r−1]} of ∅, N and the replicated coalitions
    replicates: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    v_full_model: bool = False  # v(N) is θ*'s own utility (valuation.v_full = full_model)

    def utility_noise(self, prop: str) -> tuple[float, int, str] | None:
        """(σ, dof, source) of one measurement of ``prop``: the pooled spread of the replicated
        coalitions' measurements (replicate 0 and the others), or None without replicates. With v(N)
        from θ*, N's sFT replicates form a group without replicate 0 (θ* is not one of them)."""
        groups = []
        for (key, p), reps in self.replicates.items():
            if p != prop:
                continue
            first = [] if key == self.full.key and self.v_full_model else [self.utilities[(key, p)]]
            groups.append(np.array(first + list(reps)))
        dof = sum(len(g) - 1 for g in groups)
        if dof < 1:
            return None
        ss = sum(float(np.sum((g - g.mean()) ** 2)) for g in groups)
        r = 1 + max(len(reps) for (_, p), reps in self.replicates.items() if p == prop)
        return (float(np.sqrt(ss / dof)), int(dof),
                f"replicates ({r} measurements each of ∅, N and {len(groups) - 2} coalitions with other fine-tune and "
                "generation seeds, taken as independent between coalitions (an overstatement where the shared "
                "generation seeds cancel))")


def gather_pool(cfg: PipelineConfig, layout: RunLayout, store: ResultStore) -> Pool:
    """Read the plan and its current utilities; raises when the plan is stale (contributors changed)."""
    method = cfg.valuation.method
    plan = read_plan(layout)
    current = [c["contributor"] for c in read_contributors(layout)["contributors"]]
    if current != plan.contributors:
        raise RuntimeError("the contributors changed since the coalition plan was made; "
                           "materialize `coalition_plan` (and the new coalition partitions) first")
    full, sampled = plan.coalitions[0], plan.coalitions[1:]
    keys = sorted({c.key for c in plan.coalitions})
    properties = list(cfg.valuation.properties)
    have = method_utilities(cfg, layout, store, keys, properties, method)
    have.update(empty_utilities(cfg, layout, store))
    if cfg.valuation.v_full == "full_model":  # v(N) is θ*'s own utility, not the full coalition's
        have = {k: v for k, v in have.items() if k[0] != full.key}
        have.update({(full.key, p): v for p, v in full_model_utilities(cfg, layout, store).items()})
    missing = {k for k in [*keys, EMPTY_KEY] for p in properties if (k, p) not in have}
    replicated = [make_coalition([], "empty", -1)] + [c for c in plan.coalitions if is_replicated(cfg, c)]
    reps = replicate_utilities(cfg, layout, store, list({c.key: c for c in replicated}.values()), properties)
    if replicates_apply(cfg):
        missing |= {c.key for c in replicated for p in properties if (c.key, p) not in reps}
    missing = sorted(missing)
    round_id = None if missing else "r-" + signature(plan.content_hash, sorted(have.items()), cfg.valuation.estimator,
                                                     cfg.valuation.seed, method, ESTIMATORS_VERSION,
                                                     *([] if cfg.valuation.v_full == "coalition" else ["v(N) by θ*"]),
                                                     *([sorted(reps.items())] if reps else []))
    return Pool(plan, full, sampled, have, missing, round_id, reps, cfg.valuation.v_full == "full_model")


def partition_runs(missing: list[str], ordered_keys: list[str], per_run: int, slots: int = 1) -> list[tuple[str, str, int]]:
    """Group missing keys into (first, last, count) ranges contiguous in the partition order, each of
    at most ``per_run`` keys: a contiguous stretch of n keys becomes ceil(n / per_run) ranges of
    near-equal size (60 keys at 16 per run: 15, 15, 15, 15, not 16, 16, 16, 12), so runs that go in
    parallel end together. With ``slots`` runs at once (the engine's workers) the number of runs is
    rounded up to a multiple of ``slots`` (221 keys at 32 on 2 workers: 8 runs of 27-28 in 4 full
    waves, not 7 whose last wave leaves a worker idle), the extra runs going to the longest stretches."""
    position = {k: i for i, k in enumerate(ordered_keys)}
    idx = sorted(position[k] for k in missing)
    stretches: list[list[int]] = []
    for i in idx:
        if stretches and i == stretches[-1][-1] + 1:
            stretches[-1].append(i)
        else:
            stretches.append([i])
    counts = [-(-len(s) // max(1, per_run)) for s in stretches]
    slots = max(1, int(slots))
    target = min(-(-sum(counts) // slots) * slots, len(idx))
    while sum(counts) < target:  # one more run for the stretch whose runs are the largest
        j = max(range(len(stretches)), key=lambda j: (len(stretches[j]) / counts[j], -j))
        if len(stretches[j]) <= counts[j]:
            break
        counts[j] += 1
    runs = []
    for stretch, n_runs in zip(stretches, counts):
        size, extra = divmod(len(stretch), n_runs)
        at = 0
        for r in range(n_runs):
            chunk = stretch[at: at + size + (r < extra)]
            at += len(chunk)
            runs.append((ordered_keys[chunk[0]], ordered_keys[chunk[-1]], len(chunk)))
    return runs


@dataclass
class CoalitionWork:
    """Planned coalitions without a current utility, split by what they need."""

    train: list[str]  # no valid checkpoint: fine-tune (or retrain), generate, score
    rescore: list[str]  # checkpoint and images valid, the instruments changed: score again

    @property
    def keys(self) -> list[str]:
        return [*self.train, *self.rescore]


def split_work(cfg: PipelineConfig, layout: RunLayout, coalitions: Sequence[Coalition],
               method: str | None = None) -> CoalitionWork:
    """Which of ``coalitions`` (missing utilities) must be trained and which only re-scored."""
    method = method or cfg.valuation.method
    data = data_versions(read_contributors(layout))
    train, rescore = [], []
    for c in coalitions:
        ok = True
        seeds = [(cfg, s) for s in cfg.utility_seeds(method)] + replicate_seeds(cfg, c)
        for ccfg, seed in seeds:
            spec = utility_spec(ccfg, layout, c, method, seed, data)
            ok &= current_signature(spec.checkpoint_dir) == spec.checkpoint_signature
        (rescore if ok else train).append(c.key)
    return CoalitionWork(train, rescore)


@dataclass
class Step:
    """What a round needs next: ``base`` (register the snapshot, base, plan), ``coalitions`` (``keys``),
    ``shapley`` (a new round, ``round_id``), ``idle`` (up to date) or ``wait`` (nothing can run)."""

    kind: str
    reason: str
    keys: list[str] = field(default_factory=list)
    round_id: str | None = None


def full_model_utilities(cfg: PipelineConfig, layout: RunLayout, store: ResultStore) -> dict[str, float]:
    """{property: utility} of the full model θ* itself, where current."""
    rows = store.utilities_for([read_plan(layout).coalitions[0].key], method="full_model")
    expected = full_model_utility_signature(cfg, layout)
    return {r["property"]: r["value"] for r in (rows.iter_rows(named=True) if len(rows) else [])
            if _current(r, expected)}


def _base_stale(cfg: PipelineConfig, layout: RunLayout, store: ResultStore) -> str | None:
    """Why the base job must run again (instruments, θ*, θ̃*, plan, θ*'s own utilities), or None."""
    if not reference_up_to_date(cfg, layout):
        return "the property instruments are not up to date"
    if not models_up_to_date(cfg, layout):
        return "the full model or the pruned base is not up to date"
    if not plan_up_to_date(cfg, layout):
        return "the coalition plan is not up to date (contributors, base, budget or seed changed)"
    if not set(cfg.valuation.properties) <= set(full_model_utilities(cfg, layout, store)):
        return "the full model's own properties are not measured yet"
    return None


def next_step(cfg: PipelineConfig, layout: RunLayout, store: ResultStore, accepted: dict[str, str],
              rejected: Iterable[str] = ()) -> Step:
    """What the round valuing ``accepted`` ({id: data_hash}, validated) needs next.

    rejected: ids of folders that failed validation. A registered contributor whose folder became
    invalid pauses the round (``wait``) instead of being dropped: fix the folder, or remove it.
    """
    problem = too_few(len(accepted), "contributors") or budget_problem(cfg.valuation.budget, len(accepted))
    if problem:
        return Step("wait", problem)
    data = data_versions(read_contributors(layout)) if (layout.data_dir / "manifest.json").is_file() else {}
    broken = sorted(set(rejected) & set(data))
    if broken:
        return Step("wait", f"registered contributor(s) {broken} now fail validation: fix or remove their folders")
    if data != accepted:
        new = sorted(set(accepted) - set(data))
        gone = sorted(set(data) - set(accepted))
        changed = sorted(c for c in accepted if c in data and data[c] != accepted[c])
        return Step("base", f"contributors changed: new {new or '-'}, changed {changed or '-'}, removed {gone or '-'}")
    stale = _base_stale(cfg, layout, store)
    if stale:
        return Step("base", stale)
    pool = gather_pool(cfg, layout, store)
    if EMPTY_KEY in pool.missing:
        return Step("base", "v(∅) has no current utility" + (" (or lacks a replicate)" if replicates_apply(cfg) else ""))
    if pool.missing:
        return Step("coalitions", f"{len(pool.missing)} planned coalition(s) lack a current "
                                  f"{cfg.valuation.method} utility", pool.missing)
    have = store.query("SELECT count(*) AS n FROM valuation_rounds WHERE round_id = ?", [pool.round_id])["n"][0]
    if have:
        return Step("idle", f"round {pool.round_id} is up to date", round_id=pool.round_id)
    return Step("shapley", "every planned coalition has its utility: fit the round", round_id=pool.round_id)
