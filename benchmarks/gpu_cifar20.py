"""What one coalition of the ``cifar20`` preset costs at the paper's scale, on this machine.

Run:  python benchmarks/gpu_cifar20.py                       (the paper's scale; meant for one GPU)
      python benchmarks/gpu_cifar20.py --tiny --steps 5 --images 16 --ddim-steps 2   (CPU smoke, seconds)
Writes benchmarks/results/gpu_cifar20.md (``-tiny`` suffix with --tiny) and prints the same table.

One sFT coalition of the preset is: fine-tune the pruned base k = 1,000 steps (batch 128) on the
coalition's images, then generate 10,240 images with DDIM in 100 steps (same noise for every
coalition). The benchmark runs exactly those two calls of the pipeline's backend
(``models/backends.py``: bf16 autocast on CUDA, EMA, the preset's schedule), on:

- the preset's UNet2DModel (35.75M parameters) with random-init weights, pruned at ratio 0.3 the
  way ``prune_base_model`` does (``--no-prune``: the unpruned model, i.e. the FT method), or a
  trained model saved by the pipeline (``--model DIR``: models/pruned_base or models/full);
- a coalition of 10 of the 20 classes: 5,000 random 32x32 images (the cost does not depend on
  the pixels; ``--images-per-class`` to change it).

Reported: fine-tune steps per second, generated images per second, and the total of 1,000 steps
plus 10,240 images x 100 DDIM steps (the per-coalition cost before scoring), against the target of
2 minutes per coalition on one H200. One warm-up call of each (CUDA kernels, autotuning) runs first
and is reported apart, because a valuation pays it once per process, not per coalition.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from attribution_pipeline.config import PipelineConfig, load_preset  # noqa: E402
from attribution_pipeline.models.backends import Data  # noqa: E402
from attribution_pipeline.models.registry import get_backend  # noqa: E402
from attribution_pipeline.models.unet import count_parameters  # noqa: E402

TARGET_S = 120.0  # per coalition on one H200
TINY = {  # a model and sizes that run in seconds on a CPU, to check the script
    "model": {"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8, "attention_head_dim": 8,
              "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]},
    "finetune": {"batch_size": 16},
    "sampling": {"batch_size": 64},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a tiny model (CPU smoke run of the script)")
    p.add_argument("--steps", type=int, help="fine-tune steps k (default: the preset's 1,000)")
    p.add_argument("--images", type=int, help="images generated (default: the preset's 10,240)")
    p.add_argument("--ddim-steps", type=int, help="DDIM steps (default: the preset's 100)")
    p.add_argument("--batch", type=int, help="fine-tune batch size (default: the preset's 128)")
    p.add_argument("--gen-batch", type=int, help="generation batch size (default: the preset's 2,048)")
    p.add_argument("--images-per-class", type=int, default=500, help="coalition images per class (10 classes)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="default: the preset's (bf16 on CUDA)")
    p.add_argument("--device", help="e.g. cuda, cuda:1, cpu (default: CUDA when present)")
    p.add_argument("--model", type=Path, help="a trained model folder written by the pipeline (else random init)")
    p.add_argument("--no-prune", action="store_true", help="time the unpruned model (the FT method)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other config override")
    return p.parse_args()


def build_config(args: argparse.Namespace) -> PipelineConfig:
    from attribution_pipeline.cli import _overrides

    cfg = PipelineConfig().override(load_preset("cifar20"))
    if args.tiny:
        cfg = cfg.override(TINY)
    changes: dict = {"finetune": {}, "sampling": {}, "hardware": {}}
    if args.steps is not None:
        changes["finetune"]["steps"] = args.steps
    if args.batch is not None:
        changes["finetune"]["batch_size"] = args.batch
    if args.images is not None:
        changes["sampling"]["n_images"] = args.images
    if args.ddim_steps is not None:
        changes["sampling"]["ddim_steps"] = args.ddim_steps
    if args.gen_batch is not None:
        changes["sampling"]["batch_size"] = args.gen_batch
    if args.precision:
        changes["hardware"]["precision"] = args.precision
    if args.device:
        changes["hardware"]["device"] = args.device
    return cfg.override(changes).override(_overrides(args.set))


def main() -> int:
    args = parse()
    cfg = build_config(args)
    backend = get_backend(cfg)
    device, f, s = backend.device, cfg.finetune, cfg.sampling
    gen = torch.Generator().manual_seed(0)
    n = 10 * args.images_per_class
    size, channels = cfg.model.sample_size, cfg.model.channels
    data = Data(torch.rand(n, channels, size, size, generator=gen) * 2 - 1, torch.arange(n) % 10)

    if args.model:
        model, origin = backend.load(args.model), f"loaded from {args.model}"
        params_full = params = count_parameters(model)
        prune_s = 0.0
    else:
        model = backend.build(seed=0)
        params_full = count_parameters(model)
        origin = "random init"
        prune_s = 0.0
        if not args.no_prune:
            (model, report), prune_s = timed(device, lambda: backend.prune(model, data, cfg.prune))
            origin += f", pruned at ratio {cfg.prune.ratio}"
        params = count_parameters(model)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"precision {backend.precision}; model: {origin}, {params_full / 1e6:.2f}M -> {params / 1e6:.2f}M parameters",
          flush=True)

    # warm-up: kernels, cuDNN autotuning, allocator; paid once per process
    _, warm_train_s = timed(device, lambda: backend.train(model, data, steps=min(10, f.steps), batch_size=f.batch_size,
                                                          lr=f.lr, seed=1, ema=f.ema, ema_decay=f.ema_decay))
    _, warm_gen_s = timed(device, lambda: backend.generate(model, n_images=min(s.batch_size, s.n_images), steps=2,
                                                           seed=1, batch_size=s.batch_size))

    result, train_s = timed(device, lambda: backend.train(model, data, steps=f.steps, batch_size=f.batch_size, lr=f.lr,
                                                          seed=f.seed, ema=f.ema, ema_decay=f.ema_decay))
    images, gen_s = timed(device, lambda: backend.generate(result.model, n_images=s.n_images, steps=s.ddim_steps,
                                                           seed=s.seed, batch_size=s.batch_size))
    assert images.shape == (s.n_images, channels, size, size) and torch.isfinite(images).all()
    total = train_s + gen_s
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")

    rows = [
        ("fine-tune", f"{f.steps:,} steps x batch {f.batch_size}", f"{train_s:.1f}", f"{f.steps / train_s:.2f} steps/s"),
        ("generate", f"{s.n_images:,} images x {s.ddim_steps} DDIM steps (batch {s.batch_size})", f"{gen_s:.1f}",
         f"{s.n_images / gen_s:.1f} images/s"),
        ("coalition", "fine-tune + generate", f"{total:.1f}",
         f"{total / TARGET_S:.2f} x the {TARGET_S:.0f} s target" + (" (met)" if total <= TARGET_S else " (missed)")),
        ("one-off", "pruning; warm-up of training and generation", f"{prune_s:.1f}; {warm_train_s:.1f} + {warm_gen_s:.1f}", ""),
    ]
    header = ["stage", "work", "seconds", "rate"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)
    meta = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "precision": backend.precision, "torch": torch.__version__, "model": origin, "params_full": params_full,
            "params": params, "train_s": train_s, "generate_s": gen_s, "total_s": total, "prune_s": prune_s,
            "warmup_train_s": warm_train_s, "warmup_generate_s": warm_gen_s, "peak_gpu_gib": peak,
            "steps": f.steps, "batch_size": f.batch_size, "n_images": s.n_images, "ddim_steps": s.ddim_steps,
            "gen_batch_size": s.batch_size, "final_loss": result.final_loss, "tiny": args.tiny}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"gpu_cifar20{'-tiny' if args.tiny else ''}.md"
    out.write_text(f"# One coalition of the cifar20 preset\n\n`python benchmarks/gpu_cifar20.py{' --tiny' if args.tiny else ''}`"
                   f" on {meta['device_name']} ({meta['precision']}), {time.strftime('%Y-%m-%d')}\n\n{table}\n\n"
                   f"```json\n{json.dumps(meta, indent=2)}\n```\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
