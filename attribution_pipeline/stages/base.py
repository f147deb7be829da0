"""The stages of a sparsified-fine-tuning valuation, as plain functions (no Dagster).

Each stage reads its inputs from the run layout, writes its artifact atomically with a manifest,
and returns a small summary. A stage whose artifact already carries the inputs signature it would
produce returns at once with ``skipped=True``: re-running a valuation recomputes nothing, and a
killed run resumes where it stopped. The Dagster assets in ``defs/`` only call these.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from attribution_pipeline import versions
from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.data.contributors import (
    MIN_CONTRIBUTORS,
    ContributorValidationError,
    duplicate_images,
    scan_contributors,
    shared_image_hashes,
    to_model_range,
)
from attribution_pipeline.data.sources import discover_source, load_source_images
from attribution_pipeline.layout import (
    RunLayout,
    content_hash,
    current_signature,
    signature,
)
from attribution_pipeline.models.registry import get_backend
from attribution_pipeline.storage.artifacts import atomic_write_json, read_manifest

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass
class StageResult:
    """What a stage did: its artifact's content hash (the data version), timings, and extras."""

    content_hash: str
    skipped: bool
    elapsed_s: float
    metadata: dict = field(default_factory=dict)


# ---- contributors ---------------------------------------------------------------------------
def prepare_contributors(cfg: PipelineConfig, layout: RunLayout, log: Log = _quiet,
                         snapshot: dict[str, str] | None = None) -> dict:
    """Validate the contributors directory and cache each contributor's images at model resolution.

    Returns the data manifest ``{"contributors": [{contributor, n_images, data_hash, ...}], ...}``.
    Raises MissingInputError (a configured local file or folder is missing) or
    ContributorValidationError before anything is written when the data is bad. Latent model
    families also cache each contributor's latents here (``models/latents.py``); their hash joins
    the manifest's ``content_hash``.

    snapshot: {contributor: data_hash} validated earlier (by the CLI or the sensor). Only those
    contributors are valued, and each must still hash the same: a folder that appears, or changes,
    while a run reads the directory joins the next round, never this one half-copied.
    """
    from attribution_pipeline.inputs import check_local_inputs

    check_local_inputs(cfg)
    found = _validated(cfg, snapshot)
    duplicates, shared = duplicate_images(found), shared_image_hashes(found)
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = layout.data_dir / "manifest.json"
    old = {}
    if manifest_path.is_file():
        old = {c["contributor"]: c for c in json.loads(manifest_path.read_text())["contributors"]}
    res = (cfg.model.sample_size, cfg.model.channels)
    entries = []
    for c in found:
        entry = {
            "contributor": c.contributor,
            "n_images": c.n_images,
            "data_hash": c.data_hash,
            "n_skipped_files": len(c.skipped),
            "path": str(c.path),
            "resolution": list(res),
            "duplicates_with": duplicates.get(c.contributor, {}),
            "n_duplicate_images": sum(h in shared for h in getattr(c, "file_hashes", ())),
        }
        if entry["duplicates_with"]:
            log(f"contributor {c.contributor} shares byte-identical images with {entry['duplicates_with']} "
                "(kept in each; flagged in the contributors table)")
        prev = old.get(c.contributor)
        if not (prev and prev["data_hash"] == c.data_hash and prev.get("resolution") == list(res)
                and layout.contributor_array(c.contributor).is_file()):
            arr = load_source_images(c, cfg.model.sample_size, cfg.model.channels)
            tmp = layout.contributor_array(c.contributor).with_suffix(".tmp.npy")
            np.save(tmp, arr)
            tmp.replace(layout.contributor_array(c.contributor))
            log(f"cached {c.n_images} images of contributor {c.contributor}")
        entries.append(entry)
    latents = get_backend(cfg).prepare_data(layout, entries, log)
    parts = [[(e["contributor"], e["data_hash"]) for e in entries], list(res)] + ([latents] if latents else [])
    manifest = {"contributors": entries, "content_hash": signature(*parts)}
    atomic_write_json(manifest_path, manifest)
    return manifest


def _validated(cfg: PipelineConfig, snapshot: dict[str, str] | None):
    """The contributors to value: all of the source, or exactly ``snapshot`` (unchanged)."""
    if snapshot is None:
        return discover_source(cfg)
    if cfg.data.source == "folders":  # validate only the snapshot's folders: others may be mid-upload
        scan = scan_contributors(cfg.contributors_path, only=snapshot)
        found, problems = scan.accepted, [p for ps in scan.rejected.values() for p in ps]
    else:
        found = [c for c in discover_source(cfg) if c.contributor in snapshot]
        gone = sorted(set(snapshot) - {c.contributor for c in found})
        problems = [f"{cfg.contributors_path}: contributor {g!r} is gone since it was validated" for g in gone]
    problems += [f"{c.path}: contributor {c.contributor!r} changed since it was validated (data hash "
                 f"{snapshot[c.contributor]} -> {c.data_hash}); the next round values its new content"
                 for c in found if c.data_hash != snapshot[c.contributor]]
    if not problems and len(found) < MIN_CONTRIBUTORS:
        problems.append(f"{cfg.contributors_path}: {len(found)} contributor(s) registered; a valuation needs at "
                        f"least {MIN_CONTRIBUTORS}")
    if problems:
        raise ContributorValidationError(cfg.contributors_path, problems)
    return found


def read_contributors(layout: RunLayout) -> dict:
    path = layout.data_dir / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: materialize the `contributors` asset first")
    return json.loads(path.read_text())


def contributor_ids(layout: RunLayout) -> list[str]:
    return [c["contributor"] for c in read_contributors(layout)["contributors"]]


def load_images(layout: RunLayout, members: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of ``members`` as float [-1,1] ``(N,C,H,W)`` and their member index labels ``(N,)``."""
    arrays, labels = [], []
    for j, m in enumerate(members):
        path = layout.contributor_array(m)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: materialize the `contributors` asset first")
        a = np.load(path)
        arrays.append(a)
        labels.append(np.full(len(a), j, dtype=np.int64))
    return to_model_range(np.concatenate(arrays)), torch.from_numpy(np.concatenate(labels))


# ---- models ---------------------------------------------------------------------------------
def _progress(log: Log, what: str):
    def report(step: int, total: int, loss: float) -> None:
        log(f"{what}: step {step}/{total}, loss {loss:.4f}")

    return report


def train_full_model(cfg: PipelineConfig, layout: RunLayout, log: Log = _quiet) -> StageResult:
    """Step 1: train θ* on every contributor's images."""
    from attribution_pipeline.stages.revaluation import base_decision, data_versions, full_model_signature

    data = read_contributors(layout)
    decision = base_decision(cfg, layout, data)
    sig = full_model_signature(cfg, decision.data_hash)
    if current_signature(layout.full_model_dir) == sig:
        m = read_manifest(layout.full_model_dir)
        if decision.data_hash != data["content_hash"]:
            log(f"incremental: {decision.reason}; it predates {decision.new + decision.changed or 'no one'}")
        return StageResult(m["content_hash"], True, 0.0, {"n_parameters": m["n_parameters"],
                                                          "revaluation": decision.reason})
    if decision.policy == "incremental":
        log(f"incremental: {decision.reason}")
    sig = full_model_signature(cfg, data["content_hash"])
    backend = get_backend(cfg)
    train_data = backend.training_data(layout, contributor_ids(layout))
    model = backend.build(seed=cfg.train.seed)
    t = cfg.train
    result = backend.train(
        model, train_data, steps=t.steps, batch_size=t.batch_size, lr=t.lr, seed=t.seed,
        warmup_steps=t.warmup_steps, ema="reset", ema_decay=t.ema_decay,
        progress=_progress(log, "full model"),
    )
    meta = {"inputs_signature": sig, "first_loss": result.first_loss, "final_loss": result.final_loss,
            "train_seconds": result.elapsed_s, "steps": t.steps, "device": str(backend.device),
            "precision": backend.precision, "trained_on": data_versions(data),
            "data_content_hash": data["content_hash"], **versions.snapshot()}
    manifest = backend.save(result.model, layout.full_model_dir, meta)
    return StageResult(manifest["content_hash"], False, result.elapsed_s,
                       {"n_parameters": manifest["n_parameters"], "first_loss": result.first_loss,
                        "final_loss": result.final_loss})


def prune_base_model(cfg: PipelineConfig, layout: RunLayout, log: Log = _quiet) -> StageResult:
    """Steps 2-3: prune θ* structurally, then fine-tune the pruned model on all data: θ̃*."""
    from attribution_pipeline.stages.revaluation import base_decision, data_versions

    data = read_contributors(layout)
    full_hash = content_hash(layout.full_model_dir)
    decision = base_decision(cfg, layout, data)
    sig = signature("pruned_base", cfg.prune, cfg.model, full_hash, decision.data_hash)
    if current_signature(layout.pruned_base_dir) == sig:
        m = read_manifest(layout.pruned_base_dir)
        return StageResult(m["content_hash"], True, 0.0, {k: m.get(k) for k in ("params_before", "params_after", "macs_before", "macs_after")})
    # rebuilt: fine-tuned on the current data, so signed with it (under either policy)
    sig = signature("pruned_base", cfg.prune, cfg.model, full_hash, data["content_hash"])
    start = time.perf_counter()
    backend = get_backend(cfg)
    train_data = backend.training_data(layout, contributor_ids(layout))
    p = cfg.prune
    model, report = backend.prune(backend.load(layout.full_model_dir), train_data, p)
    log(f"pruned: {report.params_before:,} -> {report.params_after:,} parameters")
    result = backend.train(
        model, train_data, steps=p.finetune_steps, batch_size=p.batch_size, lr=p.finetune_lr,
        seed=p.seed, ema="reset", ema_decay=p.ema_decay, progress=_progress(log, "pruned base fine-tune"),
    )
    elapsed = time.perf_counter() - start
    meta = {"inputs_signature": sig, "params_before": report.params_before, "params_after": report.params_after,
            "macs_before": report.macs_before, "macs_after": report.macs_after, "ratio": p.ratio,
            "importance": p.importance, "finetune_seconds": result.elapsed_s, "final_loss": result.final_loss,
            "trained_on": data_versions(data), "data_content_hash": data["content_hash"], **versions.snapshot()}
    m = backend.save(result.model, layout.pruned_base_dir, meta, pruned=True, report=report)
    return StageResult(m["content_hash"], False, elapsed, {k: meta[k] for k in ("params_before", "params_after", "macs_before", "macs_after", "final_loss")})


# ---- property reference ---------------------------------------------------------------------
def build_property_reference(cfg: PipelineConfig, layout: RunLayout, log: Log = _quiet) -> StageResult:
    """Train the reference classifier (labels = contributors) and the real images' FID statistics;
    with ``diversity_entropy`` among the properties, also cluster its reference image set."""
    from attribution_pipeline.properties.classifier import train_classifier
    from attribution_pipeline.properties.registry import build_reference

    data = read_contributors(layout)
    clusters = "diversity_entropy" in cfg.valuation.properties
    p = cfg.properties
    extra = [(p.vision_encoder, p.diversity_reference_dir, p.n_clusters)] if clusters else []
    sig = signature("reference", cfg.classifier, data["content_hash"], *extra)
    folder = layout.reference_dir
    if current_signature(folder) == sig:
        m = read_manifest(folder)
        return StageResult(m["content_hash"], True, 0.0, {"holdout_accuracy": m.get("holdout_accuracy")})
    start = time.perf_counter()
    ids = [c["contributor"] for c in data["contributors"]]
    images, labels = load_images(layout, ids)
    c = cfg.classifier
    classifier, accuracy = train_classifier(images, labels, n_classes=len(ids), class_names=ids, seed=c.seed,
                                            epochs=c.epochs, batch_size=c.batch_size, lr=c.lr,
                                            holdout_fraction=0.1)
    log(f"reference classifier: held-out accuracy {accuracy:.3f}")
    from attribution_pipeline.storage.artifacts import atomic_folder

    with atomic_folder(folder, {"kind": "property_reference", "inputs_signature": sig,
                                "holdout_accuracy": accuracy, "classes": ids, **versions.snapshot()}) as tmp:
        build_reference(classifier, images, tmp, inception_weights=c.inception_weights)
        if clusters:
            from attribution_pipeline.properties.embedding_diversity import build_diversity_clusters

            info = build_diversity_clusters(p, tmp, str(_device(cfg)))
            log(f"diversity reference: {info['n_reference']} images in {info['n_clusters']} Ward clusters")
    m = read_manifest(folder)
    return StageResult(m["content_hash"], False, time.perf_counter() - start, {"holdout_accuracy": accuracy})


def _device(cfg: PipelineConfig):
    from attribution_pipeline.models.hardware import run_device

    return run_device(cfg)


def _property_context(cfg: PipelineConfig, layout: RunLayout):
    from attribution_pipeline.properties.registry import PropertyContext

    return PropertyContext.load(layout.reference_dir, inception_weights=cfg.classifier.inception_weights,
                                settings=cfg.properties, device=str(_device(cfg)))


def _score(cfg: PipelineConfig, layout: RunLayout, images: torch.Tensor) -> dict[str, float]:
    from attribution_pipeline.properties.registry import score_properties

    return score_properties(images, list(cfg.valuation.properties), _property_context(cfg, layout))


def utilities_version(utilities: dict[str, float]) -> str:
    return signature(sorted((k, round(float(v), 12)) for k, v in utilities.items()))
