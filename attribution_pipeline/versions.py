"""Package versions recorded with every result, so a number can be traced to the code that made it."""

from __future__ import annotations

from importlib import metadata

PACKAGES = ("attribution_pipeline", "torch", "diffusers", "transformers", "peft", "torch-pruning", "clean-fid", "dagster",
            "duckdb", "numpy")


def snapshot() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[f"version_{name.replace('-', '_')}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[f"version_{name.replace('-', '_')}"] = "not installed"
    return out
