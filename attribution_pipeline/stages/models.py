"""The models every coalition starts from: the full model θ* and the pruned base θ̃*.

Steps 1-3 of sparsified fine-tuning: train θ* on every contributor's images, prune it
structurally, fine-tune the pruned model on all data. Each artifact is signed by its inputs; under
the incremental policy a kept base stays signed with the data it was trained on (``lineage.py``).
"""

from __future__ import annotations

import time

from attribution_pipeline import versions
from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.layout import RunLayout, content_hash, current_signature, signature
from attribution_pipeline.models.registry import get_backend
from attribution_pipeline.models.shards import processes_allowed
from attribution_pipeline.stages.contributors import contributor_ids, data_versions, read_contributors
from attribution_pipeline.stages.lineage import base_decision, full_model_signature
from attribution_pipeline.stages.result import Log, StageResult, progress, quiet
from attribution_pipeline.storage.artifacts import read_manifest

PRUNE_REPORT_KEYS = ("params_before", "params_after", "macs_before", "macs_after")


def pruned_base_signature(cfg: PipelineConfig, full_hash: str, data_hash: str) -> str:
    return signature("pruned_base", cfg.prune, cfg.model, full_hash, data_hash)


def train_from_scratch(cfg: PipelineConfig, data, seed: int, log: Log, what: str, progress_every: int = 100):
    """The full model's recipe (``cfg.train``) on ``data`` from a seeded random init: θ* itself,
    and the ``retrain`` utility method."""
    backend, t = get_backend(cfg), cfg.train
    return backend.train(backend.build(seed=seed), data, steps=t.steps, batch_size=t.batch_size, lr=t.lr,
                         seed=seed, warmup_steps=t.warmup_steps, ema="reset", ema_decay=t.ema_decay,
                         progress=progress(log, what), progress_every=progress_every, shards=t.shards,
                         processes=processes_allowed())


def train_full_model(cfg: PipelineConfig, layout: RunLayout, log: Log = quiet) -> StageResult:
    """Step 1: train θ* on every contributor's images."""
    data = read_contributors(layout)
    decision = base_decision(cfg, layout, data)
    if current_signature(layout.full_model_dir) == full_model_signature(cfg, decision.data_hash):
        m = read_manifest(layout.full_model_dir)
        if decision.data_hash != data["content_hash"]:
            log(f"incremental: {decision.reason}; it predates {decision.new + decision.changed or 'no one'}")
        return StageResult(m["content_hash"], True, 0.0, {"n_parameters": m["n_parameters"],
                                                          "revaluation": decision.reason})
    if decision.policy == "incremental":
        log(f"incremental: {decision.reason}")
    backend = get_backend(cfg)
    result = train_from_scratch(cfg, backend.training_data(layout, contributor_ids(layout)), cfg.train.seed,
                                log, "full model")
    meta = {"inputs_signature": full_model_signature(cfg, data["content_hash"]),
            "first_loss": result.first_loss, "final_loss": result.final_loss,
            "train_seconds": result.elapsed_s, "steps": cfg.train.steps, "device": str(backend.device),
            "precision": backend.precision, "trained_on": data_versions(data),
            "data_content_hash": data["content_hash"], **versions.snapshot()}
    manifest = backend.save(result.model, layout.full_model_dir, meta)
    return StageResult(manifest["content_hash"], False, result.elapsed_s,
                       {"n_parameters": manifest["n_parameters"], "first_loss": result.first_loss,
                        "final_loss": result.final_loss})


def prune_base_model(cfg: PipelineConfig, layout: RunLayout, log: Log = quiet) -> StageResult:
    """Steps 2-3: prune θ* structurally, then fine-tune the pruned model on all data: θ̃*."""
    data = read_contributors(layout)
    full_hash = content_hash(layout.full_model_dir)
    decision = base_decision(cfg, layout, data)
    if current_signature(layout.pruned_base_dir) == pruned_base_signature(cfg, full_hash, decision.data_hash):
        m = read_manifest(layout.pruned_base_dir)
        return StageResult(m["content_hash"], True, 0.0, {k: m.get(k) for k in PRUNE_REPORT_KEYS})
    start = time.perf_counter()
    backend = get_backend(cfg)
    train_data = backend.training_data(layout, contributor_ids(layout))
    p = cfg.prune
    model, report = backend.prune(backend.load(layout.full_model_dir), train_data, p)
    log(f"pruned: {report.params_before:,} -> {report.params_after:,} parameters")
    result = backend.train(
        model, train_data, steps=p.finetune_steps, batch_size=p.batch_size, lr=p.finetune_lr,
        seed=p.seed, ema="reset", ema_decay=p.ema_decay, progress=progress(log, "pruned base fine-tune"),
        shards=p.shards, processes=processes_allowed(),
    )
    # rebuilt: fine-tuned on the current data, so signed with it (under either policy)
    meta = {"inputs_signature": pruned_base_signature(cfg, full_hash, data["content_hash"]),
            "params_before": report.params_before, "params_after": report.params_after,
            "macs_before": report.macs_before, "macs_after": report.macs_after, "ratio": p.ratio,
            "importance": p.importance, "finetune_seconds": result.elapsed_s, "final_loss": result.final_loss,
            "trained_on": data_versions(data), "data_content_hash": data["content_hash"], **versions.snapshot()}
    m = backend.save(result.model, layout.pruned_base_dir, meta, pruned=True, report=report)
    return StageResult(m["content_hash"], False, time.perf_counter() - start,
                       {k: meta[k] for k in (*PRUNE_REPORT_KEYS, "final_loss")})


def models_up_to_date(cfg: PipelineConfig, layout: RunLayout) -> bool:
    """Whether θ* and θ̃* already carry the signatures their stages would give them now."""
    data = read_contributors(layout)
    decision = base_decision(cfg, layout, data)
    if current_signature(layout.full_model_dir) != full_model_signature(cfg, decision.data_hash):
        return False
    full_hash = content_hash(layout.full_model_dir)
    return current_signature(layout.pruned_base_dir) == pruned_base_signature(cfg, full_hash, decision.data_hash)
