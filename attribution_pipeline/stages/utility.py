"""Utility methods: how the utility v(S) of a coalition is measured, what it is signed with, and
where its artifacts live.

- ``sft``: fine-tune the pruned base θ̃* k steps on the coalition's data (the paper's method);
- ``ft``: fine-tune the unpruned full model θ* k steps on it;
- ``retrain``: train from scratch with the full model's recipe (``retrain.n_seeds`` seeds).

v(∅) is the untrained model's, one measurement for every method, stored under ``sft`` with the
fine-tune seed (``EMPTY_METHOD``).

Replicates (``valuation.replicates`` = r > 1, sft and ft): v(∅), v(N) and the first
``valuation.replicated_coalitions`` planned coalitions are measured r times; replicate j > 0 uses
fine-tune seed ``finetune.seed + j`` (its utility rows carry that seed) and generation seed
``sampling.seed + j``. The fit uses replicate 0 only, so every coalition keeps the shared generation
seeds (common random numbers); the replicates measure the noise of one measurement.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from attribution_pipeline.coalitions import Coalition
from attribution_pipeline.config import UTILITY_METHODS, PipelineConfig
from attribution_pipeline.layout import RunLayout, content_hash, signature
from attribution_pipeline.stages.contributors import data_versions, read_contributors
from attribution_pipeline.storage.artifacts import is_complete

SFT, FT, RETRAIN = UTILITY_METHODS
EMPTY_METHOD = SFT


def empty_seed(cfg: PipelineConfig) -> int:
    """The seed v(∅)'s utility rows are stored under."""
    return cfg.finetune.seed


@dataclass(frozen=True)
class UtilitySpec:
    """What one utility of one coalition is computed from, before any work: the model it starts
    from (``base_version``, None when trained from scratch), the checkpoint's inputs signature, the
    signature of the utility itself (checkpoint + sampling + properties + instruments), and the
    folders of its checkpoint and images."""

    method: str
    seed: int
    base_version: str | None
    checkpoint_signature: str
    utility_signature: str
    checkpoint_dir: Path
    images_dir: Path


def check_method(method: str) -> str:
    if method not in UTILITY_METHODS:
        raise ValueError(f"unknown utility method {method!r}; choose one of {UTILITY_METHODS}")
    return method


def run_dir(cfg: PipelineConfig, layout: RunLayout, key: str, method: str, seed: int) -> Path:
    """The one rule for where a coalition's utility artifacts live: sFT with the configured
    fine-tune seed directly in the coalition's folder, anything else in ``<method>-seed<seed>``."""
    default = method == SFT and seed == cfg.finetune.seed
    return layout.coalition_run_dir(key, method, None if default else seed)


def replicate_config(cfg: PipelineConfig, j: int) -> PipelineConfig:
    """The config of replicate j: generation seed ``sampling.seed + j`` (j = 0: ``cfg`` itself)."""
    return cfg if j == 0 else cfg.override({"sampling": {"seed": cfg.sampling.seed + j}})


def replicates_apply(cfg: PipelineConfig) -> bool:
    """Whether this valuation measures replicates (r > 1, by sft or ft)."""
    return cfg.valuation.replicates > 1 and cfg.valuation.method != RETRAIN


def is_replicated(cfg: PipelineConfig, coalition: Coalition) -> bool:
    """Whether ``coalition`` (a planned one, or ∅) is measured with replicates: ∅, N and the first
    ``valuation.replicated_coalitions`` coalitions of the plan."""
    if not replicates_apply(cfg):
        return False
    return coalition.kind in ("empty", "full") or 1 <= coalition.plan_index <= cfg.valuation.replicated_coalitions


def replicate_seeds(cfg: PipelineConfig, coalition: Coalition) -> list[tuple[PipelineConfig, int]]:
    """(config, fine-tune seed) of replicates 1..r−1 of ``coalition``; [] when it has none."""
    if not is_replicated(cfg, coalition):
        return []
    return [(replicate_config(cfg, j), cfg.finetune.seed + j) for j in range(1, cfg.valuation.replicates)]


def instruments_signature(cfg: PipelineConfig, layout: RunLayout) -> list:
    """What scores an image set: the properties, the reference folder, other instrument settings."""
    reference = content_hash(layout.reference_dir) if is_complete(layout.reference_dir) else None
    # property instruments beyond the reference folder (model paths, quantile, ...), once set
    instruments = [cfg.properties] if cfg.properties != type(cfg.properties)() else []
    return [sorted(cfg.valuation.properties), reference, *instruments]


def _checkpoint(cfg: PipelineConfig, layout: RunLayout, method: str, seed: int | None, members: list):
    """(seed, base_version, checkpoint signature) of a coalition's model by ``method``."""
    if method == RETRAIN:
        seed = cfg.train.seed if seed is None else int(seed)
        return seed, None, signature("retrain", cfg.model, cfg.train, seed, members)
    seed = cfg.finetune.seed if seed is None else int(seed)
    base_version = content_hash(layout.pruned_base_dir if method == SFT else layout.full_model_dir)
    f = cfg.finetune if seed == cfg.finetune.seed else dataclasses.replace(cfg.finetune, seed=seed)
    # the sFT signature is unchanged from earlier releases so cached coalitions stay valid
    kind = "coalition_ft" if method == SFT else "coalition_full_ft"
    return seed, base_version, signature(kind, f, cfg.model, base_version, members)


def utility_spec(cfg: PipelineConfig, layout: RunLayout, coalition: Coalition, method: str = SFT,
                 seed: int | None = None, data: dict[str, str] | None = None) -> UtilitySpec:
    check_method(method)
    data = data_versions(read_contributors(layout)) if data is None else data
    unknown = [m for m in coalition.members if m not in data]
    if unknown:
        raise ValueError(f"coalition {coalition.key} has member(s) {unknown} that are not current contributors")
    seed, base_version, ckpt_sig = _checkpoint(cfg, layout, method, seed,
                                               [(m, data[m]) for m in coalition.members])
    util_sig = signature("utility", ckpt_sig, cfg.sampling, *instruments_signature(cfg, layout))
    folder = run_dir(cfg, layout, coalition.key, method, seed)
    return UtilitySpec(method, seed, base_version, ckpt_sig, util_sig, folder / "checkpoint", folder / "images")


def untrained_images_signature(cfg: PipelineConfig) -> str:
    return signature("untrained_images", cfg.sampling, cfg.model, cfg.train.seed)


def empty_utility_signature(cfg: PipelineConfig, layout: RunLayout) -> str:
    """The signature of v(∅)'s utility rows: untrained images and the instruments."""
    return signature("utility-empty", untrained_images_signature(cfg), *instruments_signature(cfg, layout))
