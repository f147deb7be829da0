"""The ``aesthetic`` property: a high quantile of LAION aesthetic scores of the generated images.

The paper's ArtBench property: the 90th percentile of the LAION aesthetic predictor, a linear head
on CLIP ViT-L/14 image embeddings. Both come from local files:

- ``properties.clip_model``: a CLIP folder in transformers format (``CLIPModel`` or
  ``CLIPVisionModelWithProjection``: its projected image embedding is the space of the head);
- ``properties.aesthetic_head``: LAION's linear head (``sa_0_4_vit_l_14_linear.pth``), a state dict
  ``{"weight": (1, D), "bias": (1,)}`` as ``.pth``/``.pt`` (torch) or ``.safetensors``.

Each image's score is ``head(e / ‖e‖)`` for its CLIP image embedding ``e`` (LAION normalises the
embedding before the head); the property is the ``properties.aesthetic_quantile`` quantile of the
scores (0.9 by default), which rewards a model for its best images rather than its average.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from attribution_pipeline.properties.registry import register_property
from attribution_pipeline.properties.vision import l2_normalise, load_vision_encoder


def load_aesthetic_head(path: str | Path) -> torch.nn.Linear:
    """The linear head from a state dict file ``{"weight": (1, D), "bias": (1,)}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; expected LAION's aesthetic linear head "
                                "(a state dict {weight: (1, D), bias: (1,)}, e.g. sa_0_4_vit_l_14_linear.pth)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    ok = isinstance(state, dict) and "weight" in state and "bias" in state and state["weight"].ndim == 2 \
        and state["weight"].shape[0] == 1
    if not ok:
        keys = sorted(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not a linear aesthetic head: expected a state dict with 'weight' (1, D) and "
                         f"'bias' (1,), found {keys} (the MLP 'improved aesthetic predictor' is not this format)")
    weight, bias = state["weight"], state["bias"]
    head = torch.nn.Linear(weight.shape[1], 1)
    head.load_state_dict({"weight": weight.float(), "bias": bias.float().reshape(1)})
    return head.eval()


@torch.no_grad()
def aesthetic_scores(embeddings: np.ndarray, head: torch.nn.Linear) -> np.ndarray:
    """Per-image scores ``(N,)`` of CLIP image embeddings ``(N, D)`` (normalised here)."""
    if embeddings.shape[1] != head.in_features:
        raise ValueError(f"the aesthetic head expects {head.in_features}-d CLIP embeddings but the CLIP model gives "
                         f"{embeddings.shape[1]}-d ones: use the CLIP the head was trained on (ViT-L/14: 768)")
    x = torch.from_numpy(l2_normalise(embeddings)).float()
    return head(x).squeeze(1).double().numpy()


def aesthetic(images: torch.Tensor, ctx) -> float:
    clip_path = ctx.require("aesthetic", "clip_model")
    head_path = ctx.require("aesthetic", "aesthetic_head")
    encoder = ctx.instrument(("vision", str(clip_path), ctx.device),
                             lambda: load_vision_encoder(str(clip_path), ctx.device))
    head = ctx.instrument(("aesthetic_head", str(head_path)), lambda: load_aesthetic_head(head_path))
    scores = aesthetic_scores(encoder(images, ctx.settings.batch_size), head)
    return float(np.quantile(scores, ctx.settings.aesthetic_quantile))


def _register() -> None:
    register_property("aesthetic", aesthetic, replace=True,
                      description="a quantile (0.9 by default) of LAION aesthetic scores on CLIP image embeddings")


_register()
