"""Re-valuation when contributors arrive, change or leave: what stays valid and what is recomputed.

Two policies (``RevaluationConfig.policy``):

- ``rebase``: the full model θ* and the pruned base θ̃* are retrained on the current contributors,
  the coalition plan is drawn afresh for the current n, and every coalition is recomputed. The
  game is exactly the paper's.
- ``incremental``: the current base is kept (its artifacts are not re-signed with the new data),
  so a coalition S that involves no new or changed contributor keeps its fine-tuned checkpoint and
  images (only re-scored: the property instruments are rebuilt for the new contributor set). The
  plan grows from the previous one: for each newcomer p every planned coalition S (and ∅) gets its
  partner S ∪ {p}, so exactly the coalitions that contain p are fine-tuned; a changed contributor's
  coalitions are fine-tuned again on its new data; a removed contributor's coalitions are dropped.
  Approximation: the base never saw a newcomer's (or a changed contributor's current) data; the
  round and every utility record which contributors the base predates (``base_predates``).

Lineage: the full model's and the pruned base's manifests record ``trained_on`` ({contributor:
data_hash}) and ``data_content_hash``; the plan records the base it was made with. Incremental
falls back to rebase (and says why) when there is no such record, when the training config changed,
when more than ``incremental_max_new`` contributors arrive at once, or when the plan would exceed
``incremental_max_coalitions`` (the pool doubles per newcomer; a periodic rebase resets it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from attribution_pipeline.coalitions import EMPTY_KEY, Coalition, coalition_key, make_coalition
from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.layout import RunLayout, signature
from attribution_pipeline.storage.artifacts import is_complete, read_manifest

REBASE, INCREMENTAL = "rebase", "incremental"


def data_versions(manifest: dict) -> dict[str, str]:
    """{contributor: data_hash} of a data manifest (``prepare_contributors``)."""
    return {c["contributor"]: c["data_hash"] for c in manifest["contributors"]}


def _trained_on(folder) -> dict[str, str] | None:
    if not is_complete(folder):
        return None
    return read_manifest(folder).get("trained_on")


def base_lineage(layout: RunLayout) -> dict[str, str] | None:
    """{contributor: data_hash} that both the full model and the pruned base were trained on, or None
    when either is missing or predates lineage records."""
    full, pruned = _trained_on(layout.full_model_dir), _trained_on(layout.pruned_base_dir)
    if full is None or pruned is None:
        return None
    return {c: h for c, h in full.items() if pruned.get(c) == h}


def predates(lineage: dict[str, str] | None, members: Iterable[str], data: dict[str, str]) -> list[str]:
    """Members whose current data the base has not seen (new, or changed since it was trained)."""
    if lineage is None:
        return []
    return sorted(m for m in members if lineage.get(m) != data.get(m))


@dataclass
class BaseDecision:
    """Whether the base stages keep the current base (``keep``), and the data hash they sign with."""

    policy: str  # the configured policy
    keep: bool
    data_hash: str  # the data content hash the full model and pruned base are signed with
    reason: str
    new: list[str] = field(default_factory=list)  # relative to the base's lineage
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def full_model_signature(cfg: PipelineConfig, data_hash: str) -> str:
    return signature("full_model", cfg.model, cfg.train, data_hash)


def base_decision(cfg: PipelineConfig, layout: RunLayout, manifest: dict) -> BaseDecision:
    """Decide, from the files alone, whether this round keeps the current base.

    Pure in the workdir's state, so the full model, the pruned base and the plan (three steps of one
    run) reach the same answer: the answer only changes when the base itself is rebuilt.
    """
    current = manifest["content_hash"]
    data = data_versions(manifest)
    policy = cfg.revaluation.policy
    if policy != INCREMENTAL:
        return BaseDecision(policy, False, current, "policy is rebase")
    if not is_complete(layout.full_model_dir):
        return BaseDecision(policy, False, current, "no base yet: the first round trains one")
    full = read_manifest(layout.full_model_dir)
    lineage = base_lineage(layout)
    pinned = full.get("data_content_hash")
    if lineage is None or pinned is None:
        return BaseDecision(policy, False, current, "the base predates lineage records: rebasing once")
    if full.get("inputs_signature") != full_model_signature(cfg, pinned):
        return BaseDecision(policy, False, current, "the full model's training config changed: rebasing")
    new = sorted(set(data) - set(lineage))
    changed = sorted(c for c in data if c in lineage and lineage[c] != data[c])
    removed = sorted(set(lineage) - set(data))
    decision = BaseDecision(policy, True, pinned, "keeping the current base", new, changed, removed)
    if pinned == current:
        decision.reason = "the base has seen the current data"
        return decision
    plan_path = layout.workdir / "plan.json"
    if plan_path.is_file():
        plan = json.loads(plan_path.read_text())
        arriving = [c for c in data if c not in plan["contributors"]]
        if len(arriving) > cfg.revaluation.incremental_max_new:
            return BaseDecision(policy, False, current, f"{len(arriving)} contributors arrived at once "
                                f"(> incremental_max_new = {cfg.revaluation.incremental_max_new}): rebasing",
                                new, changed, removed)
        projected = (len(plan["coalitions"]) + 1) * 2 ** len(arriving)
        if projected > cfg.revaluation.incremental_max_coalitions:
            return BaseDecision(policy, False, current, f"the incremental plan would hold ~{projected} coalitions "
                                f"(> incremental_max_coalitions = {cfg.revaluation.incremental_max_coalitions}): "
                                "rebasing", new, changed, removed)
    return decision


# ---- the incremental plan -----------------------------------------------------------------------
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
    from attribution_pipeline.layout import content_hash
    from attribution_pipeline.stages.base import read_contributors
    from attribution_pipeline.stages.coalitions import Plan
    from attribution_pipeline.valuation import CoalitionDesign
    from attribution_pipeline.coalitions import masks_to_coalitions

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


def register_contributors(store, manifest: dict) -> list[dict]:
    """Upsert the ``contributors`` rows of a data manifest; stamp ``removed_at`` on contributors
    that are no longer in it (their rows and past rounds stay)."""
    rows = [{"contributor": c["contributor"], "n_images": c["n_images"], "data_hash": c["data_hash"],
             "n_skipped_files": c.get("n_skipped_files", 0), "path": c.get("path"),
             "n_duplicate_images": c.get("n_duplicate_images", 0),
             "duplicates_with": sorted(c.get("duplicates_with", {})), "removed_at": None}
            for c in manifest["contributors"]]
    store.upsert("contributors", rows)
    placeholders = ", ".join("?" for _ in rows)
    store.execute(f"UPDATE contributors SET removed_at = current_timestamp WHERE removed_at IS NULL "
                  f"AND contributor NOT IN ({placeholders})", [r["contributor"] for r in rows])
    return rows


# ---- what a round must compute ------------------------------------------------------------------
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
    from attribution_pipeline.layout import current_signature
    from attribution_pipeline.stages.base import read_contributors
    from attribution_pipeline.stages.coalitions import SFT, utility_spec

    method = method or cfg.valuation.method
    data = data_versions(read_contributors(layout))
    train, rescore = [], []
    for c in coalitions:
        ok = True
        for seed in cfg.utility_seeds(method):
            spec = utility_spec(cfg, layout, c, method, seed, data)
            run_seed = None if (method == SFT and spec.seed == cfg.finetune.seed) else spec.seed
            ok &= current_signature(layout.coalition_checkpoint_dir(c.key, method, run_seed)) == spec.checkpoint_signature
        (rescore if ok else train).append(c.key)
    return CoalitionWork(train, rescore)


def members_base_predates(layout: RunLayout, members: Iterable[str], method: str) -> list[str] | None:
    """``base_predates`` of a utility: members the base it started from has not seen (None for
    ``retrain``, which starts from scratch)."""
    from attribution_pipeline.stages.base import read_contributors

    if method == "retrain":
        return None
    return predates(base_lineage(layout), members, data_versions(read_contributors(layout)))


def round_lineage(cfg: PipelineConfig, layout: RunLayout, contributors: Sequence[str]) -> dict:
    """Columns of ``valuation_rounds`` that say which base a round's utilities started from."""
    from attribution_pipeline.stages.base import read_contributors

    lineage = base_lineage(layout)
    data = data_versions(read_contributors(layout))
    return {"policy": cfg.revaluation.policy,
            "base_trained_on": sorted(lineage) if lineage is not None else None,
            "base_predates": predates(lineage, contributors, data)}


# ---- the next step of a round (what the contributors sensor requests) ----------------------------
@dataclass
class Step:
    """What a round needs next: ``base`` (register the snapshot, base, plan), ``coalitions`` (``keys``),
    ``shapley`` (a new round, ``round_id``), ``idle`` (up to date) or ``wait`` (nothing can run)."""

    kind: str
    reason: str
    keys: list[str] = field(default_factory=list)
    round_id: str | None = None


def next_step(cfg: PipelineConfig, layout: RunLayout, store, accepted: dict[str, str],
              rejected: Iterable[str] = ()) -> Step:
    """Compare the valid contributors (``accepted``: {id: data_hash}) with the work directory.

    rejected: ids of folders that failed validation. A registered contributor whose folder became
    invalid pauses the round (``wait``) instead of being dropped: fix the folder, or remove it.
    """
    from attribution_pipeline.data.contributors import MIN_CONTRIBUTORS
    from attribution_pipeline.layout import content_hash
    from attribution_pipeline.stages.base import read_contributors
    from attribution_pipeline.stages.coalitions import read_plan
    from attribution_pipeline.stages.shapley import gather_pool

    if len(accepted) < MIN_CONTRIBUTORS:
        return Step("wait", f"{len(accepted)} valid contributor(s); a valuation needs {MIN_CONTRIBUTORS}")
    manifest_path = layout.data_dir / "manifest.json"
    data = data_versions(read_contributors(layout)) if manifest_path.is_file() else {}
    broken = sorted(set(rejected) & set(data))
    if broken:
        return Step("wait", f"registered contributor(s) {broken} now fail validation: fix or remove their folders")
    if data != accepted:
        new = sorted(set(accepted) - set(data))
        gone = sorted(set(data) - set(accepted))
        changed = sorted(c for c in accepted if c in data and data[c] != accepted[c])
        return Step("base", f"contributors changed: new {new or '-'}, changed {changed or '-'}, removed {gone or '-'}")
    plan_path = layout.workdir / "plan.json"
    plan = read_plan(layout) if plan_path.is_file() else None
    base = content_hash(layout.pruned_base_dir) if is_complete(layout.pruned_base_dir) else None
    if plan is None or plan.contributors != list(data) or base is None or plan.base_version != base:
        return Step("base", "the base or the coalition plan is not up to date with the registered contributors")
    pool = gather_pool(cfg, layout, store)
    if EMPTY_KEY in pool.missing:
        return Step("base", "v(∅) has no current utility")
    if pool.missing:
        return Step("coalitions", f"{len(pool.missing)} planned coalition(s) lack a current utility", pool.missing)
    have = store.query("SELECT count(*) AS n FROM valuation_rounds WHERE round_id = ?", [pool.round_id])["n"][0]
    if have:
        return Step("idle", f"round {pool.round_id} is up to date", round_id=pool.round_id)
    return Step("shapley", "every planned coalition has its utility: fit the round", round_id=pool.round_id)


__all__ = [
    "REBASE", "INCREMENTAL", "EMPTY_KEY", "BaseDecision", "CoalitionWork", "base_decision", "base_lineage",
    "coalition_key", "data_versions", "extend_pool", "full_model_signature", "members_base_predates",
    "next_step", "plan_incremental", "predates", "register_contributors", "round_lineage", "split_work", "Step",
]
