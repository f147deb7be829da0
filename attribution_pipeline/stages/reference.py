"""The property instruments (the reference folder) and scoring an image set with them.

The default game's instruments are a classifier of the contributors and the real images' feature
statistics (FID reference); with ``diversity_entropy`` among the properties, also Ward clusters of
a reference image set in a local vision encoder.
"""

from __future__ import annotations

import time

import torch

from attribution_pipeline import versions
from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.layout import RunLayout, current_signature, signature
from attribution_pipeline.models.backends import load_pixels
from attribution_pipeline.models.hardware import run_device
from attribution_pipeline.properties.classifier import train_classifier
from attribution_pipeline.properties.embedding_diversity import build_diversity_clusters
from attribution_pipeline.properties.registry import PropertyContext, build_reference, score_properties
from attribution_pipeline.stages.contributors import read_contributors
from attribution_pipeline.stages.result import Log, StageResult, quiet
from attribution_pipeline.storage.artifacts import atomic_folder, read_manifest


def _uses_clusters(cfg: PipelineConfig) -> bool:
    return "diversity_entropy" in cfg.valuation.properties


def reference_signature(cfg: PipelineConfig, data_hash: str) -> str:
    p = cfg.properties
    extra = [(p.vision_encoder, p.diversity_reference_dir, p.n_clusters)] if _uses_clusters(cfg) else []
    return signature("reference", cfg.classifier, data_hash, *extra)


def reference_up_to_date(cfg: PipelineConfig, layout: RunLayout) -> bool:
    return current_signature(layout.reference_dir) == reference_signature(
        cfg, read_contributors(layout)["content_hash"])


def build_property_reference(cfg: PipelineConfig, layout: RunLayout, log: Log = quiet) -> StageResult:
    """Train the reference classifier (labels = contributors) and the real images' FID statistics;
    with ``diversity_entropy`` among the properties, also cluster its reference image set."""
    data = read_contributors(layout)
    sig = reference_signature(cfg, data["content_hash"])
    folder = layout.reference_dir
    if current_signature(folder) == sig:
        m = read_manifest(folder)
        return StageResult(m["content_hash"], True, 0.0, {"holdout_accuracy": m.get("holdout_accuracy")})
    start = time.perf_counter()
    ids = [c["contributor"] for c in data["contributors"]]
    pixels = load_pixels(layout, ids)
    c = cfg.classifier
    classifier, accuracy = train_classifier(pixels.x, pixels.labels, n_classes=len(ids), class_names=ids,
                                            seed=c.seed, epochs=c.epochs, batch_size=c.batch_size, lr=c.lr,
                                            holdout_fraction=0.1)
    log(f"reference classifier: held-out accuracy {accuracy:.3f}")
    with atomic_folder(folder, {"kind": "property_reference", "inputs_signature": sig,
                                "holdout_accuracy": accuracy, "classes": ids, **versions.snapshot()}) as tmp:
        build_reference(classifier, pixels.x, tmp, inception_weights=c.inception_weights)
        if _uses_clusters(cfg):
            info = build_diversity_clusters(cfg.properties, tmp, str(run_device(cfg)))
            log(f"diversity reference: {info['n_reference']} images in {info['n_clusters']} Ward clusters")
    m = read_manifest(folder)
    return StageResult(m["content_hash"], False, time.perf_counter() - start, {"holdout_accuracy": accuracy})


def property_context(cfg: PipelineConfig, layout: RunLayout) -> PropertyContext:
    """The loaded instruments every property scores with."""
    return PropertyContext.load(layout.reference_dir, inception_weights=cfg.classifier.inception_weights,
                                settings=cfg.properties, device=str(run_device(cfg)))


def score(cfg: PipelineConfig, layout: RunLayout, images: torch.Tensor) -> dict[str, float]:
    """{property: value} of an image set, for every property of the valuation."""
    return score_properties(images, list(cfg.valuation.properties), property_context(cfg, layout))
