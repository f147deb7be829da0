"""Model families on tiny local models: LDM on VQ/KL latents, Stable Diffusion + LoRA."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from attribution_pipeline.config import PipelineConfig, PruneConfig
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.models.backends import Data
from attribution_pipeline.models.registry import get_backend
from attribution_pipeline.models.latents import latents_dir
from attribution_pipeline.models.sd_lora import ADAPTER, choose_kept_ranks, lora_layers
from attribution_pipeline.stages import prepare_contributors
from attribution_pipeline_tests.tiny_models import (
    PALETTE,
    colour_images,
    write_image_folder,
)


def rgb_contributors(root, n=3, per=4, size=16):
    for k in range(n):
        write_image_folder(root / f"c{k}", [(f"{i}.png", im) for i, im in enumerate(colour_images(per, size, PALETTE[k], k))])
    return root


def ldm_config(tmp_path, zoo, kind="vq"):
    return PipelineConfig().override({
        "contributors_dir": str(rgb_contributors(tmp_path / "contributors")), "workdir": str(tmp_path / "work"),
        "model": {"family": "ldm", "autoencoder_path": str(zoo[kind]), "autoencoder_kind": kind, "sample_size": 16,
                  "channels": 3, "block_out_channels": [16, 32]}})


def sd_config(zoo, **model):
    return PipelineConfig().override({"model": {"family": "sd_lora", "pretrained_path": str(zoo["sd"]), "sample_size": 16,
                                                "channels": 3, "lora_rank": 4, "guidance_scale": 1.0, **model}})


# ---- ldm ------------------------------------------------------------------------------------------
def test_latents_are_cached_once_and_re_encoded_when_the_autoencoder_changes(tmp_path, model_zoo):
    cfg = ldm_config(tmp_path, model_zoo)
    layout = RunLayout.at(cfg.workdir)
    first = prepare_contributors(cfg, layout)
    z = np.load(latents_dir(layout) / "c0.npy")
    assert z.shape == (4, 3, 8, 8) and z.dtype == np.float32  # VQ-f2 of 16 px images: 3 x 8 x 8
    stamps = {p.name: p.stat().st_mtime_ns for p in latents_dir(layout).glob("*.npy")}
    again = prepare_contributors(cfg, layout)
    assert again["content_hash"] == first["content_hash"]
    assert stamps == {p.name: p.stat().st_mtime_ns for p in latents_dir(layout).glob("*.npy")}  # reused
    # the same folder holding other weights is another autoencoder: new latents, new data version
    from diffusers import VQModel

    other = shutil.copytree(model_zoo["vq"], tmp_path / "vq2")
    model = VQModel.from_pretrained(other)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    model.save_pretrained(other)
    moved = prepare_contributors(cfg.override({"model": {"autoencoder_path": str(other)}}), layout)
    assert moved["content_hash"] != first["content_hash"]
    assert not np.allclose(np.load(latents_dir(layout) / "c0.npy"), z)


@pytest.mark.parametrize("kind", ["vq", "kl"])
def test_ldm_backend_trains_prunes_and_generates_pixels(kind, tmp_path, model_zoo):
    cfg = ldm_config(tmp_path, model_zoo, kind)
    layout = RunLayout.at(cfg.workdir)
    prepare_contributors(cfg, layout)
    backend = get_backend(cfg)
    channels = 3 if kind == "vq" else 4
    assert (backend.unet_cfg.channels, backend.unet_cfg.sample_size) == (channels, 8)
    data = backend.training_data(layout, ["c0", "c2"])
    assert data.x.shape == (8, channels, 8, 8) and data.labels.tolist() == [0] * 4 + [1] * 4
    result = backend.train(backend.build(seed=0), data, steps=40, batch_size=8, lr=3e-3, seed=0)
    assert result.final_loss < 0.8 * result.first_loss
    model, report = backend.prune(result.model, data, PruneConfig(ratio=0.5))
    assert report.params_after < 0.5 * report.params_before
    images = backend.generate(model, n_images=3, steps=3, seed=7, batch_size=2)
    assert images.shape == (3, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert torch.allclose(images, backend.generate(model, n_images=3, steps=3, seed=7, batch_size=3), atol=1e-4)
    assert not torch.allclose(images, backend.generate(model, n_images=3, steps=3, seed=8, batch_size=3), atol=1e-2)


# ---- sd_lora --------------------------------------------------------------------------------------
def _probe(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, t, e = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700]), torch.randn(2, 12, 16, generator=g)
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=e).sample


def test_a_fresh_adapter_is_the_base_model_and_only_it_trains(model_zoo):
    backend = get_backend(sd_config(model_zoo))
    model = backend.build(seed=3)
    assert torch.equal(_probe(model), _probe(backend._base_unet()))  # v(∅) = the base model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert len(lora_layers(model)) == 32  # q, k, v, out of the 8 attention layers of the tiny UNet


def test_lora_training_moves_only_the_adapter_and_the_checkpoint_round_trips(model_zoo, tmp_path):
    backend = get_backend(sd_config(model_zoo, train_prompt="a painting by {contributor}"))
    model = backend.build(seed=0)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    target = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)).repeat(6, 1, 1, 1)
    data = Data(target, torch.tensor([0, 0, 0, 1, 1, 1]), ("a painting by ann", "a painting by bob"))
    result = backend.train(model, data, steps=60, batch_size=6, lr=2e-2, seed=0, ema="none")
    assert result.final_loss < result.first_loss
    assert all(torch.equal(p, base[n]) for n, p in result.model.named_parameters() if n in base)
    manifest = backend.save(result.model, tmp_path / "ckpt", {"note": "test"})
    assert manifest["kind"] == "sd_lora" and manifest["n_parameters"] == backend.n_parameters(result.model) == 4992
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["lora.safetensors", "lora_config.json",
                                                                   "manifest.json"]
    assert torch.allclose(_probe(backend.load(tmp_path / "ckpt")), _probe(result.model), atol=1e-6)


def test_lora_loop_hooks_condition_each_row_on_its_members_caption(model_zoo):
    """sd_lora trains through the shared loop; its hooks alone make it text-conditioned LoRA training."""
    backend = get_backend(sd_config(model_zoo))
    model = backend.build(seed=0)
    data = Data(torch.zeros(4, 4, 8, 8), torch.tensor([0, 1, 1, 0]), ("a painting by ann", "a photo of bob"))
    hooks = backend.loop_hooks(model, data)
    assert {id(p) for p in hooks["parameters"]} == {id(p) for n, p in model.named_parameters() if "lora_" in n}
    assert hooks["scheduler"].config.beta_schedule == "scaled_linear"  # the folder's, not ModelConfig's
    g = torch.Generator().manual_seed(0)
    x, t, rows = torch.randn(3, 4, 8, 8, generator=g), torch.tensor([5, 300, 900]), torch.tensor([1, 3, 2])
    with torch.no_grad():
        got = hooks["predict"](model, x, t, rows)
        want = model(x, t, encoder_hidden_states=backend.embed(["a photo of bob", "a painting by ann",
                                                                "a photo of bob"])).sample
        other = model(x, t, encoder_hidden_states=backend.embed(["a painting by ann"] * 3)).sample
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, other)  # the caption reaches the UNet


def test_rank_pruning_keeps_the_largest_terms_and_what_they_compute(model_zoo):
    backend = get_backend(sd_config(model_zoo))
    model = backend.build(seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter: B no longer zero, terms of unequal size
        for layer in lora_layers(model).values():
            b = layer.lora_B[ADAPTER].weight
            b.copy_(torch.randn(b.shape, generator=g) * torch.rand(1, b.shape[1], generator=g))
    full_out = _probe(model)
    same, report0 = backend.prune(model, None, PruneConfig(ratio=0.0))
    assert report0.params_after == report0.params_before and torch.allclose(_probe(same), full_out, atol=1e-6)

    kept = choose_kept_ranks(model, 0.5)
    pruned, report = backend.prune(model, None, PruneConfig(ratio=0.5))
    assert report.params_after <= 0.5 * report.params_before + 2 * 32  # at most one component over the budget
    assert report.params_after > 0.4 * report.params_before
    old, new = lora_layers(model), lora_layers(pruned)
    scores_kept, scores_dropped = [], []
    for name, idx in kept.items():
        a, b, s = old[name].lora_A[ADAPTER].weight, old[name].lora_B[ADAPTER].weight, old[name].scaling[ADAPTER]
        a2, b2, s2 = new[name].lora_A[ADAPTER].weight, new[name].lora_B[ADAPTER].weight, new[name].scaling[ADAPTER]
        assert a2.shape[0] == len(idx) >= 1
        # the pruned layer's update is exactly the sum of its kept rank-one terms
        torch.testing.assert_close(s2 * b2 @ a2, s * b[:, idx] @ a[idx], rtol=1e-5, atol=1e-6)
        score = (s * b.norm(dim=0) * a.norm(dim=1)).tolist()
        scores_kept += [score[i] for i in idx] if len(idx) > 1 else []
        scores_dropped += [score[i] for i in range(len(score)) if i not in idx]
    assert min(scores_kept) >= max(scores_dropped)  # magnitude order, globally
    assert not torch.allclose(_probe(pruned), full_out)


def test_sd_generation_is_seeded_per_image_and_guided(model_zoo):
    backend = get_backend(sd_config(model_zoo, prompt="a painting"))
    model = backend.build(seed=0)
    images = backend.generate(model, n_images=3, steps=3, seed=1, batch_size=2)
    assert images.shape == (3, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert torch.allclose(images, backend.generate(model, n_images=3, steps=3, seed=1, batch_size=3), atol=1e-5)
    guided = get_backend(sd_config(model_zoo, prompt="a painting", guidance_scale=5.0))
    assert not torch.allclose(images, guided.generate(guided.build(seed=0), n_images=3, steps=3, seed=1, batch_size=3))
