"""The one diffusion training loop: the full model, the pruned base and each coalition, of every family.

nanoGPT-style: draw a seeded batch, add noise at a random timestep, regress the scheduler's
prediction target (the noise, the velocity or the clean sample), step Adam(W), update the EMA. The
returned model holds the EMA weights (the ones we sample from), unless ``ema="none"``.

A family plugs in through keyword hooks instead of a loop of its own: ``predict`` (how the model is
called, e.g. with a text condition), ``scheduler`` (its noise schedule and prediction type),
``parameters`` (what trains, e.g. a LoRA adapter only) and ``weight_decay``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel

from attribution_pipeline.config import ModelConfig
from attribution_pipeline.models.hardware import autocast
from attribution_pipeline.models.unet import noise_scheduler
from attribution_pipeline.models import shards as sharding

ProgressFn = Callable[[int, int, float], None]  # (step, total steps, recent mean loss)
# (model, noisy x_t (B, C, H, W), timesteps (B,) int64, rows (B,) int64 CPU indices into the
# training tensor) -> the model's prediction (B, C, H, W)
PredictFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
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


def unconditional(model: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The default ``predict`` hook: a diffusers UNet called on ``(x_t, t)`` alone."""
    return model(noisy, timesteps).sample


def prediction_target(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the model regresses, by ``scheduler.config.prediction_type``: the noise ("epsilon"),
    the velocity ``sqrt(ᾱ_t) ε − sqrt(1 − ᾱ_t) x0`` ("v_prediction") or ``x0`` ("sample");
    same shape as ``x0``."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    if kind == "sample":
        return x0
    raise ValueError(f"unsupported scheduler prediction_type {kind!r} (epsilon, v_prediction or sample)")


def _check(images: torch.Tensor, ema: str, steps: int) -> None:
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) tensor, got shape {tuple(images.shape)}")
    if ema not in EMA_MODES:
        raise ValueError(f"ema must be one of {EMA_MODES}, got {ema!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")


def _ema(params: list[torch.nn.Parameter], ema: str, decay: float) -> EMAModel | None:
    if ema == "none":
        return None
    return EMAModel(
        params,
        decay=decay,
        # "continue": a fixed decay from the first step (min_decay pins it; EMAModel would
        # otherwise ramp the decay up by itself)
        min_decay=decay if ema == "continue" else 0.0,
        use_ema_warmup=(ema == "reset"),
        inv_gamma=1.0,
        power=2 / 3,
    )


def _batch(images: torch.Tensor, gen: torch.Generator, batch_size: int, n_t: int):
    """One seeded draw, in this order: rows ``(B,)``, their noise (shape of the rows), timesteps
    ``(B,)`` in ``[0, n_t)``; all on the CPU so a seed gives the same batch on every device."""
    idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
    x0 = images[idx]
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, n_t, (batch_size,), generator=gen)
    return idx, x0, noise, t


def _report(progress: ProgressFn | None, losses: list[float], steps: int, every: int) -> None:
    step = len(losses)
    if progress is not None and (step % every == 0 or step == steps):
        recent = losses[-every:]
        progress(step, steps, sum(recent) / len(recent))


def _gradients(model: torch.nn.Module, predict: PredictFn, scheduler: DDPMScheduler, batch, opt, params: list,
               slices: sharding.Slices, device, precision: str) -> float:
    """Set the gradients of ``params`` for one seeded batch (whole, or as ``slices``); its loss."""
    idx, x0, noise, t = batch
    x0, noise, t = x0.to(device), noise.to(device), t.to(device)
    xt = scheduler.add_noise(x0, noise, t)
    if slices.shards == 1:
        # autocast around the forward only, entered afresh each step: autocast keeps its bf16 copies
        # of the weights until the outermost context exits, so one context around the whole loop
        # would run every forward on the first step's weights
        with autocast(device, precision):
            pred = predict(model, xt, t, idx)
        loss = F.mse_loss(pred.float(), prediction_target(scheduler, x0, noise, t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        return float(loss.detach())
    target = prediction_target(scheduler, x0, noise, t)

    def slice_loss(rows: slice) -> torch.Tensor:
        with autocast(device, precision):
            pred = predict(model, xt[rows], t[rows], idx[rows])
        return F.mse_loss(pred.float(), target[rows])

    return slices.gradients(params, slice_loss, len(idx))


def train_diffusion(
    model: torch.nn.Module, images: torch.Tensor, model_cfg: ModelConfig | None, *, steps: int, batch_size: int,
    lr: float, seed: int, warmup_steps: int = 0, ema: str = "reset", ema_decay: float = 0.999,
    progress: ProgressFn | None = None, progress_every: int = 100, device: str | torch.device = "cpu",
    precision: str = "fp32", predict: PredictFn = unconditional, scheduler: DDPMScheduler | None = None,
    parameters: Iterable[torch.nn.Parameter] | None = None, weight_decay: float = 0.0, shards: int = 1,
    processes: int = 1, member: tuple[int, int, str] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``images`` (float ``(N,C,H,W)``: pixels in [-1, 1] or scaled
    latents) for ``steps`` steps of ``batch_size`` rows.

    ``ema``: "reset" = a fresh EMA with warm-up (effective decay grows towards ``ema_decay``, so a
    short fine-tune is not drowned by its starting weights); "continue" = a fixed ``ema_decay``
    from the first step (the reference code's choice); "none" = return the raw weights.
    Every random draw (batches, timesteps, noise) comes from a generator seeded with ``seed``.
    The learning rate warms up linearly over ``warmup_steps`` and then decays by a cosine to 0.1 lr.

    Hooks: ``scheduler`` is the noise schedule, whose ``prediction_type`` picks the regression
    target (default ``noise_scheduler(model_cfg)``); ``predict`` calls the model (default: no
    conditioning); ``parameters`` are what the optimizer and the EMA see (default: all of the
    model's); ``weight_decay`` is AdamW's decoupled decay (0 = plain Adam). ``precision`` "bf16"
    runs each forward pass under bf16 autocast; weights, gradients and the loss stay float32.

    ``shards`` > 1: each batch in that many equal slices, gradients summed in slice order, computed in
    ``processes`` CPU processes at once (``models/shards.py``; ``member`` is set inside the helpers);
    bit-identical for every ``processes``.
    """
    _check(images, ema, steps)
    sharding.check(batch_size, shards)
    if scheduler is None:
        if model_cfg is None:
            raise ValueError("train_diffusion needs model_cfg or a noise scheduler")
        scheduler = noise_scheduler(model_cfg)
    start, gen, n_t = time.perf_counter(), torch.Generator().manual_seed(seed), scheduler.config.num_train_timesteps
    model.to(device).train()
    params = list(model.parameters() if parameters is None else parameters)
    # AdamW with weight_decay 0 computes exactly Adam's update
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(warmup_steps, steps))
    ema_model, losses = _ema(params, ema, ema_decay), []
    # the slices may run in helper processes: on the CPU, for a model trained whole with the default
    # forward (what a spawned process can rebuild from a pickle); the numbers are the same either way
    parallel = (member is None and shards > 1 and processes > 1 and torch.device(device).type == "cpu"
                and parameters is None and predict is unconditional)
    helper = dict(steps=steps, batch_size=batch_size, lr=lr, seed=seed, warmup_steps=warmup_steps, ema="none",
                  device="cpu", precision=precision, scheduler=scheduler, weight_decay=weight_decay, shards=shards)
    with sharding.group(shards, member, processes if parallel else 1, train_diffusion, (model, images, model_cfg),
                        helper) as slices:
        for _ in range(steps):
            batch = _batch(images, gen, batch_size, n_t)
            losses.append(_gradients(model, predict, scheduler, batch, opt, params, slices, device, precision))
            opt.step()
            sched.step()
            if ema_model is not None:
                ema_model.step(params)
            _report(progress, losses, steps, progress_every)
    if ema_model is not None and steps > 0:
        ema_model.copy_to(params)
    model.eval()
    return TrainResult(model=model, losses=losses, elapsed_s=time.perf_counter() - start)
