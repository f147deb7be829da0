"""Shared fixtures: tiny contributor folders and a tiny configuration that runs in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
# the CLI's default engine starts a local Ray; the suite runs in-process except where a test starts
# the engine itself (test_engine_ray.py)
os.environ.setdefault("ATTRIBUTION_PIPELINE_ENGINE", "in-process")

# tiny local stand-ins of the paper presets' models (session scoped)
from attribution_pipeline_tests.tiny_models import model_zoo  # noqa: E402,F401


def write_digit_contributors(root: Path, classes=(0, 1, 7), per_class: int = 24) -> Path:
    """A small contributors directory of real digits: ``digit_<d>`` with ``per_class`` PNGs each,
    from the pool no reference image is in (the digits presets' trusted reference)."""
    from attribution_pipeline.data.digits import data_set

    pool = data_set("classes")
    root.mkdir(parents=True, exist_ok=True)
    for d in classes:
        folder = root / f"digit_{d}"
        folder.mkdir()
        for i, image in enumerate(pool[f"digit_{d}"][:per_class]):
            Image.fromarray(image, mode="L").save(folder / f"img_{i:04d}.png")
    return root


TINY_OVERRIDES = {
    "model": {"block_out_channels": [16, 32], "norm_num_groups": 8, "attention_head_dim": 8},
    "train": {"steps": 30, "batch_size": 32, "warmup_steps": 5},
    "prune": {"finetune_steps": 10, "batch_size": 32},
    "finetune": {"steps": 5, "batch_size": 16},
    "sampling": {"n_images": 32, "ddim_steps": 4, "batch_size": 32},
    # no replicates by default (they double the coalition work); test_pipeline measures them
    "valuation": {"budget": 6, "coalitions_per_run": 4, "replicates": 1},
}


@pytest.fixture
def tiny_contributors(tmp_path: Path) -> Path:
    return write_digit_contributors(tmp_path / "contributors")


@pytest.fixture
def tiny_config(tmp_path: Path, tiny_contributors: Path):
    from attribution_pipeline.config import PipelineConfig, load_preset

    return (
        PipelineConfig()
        .override(load_preset("digits"))
        .override(TINY_OVERRIDES)
        .override({"contributors_dir": str(tiny_contributors), "workdir": str(tmp_path / "work")})
    )
