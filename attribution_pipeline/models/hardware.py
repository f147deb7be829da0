"""Device and numeric precision of a run, one place for both (``config.HardwareConfig``).

On CUDA the default is bf16 autocast: matrix work runs in bfloat16 while the weights, the optimizer
state and the EMA stay in float32, so no loss scaling is needed. On the CPU everything runs in
float32 (bf16 there is slower, not faster). The device and precision are stored with each utility.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.models.unet import pick_device


def run_device(cfg: PipelineConfig) -> torch.device:
    return pick_device(cfg.hardware.device)


def run_precision(cfg: PipelineConfig, device: torch.device | None = None) -> str:
    """"bf16" or "fp32": what ``hardware.precision`` means on ``device``."""
    device = device or run_device(cfg)
    if cfg.hardware.precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return cfg.hardware.precision


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast on ``device`` when ``precision == "bf16"``, else nothing."""
    if precision == "bf16":
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            yield
    else:
        yield
