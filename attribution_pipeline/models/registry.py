"""The model-family registry: ``get_backend(cfg)`` returns the backend of ``cfg.model.family``.

It lives outside ``backends.py`` so that the base class does not import its subclasses
(``sd_lora`` imports ``backends``; this module imports both).
"""

from __future__ import annotations

from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.models.backends import DDPMBackend, LDMBackend
from attribution_pipeline.models.sd_lora import SDLoRABackend

FAMILIES = {"ddpm": DDPMBackend, "ldm": LDMBackend, "sd_lora": SDLoRABackend}

_CACHE: dict[tuple, DDPMBackend] = {}


def get_backend(cfg: PipelineConfig) -> DDPMBackend:
    """The backend of ``cfg.model.family`` (one per model and hardware configuration per process,
    so frozen components such as a Stable Diffusion text encoder are loaded once)."""
    key = (repr(cfg.model), repr(cfg.hardware))
    if key not in _CACHE:
        family = cfg.model.family
        if family not in FAMILIES:
            raise ValueError(f"unknown model.family {family!r}; choose one of {sorted(FAMILIES)}")
        backend = FAMILIES[family](cfg)
        _CACHE.clear()  # one live configuration at a time: frees a previous family's weights
        _CACHE[key] = backend
    backend = _CACHE[key]
    backend.cfg = cfg  # same model and hardware; other sections (steps, seeds) may differ
    return backend
