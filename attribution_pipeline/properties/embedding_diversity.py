"""The ``diversity_entropy`` property: how evenly generated images cover a reference population.

The paper's CelebA-HQ property. A reference image set the user provides (a folder, e.g. faces
spanning the demographics of interest) is embedded with a local vision encoder
(``properties.vision_encoder``) and cut into ``properties.n_clusters`` clusters (20 by default) by
Ward linkage on the L2-normalised embeddings. Each generated image goes to the cluster whose
centroid is nearest; the property is the entropy, in bits, of the cluster proportions: 0 when every
image lands in one cluster, log2(n_clusters) when they spread evenly.

The clusters are built once, by ``build_property_reference``, into ``diversity_clusters.npz`` of
the reference folder. (The reference code assigns an image to the cluster of least mean distance
to its members under the distance max(sim) − sim, i.e. the largest inner product with the
unnormalised centroid; the Euclidean nearest centroid used here differs from it only by the
centroids' norms.)
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from attribution_pipeline.properties.registry import register_property
from attribution_pipeline.properties.vision import l2_normalise, load_vision_encoder, read_image_folder
from attribution_pipeline.storage.artifacts import atomic_write_bytes

CLUSTERS_FILE = "diversity_clusters.npz"


def ward_clusters(embeddings: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Ward linkage of ``embeddings`` ``(N, D)`` into ``n_clusters``: (labels ``(N,)``, centroids ``(k, D)``)."""
    from sklearn.cluster import AgglomerativeClustering

    embeddings = np.asarray(embeddings, dtype=np.float64)
    if len(embeddings) < n_clusters:
        raise ValueError(f"{len(embeddings)} reference images cannot make {n_clusters} clusters; "
                         "add reference images or lower properties.n_clusters")
    labels = AgglomerativeClustering(n_clusters=n_clusters, linkage="ward").fit_predict(embeddings)
    centroids = np.stack([embeddings[labels == k].mean(axis=0) for k in range(n_clusters)])
    return labels, centroids


def nearest_centroid(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the Euclidean-nearest centroid of each row, int ``(N,)``."""
    d = ((embeddings[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    return d.argmin(axis=1)


def entropy_of_assignments(assignments: np.ndarray, n_clusters: int) -> float:
    """−Σ p log2 p of the cluster proportions (0 log 0 = 0), in [0, log2 n_clusters]."""
    counts = np.bincount(np.asarray(assignments), minlength=n_clusters).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(max(0.0, -(p * np.log2(p)).sum()))


def build_diversity_clusters(settings, folder: Path, device: str = "cpu") -> dict:
    """Embed and cluster the reference folder; write ``<folder>/diversity_clusters.npz``."""
    ref = read_image_folder(settings.diversity_reference_dir)
    encoder = load_vision_encoder(str(settings.vision_encoder), device)
    emb = l2_normalise(encoder(ref, settings.batch_size))
    labels, centroids = ward_clusters(emb, settings.n_clusters)
    buffer = io.BytesIO()
    np.savez(buffer, centroids=centroids, counts=np.bincount(labels, minlength=settings.n_clusters),
             encoder=np.array(str(settings.vision_encoder)), n_reference=np.array(len(ref)))
    atomic_write_bytes(Path(folder) / CLUSTERS_FILE, buffer.getvalue())
    return {"n_reference": len(ref), "n_clusters": int(settings.n_clusters),
            "reference_entropy": entropy_of_assignments(labels, settings.n_clusters)}


def diversity_entropy(images: torch.Tensor, ctx) -> float:
    encoder_path = ctx.require("diversity_entropy", "vision_encoder")
    path = Path(ctx.folder or ".") / CLUSTERS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: rebuild `property_reference` with diversity_entropy among "
                                "valuation.properties (it clusters properties.diversity_reference_dir)")
    with np.load(path, allow_pickle=False) as z:
        centroids = z["centroids"]
    encoder = ctx.instrument(("vision", str(encoder_path), ctx.device),
                             lambda: load_vision_encoder(str(encoder_path), ctx.device))
    emb = l2_normalise(encoder(images, ctx.settings.batch_size))
    return entropy_of_assignments(nearest_centroid(emb, centroids), len(centroids))


def _register() -> None:
    register_property("diversity_entropy", diversity_entropy,
                      lambda ctx: (0.0, math.log2(getattr(ctx.settings, "n_clusters", 20))), replace=True,
                      description="entropy (bits) of the generated images over Ward clusters of a reference set")


_register()
