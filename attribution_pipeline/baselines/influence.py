"""The gradient family from projected gradients (``gradients.py``): per-training-image scores.

With Φ ``(N, d)`` the training images' projected gradients and φ_g the generated images':

- TRAK: τ_i = mean_g φ_gᵀ (ΦᵀΦ + λI)⁻¹ φ_i (λ absolute, on raw projected gradients; the paper's 0.5);
- relative IF: τ_i / ‖(ΦᵀΦ + λI)⁻¹ φ_i‖ (the reference code's simplification of RelatIF);
- renormalised IF: τ_i / ‖φ_i‖;
- D-TRAK: TRAK with both sides the gradients of D-TRAK's output function;
- Journey-TRAK: TRAK with the generated side taken along the sampling trajectories;
- gradient similarity: the cosine of φ_g and φ_i (a ``(G, N)`` matrix for ``aggregate.mean_and_max``).

Scores keep their sign (more influence, more credit). Rows are matched by image id, not position:
``align`` reorders a feature set to the ids asked for and fails on a missing or extra id.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from attribution_pipeline.baselines.gradients import GradientFeatures


def align(features: GradientFeatures, ids: Sequence[str]) -> np.ndarray:
    """The rows of ``features`` in the order of ``ids`` (every id exactly once)."""
    pos = {i: k for k, i in enumerate(features.ids)}
    if len(pos) != len(features.ids):
        raise ValueError("duplicate image ids in a gradient cache")
    missing = [i for i in ids if i not in pos]
    if missing or len(ids) != len(pos):
        raise ValueError(f"gradient rows and image ids differ: {len(missing)} id(s) missing "
                         f"(e.g. {missing[:3]}), {len(pos)} rows for {len(ids)} ids")
    return features.features[[pos[i] for i in ids]].astype(np.float64)


def kernel(train: np.ndarray, lam: float) -> np.ndarray:
    """(ΦᵀΦ + λI)⁻¹ ``(d, d)``."""
    if lam <= 0:
        raise ValueError(f"lambda must be > 0, got {lam}")
    d = train.shape[1]
    return np.linalg.inv(train.T @ train + lam * np.eye(d))


def trak_scores(train: np.ndarray, generated: np.ndarray, lam: float) -> dict[str, np.ndarray]:
    """``{"trak", "relative_if", "renormalized_if"}``: per-training-image scores ``(N,)``."""
    train, generated = np.asarray(train, dtype=float), np.asarray(generated, dtype=float)
    if train.ndim != 2 or generated.ndim != 2 or train.shape[1] != generated.shape[1]:
        raise ValueError(f"feature matrices must be (N, d) and (G, d), got {train.shape} and {generated.shape}")
    k_phi = train @ kernel(train, lam)  # row i: (ΦᵀΦ + λI)⁻¹ φ_i (the kernel is symmetric)
    tau = k_phi @ generated.mean(axis=0)  # mean over g of φ_gᵀ K φ_i (linear in φ_g)
    tiny = np.finfo(float).tiny
    return {"trak": tau,
            "relative_if": tau / np.maximum(np.linalg.norm(k_phi, axis=1), tiny),
            "renormalized_if": tau / np.maximum(np.linalg.norm(train, axis=1), tiny)}
