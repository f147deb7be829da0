"""The property instruments (the reference folder) and scoring an image set with them.

With a trusted reference (``reference.dir``; the digits presets ship one, ``data/reference``) the
instrument is a classifier of the reference's classes trained on the reference alone, and the
quality statistics are the reference's: the yardstick depends on no contributor, so it does not
move when contributors arrive, change or leave, and no utility is re-scored for that.

Without one, a **fallback** is built from the contributors' own images: a classifier of the
contributors, and quality statistics from the contributors whose images look like images at all
(neighbouring pixels correlate: ``data/reference.spatial_correlation``), so that a contributor of
pixel noise or scrambled pixels cannot become part of the yardstick and gain quality credit by it.
It is weaker: it moves with the players, its features are trained to tell the contributors apart
rather than to judge images, and it cannot see subtler junk. The run says which one it used.

With ``diversity_entropy`` among the properties, a reference image set is also clustered in a
local vision encoder.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import torch

from attribution_pipeline import versions
from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.data.contributors import to_model_range
from attribution_pipeline.data.reference import load_reference, reference_hash, spatial_correlation
from attribution_pipeline.layout import RunLayout, current_signature, signature
from attribution_pipeline.models.backends import load_pixels
from attribution_pipeline.models.hardware import run_device
from attribution_pipeline.properties.classifier import train_classifier
from attribution_pipeline.properties.embedding_diversity import build_diversity_clusters
from attribution_pipeline.properties.registry import PropertyContext, build_reference, score_properties
from attribution_pipeline.stages.contributors import read_contributors
from attribution_pipeline.stages.result import Log, StageResult, quiet
from attribution_pipeline.storage.artifacts import atomic_folder, is_complete, read_manifest

JUNK_CORRELATION = 0.5  # fallback: out of the yardstick below this fraction of the median contributor's


def _uses_clusters(cfg: PipelineConfig) -> bool:
    return "diversity_entropy" in cfg.valuation.properties


def reference_signature(cfg: PipelineConfig, data_hash: str) -> str:
    """The instrument's inputs: the trusted reference's content (never the contributors'), or, for
    the fallback, the contributors' data."""
    p = cfg.properties
    extra = [(p.vision_encoder, p.diversity_reference_dir, p.n_clusters)] if _uses_clusters(cfg) else []
    if cfg.reference.dir:
        trusted = reference_hash(cfg.reference.dir, cfg.model.sample_size, cfg.model.channels)
        return signature("instrument", cfg.classifier, trusted, *extra)
    return signature("reference-fallback", cfg.classifier, data_hash, *extra)


def reference_up_to_date(cfg: PipelineConfig, layout: RunLayout) -> bool:
    return current_signature(layout.reference_dir) == reference_signature(
        cfg, read_contributors(layout)["content_hash"])


def _row_hashes(images: np.ndarray) -> list[str]:
    return [hashlib.sha256(im.tobytes()).hexdigest() for im in images]


def _overlap(layout: RunLayout, ids: list[str], reference: np.ndarray) -> dict[str, int]:
    """{contributor: images it holds that are also reference images} (same pixels at model size)."""
    ref = set(_row_hashes(reference))
    counts = {c: sum(h in ref for h in _row_hashes(np.load(layout.contributor_array(c)))) for c in ids}
    return {c: n for c, n in counts.items() if n}


def _trusted_instrument(cfg: PipelineConfig, layout: RunLayout, ids: list[str], log: Log):
    """(images, labels, classes, manifest extras) of the trusted reference."""
    ref = load_reference(cfg.reference.dir, cfg.model.sample_size, cfg.model.channels)
    overlap = _overlap(layout, ids, ref.images)
    if overlap:
        log(f"warning: {sum(overlap.values())} reference image(s) are also held by contributors {overlap}: they stay "
            "in the reference, and their owners' quality credit may be inflated by them")
    return to_model_range(ref.images), torch.from_numpy(ref.labels), ref.classes, {
        "instrument": f"trusted reference {ref.root} ({ref.data_hash})", "trained_on": {"reference": ref.data_hash},
        "reference_dir": str(ref.root), "reference_images": int(len(ref.images)), "overlap": overlap}


def _fallback_instrument(cfg: PipelineConfig, layout: RunLayout, ids: list[str], log: Log):
    """(images, labels, classes, extras) of the fallback; extras say which contributors are left out
    of the quality statistics as junk (``stats_mask``: the rows the statistics use)."""
    pixels = load_pixels(layout, ids)
    arrays = [np.load(layout.contributor_array(c)) for c in ids]
    corr = {c: spatial_correlation(a) for c, a in zip(ids, arrays)}
    floor = JUNK_CORRELATION * float(np.median(list(corr.values())))
    junk = sorted(c for c, v in corr.items() if v < floor)
    log("warning: no trusted reference (reference.dir, --reference): the instruments fall back to the contributors' "
        f"own images; left out of the quality yardstick as not image-like: {junk or 'none'}")
    mask = torch.from_numpy(np.concatenate([np.full(len(a), c not in junk) for c, a in zip(ids, arrays)]))
    return pixels.x, pixels.labels, ids, {
        "instrument": "fallback: a classifier of the contributors; quality statistics from the contributors' "
                      f"image-like data (left out: {', '.join(junk) or 'none'}); weaker than a trusted reference",
        "trained_on": {"contributors": read_contributors(layout)["content_hash"]}, "excluded_from_reference": junk,
        "spatial_correlation": {c: round(v, 4) for c, v in corr.items()}, "stats_mask": mask}


def build_property_reference(cfg: PipelineConfig, layout: RunLayout, log: Log = quiet) -> StageResult:
    """Train the instrument and compute the quality reference statistics (see the module docstring);
    with ``diversity_entropy`` among the properties, also cluster its reference image set."""
    data = read_contributors(layout)
    sig = reference_signature(cfg, data["content_hash"])
    folder = layout.reference_dir
    if current_signature(folder) == sig:
        m = read_manifest(folder)
        return StageResult(m["content_hash"], True, 0.0, {"holdout_accuracy": m.get("holdout_accuracy"),
                                                          "instrument": m.get("instrument")})
    start = time.perf_counter()
    ids = [c["contributor"] for c in data["contributors"]]
    build = _trusted_instrument if cfg.reference.dir else _fallback_instrument
    images, labels, classes, extra = build(cfg, layout, ids, log)
    mask = extra.pop("stats_mask", None)
    c = cfg.classifier
    classifier, accuracy = train_classifier(images, labels, n_classes=len(classes), class_names=classes, seed=c.seed,
                                            epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, holdout_fraction=0.1)
    log(f"instrument ({extra['instrument']}): held-out accuracy {accuracy:.3f}")
    with atomic_folder(folder, {"kind": "property_reference", "inputs_signature": sig, "holdout_accuracy": accuracy,
                                "classes": classes, **extra, **versions.snapshot()}) as tmp:
        build_reference(classifier, images if mask is None else images[mask], tmp,
                        inception_weights=c.inception_weights)
        if _uses_clusters(cfg):
            info = build_diversity_clusters(cfg.properties, tmp, str(run_device(cfg)))
            log(f"diversity reference: {info['n_reference']} images in {info['n_clusters']} Ward clusters")
    m = read_manifest(folder)
    return StageResult(m["content_hash"], False, time.perf_counter() - start,
                       {"holdout_accuracy": accuracy, "instrument": extra["instrument"]})


def instrument_description(layout: RunLayout) -> str | None:
    """What the current instruments were built from (recorded with each valuation round)."""
    return read_manifest(layout.reference_dir).get("instrument") if is_complete(layout.reference_dir) else None


def property_context(cfg: PipelineConfig, layout: RunLayout) -> PropertyContext:
    """The loaded instruments every property scores with."""
    return PropertyContext.load(layout.reference_dir, inception_weights=cfg.classifier.inception_weights,
                                settings=cfg.properties, device=str(run_device(cfg)))


def score(cfg: PipelineConfig, layout: RunLayout, images: torch.Tensor) -> dict[str, float]:
    """{property: value} of an image set, for every property of the valuation."""
    return score_properties(images, list(cfg.valuation.properties), property_context(cfg, layout))
