"""Similarity baselines: how close the full model's generated images are to each contributor's images.

``cosine_matrix(generated, training)`` of two feature matrices gives the ``(G, N)`` score matrix
``aggregate.mean_and_max`` turns into contributor credit. Features are either the pixels (flattened,
in [-1, 1], as the reference code's pixel similarity) or an instrument's embedding (the reference
classifier's penultimate layer on the default; a local CLIP folder on the presets, the paper's "CLIP
similarity"). Computed in blocks so a large training set never holds a dense ``(G, N)`` copy twice.
"""

from __future__ import annotations

import numpy as np
import torch


def pixel_features(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(N, C, H, W)`` images in [-1, 1] -> ``(N, C·H·W)`` float64 rows."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {x.shape}")
    return x.reshape(len(x), -1).astype(np.float64)


@torch.no_grad()
def embedding_features(encoder, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """``encoder.embed(images)`` (the reference classifier's features) as ``(N, D)`` float64."""
    return encoder.embed(images, batch_size=batch_size).detach().cpu().double().numpy()


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("a feature row is all zeros: its cosine similarity is undefined")
    return x / norms


def cosine_matrix(generated: np.ndarray, training: np.ndarray, block: int = 4096) -> np.ndarray:
    """Cosine similarity ``(G, N)`` of every generated row against every training row."""
    generated, training = np.asarray(generated, dtype=float), np.asarray(training, dtype=float)
    if generated.ndim != 2 or training.ndim != 2 or generated.shape[1] != training.shape[1]:
        raise ValueError(f"feature matrices must be (G, D) and (N, D), got {generated.shape} and {training.shape}")
    g = _unit(generated)
    out = np.empty((len(g), len(training)))
    for s in range(0, len(training), block):
        out[:, s:s + block] = g @ _unit(training[s:s + block]).T
    return out
