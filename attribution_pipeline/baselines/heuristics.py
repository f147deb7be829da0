"""Attributions that need no gradient: data size, the contributor's own data, leave-one-out.

- ``size_share``: |D_i| / Σ|D_j|, "pay per image", the default a data market would use;
- ``own_confidence``: the instrument's confidence (max class probability) on each of the
  contributor's own images, for mean/max aggregation (a property-aware, model-free heuristic, as the
  paper's aesthetic avg/max);
- ``own_property``: the property itself evaluated on the contributor's own real images, F(D_i);
- ``leave_one_out``: v(N) − v(N∖{i}) from utilities of any method (sFT or retraining).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch


def size_share(counts: Sequence[int]) -> np.ndarray:
    counts = np.asarray(counts, dtype=float)
    if counts.ndim != 1 or len(counts) == 0 or np.any(counts < 0) or counts.sum() <= 0:
        raise ValueError(f"image counts must be non-negative with a positive total, got {counts.tolist()}")
    return counts / counts.sum()


@torch.no_grad()
def own_confidence(classifier, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Max class probability of the instrument on each image ``(N,)``."""
    return classifier.predict_proba(images, batch_size=batch_size).max(dim=1).values.cpu().double().numpy()


def own_property(score: Callable[[torch.Tensor], dict[str, float]], images_by_contributor: dict[str, torch.Tensor],
                 properties: Sequence[str]) -> dict[str, np.ndarray]:
    """``{property: (n_contributors,)}``: each property on each contributor's own images alone
    (``score`` is the pipeline's scorer of an image set; contributors in dict order)."""
    values = [score(x) for x in images_by_contributor.values()]
    return {p: np.array([v[p] for v in values], dtype=float) for p in properties}


def leave_one_out(v_full: float, v_without: Sequence[float]) -> np.ndarray:
    """τ_i = v(N) − v(N∖{i}); ``v_without[i]`` is the utility without contributor i."""
    return float(v_full) - np.asarray(v_without, dtype=float)
