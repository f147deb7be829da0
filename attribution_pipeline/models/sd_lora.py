"""Stable Diffusion with a LoRA adapter: the ``sd_lora`` model family.

Everything is read from one local Stable Diffusion folder in diffusers format
(``model.pretrained_path``: ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``;
miniSD in the paper). The UNet gets a peft LoRA adapter on its attention projections
(``model.lora_target_modules``, rank ``model.lora_rank``); only the adapter trains, so a
checkpoint is the adapter alone (``lora.safetensors`` + ``lora_config.json``), a few MB instead of
the UNet's GB, and the model is the base UNet plus that adapter.

- v(∅): the base model. peft initialises the adapter's B matrices to zero, so a freshly built
  model computes exactly the base UNet.
- "Pruning" drops rank-one components of the adapter: component i of a layer is the term
  ``s · B[:, i] A[i, :]`` (``s`` = alpha / r), scored by its Frobenius norm ``s ‖B[:, i]‖ ‖A[i, :]‖``;
  the weakest components over all layers go first until the kept LoRA parameters are at most
  ``1 − prune.ratio`` of the total (every layer keeps at least one). Each layer's alpha is rescaled
  with its rank so the kept terms compute exactly what they computed before.
- Training captions are ``model.train_prompt`` (with ``{contributor}`` replaced by each member's
  id) or ``model.prompt``; generation uses ``model.prompt`` with classifier-free guidance
  ``model.guidance_scale`` and the folder's own scheduler, from noise seeded per image index.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from attribution_pipeline.config import PipelineConfig, PruneConfig
from attribution_pipeline.models.backends import Data, DDPMBackend
from attribution_pipeline.models.hardware import autocast
from attribution_pipeline.models.latents import autoencoder_geometry
from attribution_pipeline.storage.artifacts import atomic_folder, read_manifest

KIND = "sd_lora"
ADAPTER = "default"
WEIGHTS_FILE = "lora.safetensors"
CONFIG_FILE = "lora_config.json"


@functools.lru_cache(maxsize=2)
def _frozen_parts(path: str, device: str):
    """Tokenizer, text encoder and VAE (frozen, eval) and the scheduler configs of a local SD folder."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    root = Path(path)
    tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(str(root / "text_encoder"), local_files_only=True)
    vae = AutoencoderKL.from_pretrained(str(root / "vae"), local_files_only=True)
    for m in (text_encoder, vae):
        m.requires_grad_(False)
        m.eval().to(device)
    noise = DDPMScheduler.from_pretrained(str(root / "scheduler"), local_files_only=True)
    sampler_config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    return tokenizer, text_encoder, vae, noise, sampler_config


def lora_layers(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The peft LoRA layers of ``unet`` by module name."""
    return {n: m for n, m in unet.named_modules() if hasattr(m, "lora_A") and ADAPTER in getattr(m, "lora_A", {})}


def lora_parameter_count(unet: torch.nn.Module) -> int:
    return sum(m.lora_A[ADAPTER].weight.numel() + m.lora_B[ADAPTER].weight.numel() for m in lora_layers(unet).values())


@dataclass
class LoRAPruneReport:
    """What ``prune_lora_ranks`` did (``params_*`` count LoRA parameters only)."""

    ratio: float  # requested fraction of LoRA parameters removed
    params_before: int
    params_after: int
    ranks_before: dict[str, int] = field(default_factory=dict)
    ranks_after: dict[str, int] = field(default_factory=dict)
    importance: str = "magnitude"
    macs_before: int | None = None  # not counted for the adapter
    macs_after: int | None = None

    def to_metadata(self) -> dict:
        return {"ratio": self.ratio, "params_before": self.params_before, "params_after": self.params_after,
                "params_kept": self.params_after / max(1, self.params_before), "importance": self.importance,
                "rank_total_before": sum(self.ranks_before.values()), "rank_total_after": sum(self.ranks_after.values())}


def choose_kept_ranks(unet: torch.nn.Module, ratio: float) -> dict[str, list[int]]:
    """Per LoRA layer, the indices of the rank-one components kept (see the module docstring)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"prune.ratio (fraction of LoRA parameters removed) must be in [0, 1), got {ratio}")
    layers = lora_layers(unet)
    scores, costs, owners = [], [], []
    for name, m in layers.items():
        a, b = m.lora_A[ADAPTER].weight.detach().float(), m.lora_B[ADAPTER].weight.detach().float()
        s = float(m.scaling[ADAPTER])
        scores += (s * b.norm(dim=0) * a.norm(dim=1)).tolist()
        costs += [a.shape[1] + b.shape[0]] * a.shape[0]
        owners += [(name, i) for i in range(a.shape[0])]
    kept = {name: set(range(m.lora_A[ADAPTER].weight.shape[0])) for name, m in layers.items()}
    remaining, target = sum(costs), (1.0 - ratio) * sum(costs)
    for k in sorted(range(len(scores)), key=lambda k: (scores[k], k)):
        if remaining <= target:
            break
        name, i = owners[k]
        if len(kept[name]) > 1:  # a layer keeps at least one component
            kept[name].discard(i)
            remaining -= costs[k]
    return {name: sorted(idx) for name, idx in kept.items()}


def _lora_config(rank: int, alpha: float, targets, rank_pattern=None, alpha_pattern=None):
    from peft import LoraConfig

    return LoraConfig(r=int(rank), lora_alpha=float(alpha), target_modules=list(targets), init_lora_weights=True,
                      rank_pattern=dict(rank_pattern or {}), alpha_pattern=dict(alpha_pattern or {}))


class SDLoRABackend(DDPMBackend):
    """``family = "sd_lora"``: a local Stable Diffusion whose UNet trains a LoRA adapter only."""

    family = KIND

    def __init__(self, cfg: PipelineConfig):
        super().__init__(cfg)
        m = cfg.model
        if not m.pretrained_path:
            raise ValueError("model.family = 'sd_lora' needs model.pretrained_path (a local Stable Diffusion folder)")
        self.root = Path(m.pretrained_path)
        self.geometry = autoencoder_geometry(self.root / "vae", "kl", m.sample_size, m.latent_scaling)

    @property
    def parts(self):
        return _frozen_parts(str(self.root), str(self.device))

    # ---- data ---------------------------------------------------------------------------------
    def prepare_data(self, layout, contributors, log):
        from attribution_pipeline.models.latents import cache_latents

        return cache_latents(layout, contributors, str(self.root / "vae"), "kl", self.geometry, device=self.device,
                             batch_size=self.cfg.hardware.encode_batch_size, log=log)

    def training_data(self, layout, members):
        from attribution_pipeline.models.latents import load_latents

        m = self.cfg.model
        template = m.train_prompt or m.prompt
        x, labels = load_latents(layout, members)
        return Data(x, labels, tuple(template.format(contributor=c) for c in members))

    @torch.no_grad()
    def embed(self, prompts) -> torch.Tensor:
        """Text-encoder hidden states ``(P, L, D)`` of ``prompts`` (on the run device)."""
        tokenizer, text_encoder = self.parts[0], self.parts[1]
        ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        return text_encoder(ids.to(self.device))[0].float()

    # ---- models -------------------------------------------------------------------------------
    def _base_unet(self):
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.from_pretrained(str(self.root / "unet"), local_files_only=True)

    def _alpha(self) -> float:
        m = self.cfg.model
        return float(m.lora_alpha if m.lora_alpha is not None else m.lora_rank)

    def build(self, seed: int) -> torch.nn.Module:
        m = self.cfg.model
        unet = self._base_unet()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet.add_adapter(_lora_config(m.lora_rank, self._alpha(), m.lora_target_modules))
        return unet.eval()

    def _with_adapter(self, config, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        from peft import set_peft_model_state_dict

        unet = self._base_unet()
        unet.add_adapter(config)
        result = set_peft_model_state_dict(unet, state)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise ValueError(f"LoRA weights do not fit the adapter: unexpected keys {unexpected[:3]}")
        return unet.eval()

    def load(self, folder) -> torch.nn.Module:
        from safetensors.torch import load_file

        folder = Path(folder)
        manifest = read_manifest(folder)
        if manifest.get("kind") != KIND:
            raise ValueError(f"{folder} holds a {manifest.get('kind')!r} checkpoint, not a LoRA adapter ({KIND})")
        c = json.loads((folder / CONFIG_FILE).read_text())
        config = _lora_config(c["r"], c["lora_alpha"], c["target_modules"], c.get("rank_pattern"), c.get("alpha_pattern"))
        return self._with_adapter(config, load_file(str(folder / WEIGHTS_FILE)))

    def save(self, model, folder, metadata, *, pruned=False, report=None) -> dict:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        c = model.peft_config[ADAPTER]
        config = {"r": c.r, "lora_alpha": c.lora_alpha, "target_modules": sorted(c.target_modules),
                  "rank_pattern": dict(c.rank_pattern or {}), "alpha_pattern": dict(c.alpha_pattern or {})}
        state = {k: v.detach().float().contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
        meta = {"kind": KIND, "n_parameters": lora_parameter_count(model), "base_model": str(self.root),
                "pruning": report.to_metadata() if report is not None else None, **metadata}
        with atomic_folder(Path(folder), meta) as tmp:
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
            save_file(state, str(tmp / WEIGHTS_FILE))
        return read_manifest(folder)

    def n_parameters(self, model) -> int:
        return lora_parameter_count(model)

    def prune(self, model, data: Data, p: PruneConfig):
        """Drop the weakest LoRA rank-one components (see the module docstring); returns a new
        model (base + the smaller adapter) and a ``LoRAPruneReport``."""
        from peft import get_peft_model_state_dict

        kept = choose_kept_ranks(model, p.ratio)
        layers = lora_layers(model)
        state = get_peft_model_state_dict(model)
        new_state, rank_pattern, alpha_pattern, before, after = {}, {}, {}, {}, {}
        for name, idx in kept.items():
            layer = layers[name]
            before[name], after[name] = layer.lora_A[ADAPTER].weight.shape[0], len(idx)
            ids = torch.tensor(idx)
            new_state[f"{name}.lora_A.weight"] = state[f"{name}.lora_A.weight"][ids].clone()
            new_state[f"{name}.lora_B.weight"] = state[f"{name}.lora_B.weight"][:, ids].clone()
            key = re.escape(name)
            rank_pattern[key] = len(idx)
            alpha_pattern[key] = float(layer.scaling[ADAPTER]) * len(idx)  # same scale s = alpha / r
        c = model.peft_config[ADAPTER]
        params_before = lora_parameter_count(model)
        pruned = self._with_adapter(_lora_config(c.r, c.lora_alpha, c.target_modules, rank_pattern, alpha_pattern),
                                    new_state)
        report = LoRAPruneReport(p.ratio, params_before, lora_parameter_count(pruned), before, after)
        return pruned, report

    def loop_hooks(self, model, data: Data) -> dict:
        """The shared loop (``train.train_diffusion``) with each row's member caption as the text
        condition, the folder's noise schedule and prediction type, and the adapter as the only
        trained (and averaged) parameters, under AdamW's usual LoRA weight decay of 1e-2."""
        cond = self.embed(data.captions or (self.cfg.model.prompt,))  # (members, L, D)
        labels = data.labels  # (N,) member index of each training row

        def predict(unet, noisy, timesteps, rows):
            return unet(noisy, timesteps, encoder_hidden_states=cond[labels[rows].to(self.device)]).sample

        return {"predict": predict, "scheduler": self.parts[3], "weight_decay": 1e-2,
                "parameters": [q for q in model.parameters() if q.requires_grad]}

    @torch.no_grad()
    def generate(self, model, *, n_images, steps, seed, batch_size) -> torch.Tensor:
        """``n_images`` images of ``model.prompt``; image i starts from noise seeded by (seed, i)."""
        import diffusers

        from attribution_pipeline.models.latents import decode

        if n_images <= 0 or steps <= 0:
            raise ValueError(f"n_images and steps must be positive, got {n_images}, {steps}")
        m, g = self.cfg.model, self.geometry
        guided = m.guidance_scale > 1.0
        cond = self.embed([m.prompt] + ([""] if guided else []))
        text, uncond = cond[:1], cond[1:]
        noise = torch.randn((n_images, g.channels, g.size, g.size), generator=torch.Generator().manual_seed(seed))
        sampler_config = self.parts[4]
        sampler_cls = getattr(diffusers, sampler_config["_class_name"])
        model.to(self.device).eval()
        out = []
        for begin in range(0, n_images, batch_size):
            sampler = sampler_cls.from_config(sampler_config)
            sampler.set_timesteps(steps)
            step_kwargs = {}
            if "generator" in inspect.signature(sampler.step).parameters:  # stochastic samplers: seeded too
                step_kwargs["generator"] = torch.Generator().manual_seed(seed * 1_000_003 + begin)
            x = noise[begin:begin + batch_size].to(self.device) * sampler.init_noise_sigma
            b = len(x)
            emb = torch.cat([uncond.expand(b, -1, -1), text.expand(b, -1, -1)]) if guided else text.expand(b, -1, -1)
            for t in sampler.timesteps:
                inp = sampler.scale_model_input(torch.cat([x, x]) if guided else x, t)
                with autocast(self.device, self.precision):
                    eps = model(inp, t, encoder_hidden_states=emb).sample.float()
                if guided:
                    e_u, e_c = eps.chunk(2)
                    eps = e_u + m.guidance_scale * (e_c - e_u)
                x = sampler.step(eps, t, x, **step_kwargs).prev_sample
            out.append(x.float().cpu())
        images = decode(self.parts[2], torch.cat(out), g.scaling, self.cfg.hardware.encode_batch_size, self.device)
        if m.channels == 1:
            images = images.mean(dim=1, keepdim=True)
        return images
