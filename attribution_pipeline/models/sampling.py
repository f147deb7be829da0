"""DDIM generation with common random numbers: the same initial noise for every coalition.

With eta = 0 DDIM is deterministic given the initial noise, so two coalitions' image sets differ
only through their models. This removes most of the sampling noise from differences of utilities.
"""

from __future__ import annotations

import torch

from attribution_pipeline.config import ModelConfig
from attribution_pipeline.models.unet import ddim_scheduler


def initial_noise(model_cfg: ModelConfig, n_images: int, seed: int) -> torch.Tensor:
    """The shared starting noise ``(n_images, C, H, W)``; image i's noise depends only on (seed, i)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (n_images, model_cfg.channels, model_cfg.sample_size, model_cfg.sample_size)
    return torch.randn(shape, generator=gen)


@torch.no_grad()
def generate_images(
    model: torch.nn.Module,
    model_cfg: ModelConfig,
    *,
    n_images: int,
    ddim_steps: int,
    seed: int,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Generate ``n_images`` images, float ``(N, C, H, W)`` clamped to [-1, 1]."""
    if n_images <= 0 or ddim_steps <= 0:
        raise ValueError(f"n_images and ddim_steps must be positive, got {n_images}, {ddim_steps}")
    model.to(device).eval()
    noise = initial_noise(model_cfg, n_images, seed)
    out = []
    for start in range(0, n_images, batch_size):
        scheduler = ddim_scheduler(model_cfg)
        scheduler.set_timesteps(ddim_steps)
        x = noise[start : start + batch_size].to(device)
        for t in scheduler.timesteps:
            eps = model(x, t).sample
            x = scheduler.step(eps, t, x, eta=0.0).prev_sample
        out.append(x.clamp(-1.0, 1.0).cpu())
    return torch.cat(out)
