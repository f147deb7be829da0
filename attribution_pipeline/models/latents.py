"""Latents of a pretrained autoencoder: load it from a local folder, encode, decode, and cache.

The latent families ("ldm": a UNet2DModel on VQ/KL latents; "sd_lora": Stable Diffusion) train on
latents, never on pixels. The autoencoder is frozen, so each contributor's images are encoded once
and cached under ``<workdir>/latents/``:

    latents/<contributor>.npy   float32 (N, C_latent, h, w), already multiplied by the scaling factor
    latents/manifest.json       per contributor the signature (autoencoder content hash, images'
                                data hash, resolution, scaling) it was encoded with; and the
                                ``content_hash`` of the whole cache

A contributor whose signature is unchanged is never encoded again. Latents are the deterministic
encoding (VQ: the pre-quantisation latents, as the LDM UNet is trained on; KL: the posterior mean);
the autoencoders run in float32 (VQ code look-ups are distance arg-mins, fragile in bf16).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from attribution_pipeline.data.contributors import stack_member_arrays, to_model_range
from attribution_pipeline.layout import RunLayout, signature
from attribution_pipeline.storage.artifacts import atomic_write_json, hash_folder

MANIFEST_FILE = "manifest.json"


def latents_dir(layout: RunLayout) -> Path:
    return layout.workdir / "latents"


def _classes():
    from diffusers import AutoencoderKL, VQModel

    return {"vq": VQModel, "kl": AutoencoderKL}


@dataclass(frozen=True)
class LatentGeometry:
    """What an autoencoder does to an image of ``image_size`` pixels per side."""

    channels: int  # latent channels
    size: int  # latent pixels per side
    scaling: float  # latents are encode(x) * scaling (unit variance for the UNet)


def autoencoder_geometry(path: str | Path, kind: str, image_size: int, scaling: float | None = None) -> LatentGeometry:
    """Read from the autoencoder's ``config.json`` only (no weights loaded)."""
    config = _classes()[kind].load_config(str(path), local_files_only=True)
    factor = 2 ** (len(config["block_out_channels"]) - 1)
    if image_size % factor:
        raise ValueError(f"model.sample_size = {image_size} is not a multiple of the autoencoder's downsampling "
                         f"factor {factor} ({path})")
    scale = float(scaling if scaling is not None else config.get("scaling_factor", 1.0))
    return LatentGeometry(int(config["latent_channels"]), image_size // factor, scale)


@functools.lru_cache(maxsize=4)
def load_autoencoder(path: str, kind: str, device: str = "cpu") -> torch.nn.Module:
    """The frozen autoencoder (``from_pretrained`` on a local folder), in eval mode, on ``device``."""
    model = _classes()[kind].from_pretrained(path, local_files_only=True)
    model.requires_grad_(False)
    return model.eval().to(device)


_HASHES: dict[tuple, str] = {}


def folder_hash(path: str | Path) -> str:
    """Content hash of every file under ``path`` (memoised per file sizes and modification times)."""
    path = Path(path)
    stamp = tuple(sorted((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in path.rglob("*") if f.is_file()))
    key = (str(path.resolve()), stamp)
    if key not in _HASHES:
        _HASHES[key] = hash_folder(path)[0][:16]
    return _HASHES[key]


@torch.no_grad()
def encode(vae: torch.nn.Module, kind: str, images: torch.Tensor, scaling: float, batch_size: int = 32,
           device: str | torch.device = "cpu") -> torch.Tensor:
    """Images float ``(N, 3, H, W)`` in [-1, 1] → latents float32 ``(N, C, h, w)`` on the CPU."""
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device, torch.float32)
        z = vae.encode(x).latents if kind == "vq" else vae.encode(x).latent_dist.mode()
        out.append((z * scaling).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def decode(vae: torch.nn.Module, latents: torch.Tensor, scaling: float, batch_size: int = 32,
           device: str | torch.device = "cpu") -> torch.Tensor:
    """Latents ``(N, C, h, w)`` (scaled) → images float32 ``(N, 3, H, W)`` clamped to [-1, 1], CPU.
    A VQ decoder quantises to its codebook first (diffusers' default)."""
    out = []
    for i in range(0, len(latents), batch_size):
        z = latents[i:i + batch_size].to(device, torch.float32) / scaling
        out.append(vae.decode(z).sample.clamp(-1.0, 1.0).float().cpu())
    return torch.cat(out)


def cache_latents(layout: RunLayout, contributors: Sequence[dict], autoencoder_path: str, kind: str,
                  geometry: LatentGeometry, *, device: str | torch.device = "cpu", batch_size: int = 32,
                  log: Callable[[str], None] = lambda _: None) -> str:
    """Encode every contributor of the data manifest (``contributors``: its rows, with
    ``contributor``, ``data_hash`` and ``resolution``) whose latents are missing or stale; return
    the cache's content hash (changes whenever any contributor's latents would)."""
    folder = latents_dir(layout)
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / MANIFEST_FILE
    old = {}
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text()).get("contributors", {})
    ae_hash = folder_hash(autoencoder_path)
    entries = {}
    for row in contributors:
        cid = row["contributor"]
        sig = signature("latents", ae_hash, kind, row["data_hash"], row["resolution"], geometry.scaling)
        target = folder / f"{cid}.npy"
        if old.get(cid) != sig or not target.is_file():
            vae = load_autoencoder(str(autoencoder_path), kind, str(device))
            pixels = to_model_range(np.load(layout.contributor_array(cid)))
            if pixels.shape[1] != 3:
                pixels = pixels.expand(-1, 3, -1, -1)  # grayscale contributors through an RGB autoencoder
            z = encode(vae, kind, pixels, geometry.scaling, batch_size, device).numpy()
            tmp = target.with_suffix(".tmp.npy")
            np.save(tmp, z.astype(np.float32))
            tmp.replace(target)
            log(f"encoded {len(z)} images of contributor {cid} to latents {tuple(z.shape[1:])}")
        entries[cid] = sig
    content = signature(sorted(entries.items()))
    atomic_write_json(manifest_path, {"autoencoder_path": str(autoencoder_path), "autoencoder_hash": ae_hash,
                                      "kind": kind, "scaling": geometry.scaling, "contributors": entries,
                                      "content_hash": content})
    return content


def load_latents(layout: RunLayout, members: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached latents of ``members`` ``(N, C, h, w)`` and their member index labels ``(N,)``."""
    latents, labels = stack_member_arrays((latents_dir(layout) / f"{m}.npy" for m in members),
                                          " (it caches the latents of the latent model families)")
    return torch.from_numpy(latents), torch.from_numpy(labels)
