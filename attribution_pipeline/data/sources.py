"""Contributor sources: the ways a data set says which images belong to which contributor.

``data.source`` picks one (see ``config.DataConfig``):

- ``folders``          one sub-folder of images per contributor (``data/contributors.py``);
- ``cifar100``         the standard CIFAR-100 python archive (``cifar-100-python/{train,meta}``),
                       one contributor per listed fine class;
- ``labels_file``      an image folder plus a CSV or JSON file mapping image file name → contributor
                       (CelebA-HQ identities);
- ``filename_prefix``  an image folder whose file names start with the contributor
                       (ArtBench: ``<artist>_<title>.jpg``).

Every source validates everything before returning, collecting all problems into one
``ContributorValidationError`` (file, rule, fix), and returns contributors sorted by id, each with a
content hash of its images. ``load_source_images`` decodes a contributor at model resolution.
"""

from __future__ import annotations

import csv
import hashlib
import json
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.data.contributors import (
    CONTRIBUTOR_ID_RE,
    IMAGE_SUFFIXES,
    MIN_CONTRIBUTORS,
    Contributor,
    ContributorValidationError,
    check_image,
    sha256_file,
    discover_contributors,
    load_contributor_images,
)

CIFAR_IMAGE_SIDE = 32


@dataclass(frozen=True)
class ArrayContributor:
    """A contributor whose images are rows of an array (CIFAR): uint8 ``(N, 3, 32, 32)``."""

    contributor: str
    path: Path
    images: np.ndarray
    data_hash: str
    skipped: tuple[str, ...] = ()

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])

    def load(self, size: int, channels: int) -> np.ndarray:
        return np.stack([_resize(im, size, channels) for im in self.images])


def discover_source(cfg: PipelineConfig) -> list[Contributor | ArrayContributor]:
    """The contributors of ``cfg`` (sorted by id), validated; raises ContributorValidationError."""
    source, root = cfg.data.source, cfg.contributors_path
    if source == "folders":
        return discover_contributors(root)
    if source == "cifar100":
        return discover_cifar100(root, cfg.data.cifar_classes, cfg.data.cifar_split)
    if source == "labels_file":
        if not cfg.data.labels_file:
            raise ContributorValidationError(root, ["data.labels_file is not set: point it at the CSV/JSON file "
                                                    "mapping image file name -> contributor"])
        mapping = read_labels_file(Path(cfg.data.labels_file), cfg.data.file_column, cfg.data.label_column)
        return group_images(root, mapping, f"labels file {cfg.data.labels_file}")
    if source == "filename_prefix":
        return discover_by_prefix(root, cfg.data.prefix_separator)
    raise ValueError(f"unknown data.source {source!r}")


def load_source_images(contributor: Contributor | ArrayContributor, size: int, channels: int) -> np.ndarray:
    """All of a contributor's images as uint8 ``(N, channels, size, size)``."""
    if isinstance(contributor, ArrayContributor):
        return contributor.load(size, channels)
    return load_contributor_images(contributor, size, channels)


# ---- CIFAR-100 -----------------------------------------------------------------------------------
class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR archive's dicts of lists and numpy arrays, and nothing else: a pickle
    can run arbitrary code, and this file comes from outside the project."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-100 archive")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    with path.open("rb") as fh:
        obj = _ArchiveUnpickler(fh, encoding="bytes").load()
    # python-2 pickles (the official archive) have bytes keys; ours may have str keys
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def discover_cifar100(root: Path, classes: Sequence[str], split: str = "train") -> list[ArrayContributor]:
    """One contributor per fine class of ``classes`` from the extracted ``cifar-100-python`` folder
    ``root`` (``<root>/<split>`` and ``<root>/meta``, the archive's python pickles)."""
    root = Path(root)
    data_file, meta_file = root / split, root / "meta"
    missing = [str(p) for p in (data_file, meta_file) if not p.is_file()]
    if missing:
        raise ContributorValidationError(root, [
            f"{p}: missing; expected the CIFAR-100 python archive extracted here (cifar-100-python.tar.gz "
            f"from https://www.cs.toronto.edu/~kriz/cifar.html holds the files {split!r} and 'meta')" for p in missing])
    problems: list[str] = []
    try:
        meta, data = _read_pickle(meta_file), _read_pickle(data_file)
        names = [_text(n) for n in meta["fine_label_names"]]
        images = np.asarray(data["data"], dtype=np.uint8).reshape(-1, 3, CIFAR_IMAGE_SIDE, CIFAR_IMAGE_SIDE)
        labels = np.asarray(data["fine_labels"], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as exc:
        raise ContributorValidationError(root, [f"{data_file} / {meta_file}: not a CIFAR-100 python archive "
                                                f"({type(exc).__name__}: {exc}); re-extract cifar-100-python.tar.gz"]) from exc
    if len(labels) != len(images):
        problems.append(f"{data_file}: {len(images)} images but {len(labels)} fine labels; re-extract the archive")
    unknown = [c for c in classes if c not in names]
    if unknown:
        problems.append(f"data.cifar_classes {unknown} are not CIFAR-100 fine classes; known: {', '.join(names)}")
    if len(classes) < MIN_CONTRIBUTORS:
        problems.append(f"data.cifar_classes lists {len(classes)} class(es); a valuation needs at least {MIN_CONTRIBUTORS}")
    if problems:
        raise ContributorValidationError(root, problems)
    out = []
    for name in sorted(dict.fromkeys(classes)):
        rows = images[labels == names.index(name)]
        if len(rows) == 0:
            problems.append(f"{data_file}: fine class {name!r} has no images in the {split!r} split")
            continue
        digest = hashlib.sha256(f"cifar100/{split}/{name}".encode() + rows.tobytes()).hexdigest()[:16]
        out.append(ArrayContributor(name, data_file, np.ascontiguousarray(rows), digest))
    if problems:
        raise ContributorValidationError(root, problems)
    return out


def _resize(chw: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 ``(3, H, W)`` → uint8 ``(channels, size, size)`` (Lanczos, like the folder loader)."""
    im = Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0)), mode="RGB")
    if channels == 1:
        im = im.convert("L")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.LANCZOS)
    arr = np.asarray(im, dtype=np.uint8)
    return np.ascontiguousarray(arr[None] if channels == 1 else arr.transpose(2, 0, 1))


# ---- image folder + a mapping ---------------------------------------------------------------------
def contributor_id(label: str) -> str:
    """A label as a contributor id: runs of characters outside ``[A-Za-z0-9_.-]`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(label).strip()).strip("_") or "_"


def read_labels_file(path: Path, file_column: str = "filename", label_column: str = "identity") -> dict[str, str]:
    """``{image file name (relative to the image folder): label}`` from a CSV with a header row
    naming ``file_column`` and ``label_column``, or a JSON object ``{file name: label}``."""
    path = Path(path)
    if not path.is_file():
        raise ContributorValidationError(path, [f"{path}: labels file missing; expected a CSV (header with "
                                                f"{file_column!r} and {label_column!r}) or a JSON object "
                                                "{image file name: contributor}"])
    if path.suffix.lower() == ".json":
        obj = json.loads(path.read_text())
        if not isinstance(obj, dict):
            raise ContributorValidationError(path, [f"{path}: expected a JSON object {{image file name: contributor}}"])
        return {str(k): str(v) for k, v in obj.items()}
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        if file_column not in header or label_column not in header:
            raise ContributorValidationError(path, [
                f"{path}: the header {header} lacks {file_column!r} or {label_column!r}; set data.file_column and "
                "data.label_column to the columns holding the image file name and the contributor"])
        return {row[file_column]: row[label_column] for row in reader}


def group_images(root: Path, mapping: dict[str, str], what: str) -> list[Contributor]:
    """Contributors from an image folder and ``{file name: label}``; every problem reported at once."""
    root = Path(root)
    if not root.is_dir():
        raise ContributorValidationError(root, [f"{root}: no such image folder; set contributors_dir to it"])
    problems: list[str] = []
    groups: dict[str, list[Path]] = {}
    labels_of: dict[str, set[str]] = {}
    for name, label in sorted(mapping.items()):
        f = root / name
        if not f.is_file():
            problems.append(f"{f}: listed in {what} but missing; add the image or remove its row")
            continue
        problem = check_image(f)
        if problem:
            problems.append(problem)
            continue
        cid = contributor_id(label)
        groups.setdefault(cid, []).append(f)
        labels_of.setdefault(cid, set()).add(str(label))
    for cid, labels in labels_of.items():
        if len(labels) > 1:
            problems.append(f"{what}: labels {sorted(labels)} all become contributor id {cid!r}; rename them apart")
    listed = {str((root / n).resolve()) for n in mapping}
    unlisted = [p.name for p in sorted(root.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                and not p.name.startswith(".") and str(p.resolve()) not in listed]
    if unlisted:
        warnings.warn(f"{root}: {len(unlisted)} image(s) not in {what} are skipped (e.g. {unlisted[:3]})", stacklevel=2)
    if not problems and len(groups) < MIN_CONTRIBUTORS:
        problems.append(f"{what}: found {len(groups)} contributor(s); a valuation needs at least {MIN_CONTRIBUTORS}")
    if problems:
        raise ContributorValidationError(root, problems)
    out = []
    for cid in sorted(groups):
        files = tuple(sorted(groups[cid]))
        h = hashlib.sha256()
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + sha256_file(f).encode())
        out.append(Contributor(cid, root, files, h.hexdigest()[:16]))
    return out


def discover_by_prefix(root: Path, separator: str = "_") -> list[Contributor]:
    """Contributors from the file-name prefix before ``separator`` (``<artist>_<title>.jpg``)."""
    root = Path(root)
    if not root.is_dir():
        raise ContributorValidationError(root, [f"{root}: no such image folder; set contributors_dir to it"])
    if not separator:
        raise ContributorValidationError(root, ["data.prefix_separator is empty; set it to the character that "
                                                "ends the contributor part of a file name (e.g. '_')"])
    mapping, problems = {}, []
    for f in sorted(root.iterdir()):
        if f.name.startswith(".") or not f.is_file() or f.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        prefix = f.stem.split(separator, 1)[0] if separator in f.stem else ""
        if not prefix or not CONTRIBUTOR_ID_RE.match(contributor_id(prefix)):
            problems.append(f"{f}: no contributor prefix before {separator!r}; rename it <contributor>{separator}<rest>")
            continue
        mapping[f.name] = prefix
    if problems:
        raise ContributorValidationError(root, problems)
    return group_images(root, mapping, f"file-name prefixes of {root}")
