"""Every local file and folder a configuration names, checked before any work starts.

Nothing is downloaded at run time: data, model weights and property instruments are read from
local paths. ``check_local_inputs`` looks at all of them at once and raises one
``MissingInputError`` that names each missing path, what is expected there and which config field
points at it, so a forgotten download fails in a second instead of after an hour of training.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from attribution_pipeline.config import PipelineConfig

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
INCEPTION_PROPERTIES = ("inception_score", "fid", "kid")


class MissingInputError(FileNotFoundError):
    """Configured local inputs are missing; ``problems`` lists each path and what belongs there."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} configured local input(s) missing (nothing is downloaded at run time):\n"
                         f"{lines}")


def _has_any(folder: Path, names: tuple[str, ...]) -> bool:
    return any((folder / n).is_file() for n in names)


def _diffusers_model(folder: Path, field: str, what: str) -> list[str]:
    """Problems of a diffusers model folder (``config.json`` + weights)."""
    if not folder.is_dir():
        return [f"{folder}: missing; expected {what} in diffusers format (config.json + "
                f"{WEIGHT_FILES[0]}) (config field {field})"]
    out = []
    if not (folder / "config.json").is_file():
        out.append(f"{folder / 'config.json'}: missing; expected the config of {what} (config field {field})")
    if not _has_any(folder, WEIGHT_FILES):
        out.append(f"{folder / WEIGHT_FILES[0]}: missing; expected the weights of {what} (config field {field})")
    return out


def _transformers_model(folder: Path, field: str, what: str, processor: bool = True) -> list[str]:
    if not folder.is_dir():
        return [f"{folder}: missing; expected {what} saved with save_pretrained (config.json, "
                f"{TRANSFORMERS_WEIGHTS[0]}{', preprocessor_config.json' if processor else ''}) (config field {field})"]
    out = []
    if not (folder / "config.json").is_file():
        out.append(f"{folder / 'config.json'}: missing; expected the config of {what} (config field {field})")
    if not _has_any(folder, TRANSFORMERS_WEIGHTS):
        out.append(f"{folder / TRANSFORMERS_WEIGHTS[0]}: missing; expected the weights of {what} (config field {field})")
    if processor and not (folder / "preprocessor_config.json").is_file():
        out.append(f"{folder / 'preprocessor_config.json'}: missing; expected the image processor of {what} "
                   f"(save it with AutoImageProcessor.save_pretrained) (config field {field})")
    return out


def data_problems(cfg: PipelineConfig) -> list[str]:
    d, root = cfg.data, cfg.contributors_path
    if d.source == "cifar100":
        return [f"{root / name}: missing; expected the extracted CIFAR-100 python archive (cifar-100-python/"
                f"{{{d.cifar_split},meta}}) (config field contributors_dir)"
                for name in (d.cifar_split, "meta") if not (root / name).is_file()]
    if not root.is_dir():
        what = {"folders": "one sub-folder of images per contributor",
                "labels_file": "the image folder the labels file refers to",
                "filename_prefix": "an image folder of <contributor>_<rest> files"}[d.source]
        out = [f"{root}: missing; expected {what} (config field contributors_dir, or --contributors DIR)"]
    else:
        out = []
    if d.source == "labels_file" and (not d.labels_file or not Path(d.labels_file).is_file()):
        out.append(f"{d.labels_file or '<unset>'}: missing; expected a CSV with columns {d.file_column!r}, "
                   f"{d.label_column!r} (or a JSON object) mapping image file name -> contributor "
                   "(config field data.labels_file)")
    if cfg.reference.dir and not Path(cfg.reference.dir).is_dir():
        out.append(f"{cfg.reference.dir}: missing; expected a trusted reference folder, one sub-folder of images per "
                   "class at the model's resolution (config field reference.dir, or --reference DIR)")
    return out


def model_problems(cfg: PipelineConfig) -> list[str]:
    m = cfg.model
    if m.family == "ldm":
        if not m.autoencoder_path:
            return ["model.autoencoder_path is unset; point it at a local diffusers "
                    f"{'VQModel' if m.autoencoder_kind == 'vq' else 'AutoencoderKL'} folder"]
        kind = "a VQModel" if m.autoencoder_kind == "vq" else "an AutoencoderKL"
        return _diffusers_model(Path(m.autoencoder_path), "model.autoencoder_path", f"{kind} autoencoder")
    if m.family == "sd_lora":
        if not m.pretrained_path:
            return ["model.pretrained_path is unset; point it at a local Stable Diffusion folder in diffusers "
                    "format (unet/, vae/, text_encoder/, tokenizer/, scheduler/)"]
        root = Path(m.pretrained_path)
        if not root.is_dir():
            return [f"{root}: missing; expected a Stable Diffusion folder in diffusers format (unet/, vae/, "
                    "text_encoder/, tokenizer/, scheduler/) (config field model.pretrained_path)"]
        out = _diffusers_model(root / "unet", "model.pretrained_path", "the UNet2DConditionModel")
        out += _diffusers_model(root / "vae", "model.pretrained_path", "the AutoencoderKL")
        out += _transformers_model(root / "text_encoder", "model.pretrained_path", "the CLIP text encoder",
                                   processor=False)
        tok = root / "tokenizer"
        if not ((tok / "tokenizer.json").is_file() or (tok / "vocab.json").is_file()):
            out.append(f"{tok / 'tokenizer.json'}: missing; expected the CLIP tokenizer (tokenizer.json, or "
                       "vocab.json + merges.txt) (config field model.pretrained_path)")
        if not (root / "scheduler" / "scheduler_config.json").is_file():
            out.append(f"{root / 'scheduler' / 'scheduler_config.json'}: missing; expected the noise scheduler's "
                       "config (config field model.pretrained_path)")
        return out
    return []


def property_problems(cfg: PipelineConfig) -> list[str]:
    names, p, out = set(cfg.valuation.properties), cfg.properties, []
    needs_inception = sorted(names & set(INCEPTION_PROPERTIES))
    weights = cfg.classifier.inception_weights
    if weights:
        path = Path(weights)
        file = path / "inception-2015-12-05.pt" if path.is_dir() else path
        if not file.is_file():
            out.append(f"{file}: missing; expected clean-fid's Inception TorchScript file inception-2015-12-05.pt "
                       "(config field classifier.inception_weights)")
    elif needs_inception:
        out.append(f"classifier.inception_weights is unset but properties {needs_inception} need it: point it at "
                   "a local copy of clean-fid's inception-2015-12-05.pt")
    if "diversity_entropy" in names:
        if not p.vision_encoder:
            out.append("properties.vision_encoder is unset but diversity_entropy needs it: point it at a local "
                       "transformers vision model folder (e.g. a CLIP or BLIP model saved with save_pretrained)")
        else:
            out += _transformers_model(Path(p.vision_encoder), "properties.vision_encoder", "the vision encoder")
        ref = Path(p.diversity_reference_dir) if p.diversity_reference_dir else None
        if ref is None or not ref.is_dir():
            out.append(f"{ref or '<unset>'}: missing; expected a folder of reference images (at least "
                       f"{p.n_clusters}, PNG/JPEG) to cluster (config field properties.diversity_reference_dir)")
        else:
            n = sum(1 for f in ref.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
            if n < p.n_clusters:
                out.append(f"{ref}: holds {n} image(s); expected at least properties.n_clusters = {p.n_clusters} "
                           "reference images")
    if "aesthetic" in names:
        if not p.clip_model:
            out.append("properties.clip_model is unset but aesthetic needs it: point it at a local CLIP folder "
                       "(transformers format, e.g. openai/clip-vit-large-patch14 saved with save_pretrained)")
        else:
            out += _transformers_model(Path(p.clip_model), "properties.clip_model", "the CLIP model")
        if not p.aesthetic_head or not Path(p.aesthetic_head).is_file():
            out.append(f"{p.aesthetic_head or '<unset>'}: missing; expected the LAION aesthetic linear head "
                       "(e.g. sa_0_4_vit_l_14_linear.pth, a state dict {weight, bias}) "
                       "(config field properties.aesthetic_head)")
    for name in sorted(n for n in names if ":" in n):
        module = name.split(":", 1)[0]
        try:
            importlib.import_module(module)
        except Exception as exc:  # ":" or "..:f" fail with ValueError/TypeError, a user module with anything
            out.append(f"property {name!r}: module {module!r} cannot be imported ({exc}); put it on PYTHONPATH")
    return out


def baseline_problems(cfg: PipelineConfig) -> list[str]:
    """The baselines' encoder folder, when one is configured."""
    enc = cfg.baselines.encoder
    return _transformers_model(Path(enc), "baselines.encoder", "the baselines' encoder") if enc else []


def check_local_inputs(cfg: PipelineConfig) -> None:
    """Raise ``MissingInputError`` naming every configured local path that is missing."""
    problems = data_problems(cfg) + model_problems(cfg) + property_problems(cfg) + baseline_problems(cfg)
    if problems:
        raise MissingInputError(problems)


PATH_FIELDS = {
    "model": ("autoencoder_path", "pretrained_path"),
    "classifier": ("inception_weights",),
    "data": ("labels_file",),
    "properties": ("vision_encoder", "diversity_reference_dir", "clip_model", "aesthetic_head"),
    "baselines": ("encoder",),
}


def absolute_paths(cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` with every relative local path made absolute (against the current directory), so the
    configuration written to the work directory means the same from Dagster's working directory."""
    changes: dict = {"contributors_dir": str(Path(cfg.contributors_dir).resolve())}
    for section, names in PATH_FIELDS.items():
        sub = getattr(cfg, section)
        fixed = {n: str(Path(getattr(sub, n)).resolve()) for n in names if getattr(sub, n)}
        if fixed:
            changes[section] = fixed
    return cfg.override(changes)

