"""Structural pruning of the UNet: shapes, GroupNorm/head invariants, training, persistence."""

import copy
import json
import math
import re

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.models.attention_processor import Attention

from attribution_pipeline.models import pruning
from attribution_pipeline.models.pruning import (
    load_pruned_unet,
    prune_unet,
    resync_diffusers_attributes,
    save_pruned_unet,
)

TINY = dict(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8, attention_head_dim=8)
# The paper's CIFAR DDPM layout (4 levels, 2 resnets per level, attention at 16x16), slimmed 4x in width.
CIFAR_SLIM = dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                  block_out_channels=(32, 64, 64, 64),
                  down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)
RATIO = 0.3


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return UNet2DModel(**TINY)


def calibration(n=8, seed=1):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def pruned():
    model = tiny_unet()
    report = prune_unet(model, RATIO)
    return model, report


def probe():
    g = torch.Generator().manual_seed(7)
    return torch.randn(3, 1, 8, 8, generator=g), torch.tensor([0, 250, 999])


def test_pruned_model_runs_and_shrinks_as_one_minus_ratio_squared(pruned):
    model, report = pruned
    x, t = probe()
    with torch.no_grad():
        out = model(x, t).sample
    assert out.shape == (3, 1, 8, 8) and torch.isfinite(out).all()
    assert report.params_before == sum(p.numel() for p in tiny_unet().parameters())
    assert report.params_after == sum(p.numel() for p in model.parameters())
    # Convs dominate: params scale with in*out channels, so about (1 - r)^2 = 0.49 of them stay.
    assert 0.40 < report.params_kept < 0.65
    assert 0.40 < report.macs_after / report.macs_before < 0.70
    # 32-channel layers keep 24 (3 of 4 per GroupNorm group), 64-channel layers keep 48.
    assert report.channels_after["conv_in"] == (1, 24)
    assert report.channels_after["mid_block.resnets.0.conv1"] == (48, 48)


def test_output_conv_keeps_its_output_channels(pruned):
    model, report = pruned
    assert model.conv_out.out_channels == 1 and model.conv_out.weight.shape[0] == 1
    assert report.channels_after["conv_out"][1] == report.channels_before["conv_out"][1] == 1


def test_groupnorms_stay_divisible_and_attention_keeps_whole_heads(pruned):
    model, report = pruned
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(n.num_channels % n.num_groups == 0 and n.weight.shape[0] == n.num_channels for n in norms)
    assert any(n.num_channels < 64 for n in norms if n.num_channels > 32)
    for name, attn in model.named_modules():
        if isinstance(attn, Attention):
            assert attn.heads == 6 == report.heads_after[name]  # round(0.7 * 8) heads of dim 8
            assert attn.inner_dim == attn.to_q.out_features == attn.to_v.out_features == attn.heads * 8
            assert attn.query_dim == attn.to_q.in_features == attn.group_norm.num_channels
    downs = [m for m in model.modules() if hasattr(m, "channels") and hasattr(m, "conv") and m.conv is not None]
    assert downs and all(m.channels == m.conv.in_channels for m in downs)
    before = {n: a.heads for n, a in model.named_modules() if isinstance(a, Attention)}
    resync_diffusers_attributes(model)  # idempotent: callers re-run it after loading
    assert before == {n: a.heads for n, a in model.named_modules() if isinstance(a, Attention)}


def test_magnitude_keeps_the_channel_with_the_largest_weights():
    model = tiny_unet()
    with torch.no_grad():
        model.conv_in.weight[5] *= 100.0
    big = model.conv_in.weight[5].detach().clone()
    prune_unet(model, 0.5)
    assert model.conv_in.out_channels == 16
    assert any(torch.equal(row, big) for row in model.conv_in.weight)


def test_one_training_step_on_the_ddpm_loss_is_finite_and_moves_weights(pruned):
    model = copy.deepcopy(pruned[0]).train()
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    g = torch.Generator().manual_seed(0)
    images = calibration()
    noise = torch.randn(images.shape, generator=g)
    t = torch.randint(0, 1000, (len(images),), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    w0 = model.conv_in.weight.detach().clone()
    loss = torch.nn.functional.mse_loss(model(scheduler.add_noise(images, noise, t), t).sample, noise)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and 0.1 < loss.item() < 10.0
    assert not torch.equal(w0, model.conv_in.weight)


def test_save_then_load_gives_bit_identical_outputs(pruned, tmp_path):
    model, report = pruned
    target = tmp_path / "pruned_base"
    manifest = save_pruned_unet(model, target, tiny_unet().config, report=report, extra_manifest={"seed": 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned_base"]  # no temporary sibling left
    assert manifest == json.loads((target / "manifest.json").read_text())
    assert manifest["kind"] == "pruned_unet" and manifest["seed"] == 0
    assert manifest["n_parameters"] == report.params_after and manifest["ratio"] == RATIO
    assert manifest["pruning"]["params_kept"] == pytest.approx(report.params_kept)
    assert set(manifest["versions"]) == {"torch", "diffusers", "torch-pruning"}
    assert set(manifest["files"]) == {"config.json", "model.safetensors"}
    assert json.loads((target / "config.json").read_text())["block_out_channels"] == [32, 64]  # unpruned config

    loaded = load_pruned_unet(target)
    x, t = probe()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x, t).sample, loaded(x, t).sample)
    assert {n: a.heads for n, a in loaded.named_modules() if isinstance(a, Attention)} == report.heads_after

    # Re-saving replaces the folder whole (base_config defaults to model.config, the unpruned one).
    again = save_pruned_unet(loaded, target, extra_manifest={"seed": 1})
    assert again["seed"] == 1 and again["files"] == manifest["files"]
    (target / "model.safetensors").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="sha256"):
        load_pruned_unet(target)


def test_interrupted_save_leaves_nothing_that_looks_complete(pruned, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(pruning, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_pruned_unet(pruned[0], tmp_path / "pruned_base", TINY)
    assert list(tmp_path.iterdir()) == []


def test_loading_a_directory_without_manifest_names_the_path(tmp_path):
    tiny_unet().save_pretrained(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "plain" / "manifest.json"))):
        load_pruned_unet(tmp_path / "plain")


def test_taylor_importance_keeps_different_channels_than_magnitude(pruned):
    magnitude = pruned[0]
    taylor = tiny_unet()
    report = prune_unet(taylor, RATIO, importance="taylor", calibration_images=calibration(), seed=3)
    assert report.importance == "taylor" and report.channels_after == pruned[1].channels_after
    assert all(p.grad is None for p in taylor.parameters())
    same = [torch.equal(a, b) for a, b in zip(magnitude.state_dict().values(), taylor.state_dict().values())]
    assert not all(same)
    again = tiny_unet()
    prune_unet(again, RATIO, importance="taylor", calibration_images=calibration(), seed=3)
    assert all(torch.equal(a, b) for a, b in zip(taylor.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5, math.nan, True])
def test_ratio_outside_the_open_unit_interval_is_rejected(ratio):
    with pytest.raises(ValueError, match="REMOVE"):
        prune_unet(tiny_unet(), ratio)


def test_bad_importance_arguments_are_rejected():
    with pytest.raises(ValueError, match="unknown"):
        prune_unet(tiny_unet(), RATIO, importance="random")
    with pytest.raises(ValueError, match="calibration_images"):
        prune_unet(tiny_unet(), RATIO, importance="taylor")
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        prune_unet(tiny_unet(), RATIO, importance="taylor", calibration_images=calibration() * 3)


def test_cifar_ddpm_layout_runs_after_pruning():
    torch.manual_seed(0)
    model = UNet2DModel(**CIFAR_SLIM)
    report = prune_unet(model, RATIO)
    assert 0.40 < report.params_kept < 0.65
    assert all(n.num_channels % n.num_groups == 0 for n in model.modules() if isinstance(n, torch.nn.GroupNorm))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32), torch.tensor([10])).sample
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()
