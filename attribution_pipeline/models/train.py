"""The DDPM training loop, used for the full model, the pruned base and each coalition.

One loop, nanoGPT-style: draw a seeded batch, add noise at a random timestep, regress the noise,
step Adam, update the EMA. The returned model holds the EMA weights (the ones we sample from),
unless ``ema="none"``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel

from attribution_pipeline.config import ModelConfig
from attribution_pipeline.models.unet import noise_scheduler

ProgressFn = Callable[[int, int, float], None]  # (step, total steps, recent mean loss)
EMA_MODES = ("reset", "continue", "none")


@dataclass
class TrainResult:
    model: torch.nn.Module  # EMA weights copied in (or raw weights for ema="none")
    losses: list[float] = field(default_factory=list)  # one per step
    elapsed_s: float = 0.0

    @property
    def first_loss(self) -> float:
        k = max(1, len(self.losses) // 10)
        return float(sum(self.losses[:k]) / k)

    @property
    def final_loss(self) -> float:
        k = max(1, len(self.losses) // 10)
        return float(sum(self.losses[-k:]) / k)


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def train_diffusion(
    model: torch.nn.Module,
    images: torch.Tensor,
    model_cfg: ModelConfig,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    warmup_steps: int = 0,
    ema: str = "reset",
    ema_decay: float = 0.999,
    progress: ProgressFn | None = None,
    progress_every: int = 100,
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train ``model`` in place on ``images`` (float ``(N,C,H,W)`` in [-1, 1]) for ``steps`` steps.

    ``ema``: "reset" = a fresh EMA with warm-up (effective decay grows towards ``ema_decay``, so a
    short fine-tune is not drowned by its starting weights); "continue" = a fixed ``ema_decay``
    from the first step (the reference code's choice); "none" = return the raw weights.
    Every random draw (batches, timesteps, noise) comes from a generator seeded with ``seed``.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) tensor, got shape {tuple(images.shape)}")
    if ema not in EMA_MODES:
        raise ValueError(f"ema must be one of {EMA_MODES}, got {ema!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    scheduler = noise_scheduler(model_cfg)
    n_t = scheduler.config.num_train_timesteps
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(warmup_steps, steps))
    ema_model = None
    if ema != "none":
        ema_model = EMAModel(
            model.parameters(),
            decay=ema_decay,
            # "continue": a fixed decay from the first step (min_decay pins it; EMAModel would
            # otherwise ramp the decay up by itself)
            min_decay=ema_decay if ema == "continue" else 0.0,
            use_ema_warmup=(ema == "reset"),
            inv_gamma=1.0,
            power=2 / 3,
        )
    losses: list[float] = []
    n = images.shape[0]
    for step in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        x0 = images[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, n_t, (batch_size,), generator=gen)
        x0, noise, t = x0.to(device), noise.to(device), t.to(device)
        xt = scheduler.add_noise(x0, noise, t)
        loss = F.mse_loss(model(xt, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if ema_model is not None:
            ema_model.step(model.parameters())
        losses.append(float(loss.detach()))
        if progress is not None and ((step + 1) % progress_every == 0 or step + 1 == steps):
            recent = losses[-progress_every:]
            progress(step + 1, steps, sum(recent) / len(recent))
    if ema_model is not None and steps > 0:
        ema_model.copy_to(model.parameters())
    model.eval()
    return TrainResult(model=model, losses=losses, elapsed_s=time.perf_counter() - start)
