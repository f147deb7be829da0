"""Model families behind one small interface, so the stages read the same for every family.

A backend knows how to build, load, save, train, prune and sample one family of diffusion model:

- ``ddpm``     a ``UNet2DModel`` on pixels (the default; exactly the functions of ``unet``,
               ``train``, ``pruning`` and ``sampling``);
- ``ldm``      the same ``UNet2DModel`` machinery on the latents of a frozen pretrained autoencoder
               (``latents``): the UNet's channels and size come from the autoencoder, the training
               data are cached latents, generation decodes DDIM latents back to pixels;
- ``sd_lora``  a local Stable Diffusion whose UNet carries a LoRA adapter, the only trained weights
               (``sd_lora``); "pruning" drops LoRA ranks by magnitude.

Every method works on the training data ``(x, labels)``: ``x`` float ``(N, C, H, W)`` (pixels in
[-1, 1], or scaled latents), ``labels`` the member index of each row (``(N,)`` int64). ``generate``
always returns pixels, float ``(N, C, H, W)`` in [-1, 1], from noise that depends only on
``(seed, image index)``: every coalition starts from the same noise.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import torch

from attribution_pipeline.config import ModelConfig, PipelineConfig, PruneConfig
from attribution_pipeline.data.contributors import stack_member_arrays, to_model_range
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.models.hardware import autocast, run_device, run_precision
from attribution_pipeline.models.train import TrainResult, train_diffusion
from attribution_pipeline.models.unet import build_unet, count_parameters, ddim_scheduler, load_unet, noise_scheduler, save_unet
from attribution_pipeline.storage.artifacts import read_manifest

Progress = Callable[[int, int, float], None]


class Data(NamedTuple):
    """Training rows of some members: ``x`` float ``(N, C, H, W)`` (pixels in [-1, 1] or scaled
    latents), ``labels`` int64 ``(N,)`` the member index of each row, ``captions`` the text of
    each member (text-conditioned families only)."""

    x: torch.Tensor
    labels: torch.Tensor
    captions: tuple[str, ...] | None = None


def load_pixels(layout: RunLayout, members: Sequence[str]) -> Data:
    """Cached images of ``members`` as float [-1, 1] ``(N, C, H, W)`` and member index labels."""
    images, labels = stack_member_arrays(layout.contributor_array(m) for m in members)
    return Data(to_model_range(images), torch.from_numpy(labels))


class DDPMBackend:
    """``family = "ddpm"``: today's pixel-space UNet2DModel, unchanged."""

    family = "ddpm"

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.device = run_device(cfg)
        self.precision = run_precision(cfg, self.device)

    @property
    def unet_cfg(self) -> ModelConfig:
        """The ModelConfig the UNet is built from (pixels here; latents in ``ldm``)."""
        return self.cfg.model

    # ---- data ---------------------------------------------------------------------------------
    def prepare_data(self, layout: RunLayout, contributors: Sequence[dict], log: Callable[[str], None]) -> str | None:
        """Derived training data cached beside the images (latents); its content hash, or None."""
        return None

    def training_data(self, layout: RunLayout, members: Sequence[str]) -> Data:
        return load_pixels(layout, members)

    # ---- models -------------------------------------------------------------------------------
    def build(self, seed: int) -> torch.nn.Module:
        """A freshly initialised trainable model (seeded): what training starts from, and the
        untrained model whose images give v(∅)."""
        return build_unet(self.unet_cfg, seed=seed)

    def load(self, folder) -> torch.nn.Module:
        return load_unet(folder)

    def save(self, model: torch.nn.Module, folder, metadata: dict, *, pruned: bool = False, report: Any = None) -> dict:
        """Write ``model`` atomically with a manifest (holding ``n_parameters`` and ``metadata``)."""
        if pruned:
            from attribution_pipeline.models.pruning import save_pruned_unet

            save_pruned_unet(model.cpu(), folder, report=report, extra_manifest=metadata)
            return read_manifest(folder)
        return save_unet(model.cpu(), folder, metadata)

    def n_parameters(self, model: torch.nn.Module) -> int:
        return count_parameters(model)

    def train(self, model: torch.nn.Module, data: Data, *, steps: int, batch_size: int, lr: float, seed: int,
              warmup_steps: int = 0, ema: str = "reset", ema_decay: float = 0.999, progress: Progress | None = None,
              progress_every: int = 100, shards: int = 1, processes: int = 1) -> TrainResult:
        """``train.train_diffusion`` on ``data.x`` on this run's device and precision, with this
        family's hooks (``loop_hooks``); ``shards``/``processes`` as there."""
        return train_diffusion(model, data.x, self.unet_cfg, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                               warmup_steps=warmup_steps, ema=ema, ema_decay=ema_decay, progress=progress,
                               progress_every=progress_every, device=self.device, precision=self.precision,
                               shards=shards, processes=processes, **self.loop_hooks(model, data))

    def loop_hooks(self, model: torch.nn.Module, data: Data) -> dict[str, Any]:
        """This family's keyword hooks of ``train_diffusion`` (``predict``, ``scheduler``,
        ``parameters``, ``weight_decay``); none for an unconditional UNet trained whole."""
        return {}

    def prune(self, model: torch.nn.Module, data: Data, p: PruneConfig):
        """Structural channel pruning (``pruning.prune_unet``) in place; returns (model, PruneReport)."""
        from attribution_pipeline.models.pruning import prune_unet

        x = data.x
        gen = torch.Generator().manual_seed(p.seed)
        calib = x[torch.randperm(len(x), generator=gen)[:256]]
        report = prune_unet(model, ratio=p.ratio, importance=p.importance, calibration_images=calib, seed=p.seed,
                            noise_scheduler=noise_scheduler(self.unet_cfg))
        return model, report

    def generate(self, model: torch.nn.Module, *, n_images: int, steps: int, seed: int, batch_size: int) -> torch.Tensor:
        from attribution_pipeline.models.sampling import generate_images

        with autocast(self.device, self.precision):
            return generate_images(model, self.unet_cfg, n_images=n_images, ddim_steps=steps, seed=seed,
                                   batch_size=batch_size, device=self.device).float()


class LDMBackend(DDPMBackend):
    """``family = "ldm"``: a UNet2DModel on the cached latents of a frozen VQ/KL autoencoder."""

    family = "ldm"

    def __init__(self, cfg: PipelineConfig):
        from attribution_pipeline.models.latents import autoencoder_geometry

        super().__init__(cfg)
        m = cfg.model
        if not m.autoencoder_path:
            raise ValueError("model.family = 'ldm' needs model.autoencoder_path (a local diffusers autoencoder folder)")
        self.geometry = autoencoder_geometry(m.autoencoder_path, m.autoencoder_kind, m.sample_size, m.latent_scaling)

    @property
    def unet_cfg(self) -> ModelConfig:
        return dataclasses.replace(self.cfg.model, sample_size=self.geometry.size, channels=self.geometry.channels)

    def prepare_data(self, layout, contributors, log):
        from attribution_pipeline.models.latents import cache_latents

        m = self.cfg.model
        return cache_latents(layout, contributors, m.autoencoder_path, m.autoencoder_kind, self.geometry,
                             device=self.device, batch_size=self.cfg.hardware.encode_batch_size, log=log)

    def training_data(self, layout, members):
        from attribution_pipeline.models.latents import load_latents

        return Data(*load_latents(layout, members))

    @torch.no_grad()
    def generate(self, model, *, n_images, steps, seed, batch_size):
        """DDIM on latents (no clipping: latents are not in [-1, 1]), then the autoencoder's decoder."""
        from attribution_pipeline.models.latents import decode, load_autoencoder
        from attribution_pipeline.models.sampling import initial_noise

        if n_images <= 0 or steps <= 0:
            raise ValueError(f"n_images and steps must be positive, got {n_images}, {steps}")
        cfg = self.unet_cfg
        model.to(self.device).eval()
        noise = initial_noise(cfg, n_images, seed)
        latents = []
        for start in range(0, n_images, batch_size):
            scheduler = ddim_scheduler(cfg, clip_sample=False)
            scheduler.set_timesteps(steps)
            x = noise[start:start + batch_size].to(self.device)
            for t in scheduler.timesteps:
                with autocast(self.device, self.precision):
                    eps = model(x, t).sample
                x = scheduler.step(eps.float(), t, x, eta=0.0).prev_sample
            latents.append(x.float().cpu())
        m = self.cfg.model
        vae = load_autoencoder(str(m.autoencoder_path), m.autoencoder_kind, str(self.device))
        images = decode(vae, torch.cat(latents), self.geometry.scaling, self.cfg.hardware.encode_batch_size, self.device)
        if m.channels == 1:
            images = images.mean(dim=1, keepdim=True)
        return images
