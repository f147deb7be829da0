"""Configuration: one typed object per concern, every knob with its default and unit beside it.

Presets are data (TOML files in ``attribution_pipeline/presets/``), not code branches: a preset
only overrides fields of these dataclasses. ``PipelineConfig.from_dict`` rejects unknown keys
so a typo in a preset or an override fails loudly instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
import types
from typing import Any, Union, get_args, get_origin, get_type_hints

PRESET_DIR = Path(__file__).parent / "presets"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT / "data"
DATA_TOKEN = "{data}/"  # in a preset: the embedded data folder, wherever the command runs


MODEL_FAMILIES = ("ddpm", "ldm", "sd_lora")
AUTOENCODER_KINDS = ("vq", "kl")


class ConfigError(ValueError):
    """Every problem of a configuration at once, one line each:
    ``field.path: got <value>; expected <what is allowed>; fix: <how>``."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}")


def problem(path: str, value: Any, expected: str, fix: str) -> str:
    """One problem line; ``repr`` keeps a value with newlines or odd characters on one line."""
    return f"{path}: got {_shown(value)}; expected {expected}; fix: {fix}"


def _shown(value: Any, limit: int = 120) -> str:
    try:
        text = repr(value)
    except ValueError:  # an integer past Python's digit limit for str()
        text = f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _added(default: Any) -> Any:
    """A field added after the first release: see ``_StableRepr``."""
    return field(default=default, metadata={"added": True})


class _StableRepr:
    """``repr`` that leaves out fields added after the first release while they hold their default.

    Artifact signatures hash a config's repr (``layout.signature``); this keeps the signatures of
    runs made before those fields existed, so their cached models stay valid.
    """

    def __repr__(self) -> str:
        shown = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                 if not (f.metadata.get("added") and getattr(self, f.name) == f.default)]
        return f"{type(self).__name__}({', '.join(shown)})"


@dataclass(frozen=True, repr=False)
class ModelConfig(_StableRepr):
    """The diffusion model: its family, its diffusers ``UNet2DModel`` and its DDPM noise schedule.

    ``family``: "ddpm" = a UNet2DModel on pixels (the default); "ldm" = a UNet2DModel on the
    latents of a pretrained autoencoder read from ``autoencoder_path`` (the UNet's channels and
    size come from the autoencoder); "sd_lora" = a Stable Diffusion folder (``pretrained_path``)
    whose UNet gets a LoRA adapter, the only weights trained (the UNet fields below are unused, the
    noise schedule is the folder's ``scheduler/``). ``sample_size`` and ``channels`` are always
    the images' pixels per side and colour channels.
    """

    sample_size: int = 8  # pixels per side of the model's images
    channels: int = 1  # 1 = grayscale, 3 = RGB
    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "UpBlock2D")
    norm_num_groups: int = 8
    attention_head_dim: int = 8
    num_train_timesteps: int = 1000  # DDPM diffusion steps
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = _added(0.0001)  # first/last beta of "linear" and "scaled_linear" schedules
    beta_end: float = _added(0.02)
    family: str = _added("ddpm")  # "ddpm" | "ldm" | "sd_lora"
    # ldm: a local diffusers VQModel ("vq") or AutoencoderKL ("kl") folder (config.json + weights)
    autoencoder_path: str | None = _added(None)
    autoencoder_kind: str = _added("vq")
    latent_scaling: float | None = _added(None)  # latents = encode(x) * this; None = the autoencoder's scaling_factor
    # sd_lora: a local Stable Diffusion folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/)
    pretrained_path: str | None = _added(None)
    lora_rank: int = _added(4)  # r of every adapted layer before pruning (paper: 256)
    lora_alpha: float | None = _added(None)  # LoRA scale numerator; None = lora_rank (scale 1)
    lora_target_modules: tuple[str, ...] = _added(("to_q", "to_k", "to_v", "to_out.0"))
    prompt: str = _added("a painting")  # the generation prompt (and the training caption by default)
    train_prompt: str = _added("")  # training caption; may hold "{contributor}"; "" = prompt
    guidance_scale: float = _added(7.5)  # classifier-free guidance at generation; 1 = none


@dataclass(frozen=True)
class TrainConfig:
    """Training of the full model on all contributors (step 1 of sparsified fine-tuning)."""

    steps: int = 1000  # optimizer steps (1,000 already gives >90% recognisable digits)
    batch_size: int = 128  # images per step
    lr: float = 2e-3  # peak Adam learning rate
    warmup_steps: int = 100  # linear warm-up, then cosine decay to 10% of lr
    ema_decay: float = 0.999  # EMA of the weights; the EMA weights are what is saved and sampled
    seed: int = 0
    # equal slices of each batch whose gradients are summed in order (models/shards.py): on a CPU
    # engine with several workers they train in that many processes at once, with the same numbers
    shards: int = 1


@dataclass(frozen=True)
class PruneConfig:
    """Structural pruning of the full model, then fine-tuning it on all data (steps 2 and 3)."""

    ratio: float = 0.3  # fraction of channels REMOVED per layer (paper: 0.3 for the DDPM setting)
    importance: str = "magnitude"  # "magnitude" or "taylor"
    finetune_steps: int = 500  # steps of fine-tuning the pruned model on all data
    finetune_lr: float = 1e-3
    batch_size: int = 128
    ema_decay: float = 0.999
    seed: int = 0
    shards: int = 1  # as train.shards, for the pruned model's fine-tune


@dataclass(frozen=True)
class CoalitionFinetuneConfig:
    """Fine-tuning the pruned base on one coalition's data (step 4; k steps)."""

    steps: int = 100  # k: optimizer steps per coalition
    lr: float = 1e-3
    batch_size: int = 32  # 50 steps at 64 already move the samples fully to the coalition's classes
    # EMA during the coalition fine-tune: "reset" starts a fresh EMA from the base weights with
    # warm-up (so the EMA follows the short fine-tune), "continue" carries the base's EMA with a
    # fixed decay (the reference code's choice), "none" samples from the raw weights.
    ema: str = "reset"
    ema_decay: float = 0.999  # decay for "continue"; the cap of the warm-up for "reset"
    seed: int = 0


@dataclass(frozen=True)
class SamplingConfig:
    """DDIM generation. Every coalition uses the same noise seeds (common random numbers)."""

    n_images: int = 256  # images generated per model
    ddim_steps: int = 25
    batch_size: int = 256
    seed: int = 1234  # seed of the initial noise, shared by every coalition


@dataclass(frozen=True)
class ClassifierConfig:
    """Reference classifier of the default game: labels are the contributors."""

    epochs: int = 15
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0
    inception_weights: str | None = None  # local clean-fid Inception weights; None = classifier features


@dataclass(frozen=True)
class ValuationConfig:
    """Which coalitions are evaluated and how Shapley values are fitted."""

    # Coalitions evaluated besides the empty and the full one. 220 = 20n for the default's 11
    # contributors: on the enumerated real game (benchmarks/results/estimators-real-game.md) two design
    # seeds rank contributors alike (Spearman >= 0.9) from 20n, not at 10n (0.83-0.87) or 5n.
    budget: int = 220
    seed: int = 0  # seed of the coalition design and of the bootstrap
    # Which coalitions, in which order (valuation/design.py): "paired-kernel" (each coalition with its
    # complement, Shapley-kernel sizes, without replacement; for the estimators auto picks), "kernel"
    # (the paper's i.i.d. Shapley-kernel draws, with repeats; `kernelshap-paper` is computed only on it),
    # "leverage", "uniform-size" or "bernoulli".
    design: str = "paired-kernel"
    # Measurements of v(∅), v(N) and of the first `replicated_coalitions` planned coalitions: replicate
    # j > 0 re-measures them with fine-tune seed + j and generation seed + j. Their spread is the utility
    # noise every interval then includes (v(∅)/v(N) too); 1 = none, and the table says the noise is
    # unknown. sft and ft only (retrain averages `retrain.n_seeds` seeds instead).
    replicates: int = 3
    replicated_coalitions: int = 3
    properties: tuple[str, ...] = ("quality", "diversity")
    estimator: str = "auto"  # the estimator whose rows the CLI prints
    coalitions_per_run: int = 16  # coalition partitions materialized per Dagster run by the CLI
    # How a coalition's utility is measured: "sft" fine-tunes the pruned base k steps (the paper's
    # method), "ft" fine-tunes the unpruned full model k steps, "retrain" trains from scratch with
    # the full model's recipe (the ground truth, ~20x the cost on the default).
    method: str = "sft"
    # v(N), what the values sum to with v(∅): "coalition" measures the full coalition like every other
    # one (by `method`: the pruned base fine-tuned k steps on all data, for sft); "full_model" takes the
    # full model θ* itself (the reference code's choice). Both are measured in every run; docs/methods.md.
    v_full: str = "coalition"


UTILITY_METHODS = ("sft", "ft", "retrain")
PLAN_DESIGNS = ("paired-kernel", "kernel", "leverage", "uniform-size", "bernoulli")
V_FULL_SOURCES = ("coalition", "full_model")


@dataclass(frozen=True)
class RetrainConfig:
    """The ``retrain`` utility method: train from scratch on the coalition with ``train``'s recipe."""

    n_seeds: int = 1  # training seeds per coalition: train.seed, train.seed + 1, ...; utilities average them


@dataclass(frozen=True)
class LDSConfig:
    """Linear datamodeling score: how well Σ_{i∈S} φ_i predicts the retrained utility of held-out S
    (evaluation/lds.py: bootstrap interval, random range, oracle ceiling, paired differences)."""

    alphas: tuple[float, ...] = (0.5,)  # fractions of contributors the test coalitions keep (paper: 0.25, 0.5, 0.75)
    n_test: int = 10  # held-out test coalitions per alpha (paper: 100; benchmarks/fidelity.py: >= 50)
    n_seeds: int = 3  # retrain seeds per test coalition (paper: 3); LDS is their mean
    seed: int = 7  # seed of the test-coalition draw
    # first retrain seed of the test coalitions (retrain_seed, retrain_seed + 1, ...): disjoint from every
    # seed that built θ*, the pruned base and the valuation's pools (checked), so no test retrain is θ*
    retrain_seed: int = 1000
    n_boot: int = 2000  # bootstrap resamples of the test coalitions and seeds
    n_random: int = 2000  # random attributions whose LDS on the same test set gives the random range


@dataclass(frozen=True)
class CounterfactualConfig:
    """Remove (or keep only) the top contributors by each attribution, retrain, measure the property."""

    remove_fractions: tuple[float, ...] = (0.4,)  # "remove the top 40%" (paper's curves: 0.1, 0.2, 0.3, 0.4)
    keep_fractions: tuple[float, ...] = (0.6,)  # "keep only the top 60%"
    n_random: int = 3  # random removals of the same size per fraction, the baseline
    seed: int = 11  # seed of the random removals
    n_seeds: int = 3  # retrain seeds per coalition; the relative change's interval is over them
    retrain_seed: int = 2000  # first retrain seed; disjoint from the seeds that built θ*, the base and the pools
    # baseline attributions (baselines.methods) whose rankings are also removed and retrained; each adds up
    # to len(remove_fractions) + len(keep_fractions) coalitions × n_seeds retrains (shared when sets coincide)
    baselines: tuple[str, ...] = ()


BASELINE_METHODS = (
    "size_share",                                        # |D_i| / Σ|D_j|
    "loo_sft", "loo_retrain",                            # v(N) − v(N∖{i}) by sFT / by retraining
    "pixel_sim_mean", "pixel_sim_max",                   # cosine of pixels, generated vs the contributor's
    "feature_sim_mean", "feature_sim_max",               # the same on the instrument's features
    "own_confidence_mean", "own_confidence_max",         # the instrument's confidence on the contributor's images
    "own_property",                                      # the property of the contributor's own images
    "grad_sim_mean", "grad_sim_max",                     # cosine of projected loss gradients
    "trak", "relative_if", "renormalized_if", "dtrak", "journey_trak",
)


@dataclass(frozen=True)
class BaselinesConfig:
    """The cheaper attributions Shapley values are compared with (``baselines/``, ``stages/baselines.py``)."""

    # which to compute; "loo_retrain" (n retrains × loo_retrain_seeds) is left out by default: minutes per retrain
    methods: tuple[str, ...] = tuple(m for m in BASELINE_METHODS if m != "loo_retrain")
    n_timesteps: int = 10  # K fixed timesteps each gradient is averaged over (D-TRAK's default)
    dim: int = 512  # projection dimension of the gradients (count sketch)
    lam: float = 0.5  # λ of (ΦᵀΦ + λI)⁻¹, absolute, as the paper's
    seed: int = 42  # projection and per-image noise seed
    batch_size: int = 16  # images per vmap of per-example gradients
    journey_points: int = 10  # trajectory points per generated image (Journey-TRAK)
    group: str = "mean"  # the gradient family's aggregate over a contributor's images: "mean" or "sum"
    loo_retrain_seeds: int = 1  # retrain seeds of loo_retrain: counterfactual.retrain_seed, ... (shared)
    # feature similarity's encoder: a local transformers vision model folder (the paper's CLIP ViT-B/32 saved
    # with save_pretrained); None = the instrument classifier's features
    encoder: str | None = None


REVALUATION_POLICIES = ("rebase", "incremental")


@dataclass(frozen=True)
class RevaluationConfig:
    """What happens when contributors arrive, change or leave (see ``stages/lineage.py``).

    ``rebase`` (default) retrains the full model and the pruned base on the current contributors
    and recomputes every coalition: the game is exactly the paper's. ``incremental`` keeps the
    current base, computes only the coalitions that involve new or changed contributors, and
    records that the base predates them (an approximation: the README measures it).
    """

    policy: str = "rebase"  # "rebase" or "incremental"
    # incremental falls back to rebase when more contributors than this arrive at once (the pool
    # doubles per newcomer) or when the plan would exceed incremental_max_coalitions
    incremental_max_new: int = 2
    incremental_max_coalitions: int = 400
    sensor: bool = True  # the contributors sensor starts RUNNING under `dagster dev` (False: STOPPED)
    sensor_interval_s: int = 30  # seconds between sensor ticks
    settle_seconds: float = 60.0  # a folder must be unchanged this long before it is validated
    max_attempts: int = 2  # launches of one sensor request (same inputs) before it gives up
    cron: str | None = None  # periodic re-valuation, e.g. "0 3 * * 1" (Mondays 03:00); None = off
DATA_SOURCES = ("folders", "cifar100", "labels_file", "filename_prefix")
# The 20 CIFAR-100 fine classes of the paper's CIFAR-20. METHOD.md gives only their number; these
# are the fine-label indices 40-44, 55-64 and 80-84 that the reference code keeps (its
# ``CIFAR100_original`` dataset), named as in the archive's ``meta`` file.
CIFAR20_CLASSES = (
    "lamp", "lawn_mower", "leopard", "lion", "lizard",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table",
)


@dataclass(frozen=True)
class DataConfig:
    """Where the contributors come from; ``contributors_dir`` is the root each source reads.

    - "folders": one sub-folder of images per contributor (the default);
    - "cifar100": ``contributors_dir`` is the extracted ``cifar-100-python`` folder (``train`` and
      ``meta`` pickles); one contributor per fine class of ``cifar_classes``;
    - "labels_file": ``contributors_dir`` is an image folder, ``labels_file`` a CSV (columns
      ``file_column``, ``label_column``) or JSON object mapping image file name -> contributor;
    - "filename_prefix": ``contributors_dir`` is an image folder; the contributor is the part of
      each file name before the first ``prefix_separator`` (ArtBench: ``<artist>_<title>.jpg``).
    """

    source: str = "folders"
    labels_file: str | None = None
    file_column: str = "filename"
    label_column: str = "identity"
    prefix_separator: str = "_"
    cifar_classes: tuple[str, ...] = CIFAR20_CLASSES
    cifar_split: str = "train"  # the archive's "train" (500 images per class) or "test" (100)


@dataclass(frozen=True)
class PropertiesConfig:
    """The instruments of the properties beyond the default game; every path is a local file or
    folder (nothing is downloaded). Inception weights are ``classifier.inception_weights``."""

    batch_size: int = 64  # images per forward pass of a property model
    is_splits: int = 10  # Inception Score: mean over this many splits of the image set
    # diversity_entropy: a transformers vision model folder (CLIP, BLIP, DINOv2, ...: config.json,
    # weights, preprocessor_config.json) and a folder of reference images to cluster
    vision_encoder: str | None = None
    diversity_reference_dir: str | None = None
    n_clusters: int = 20  # Ward clusters of the reference set
    # aesthetic: a CLIP folder (transformers format) and a LAION aesthetic linear head
    # (.pth/.pt/.safetensors state dict {"weight": (1, D), "bias": (1,)})
    clip_model: str | None = None
    aesthetic_head: str | None = None
    aesthetic_quantile: float = 0.9  # the property is this quantile of the per-image scores


@dataclass(frozen=True)
class ReferenceConfig:
    """The trusted reference set the property instruments are built from (``data/reference.py``):
    images no contributor made, one sub-folder per class, at the model's resolution and colour mode.
    The instrument (a classifier of its classes) is trained on it alone and the quality reference
    statistics come from it, so the yardstick never moves with the players. ``None``: a weaker
    fallback built from the contributors' own images (junk-robust; the run says so)."""

    dir: str | None = None


@dataclass(frozen=True)
class HardwareConfig:
    """Device and numeric precision; recorded with every utility."""

    device: str = "auto"  # "auto" = CUDA when present, else CPU; or "cpu", "cuda", "cuda:1"
    precision: str = "auto"  # "auto" = bf16 autocast on CUDA, fp32 on CPU; or "bf16", "fp32"
    encode_batch_size: int = 32  # images per autoencoder call when caching latents


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a valuation needs. ``workdir`` holds checkpoints, images, DuckDB and Dagster home."""

    contributors_dir: str = str(DEFAULT_DATA_DIR / "contributors")
    workdir: str = str(DEFAULT_DATA_DIR / "runs" / "default")
    preset: str = "digits"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    finetune: CoalitionFinetuneConfig = field(default_factory=CoalitionFinetuneConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    valuation: ValuationConfig = field(default_factory=ValuationConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    lds: LDSConfig = field(default_factory=LDSConfig)
    counterfactual: CounterfactualConfig = field(default_factory=CounterfactualConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    revaluation: RevaluationConfig = field(default_factory=RevaluationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    properties: PropertiesConfig = field(default_factory=PropertiesConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)

    # ---- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PipelineConfig":
        return _build(cls, _upgrade(data), "config")

    def override(self, changes: dict[str, Any]) -> "PipelineConfig":
        """A copy with ``changes`` (nested dicts, same shape as ``to_dict``) applied."""
        merged = _deep_merge(self.to_dict(), _upgrade(changes))
        return PipelineConfig.from_dict(merged)

    def __post_init__(self) -> None:
        # construction-time checks, so no code path (Dagster resource, sensor, tests) holds a config
        # whose method, seeds or fractions cannot run; the rest is attribution_pipeline.validation
        problems = structural_problems(self)
        if problems:
            raise ConfigError(problems)

    def evaluation_seeds(self, kind: str) -> list[int]:
        """The retrain seeds of the LDS test coalitions (``kind`` "lds") or of the counterfactuals."""
        part = self.lds if kind == "lds" else self.counterfactual
        return [part.retrain_seed + i for i in range(part.n_seeds)]

    def utility_seeds(self, method: str | None = None) -> list[int]:
        """The seeds whose utilities a valuation by ``method`` averages."""
        method = method or self.valuation.method
        if method == "retrain":
            return [self.train.seed + i for i in range(self.retrain.n_seeds)]
        return [self.finetune.seed]

    @property
    def workdir_path(self) -> Path:
        return Path(self.workdir).resolve()

    @property
    def contributors_path(self) -> Path:
        return Path(self.contributors_dir).resolve()


def _one_of(path: str, value: Any, allowed: tuple) -> list[str]:
    if value in allowed:
        return []
    return [problem(path, value, f"one of {list(allowed)}", f"--set {path}={json.dumps(allowed[0])}")]


def built_seeds(cfg: "PipelineConfig") -> set[int]:
    """Training seeds of θ* (and its retrain pool: ``train.seed + i``), of the pruned base, and of
    the fine-tunes of the sft/ft pools and their replicates (``finetune.seed + j``)."""
    return ({cfg.train.seed + i for i in range(cfg.retrain.n_seeds)} | {cfg.prune.seed}
            | {cfg.finetune.seed + j for j in range(max(cfg.valuation.replicates, 1))})


def _baseline_problems(cfg: "PipelineConfig") -> list[str]:
    """The ``baselines`` section and ``counterfactual.baselines`` name known methods and sane sizes."""
    out = []
    b = cfg.baselines
    unknown = [m for m in b.methods if m not in BASELINE_METHODS]
    if unknown:
        out.append(problem("baselines.methods", list(b.methods), f"names from {list(BASELINE_METHODS)} ({unknown} unknown)",
                           "--set 'baselines.methods=[\"trak\", \"pixel_sim_max\"]'"))
    out += _one_of("baselines.group", b.group, ("mean", "sum"))
    stray = [m for m in cfg.counterfactual.baselines if m not in BASELINE_METHODS]
    if stray:
        out.append(problem("counterfactual.baselines", list(cfg.counterfactual.baselines),
                           f"names from {list(BASELINE_METHODS)} ({stray} unknown)", "--set 'counterfactual.baselines=[\"trak\"]'"))
    for name, value, ok in (("dim", b.dim, b.dim >= 1), ("n_timesteps", b.n_timesteps, b.n_timesteps >= 1),
                            ("lam", b.lam, b.lam > 0), ("batch_size", b.batch_size, b.batch_size >= 1),
                            ("journey_points", b.journey_points, b.journey_points >= 1),
                            ("loo_retrain_seeds", b.loo_retrain_seeds, 1 <= b.loo_retrain_seeds <= cfg.counterfactual.n_seeds)):
        if not ok:
            out.append(problem(f"baselines.{name}", value, "a positive number" if name != "loo_retrain_seeds"
                               else f"an integer in [1, counterfactual.n_seeds = {cfg.counterfactual.n_seeds}]",
                               f"--set baselines.{name}={getattr(BaselinesConfig, name)}"))
    return out


def structural_problems(cfg: "PipelineConfig") -> list[str]:
    """The checks every ``PipelineConfig`` passes at construction: allowed values of the utility
    method, policy, model family, data source and precision, and the ranges the methods rely on
    (paths are checked before any work by ``attribution_pipeline.inputs.check_local_inputs``)."""
    m, out = cfg.model, []
    out += _one_of("valuation.method", cfg.valuation.method, UTILITY_METHODS)
    out += _one_of("valuation.v_full", cfg.valuation.v_full, V_FULL_SOURCES)
    out += _one_of("valuation.design", cfg.valuation.design, PLAN_DESIGNS)
    if cfg.valuation.replicates < 1:
        out.append(problem("valuation.replicates", cfg.valuation.replicates,
                           "an integer >= 1 (1: no replicates, the utility noise stays unknown)",
                           "--set valuation.replicates=3"))
    if cfg.valuation.replicated_coalitions < 0:
        out.append(problem("valuation.replicated_coalitions", cfg.valuation.replicated_coalitions,
                           "an integer >= 0", "--set valuation.replicated_coalitions=3"))
    out += _one_of("revaluation.policy", cfg.revaluation.policy, REVALUATION_POLICIES)
    out += _one_of("model.family", m.family, MODEL_FAMILIES)
    out += _one_of("model.autoencoder_kind", m.autoencoder_kind, AUTOENCODER_KINDS)
    out += _one_of("data.source", cfg.data.source, DATA_SOURCES)
    out += _one_of("hardware.precision", cfg.hardware.precision, ("auto", "bf16", "fp32"))
    if cfg.retrain.n_seeds < 1:
        out.append(problem("retrain.n_seeds", cfg.retrain.n_seeds, "an integer >= 1", "--set retrain.n_seeds=1"))
    if cfg.lds.n_seeds < 2:
        out.append(problem("lds.n_seeds", cfg.lds.n_seeds, "an integer >= 2 (LDS is averaged over seeds)",
                           "--set lds.n_seeds=3"))
    for where, values in (("lds.alphas", cfg.lds.alphas), ("counterfactual.remove_fractions", cfg.counterfactual.remove_fractions),
                          ("counterfactual.keep_fractions", cfg.counterfactual.keep_fractions)):
        if not values or not all(0.0 < v < 1.0 for v in values):
            out.append(problem(where, list(values), "a non-empty list of numbers in (0, 1)", f"--set '{where}=[0.5]'"))
    if cfg.counterfactual.n_seeds < 1:
        out.append(problem("counterfactual.n_seeds", cfg.counterfactual.n_seeds, "an integer >= 1 (3 or more for an interval)",
                           "--set counterfactual.n_seeds=3"))
    for where, first, count in (("lds.retrain_seed", cfg.lds.retrain_seed, cfg.lds.n_seeds),
                                ("counterfactual.retrain_seed", cfg.counterfactual.retrain_seed, cfg.counterfactual.n_seeds)):
        clash = sorted(set(range(first, first + max(count, 0))) & set(built_seeds(cfg)))
        if clash:
            out.append(problem(where, first, f"a first seed whose {count} seeds avoid {sorted(built_seeds(cfg))}, the seeds "
                               f"that built θ*, the pruned base and the pools (seed(s) {clash} would retrain with them)",
                               f"--set {where}={max(built_seeds(cfg)) + 1000}"))
    out += _baseline_problems(cfg)
    cron = cfg.revaluation.cron
    if cron is not None and len(str(cron).split()) != 5:  # Dagster checks the fields' values
        out.append(problem("revaluation.cron", cron, "a valid cron string (five fields, e.g. '0 3 * * 1') or null",
                           "--set 'revaluation.cron=\"0 3 * * 1\"' (or null to turn it off)"))
    for section in ("train", "prune"):
        part = getattr(cfg, section)
        if part.shards < 1 or part.batch_size % part.shards:
            out.append(problem(f"{section}.shards", part.shards,
                               f"an integer >= 1 that divides {section}.batch_size ({part.batch_size})",
                               f"--set {section}.shards=1"))
    if m.lora_rank < 1:
        out.append(problem("model.lora_rank", m.lora_rank, "an integer >= 1", "--set model.lora_rank=4"))
    if not 0.0 <= cfg.properties.aesthetic_quantile <= 1.0:
        out.append(problem("properties.aesthetic_quantile", cfg.properties.aesthetic_quantile, "a number in [0, 1]",
                           "--set properties.aesthetic_quantile=0.9"))
    if cfg.properties.n_clusters < 2:
        out.append(problem("properties.n_clusters", cfg.properties.n_clusters, "an integer >= 2",
                           "--set properties.n_clusters=20"))
    return out


def load_preset(name_or_path: str) -> dict[str, Any]:
    """Read a preset TOML (a name from ``presets/`` or a file path) into a nested dict."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.toml"))
        raise FileNotFoundError(f"preset {name_or_path!r} not found at {path}; known presets: {known}")
    with path.open("rb") as fh:
        return _embedded_paths(tomllib.load(fh))


def _embedded_paths(node: Any) -> Any:
    """``"{data}/x"`` in a preset names ``x`` in the repository's embedded data folder (``data/``),
    wherever the command runs; every other relative path is resolved from the working directory."""
    if isinstance(node, dict):
        return {k: _embedded_paths(v) for k, v in node.items()}
    if isinstance(node, str) and node.startswith(DATA_TOKEN):
        return str(DEFAULT_DATA_DIR / node[len(DATA_TOKEN):])
    return node


def _deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# keys of earlier versions, still read (a work directory's pipeline_config.json, a user's TOML): a
# single LDS alpha and single counterfactual fractions became lists
LEGACY_KEYS = {("lds", "alpha"): "alphas", ("counterfactual", "remove_fraction"): "remove_fractions",
               ("counterfactual", "keep_fraction"): "keep_fractions"}


def _upgrade(data: Any) -> Any:
    """``data`` with legacy single-value keys turned into their list successors (the list wins when
    both are given)."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for (section, old), new in LEGACY_KEYS.items():
        part = out.get(section)
        if isinstance(part, dict) and old in part:
            part = dict(part)
            value = part.pop(old)
            part.setdefault(new, [value] if not isinstance(value, (list, tuple)) else list(value))
            out[section] = part
    return out


def _build(cls: type, data: dict[str, Any], where: str):
    """``cls(**data)`` with nested dataclasses built from dicts and lists made tuples, after checking
    every key and every value's type against the annotations; raises one ``ConfigError``."""
    problems: list[str] = []
    kwargs = _convert(cls, data, where, problems)
    if problems:
        raise ConfigError(problems)
    return cls(**kwargs)


def _convert(cls: type, data: Any, where: str, problems: list[str]) -> dict[str, Any]:
    path = where.removeprefix("config").lstrip(".")
    known = {f.name: f for f in fields(cls)}
    if not isinstance(data, dict):
        problems.append(problem(path or "config", data, f"a table of the fields {sorted(known)}",
                                f"set one field at a time, e.g. --set {path}.{sorted(known)[0]}=..."))
        return {}
    unknown = sorted(k for k in data if k not in known)
    if unknown:
        problems.append(f"{path or 'config'}: got unknown key(s) {unknown} in {where}; expected one of "
                        f"{sorted(known)}; fix: correct the spelling or remove the key")
    hints = get_type_hints(cls)
    kwargs = {}
    for name in (k for k in data if k in known):
        f, value = known[name], data[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default) and isinstance(value, type(default)):
            kwargs[name] = value
            continue
        if dataclasses.is_dataclass(default):
            sub: list[str] = []
            built = _convert(type(default), value, f"{where}.{name}", sub)
            problems.extend(sub)
            if not sub:
                kwargs[name] = type(default)(**built)
            continue
        ok, converted, expected = _typed(value, hints[name])
        if ok:
            kwargs[name] = converted
        else:
            field_path = f"{path}.{name}" if path else name
            problems.append(problem(field_path, value, expected,
                                    f"--set {field_path}={json.dumps(default, default=str)} (a JSON value; quote "
                                    "text that looks like a number)"))
    return kwargs


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "a boolean (true or false)"}


def _typed(value: Any, hint: Any) -> tuple[bool, Any, str]:
    """(value fits ``hint``, the value as stored, what ``hint`` allows in words). A bool is not
    an integer here (``True`` for a step count is a mistake); an integer is a number."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        inner = next(a for a in get_args(hint) if a is not type(None))
        expected = f"{_typed(None, inner)[2]} or null"
        if value is None:
            return True, None, expected
        return (*_typed(value, inner)[:2], expected)
    if origin is tuple:
        item = get_args(hint)[0]
        expected = f"a list of {_TYPE_WORDS.get(item, str(item)).split(' ', 1)[1]}s"
        if not isinstance(value, (list, tuple)):
            return False, value, expected
        checked = [_typed(v, item) for v in value]
        return all(c[0] for c in checked), tuple(c[1] for c in checked), expected
    expected = _TYPE_WORDS.get(hint, getattr(hint, "__name__", str(hint)))
    if value is None:
        return False, value, expected
    if hint is bool:
        return isinstance(value, bool), value, expected
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value, expected
    if hint is float:  # ints kept as given: a config's repr (its artifact signature) must not change
        return isinstance(value, (int, float)) and not isinstance(value, bool), value, expected
    return isinstance(value, hint), value, expected
