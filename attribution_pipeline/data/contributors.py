"""Contributors: one sub-folder of a contributors directory per contributor.

The folder name is the contributor id (letters, digits, ``_ . -``). It holds PNG/JPEG images of
any size and mode; they are converted to the model's resolution and channels when loaded.

Validation happens before any training: every problem in the directory is collected and
reported at once (file or folder, rule, fix), so a bad upload never starts a valuation.

Documented outcomes:
- hidden files (``.DS_Store``, ``.gitkeep``…) are ignored silently;
- files with another extension (``notes.txt``) are skipped with a warning;
- a zero-byte, truncated or unreadable image is an error (the upload is broken: fix or remove it);
- an empty contributor folder, an invalid folder name, or fewer than 2 contributors is an error.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

CONTRIBUTOR_ID_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MIN_CONTRIBUTORS = 2
# Refuse images above this many pixels instead of letting Pillow decode gigabytes.
MAX_IMAGE_PIXELS = 200_000_000


class ContributorValidationError(ValueError):
    """The contributors directory cannot be valued; ``problems`` lists every reason."""

    def __init__(self, root: Path, problems: list[str]):
        self.root = root
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"contributors directory {root} is not valid ({len(problems)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class Contributor:
    """A validated contributor: its id, its image files (sorted) and a hash of their bytes."""

    contributor: str
    path: Path
    files: tuple[Path, ...]
    data_hash: str
    skipped: tuple[str, ...] = field(default=())

    @property
    def n_images(self) -> int:
        return len(self.files)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_image(path: Path) -> str | None:
    """Return a problem description, or None when the file decodes as an image."""
    if path.stat().st_size == 0:
        return f"{path}: zero-byte file (an interrupted upload?); replace or delete it"
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                return f"{path}: {w}x{h} pixels exceeds the limit of {MAX_IMAGE_PIXELS:,}; downscale it"
            im.verify()  # reads the whole file: catches truncation and bad checksums
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"{path}: not a readable PNG/JPEG image ({exc.__class__.__name__}: {exc}); replace or delete it"
    return None


def discover_contributors(root: str | Path, check_images: bool = True) -> list[Contributor]:
    """Validate ``root`` and return its contributors sorted by id.

    Raises ContributorValidationError naming every bad file or folder; nothing is written.
    """
    root = Path(root)
    if not root.is_dir():
        raise ContributorValidationError(root, [f"{root}: no such directory; pass --contributors DIR"])
    problems: list[str] = []
    found: list[Contributor] = []
    for folder in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        if not folder.is_dir():
            warnings.warn(f"{folder}: a file at the top of the contributors directory is ignored", stacklevel=2)
            continue
        if not CONTRIBUTOR_ID_RE.match(folder.name):
            problems.append(
                f"{folder}: invalid contributor folder name {folder.name!r}; use only letters, digits, '_', '.', '-'"
            )
            continue
        files, skipped = [], []
        for f in sorted(folder.rglob("*")):
            if f.is_dir() or any(part.startswith(".") for part in f.relative_to(folder).parts):
                continue
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append(f.name)
                warnings.warn(f"{f}: not a PNG/JPEG file, skipped", stacklevel=2)
                continue
            problem = _check_image(f) if check_images else None
            if problem:
                problems.append(problem)
            else:
                files.append(f)
        if not files:
            problems.append(f"{folder}: contributor {folder.name!r} has no PNG/JPEG images; add images or remove the folder")
            continue
        h = hashlib.sha256()
        for f in files:
            h.update(f.relative_to(folder).as_posix().encode() + b"\0" + _sha256_file(f).encode())
        found.append(Contributor(folder.name, folder, tuple(files), h.hexdigest()[:16], tuple(skipped)))
    if not problems and len(found) < MIN_CONTRIBUTORS:
        problems.append(
            f"{root}: found {len(found)} contributor folder(s); a valuation needs at least {MIN_CONTRIBUTORS}"
        )
    if problems:
        raise ContributorValidationError(root, problems)
    return found


def load_image(path: Path, size: int, channels: int) -> np.ndarray:
    """Decode one image into uint8 ``(channels, size, size)``.

    Any mode is accepted: 16-bit grayscale is rescaled to 8 bits, alpha is composited on white,
    palette images are expanded. Non-square images are centre-cropped to a square, then resized
    with a Lanczos filter (anti-aliased).
    """
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float64)
            top = 65535.0 if arr.max() > 255 else 255.0
            im = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), mode="L")
        elif im.mode == "F":
            arr = np.asarray(im, dtype=np.float64)
            im = Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8))
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)
        im = im.convert("L" if channels == 1 else "RGB")
        w, h = im.size
        if w != h:
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            im = im.crop((left, top, left + side, top + side))
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.LANCZOS)
        arr = np.asarray(im, dtype=np.uint8)
    if channels == 1:
        arr = arr[None, :, :]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def load_contributor_images(contributor: Contributor, size: int, channels: int) -> np.ndarray:
    """All of a contributor's images as uint8 ``(N, channels, size, size)``."""
    return np.stack([load_image(f, size, channels) for f in contributor.files])


def to_model_range(images_uint8: np.ndarray):
    """uint8 ``(N,C,H,W)`` in 0..255 → float32 torch tensor in [-1, 1]."""
    import torch

    return torch.from_numpy(images_uint8.astype(np.float32) / 127.5 - 1.0)


def to_uint8(images) -> np.ndarray:
    """float tensor/array in [-1, 1] ``(N,C,H,W)`` → uint8 ``(N,C,H,W)``."""
    arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    return np.clip(np.round((arr + 1.0) * 127.5), 0, 255).astype(np.uint8)
