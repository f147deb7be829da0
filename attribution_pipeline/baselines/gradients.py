"""One cache of projected per-example gradients at θ*, read by the whole gradient family.

For each image x₀ (a contributor's training image or a generated one) and K fixed timesteps
t₁ … t_K (evenly spaced over the schedule) with noise ε_k drawn from a generator seeded by
``(seed, image id)`` (so a row does not depend on the order images are visited in):

- ``loss``: ∇θ of (1/K) Σ_k mean‖ε_θ(x_{t_k}, t_k) − target_k‖², the training loss (TRAK's output);
- ``output_norm``: ∇θ of (1/K) Σ_k mean ε_θ(x_{t_k}, t_k)², D-TRAK's output function.

Per-example gradients come from ``torch.func`` (``vmap(grad(·))`` over ``functional_call``); the
gradient is averaged over the K pairs before projection (REVIEW-baselines.md §1.2), then projected to
``dim`` coordinates by a seeded count sketch (each parameter goes to one coordinate with a random
sign: inner products are preserved in expectation, and the sketch costs one scatter-add, no dense
P × d matrix). Every row is returned with its image id.

``journey_features`` takes the generated side along the sampling trajectory instead (Journey-TRAK):
the DDIM path of each generated image from its shared noise, at K of its steps, with the loss
against the noise that links that point to the final sample.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

OUTPUTS = ("loss", "output_norm")
Progress = Callable[[int, int], None]  # (rows done, rows)


def row_seed(seed: int, image_id: str) -> int:
    """A 63-bit seed for one image's noise draws, from the cache seed and the image id alone."""
    digest = hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def fixed_timesteps(n_train_timesteps: int, k: int) -> torch.Tensor:
    """K timesteps evenly spread over ``[0, T)`` (int64)."""
    if k < 1:
        raise ValueError(f"the number of timesteps must be >= 1, got {k}")
    return torch.linspace(0, n_train_timesteps - 1, k).round().long()


class CountSketch:
    """A seeded sparse projection ``R^P -> R^d``: coordinate j goes to bucket h(j) with sign s(j)."""

    def __init__(self, n_params: int, dim: int, seed: int):
        if dim < 1:
            raise ValueError(f"projection dimension must be >= 1, got {dim}")
        gen = torch.Generator().manual_seed(seed)
        self.dim, self.n_params, self.seed = dim, n_params, seed
        self.bucket = torch.randint(0, dim, (n_params,), generator=gen)
        self.sign = torch.randint(0, 2, (n_params,), generator=gen).float().mul_(2).sub_(1)

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        """``(B, P)`` -> ``(B, d)``."""
        if g.shape[1] != self.n_params:
            raise ValueError(f"gradients have {g.shape[1]} coordinates, the sketch {self.n_params}")
        out = torch.zeros(g.shape[0], self.dim, dtype=g.dtype)
        return out.index_add_(1, self.bucket, g * self.sign)


@dataclass
class GradientFeatures:
    """Projected gradients: ``features[k]`` belongs to ``ids[k]``; ``meta`` says how they were made."""

    ids: list[str]
    features: np.ndarray  # (N, dim) float32
    meta: dict = field(default_factory=dict)


def _noised(scheduler, x0: torch.Tensor, ids: Sequence[str], timesteps: torch.Tensor, seed: int):
    """x_t ``(B, K, C, H, W)`` and the regression target of each (image, timestep) pair."""
    from attribution_pipeline.models.train import prediction_target

    k = len(timesteps)
    noise = torch.stack([torch.randn((k, *x0.shape[1:]), generator=torch.Generator().manual_seed(row_seed(seed, i)))
                         for i in ids])
    x0k = x0[:, None].expand(-1, k, *x0.shape[1:])
    tk = timesteps[None].expand(len(x0), k)
    flat = (x0k.reshape(-1, *x0.shape[1:]), noise.reshape(-1, *x0.shape[1:]), tk.reshape(-1))
    x_t = scheduler.add_noise(*flat).reshape(x0k.shape)
    target = prediction_target(scheduler, *flat).reshape(x0k.shape)
    return x_t, target


def _gradient_fn(model: torch.nn.Module, output: str):
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def value(params, x_t, target, t):  # one image: x_t (K, C, H, W), t (K,)
        pred = functional_call(model, (params, buffers), (x_t, t)).sample
        return ((pred - target) ** 2).mean() if output == "loss" else (pred ** 2).mean()

    return vmap(grad(value), in_dims=(None, 0, 0, 0))


def _project_batches(model, batches, sketch: CountSketch, output: str, n_rows: int,
                     progress: Progress | None) -> np.ndarray:
    params = {k: v.detach() for k, v in model.named_parameters()}
    fn = _gradient_fn(model, output)
    out, done = [], 0
    for x_t, target, t in batches:
        g = fn(params, x_t, target, t)
        out.append(sketch(torch.cat([g[k].reshape(len(x_t), -1) for k in params], dim=1)).numpy().astype(np.float32))
        done += len(x_t)
        if progress is not None:
            progress(done, n_rows)
    return np.concatenate(out) if out else np.zeros((0, sketch.dim), dtype=np.float32)


def _vmap_ready(model: torch.nn.Module) -> torch.nn.Module:
    """On the CPU, in eval mode, with diffusers' classic attention: fused SDPA has no vmap batching
    rule, and its fallback is slower than the plain attention it replaces (same values)."""
    from diffusers.models.attention_processor import Attention, AttnProcessor

    model = model.cpu().eval()
    for module in model.modules():
        if isinstance(module, Attention):
            module.set_processor(AttnProcessor())
    return model


def _sketch_for(model: torch.nn.Module, dim: int, seed: int) -> CountSketch:
    return CountSketch(sum(p.numel() for p in model.parameters()), dim, seed)


def gradient_features(model: torch.nn.Module, scheduler, images: torch.Tensor, ids: Sequence[str], *,
                      output: str = "loss", n_timesteps: int = 10, dim: int = 512, seed: int = 0,
                      batch_size: int = 16, progress: Progress | None = None) -> GradientFeatures:
    """Projected per-example gradients of ``output`` at ``model``'s weights for ``images``
    ``(N, C, H, W)`` (model space) named ``ids``; rows in the order given. The projection seed is
    ``seed`` (the same sketch for training and generated images); noise is seeded per image id."""
    if len(images) != len(ids):
        raise ValueError(f"{len(images)} images for {len(ids)} ids")
    start = time.perf_counter()
    model = _vmap_ready(model)
    timesteps = fixed_timesteps(scheduler.config.num_train_timesteps, n_timesteps)
    sketch = _sketch_for(model, dim, seed)

    def batches():
        for s in range(0, len(images), batch_size):
            x_t, target = _noised(scheduler, images[s:s + batch_size].float(), ids[s:s + batch_size], timesteps, seed)
            yield x_t, target, timesteps[None].expand(len(x_t), -1)

    feats = _project_batches(model, batches(), sketch, output, len(images), progress)
    meta = {"output": output, "n_timesteps": n_timesteps, "timesteps": timesteps.tolist(), "dim": dim,
            "projection": "count-sketch", "seed": seed, "n_params": sketch.n_params,
            "seconds": time.perf_counter() - start}
    return GradientFeatures(list(ids), feats, meta)


@torch.no_grad()
def ddim_trajectory(model: torch.nn.Module, model_cfg, noise: torch.Tensor, ddim_steps: int, n_points: int):
    """The DDIM (η = 0) path from ``noise`` ``(G, C, H, W)``: the states x_t ``(G, K, C, H, W)`` at
    ``n_points`` of its steps (evenly spaced), their timesteps ``(K,)`` and the final samples."""
    from attribution_pipeline.models.unet import ddim_scheduler

    scheduler = ddim_scheduler(model_cfg)
    scheduler.set_timesteps(ddim_steps)
    keep = set(np.linspace(0, ddim_steps - 1, min(n_points, ddim_steps)).round().astype(int).tolist())
    model = model.cpu().eval()
    x, states, steps = noise.clone(), [], []
    for j, t in enumerate(scheduler.timesteps):
        if j in keep:
            states.append(x.clone())
            steps.append(int(t))
        x = scheduler.step(model(x, t).sample, t, x, eta=0.0).prev_sample
    return torch.stack(states, dim=1), torch.tensor(steps, dtype=torch.long), x.clamp(-1.0, 1.0)


def journey_features(model: torch.nn.Module, model_cfg, scheduler, noise: torch.Tensor, ids: Sequence[str], *,
                     ddim_steps: int, n_points: int = 10, dim: int = 512, seed: int = 0, batch_size: int = 16,
                     progress: Progress | None = None) -> GradientFeatures:
    """Journey-TRAK's generated side: for each generated image's trajectory point (x_t, t), the
    training-loss gradient against ε_t = (x_t − √ᾱ_t x̂₀)/√(1 − ᾱ_t), x̂₀ the final sample (the noise
    that places the point on the way to its image), averaged over the points and projected with the
    same sketch as ``gradient_features(seed=seed)``."""
    start = time.perf_counter()
    model = _vmap_ready(model)
    states, steps, final = ddim_trajectory(model, model_cfg, noise, ddim_steps, n_points)
    abar = scheduler.alphas_cumprod[steps].view(1, -1, 1, 1, 1).float()
    eps = (states - abar.sqrt() * final[:, None]) / (1 - abar).sqrt()
    sketch = _sketch_for(model, dim, seed)

    def batches():
        for s in range(0, len(states), batch_size):
            yield states[s:s + batch_size], eps[s:s + batch_size], steps[None].expand(len(states[s:s + batch_size]), -1)

    feats = _project_batches(model, batches(), sketch, "loss", len(states), progress)
    meta = {"output": "journey_loss", "n_points": len(steps), "timesteps": steps.tolist(), "dim": dim,
            "projection": "count-sketch", "seed": seed, "n_params": sketch.n_params, "ddim_steps": ddim_steps,
            "seconds": time.perf_counter() - start}
    return GradientFeatures(list(ids), feats, meta)
