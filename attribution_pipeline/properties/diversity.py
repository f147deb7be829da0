"""The ``diversity`` property: how evenly the generated images spread over the contributors.

The reference classifier assigns each generated image to a contributor class; diversity is the
entropy, in bits, of the resulting class proportions: 0 when every image looks like one
contributor, log2 K when the K contributors are equally represented (the paper's CelebA-HQ
property, with the classifier's classes in place of clusters of a reference set).
"""

from __future__ import annotations

import math

import torch

from attribution_pipeline.properties.classifier import ReferenceClassifier

MODES = ("argmax", "mean_prob")


def entropy_bits(proportions: torch.Tensor) -> float:
    """−Σ p log2 p of a probability vector (0 log 0 = 0), in bits."""
    p = proportions.double()
    p = p[p > 0]
    return float(max(0.0, -(p * torch.log2(p)).sum().item()))


def class_proportions(probs: torch.Tensor, mode: str = "argmax") -> torch.Tensor:
    """Class proportions ``(K,)`` from per-image probabilities ``(N, K)``.

    ``argmax``: the share of images whose most probable class is k (hard counts).
    ``mean_prob``: the mean predicted probability of class k (soft; smoother under few images).
    """
    if mode not in MODES:
        raise ValueError(f"unknown diversity mode {mode!r}; choose one of {MODES}")
    if probs.ndim != 2 or len(probs) == 0:
        raise ValueError(f"need probabilities (N >= 1, K), got shape {tuple(probs.shape)}")
    if mode == "argmax":
        counts = torch.bincount(probs.argmax(dim=1), minlength=probs.shape[1]).double()
        return counts / counts.sum()
    return probs.double().mean(dim=0)


def diversity(images: torch.Tensor, classifier: ReferenceClassifier, mode: str = "argmax") -> float:
    """Entropy in bits of the contributor classes the classifier sees in ``images`` ``(N, C, H, W)``
    in [-1, 1]; in [0, log2 K] for K classes."""
    return entropy_bits(class_proportions(classifier.predict_proba(images), mode))


def max_diversity(n_classes: int) -> float:
    """log2 K: the diversity of a set balanced over K classes."""
    return math.log2(n_classes)
