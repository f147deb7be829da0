"""Lineage and the re-valuation policies: what the base has seen, and what stays valid when
contributors arrive, change or leave.

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

from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.layout import RunLayout, signature
from attribution_pipeline.stages.contributors import data_versions, read_contributors
from attribution_pipeline.storage.artifacts import is_complete, read_manifest

REBASE, INCREMENTAL = "rebase", "incremental"


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


def members_base_predates(layout: RunLayout, members: Iterable[str], method: str) -> list[str] | None:
    """``base_predates`` of a utility: members the base it started from has not seen (None for
    ``retrain``, which starts from scratch)."""
    if method == "retrain":
        return None
    return predates(base_lineage(layout), members, data_versions(read_contributors(layout)))


def round_lineage(cfg: PipelineConfig, layout: RunLayout, contributors: Sequence[str]) -> dict:
    """Columns of ``valuation_rounds`` that say which base a round's utilities started from."""
    lineage = base_lineage(layout)
    data = data_versions(read_contributors(layout))
    return {"policy": cfg.revaluation.policy,
            "base_trained_on": sorted(lineage) if lineage is not None else None,
            "base_predates": predates(lineage, contributors, data)}
