"""Every rule a configuration must meet before any work starts, checked at once.

``PipelineConfig.from_dict`` already refuses unknown keys and wrong types, and its construction
refuses the values no stage could run with. ``validate_config`` adds the domain rules: counts and
seeds that are non-negative integers (positive where zero makes no sense), finite positive learning
rates, fractions in range, properties that resolve in the registry, estimators, methods and
policies from their lists, and (``check_paths``) every configured local file. It raises one
``ConfigError`` listing every problem as ``field.path: got ...; expected ...; fix: ...``, so a
typo costs a second instead of an hour of training.
"""

from __future__ import annotations

import math
import re
from attribution_pipeline.config import (
    UTILITY_METHODS,
    ConfigError,
    PipelineConfig,
    problem,
    structural_problems,
)

# Seeds, counts and budgets are stored in DuckDB INTEGER columns and passed to numpy seeding.
INT_MAX = 2**31 - 1

# (section, field) -> smallest allowed value. Zero is allowed where "none" means something:
# a budget of 0 coalitions, no warm-up, no prune fine-tune, no random baselines.
POSITIVE = {
    "model": ("sample_size", "channels", "layers_per_block", "norm_num_groups", "attention_head_dim",
              "num_train_timesteps"),
    "train": ("steps", "batch_size"),
    "prune": ("batch_size",),
    "finetune": ("steps", "batch_size"),
    "sampling": ("n_images", "ddim_steps", "batch_size"),
    "classifier": ("epochs", "batch_size"),
    "valuation": ("coalitions_per_run",),
    "retrain": ("n_seeds",),
    "lds": ("n_test",),
    "revaluation": ("sensor_interval_s", "max_attempts"),
    "properties": ("batch_size", "is_splits"),
    "hardware": ("encode_batch_size",),
}
NON_NEGATIVE = {
    "train": ("warmup_steps", "seed"),
    "prune": ("finetune_steps", "seed"),
    "finetune": ("seed",),
    "sampling": ("seed",),
    "classifier": ("seed",),
    "valuation": ("budget", "seed"),
    "lds": ("seed",),
    "counterfactual": ("n_random", "seed"),
    "revaluation": ("incremental_max_new", "incremental_max_coalitions"),
}
LEARNING_RATES = {"train": ("lr",), "prune": ("finetune_lr",), "finetune": ("lr",), "classifier": ("lr",)}
# fields that must lie in [0, 1): decays and the pruned fraction
UNIT_INTERVAL = {"train": ("ema_decay",), "prune": ("ema_decay", "ratio"), "finetune": ("ema_decay",)}
CHOICES = {
    ("prune", "importance"): ("magnitude", "taylor"),
    ("finetune", "ema"): ("reset", "continue", "none"),
    ("data", "cifar_split"): ("train", "test"),
    ("model", "beta_schedule"): ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"),
}
def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float (1e400 written out) is no finite number
        return False


DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def estimators() -> tuple[str, ...]:
    """"auto" plus the valuation package's estimators (``ESTIMATORS``, formerly ``METHODS``)."""
    import attribution_pipeline.valuation as valuation

    names = getattr(valuation, "ESTIMATORS", None) or getattr(valuation, "METHODS", ())
    return ("auto", *names)


def _integer_problems(cfg: PipelineConfig) -> list[str]:
    out = []
    for rules, low in ((POSITIVE, 1), (NON_NEGATIVE, 0)):
        for section, names in rules.items():
            for name in names:
                value = getattr(getattr(cfg, section), name)
                if not low <= value <= INT_MAX:
                    default = getattr(type(getattr(cfg, section))(), name)
                    out.append(problem(f"{section}.{name}", value, f"an integer from {low} to {INT_MAX}",
                                       f"--set {section}.{name}={default}"))
    return out


def _number_problems(cfg: PipelineConfig) -> list[str]:
    out = []
    for section, names in LEARNING_RATES.items():
        for name in names:
            value = getattr(getattr(cfg, section), name)
            if not (_finite(value) and value > 0):
                default = getattr(type(getattr(cfg, section))(), name)
                out.append(problem(f"{section}.{name}", value, "a finite number > 0",
                                   f"--set {section}.{name}={default}"))
    for section, names in UNIT_INTERVAL.items():
        for name in names:
            value = getattr(getattr(cfg, section), name)
            if not (_finite(value) and 0.0 <= value < 1.0):
                default = getattr(type(getattr(cfg, section))(), name)
                out.append(problem(f"{section}.{name}", value, "a number in [0, 1)",
                                   f"--set {section}.{name}={default}"))
    s = cfg.revaluation.settle_seconds
    if not (_finite(s) and s >= 0):
        out.append(problem("revaluation.settle_seconds", s, "a finite number of seconds >= 0",
                           "--set revaluation.settle_seconds=60"))
    for (section, name), allowed in CHOICES.items():
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            out.append(problem(f"{section}.{name}", value, f"one of {list(allowed)}",
                               f"--set {section}.{name}={allowed[0]}"))
    if not DEVICE.match(cfg.hardware.device):
        out.append(problem("hardware.device", cfg.hardware.device, "'auto', 'cpu', 'mps', 'cuda' or 'cuda:<index>'",
                           "--set hardware.device=auto"))
    return out


def _model_problems(cfg: PipelineConfig) -> list[str]:
    m, out = cfg.model, []
    if m.family == "sd_lora":  # the UNet fields below are unused: the folder's UNet is adapted
        return out
    if not m.block_out_channels or any(not 1 <= c <= INT_MAX for c in m.block_out_channels):
        out.append(problem("model.block_out_channels", list(m.block_out_channels), "a non-empty list of integers >= 1",
                           "--set model.block_out_channels=[32, 64]"))
    elif any(c % m.norm_num_groups for c in m.block_out_channels) and m.norm_num_groups > 0:
        out.append(problem("model.block_out_channels", list(m.block_out_channels),
                           f"channel counts divisible by model.norm_num_groups = {m.norm_num_groups} (group norm)",
                           "make every entry a multiple of norm_num_groups, or change norm_num_groups"))
    for name in ("down_block_types", "up_block_types"):
        value = getattr(m, name)
        if len(value) != len(m.block_out_channels):
            out.append(problem(f"model.{name}", list(value),
                               f"one block type per entry of model.block_out_channels ({len(m.block_out_channels)})",
                               f"give {name} as many entries as block_out_channels"))
    if not (0 < m.beta_start < m.beta_end < 1):
        out.append(problem("model.beta_start", [m.beta_start, m.beta_end], "0 < beta_start < beta_end < 1",
                           "--set model.beta_start=0.0001 --set model.beta_end=0.02"))
    if cfg.sampling.ddim_steps > m.num_train_timesteps:
        out.append(problem("sampling.ddim_steps", cfg.sampling.ddim_steps,
                           f"at most model.num_train_timesteps = {m.num_train_timesteps}", "--set sampling.ddim_steps=25"))
    for name in ("latent_scaling", "lora_alpha"):
        value = getattr(m, name)
        if value is not None and not (_finite(value) and value > 0):
            out.append(problem(f"model.{name}", value, "a finite number > 0 or null", f"--set model.{name}=null"))
    if not (_finite(m.guidance_scale) and m.guidance_scale >= 0):
        out.append(problem("model.guidance_scale", m.guidance_scale, "a finite number >= 0 (1 = no guidance)",
                           "--set model.guidance_scale=7.5"))
    return out


def _valuation_problems(cfg: PipelineConfig) -> list[str]:
    v, out = cfg.valuation, []
    allowed = estimators()
    if v.estimator not in allowed:
        out.append(problem("valuation.estimator", v.estimator, f"one of {list(allowed)}", "--set valuation.estimator=auto"))
    if v.method not in UTILITY_METHODS:  # also a construction check; kept for configs made by replace()
        out.append(problem("valuation.method", v.method, f"one of {list(UTILITY_METHODS)}", "--method sft"))
    if not v.properties:
        out.append(problem("valuation.properties", list(v.properties), "at least one property",
                           "--property quality (repeatable)"))
    for name in v.properties:
        reason = _unresolved(name)
        if reason:
            out.append(problem("valuation.properties", name, f"a registered property or 'package.module:function' "
                               f"({reason})", "--property quality, or put the module on PYTHONPATH"))
    d = cfg.data
    for name in ("file_column", "label_column", "prefix_separator"):
        if not getattr(d, name):
            out.append(problem(f"data.{name}", getattr(d, name), "a non-empty string",
                               f"--set data.{name}={getattr(type(d)(), name)}"))
    return out


def _unresolved(name: str) -> str | None:
    """Why ``name`` is not a property, or None when the registry resolves it."""
    from attribution_pipeline.properties.registry import get_property  # imports torch: only here

    try:
        get_property(name)
    except Exception as exc:  # a user module may fail to import in any way: report, never crash
        return str(exc).splitlines()[0][:400] if str(exc) else type(exc).__name__
    return None


def config_problems(cfg: PipelineConfig, check_paths: bool = True) -> list[str]:
    """Every problem of ``cfg``, one line each (empty when it may run)."""
    out = structural_problems(cfg) + _integer_problems(cfg) + _number_problems(cfg) + _model_problems(cfg)
    out += _valuation_problems(cfg)
    if check_paths:
        from attribution_pipeline.inputs import data_problems, model_problems as _path_problems, property_problems

        # a property module that does not import is already reported by _valuation_problems
        paths = [p for p in data_problems(cfg) + _path_problems(cfg) + property_problems(cfg)
                 if not p.startswith("property ")]
        out += [f"{p}; fix: correct the path in the configuration" for p in paths]
    return list(dict.fromkeys(out))


def validate_config(cfg: PipelineConfig, check_paths: bool = False) -> None:
    """Raise ``ConfigError`` listing every problem of ``cfg``; return None when it may run.

    check_paths: also check that every configured local file and folder exists (the run does
    this itself before any work; the CLI asks for it to report everything in one message).
    """
    problems = config_problems(cfg, check_paths)
    if problems:
        raise ConfigError(problems)

