"""Structural channel pruning of a diffusers ``UNet2DModel`` (step 2 of sparsified fine-tuning).

torch-pruning's dependency graph finds the coupled channel groups (a residual stream shares its
channels with every conv, norm and skip concat that touches it); we score each group with a
torch-pruning importance and remove the same fraction from every group, one shot:

- ``ratio`` is the fraction of channels REMOVED (0.3 keeps ~70% of each layer's channels).
- The output conv's output channels (the predicted noise) are never pruned.
- A group that feeds GroupNorms is split into ``num_groups`` equal chunks (lcm if several) and
  every chunk keeps the same number of channels, so counts stay divisible and each kept channel
  stays normalised with its original peers.
- Attention keeps whole heads: heads are removed, the per-head dim is never shrunk, because
  diffusers' SDPA processor scales scores by 1/sqrt(actual head dim) and a narrower head would
  silently change the softmax temperature.
- Kept counts (per GroupNorm chunk, per attention layer's heads) are rounded to the nearest
  integer. torch-pruning's own pruner floors them, which cuts a 32-channel layer with 8 groups
  by 50% at ratio 0.3; rounding reproduces the paper's CIFAR UNet: 35.75M -> 19.84M params
  at ratio 0.3 (paper: 19.85M).

A pruned model no longer matches its config, so it is persisted as the ORIGINAL config plus a
safetensors state dict (whose shapes carry the pruned structure) plus ``manifest.json``, never as
a pickled module; ``load_pruned_unet`` rebuilds the base model, shrinks it to the stored shapes
and loads the weights.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch_pruning as tp
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from safetensors.torch import load_file, save_file
from torch import nn

from attribution_pipeline.storage.artifacts import (
    MANIFEST,
    ArtifactMissingError,
    atomic_folder,
    read_manifest,
    sha256_file,
)

PRUNED_UNET_KIND = "pruned_unet"  # manifest "kind"; models.unet.load_unet dispatches on it
PRUNED_UNET_FORMAT = "attribution_pipeline.pruned_unet/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
IMPORTANCES = ("magnitude", "taylor")


@dataclass(frozen=True)
class PruneReport:
    """What one ``prune_unet`` call did. MACs are per image at ``example_inputs``' size, as
    counted by torch-pruning (conv/linear/norm layers; attention's functional matmuls excluded)."""

    ratio: float  # requested fraction of channels removed per coupled group
    importance: str  # "magnitude" or "taylor"
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    channels_before: dict[str, tuple[int, int]]  # Conv2d/Linear name -> (in, out)
    channels_after: dict[str, tuple[int, int]]
    heads_before: dict[str, int]  # Attention name -> number of heads
    heads_after: dict[str, int]

    @property
    def params_kept(self) -> float:
        """Fraction of parameters kept (about (1 - ratio)**2 for conv-dominated UNets)."""
        return self.params_after / self.params_before

    def to_metadata(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists) for manifests and asset metadata."""
        return json.loads(json.dumps(asdict(self) | {"params_kept": self.params_kept}))


def _prune_inputs(model: UNet2DModel, importance: str, example_inputs, calibration_images: torch.Tensor | None,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``prune_unet``'s importance and calibration arguments; the (sample, timestep) pair that
    traces the graph (see ``prune_unet`` for the defaults)."""
    if importance not in IMPORTANCES:
        raise ValueError(f"importance={importance!r} is unknown; use one of {IMPORTANCES}.")
    if importance == "taylor":
        if calibration_images is None:
            raise ValueError("importance='taylor' needs calibration_images (float (N,C,H,W) in [-1,1]).")
        _check_calibration_images(model, calibration_images)
    if example_inputs is None:
        param = next(model.parameters())
        return _default_example_inputs(model, seed, param.device, param.dtype)
    if isinstance(example_inputs, Mapping):
        return example_inputs["sample"], example_inputs["timestep"]
    return example_inputs


def prune_unet(
    model: UNet2DModel,
    ratio: float = 0.3,
    importance: str = "magnitude",
    example_inputs: tuple[torch.Tensor, torch.Tensor] | Mapping[str, torch.Tensor] | None = None,
    calibration_images: torch.Tensor | None = None,
    seed: int = 0,
    *,
    noise_scheduler: DDPMScheduler | None = None,
    calibration_batch_size: int = 64,
) -> PruneReport:
    """Prune ``model`` IN PLACE, one shot, removing a fraction ``ratio`` of the channels of every
    coupled channel group (and of the heads of every attention layer), and return a report.

    ratio: fraction REMOVED, 0 < ratio < 1 (0.3 keeps about 70% of channels, ~49% of params).
    importance: "magnitude" (group L2 norm of the weights) or "taylor" (first-order Taylor
        |w * dL/dw|, Diff-Pruning style) which needs ``calibration_images``.
    example_inputs: (sample, timestep) or {"sample", "timestep"} used to trace the graph and count
        MACs; default one seeded noise image at the config's sample_size and timestep 1.
    calibration_images: float (N, C, H, W) in [-1, 1], for "taylor": gradients of the DDPM
        noise-prediction MSE at seeded random timesteps/noise (``noise_scheduler``, default
        ``DDPMScheduler(num_train_timesteps=1000)``; pass the training schedule when it differs).
    Gradients are cleared afterwards; the training/eval mode is restored.
    """
    _check_ratio(ratio)
    example_inputs = _prune_inputs(model, importance, example_inputs, calibration_images, seed)
    was_training = model.training
    model.eval()
    try:
        macs_before, params_before = tp.utils.count_ops_and_params(model, example_inputs)
        channels_before, heads_before = _layer_channels(model), _head_counts(model)
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
        if importance == "taylor":
            scheduler = noise_scheduler or DDPMScheduler(num_train_timesteps=1000)
            _accumulate_taylor_gradients(model, calibration_images, scheduler, seed, calibration_batch_size)
            scorer = tp.importance.TaylorImportance()
        else:
            scorer = tp.importance.MagnitudeImportance(p=2)
        for root, handler, remove in _pruning_plan(model, graph, scorer, ratio):
            pruning_group = graph.get_pruning_group(root, handler, remove)
            if not graph.check_pruning_group(pruning_group):
                raise RuntimeError(f"torch-pruning refused to prune {len(remove)} channels of {root}.")
            pruning_group.prune()
        resync_diffusers_attributes(model)
        macs_after, params_after = tp.utils.count_ops_and_params(model, example_inputs)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return PruneReport(
        ratio=ratio, importance=importance,
        params_before=int(params_before), params_after=int(params_after),
        macs_before=int(macs_before), macs_after=int(macs_after),
        channels_before=channels_before, channels_after=_layer_channels(model),
        heads_before=heads_before, heads_after=_head_counts(model),
    )


def resync_diffusers_attributes(model: nn.Module) -> nn.Module:
    """Make every size attribute agree with the weight shapes after pruning or shape-changing load.

    torch-pruning updates torch layers (Conv2d.out_channels, GroupNorm.num_channels, ...), but not
    the bookkeeping of diffusers blocks: Downsample2D/Upsample2D assert ``channels`` on every
    forward, and Attention reshapes by ``heads`` (a stale value still "works" with a wrong head
    split). Assumes whole heads were pruned (head dim = inner_dim // heads before the call), which
    makes this idempotent. Returns ``model``.
    """
    _sync_torch_layer_sizes(model)
    for module in model.modules():
        if isinstance(module, Attention):
            head_dim = module.inner_dim // module.heads
            inner = module.to_q.out_features
            if inner % head_dim:
                raise ValueError(f"Attention with to_q of {inner} outputs is not whole heads of {head_dim}.")
            module.heads = module.sliceable_head_dim = inner // head_dim
            module.inner_dim = inner
            module.query_dim = module.to_q.in_features
            if module.to_k is not None:
                module.inner_kv_dim = module.to_k.out_features
                module.cross_attention_dim = module.to_k.in_features
            if module.to_out is not None:
                module.out_dim = module.to_out[0].out_features
            module.out_context_dim = (module.to_add_out.out_features
                                      if getattr(module, "to_add_out", None) is not None else module.query_dim)
        elif isinstance(module, ResnetBlock2D):
            module.in_channels = module.conv1.in_channels
            module.out_channels = module.conv2.out_channels
        elif isinstance(module, (Downsample2D, Upsample2D)):
            conv = getattr(module, "conv", None) or getattr(module, "Conv2d_0", None)
            if isinstance(conv, nn.modules.conv._ConvNd):  # UNet2DModel's resamplers all have a conv
                module.channels = conv.in_channels  # also right for ConvTranspose2d
                module.out_channels = conv.out_channels
    return model


def save_pruned_unet(
    model: UNet2DModel,
    directory: str | os.PathLike,
    base_config: Mapping[str, Any] | None = None,
    *,
    report: PruneReport | None = None,
    extra_manifest: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Save a pruned model as ``config.json`` (the UNPRUNED config it was built from; default
    ``model.config``, which pruning leaves untouched) + ``model.safetensors`` (whose shapes carry
    the pruned structure) + ``manifest.json`` (kind "pruned_unet", file sha256s, params, ratio,
    torch/diffusers/torch-pruning versions, ``extra_manifest``). Written into a temporary sibling
    and renamed into place (replacing an existing one only once complete). Returns the manifest."""
    # private diffusers keys (``_name_or_path`` is a Path after from_pretrained) do not rebuild the model
    config = {k: (list(v) if isinstance(v, tuple) else v)
              for k, v in dict(base_config or model.config).items() if not k.startswith("_")}
    metadata = {
        "kind": PRUNED_UNET_KIND,
        "format": PRUNED_UNET_FORMAT,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "ratio": report.ratio if report else None,
        "importance": report.importance if report else None,
        "pruning": report.to_metadata() if report else None,
        "versions": {pkg: importlib.metadata.version(pkg) for pkg in ("torch", "diffusers", "torch-pruning")},
        **dict(extra_manifest or {}),
    }
    with atomic_folder(Path(directory), metadata) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS_FILE))
    return read_manifest(Path(directory))


def load_pruned_unet(directory: str | os.PathLike) -> UNet2DModel:
    """Rebuild a model written by ``save_pruned_unet``, on CPU, in eval mode. Raises
    ``FileNotFoundError`` naming the path when the manifest is missing (incomplete or foreign
    folder) and ``ValueError`` when a file no longer matches its sha256."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactMissingError(
            f"{manifest_path} is missing: {directory} is not a complete pruned UNet (an interrupted save, "
            "or a plain diffusers checkpoint for UNet2DModel.from_pretrained). Re-run the pruning step.")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("kind") != PRUNED_UNET_KIND:
        raise ValueError(f"{manifest_path} has kind {manifest.get('kind')!r}, not {PRUNED_UNET_KIND!r}; "
                         "load it with the loader of that kind.")
    for name, digest in manifest["files"].items():
        if sha256_file(directory / name) != digest:
            raise ValueError(f"{directory / name} does not match its sha256 in {manifest_path}; "
                             "the folder was modified: re-run the step that wrote it.")
    state = load_file(str(directory / WEIGHTS_FILE))
    model = UNet2DModel.from_config(json.loads((directory / CONFIG_FILE).read_text()))
    for name, tensor in state.items():  # shrink every parameter/buffer to its stored (pruned) shape
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        current = getattr(owner, attr)
        if current.shape != tensor.shape:
            empty = torch.empty(tensor.shape, dtype=tensor.dtype)
            if isinstance(current, nn.Parameter):
                setattr(owner, attr, nn.Parameter(empty, requires_grad=current.requires_grad))
            else:
                owner.register_buffer(attr, empty)
    resync_diffusers_attributes(model)
    model.load_state_dict(state, strict=True)
    return model.eval()


# ---------------------------------------------------------------- helpers


def _check_ratio(ratio: float) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio={ratio!r} must be a fraction of channels to REMOVE, strictly between 0 and 1.")


def _pruning_plan(model, graph, scorer, ratio: float) -> list[tuple[nn.Module, Any, list[int]]]:
    """(root layer, torch-pruning handler, channel indices to remove) for every coupled group.

    Every group is scored on the intact model before anything is pruned; that is safe because
    groups own disjoint channels and torch-pruning recomputes concat offsets whenever a pruning
    group is built."""
    to_q_owner = {attn.to_q: attn for attn in model.modules() if isinstance(attn, Attention)}
    plans = []
    for group in graph.get_all_groups(ignored_layers=[model.conv_out]):
        attn = next((to_q_owner[d.target.module] for d, _ in group
                     if d.target.module in to_q_owner and graph.is_out_channel_pruning_fn(d.handler)), None)
        if attn is not None:  # the q/k/v inner dims; rooted downstream as torch-pruning does
            root, handler = attn.to_out[0], tp.prune_linear_in_channels
            group = graph.get_pruning_group(root, handler, list(range(root.in_features)))
        else:
            root, handler = group[0].dep.target.module, group[0].dep.handler
        scores = scorer(group)
        if scores is None:  # no weighted layer in the group: nothing to rank
            continue
        scores = scores.detach().float().cpu()
        remove = _heads_to_remove(attn, scores, ratio) if attn else _channels_to_remove(group, scores, ratio)
        if remove:
            plans.append((root, handler, remove))
    return plans


def _keep(n: int, ratio: float) -> int:
    """Channels kept out of n: nearest integer to n*(1-ratio), at least 1."""
    return max(1, math.floor(n * (1.0 - ratio) + 0.5))


def _channels_to_remove(group, scores: torch.Tensor, ratio: float) -> list[int]:
    chunks = 1
    for dep, _ in group:
        if isinstance(dep.target.module, nn.GroupNorm):
            chunks = math.lcm(chunks, dep.target.module.num_groups)
    n = scores.numel()
    if n % chunks:
        raise RuntimeError(f"A group of {n} channels feeds GroupNorms needing multiples of {chunks}: "
                           "cannot prune it evenly; check the config's norm_num_groups.")
    per_chunk = n // chunks
    n_remove = per_chunk - _keep(per_chunk, ratio)
    lowest = torch.argsort(scores.view(chunks, per_chunk), dim=1, stable=True)[:, :n_remove]
    offsets = torch.arange(chunks).unsqueeze(1) * per_chunk
    return sorted((lowest + offsets).flatten().tolist())


def _heads_to_remove(attn: Attention, scores: torch.Tensor, ratio: float) -> list[int]:
    head_dim = attn.inner_dim // attn.heads
    head_scores = scores.view(attn.heads, head_dim).mean(dim=1)
    drop = torch.argsort(head_scores, stable=True)[: attn.heads - _keep(attn.heads, ratio)]
    return sorted(int(h) * head_dim + j for h in drop for j in range(head_dim))


def _check_calibration_images(model, images) -> None:
    if not (torch.is_tensor(images) and images.is_floating_point() and images.ndim == 4):
        raise ValueError("calibration_images must be a float tensor shaped (N, C, H, W) with values in [-1, 1].")
    if images.shape[1] != model.config.in_channels or images.min() < -1.0001 or images.max() > 1.0001:
        raise ValueError(f"calibration_images need {model.config.in_channels} channels and values in [-1, 1] "
                         f"(got shape {tuple(images.shape)}, range [{images.min():.3g}, {images.max():.3g}]).")


def _accumulate_taylor_gradients(model, images, scheduler, seed: int, batch_size: int) -> None:
    """Leave d(mean DDPM noise-prediction MSE)/dw in every .grad (seeded noise and timesteps)."""
    param = next(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for batch in images.split(batch_size):
            batch = batch.to(param.device, param.dtype)
            noise = torch.randn(batch.shape, generator=generator).to(batch)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (len(batch),), generator=generator)
            noisy = scheduler.add_noise(batch, noise, t)
            loss = nn.functional.mse_loss(model(noisy, t.to(param.device)).sample, noise)
            (loss * len(batch) / len(images)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    if missing:
        raise ValueError(f"Taylor importance needs gradients for every weight; none for {missing[:3]} "
                         "(are they frozen with requires_grad=False?).")


def _default_example_inputs(model, seed: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    size = model.config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, model.config.in_channels, height, width, generator=generator)
    return sample.to(device, dtype), torch.ones(1, dtype=torch.long, device=device)


def _layer_channels(model: nn.Module) -> dict[str, tuple[int, int]]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = (m.in_channels, m.out_channels)
        elif isinstance(m, nn.Linear):
            out[name] = (m.in_features, m.out_features)
    return out


def _head_counts(model: nn.Module) -> dict[str, int]:
    return {name: m.heads for name, m in model.named_modules() if isinstance(m, Attention)}


def _sync_torch_layer_sizes(model: nn.Module) -> None:
    """torch layers' size attributes from their weights (after shapes were set by a load)."""
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            w = m.weight.shape
            m.in_channels, m.out_channels = (w[0], w[1] * m.groups) if m.transposed else (w[1] * m.groups, w[0])
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, nn.GroupNorm) and m.affine:
            m.num_channels = m.weight.shape[0]
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:
            m.normalized_shape = tuple(m.weight.shape)
