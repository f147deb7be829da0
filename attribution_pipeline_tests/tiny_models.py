"""Tiny stand-ins for the paper's models and data, written to folders the way a user's downloads are.

Every model is built from a config and saved with ``save_pretrained`` (diffusers/transformers
format) or ``torch.jit.save``, so the tests exercise the real loading paths: ``from_pretrained`` on
a local folder, clean-fid's Inception wrapper on a local TorchScript file. Fixtures are session
scoped: each folder is written once per test session. Sizes are chosen to run in seconds on one
CPU core, not to be good models.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

TINY_TOKENS = list("abcdefghijklmnopqrstuvwxyz-")


# ---- images ----------------------------------------------------------------------------------------
def colour_images(n: int, size: int, rgb: tuple[int, int, int], seed: int) -> np.ndarray:
    """``n`` uint8 ``(size, size, 3)`` images: a flat colour plus seeded noise and a bright square."""
    rng = np.random.default_rng(seed)
    base = np.array(rgb, dtype=np.float64)[None, None, None, :]
    imgs = base + rng.normal(0, 12, size=(n, size, size, 3))
    for i in range(n):
        y, x = rng.integers(0, size // 2, size=2)
        imgs[i, y:y + size // 3, x:x + size // 3] += 60
    return np.clip(imgs, 0, 255).astype(np.uint8)


PALETTE = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200), (200, 40, 200)]


def write_image_folder(folder: Path, names_and_images) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, img in names_and_images:
        Image.fromarray(img).save(folder / name)
    return folder


def write_fake_cifar100(root: Path, fine_names: list[str], per_class: int = 4, seed: int = 0) -> Path:
    """A ``cifar-100-python`` folder in the archive's format: python-2 style pickles (protocol 2,
    bytes keys) ``train`` {data (N, 3072) uint8, fine_labels, coarse_labels, filenames} and
    ``meta`` {fine_label_names, coarse_label_names}, for the classes ``fine_names`` (in order)."""
    root.mkdir(parents=True, exist_ok=True)
    rows, labels = [], []
    for k, _ in enumerate(fine_names):
        imgs = colour_images(per_class, 32, PALETTE[k % len(PALETTE)], seed + k)
        rows.append(imgs.transpose(0, 3, 1, 2).reshape(per_class, -1))
        labels += [k] * per_class
    data = {b"data": np.concatenate(rows), b"fine_labels": labels, b"coarse_labels": [0] * len(labels),
            b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))], b"batch_label": b"training batch"}
    meta = {b"fine_label_names": [n.encode() for n in fine_names], b"coarse_label_names": [b"all"]}
    with (root / "train").open("wb") as fh:
        pickle.dump(data, fh, protocol=2)
    with (root / "meta").open("wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    return root


# ---- autoencoders and UNets -------------------------------------------------------------------------
def write_tiny_autoencoder(folder: Path, kind: str) -> Path:
    """A 2-level (downsampling x2) VQModel or AutoencoderKL, random weights, diffusers format."""
    from diffusers import AutoencoderKL, VQModel

    torch.manual_seed(0)
    common = dict(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  norm_num_groups=4, sample_size=16)
    if kind == "vq":
        model = VQModel(latent_channels=3, num_vq_embeddings=32, vq_embed_dim=3, scaling_factor=0.5, **common)
    else:
        model = AutoencoderKL(latent_channels=4, scaling_factor=0.5, **common)
    model.save_pretrained(folder)
    return folder


def write_tiny_sd(folder: Path) -> Path:
    """A tiny Stable Diffusion folder: unet/ (UNet2DConditionModel), vae/ (AutoencoderKL),
    text_encoder/ (CLIPTextModel), tokenizer/ (a character-level CLIP tokenizer written here),
    scheduler/ (PNDM, as SD 1.x ships)."""
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                         block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                         attention_head_dim=4, norm_num_groups=8).save_pretrained(folder / "unet")
    write_tiny_autoencoder(folder / "vae", "kl")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in TINY_TOKENS:
            vocab[c + suffix] = len(vocab)
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=12).save_pretrained(folder / "tokenizer")
    text = CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=12, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1)
    CLIPTextModel(text).save_pretrained(folder / "text_encoder")
    PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
                  steps_offset=1).save_pretrained(folder / "scheduler")
    return folder


# ---- property instruments ---------------------------------------------------------------------------
def write_tiny_clip(folder: Path, projection_dim: int = 8, image_size: int = 16) -> Path:
    """A ``CLIPVisionModelWithProjection`` (random) and its ``CLIPImageProcessor`` (resize to 16)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=image_size, patch_size=8, projection_dim=projection_dim)
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
                       ).save_pretrained(folder)
    return folder


def write_aesthetic_head(path: Path, weight: torch.Tensor, bias: float) -> Path:
    """A LAION-format linear head: ``torch.save({"weight": (1, D), "bias": (1,)})``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": weight.reshape(1, -1).float(), "bias": torch.tensor([float(bias)])}, path)
    return path


class _StandInLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = torch.nn.AdaptiveAvgPool2d(4)
        self.proj = torch.nn.Linear(48, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x).flatten(1)).view(x.shape[0], 2048, 1, 1)


class StandInInception(torch.nn.Module):
    """clean-fid's Inception interface (``layers`` → 2048 pool features of normalised 299x299 input;
    ``forward(x, return_features, use_fp16, no_output_bias)`` on 0..255 pixels → class
    probabilities) on a network that is cheap and has known answers: the class of an image is
    the bin of its mean brightness among ``n_classes`` equal bins, near one-hot."""

    def __init__(self, n_classes: int = 8):
        super().__init__()
        self.layers = _StandInLayers()
        self.n_classes = n_classes

    def forward(self, x: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        if return_features:
            return self.layers((x - 128.0) / 128.0).view(x.shape[0], 2048)
        brightness = x.mean(dim=(1, 2, 3)) / 255.0
        centres = (torch.arange(self.n_classes, dtype=x.dtype) + 0.5) / self.n_classes
        return torch.softmax(-2000.0 * (brightness[:, None] - centres[None, :]) ** 2, dim=1)


def write_stand_in_inception(path: Path, n_classes: int = 8) -> Path:
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(StandInInception(n_classes)).save(str(path))
    return path


# ---- session fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def model_zoo(tmp_path_factory) -> dict[str, Path]:
    """Every tiny local model folder the tests read, written once per session."""
    root = tmp_path_factory.mktemp("zoo")
    torch.set_num_threads(1)
    return {
        "vq": write_tiny_autoencoder(root / "vq", "vq"),
        "kl": write_tiny_autoencoder(root / "kl", "kl"),
        "sd": write_tiny_sd(root / "sd"),
        "clip": write_tiny_clip(root / "clip"),
        "inception": write_stand_in_inception(root / "inception" / "inception-2015-12-05.pt"),
        "aesthetic_head": write_aesthetic_head(root / "aesthetic" / "head.pth", torch.ones(8) / 8 ** 0.5, 5.0),
    }
