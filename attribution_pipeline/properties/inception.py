"""Inception-based properties: ``inception_score``, ``fid`` and ``kid``.

All three read clean-fid's Inception-v3 (the TorchScript file ``inception-2015-12-05.pt``) from
the local path ``classifier.inception_weights``; nothing is downloaded.

- ``fid`` and ``kid`` are clean-fid's own distances (``frechet_distance``, ``kernel_distance``)
  between the generated images' Inception pool features and those of the real images of all
  contributors (``quality.py``; lower is better, unlike ``quality`` = −FID).
- ``inception_score``: clean-fid offers no Inception Score, so it is computed here from the same
  network's class probabilities, the way the StyleGAN2-ADA metrics call that file
  (``no_output_bias=True``, 1008 classes): IS = exp(E_x KL(p(y|x) ‖ p(y))), averaged over
  ``properties.is_splits`` equal splits of the image set. Range [1, number of classes]: 1 when
  every image gets the same class distribution, K when the images are confidently spread over
  K classes equally.

A stand-in network can replace the file for tests: any TorchScript module with clean-fid's
interface (``layers`` → 2048 features; ``forward(x, return_features, use_fp16, no_output_bias)`` →
class probabilities), loaded through the same ``quality._load_inception`` path.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from attribution_pipeline.properties.quality import InceptionFeatures, fid, kid
from attribution_pipeline.properties.registry import register_property

INCEPTION_NAMES = ("inception_score", "fid", "kid")


def inception_score_from_probs(probs: np.ndarray, splits: int = 10) -> float:
    """exp(mean KL(p(y|x) ‖ p(y))) per split, averaged; ``probs`` ``(N, K)`` rows summing to 1."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) == 0:
        raise ValueError(f"need class probabilities (N >= 1, K), got shape {probs.shape}")
    splits = max(1, min(int(splits), len(probs)))
    eps = 1e-12
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(part + eps) - np.log(marginal + eps))).sum(axis=1).mean()
        scores.append(math.exp(kl))
    return float(np.mean(scores))


def _inception(ctx) -> InceptionFeatures:
    """The context's Inception network (its FID extractor when the reference uses Inception space)."""
    if isinstance(ctx.extractor, InceptionFeatures):
        return ctx.extractor
    if not ctx.inception_weights:
        raise ValueError("the Inception properties (inception_score, fid, kid) need classifier.inception_weights: "
                         "the local path of clean-fid's inception-2015-12-05.pt")
    return ctx.instrument(("inception", str(ctx.inception_weights), ctx.device),
                          lambda: InceptionFeatures(ctx.inception_weights, device=ctx.device))


@torch.no_grad()
def inception_probabilities(images: torch.Tensor, net: InceptionFeatures, batch_size: int = 64) -> np.ndarray:
    """Class probabilities ``(N, K)`` of images ``(N, C, H, W)`` in [-1, 1] (clean-fid resize to 299)."""
    out = []
    for i in range(0, len(images), batch_size):
        x = net._prepare(images[i:i + batch_size]).to(net.device, torch.float32)
        out.append(net.model.base(x, return_features=False, no_output_bias=True).double().cpu().numpy())
    return np.concatenate(out)


def inception_score(images: torch.Tensor, ctx) -> float:
    """IS with clean-fid's Inception-v3 when ``classifier.inception_weights`` is set; otherwise with
    the instrument's own classes (the digits default: its digit classifier plays Inception's part)."""
    settings = ctx.settings
    batch = getattr(settings, "batch_size", 64)
    if ctx.inception_weights or isinstance(ctx.extractor, InceptionFeatures):
        probs = inception_probabilities(images, _inception(ctx), batch)
    else:
        probs = ctx.classifier.predict_proba(images).double().numpy()
    return inception_score_from_probs(probs, getattr(settings, "is_splits", 10))


def _inception_space(ctx, name: str):
    if ctx.stats.extractor != "inception":
        raise ValueError(f"property {name!r} compares Inception features, but the property reference was built "
                         "without classifier.inception_weights: set it and rebuild `property_reference`")
    return ctx.stats, _inception(ctx)


def fid_property(images: torch.Tensor, ctx) -> float:
    stats, net = _inception_space(ctx, "fid")
    return fid(images, stats, net)


def kid_property(images: torch.Tensor, ctx) -> float:
    stats, net = _inception_space(ctx, "kid")
    return kid(images, stats, net)


def _register() -> None:
    register_property("inception_score", inception_score, (1.0, math.inf), replace=True,
                      description="Inception Score of the generated images (clean-fid's Inception-v3, else the "
                                  "instrument's classes)")
    register_property("fid", fid_property, (0.0, math.inf), replace=True,
                      description="FID to the real images in clean-fid's Inception space (lower is better)")
    register_property("kid", kid_property, replace=True,
                      description="KID to the real images in clean-fid's Inception space (unbiased; lower is better)")


_register()
