"""Contributors: one sub-folder of a contributors directory per contributor.

The folder name is the contributor id: any printable name, spaces and non-ASCII letters included
(``Zoë Müller``), normalised to Unicode NFC, without leading or trailing spaces and without the
characters ``\\ / : * ? " < > |`` (they break paths on some systems). It holds PNG/JPEG images of
any size and mode; they are converted to the model's resolution and channels when loaded.

Validation happens before any training, folder by folder: every problem is collected and reported
at once (file or folder, rule, fix). ``discover_contributors`` is strict (the CLI refuses a
directory with any bad folder, so a bad upload never starts a valuation);
``scan_contributors`` keeps the good folders and lists the rejected ones with their reasons (the
sensor registers the good ones and leaves a rejected one out until its folder changes).

Documented outcomes:
- hidden files (``.DS_Store``, ``.gitkeep``…) are ignored silently;
- files with another extension (``notes.txt``) are skipped with a warning;
- a zero-byte, truncated or unreadable image, or an image whose decoding would need more than
  ``MAX_IMAGE_PIXELS`` pixels, is an error that rejects its contributor (fix or remove the file);
  JPEGs are decoded at 1/8 scale when that is still ≥ 4× the model's size, so a 12,000 × 12,000
  JPEG is accepted while a 12,000 × 12,000 PNG is rejected;
- an empty contributor folder or an invalid folder name rejects that folder;
- fewer than 2 contributors is an error;
- the same image (byte-identical file) submitted by several contributors is kept in each, and
  flagged: ``duplicate_images`` names the other contributors (``contributors`` table in DuckDB).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The ids other sources (labels files, file-name prefixes: data/sources.py) map their labels to.
CONTRIBUTOR_ID_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
FORBIDDEN_NAME_CHARS = frozenset('\\/:*?"<>|')
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MIN_CONTRIBUTORS = 2
# Refuse images whose decoding needs more pixels than this (RGBA: 4 bytes each, so ≤ 256 MB)
# instead of letting Pillow decode gigabytes.
MAX_IMAGE_PIXELS = 64_000_000
JPEG_DRAFT_FACTOR = 8  # JPEGs decode at 1/8 scale when the result stays ≥ 4× the model's size


class ContributorValidationError(ValueError):
    """The contributors directory cannot be valued; ``problems`` lists every reason."""

    def __init__(self, root: Path, problems: list[str]):
        self.root = root
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"contributors directory {root} is not valid ({len(problems)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class Contributor:
    """A validated contributor: its id, its image files (sorted), a hash of their bytes, and each
    file's SHA-256 (to find the same image submitted by several contributors)."""

    contributor: str
    path: Path
    files: tuple[Path, ...]
    data_hash: str
    skipped: tuple[str, ...] = field(default=())
    file_hashes: tuple[str, ...] = field(default=())

    @property
    def n_images(self) -> int:
        return len(self.files)


@dataclass
class ContributorScan:
    """A contributors directory, folder by folder: the valid contributors (sorted by id), the
    rejected folders with every problem, and byte-identical images shared between contributors."""

    root: Path
    accepted: list[Contributor]
    rejected: dict[str, list[str]]  # folder name -> problems

    @property
    def ids(self) -> list[str]:
        return [c.contributor for c in self.accepted]

    def duplicates(self) -> dict[str, dict[str, int]]:
        """{contributor: {other contributor: images they share}} (only contributors with some)."""
        return duplicate_images(self.accepted)


def contributor_id(folder_name: str) -> str:
    """The contributor id of a folder: its name in Unicode NFC (macOS writes NFD)."""
    return unicodedata.normalize("NFC", folder_name)


def name_problem(folder: Path) -> str | None:
    """Why a folder name cannot be a contributor id, or None."""
    name = folder.name
    if name != name.strip():
        return f"{folder}: folder name {name!r} starts or ends with a space; rename it"
    bad = sorted({ch for ch in name if ch in FORBIDDEN_NAME_CHARS or unicodedata.category(ch).startswith("C")})
    if bad:
        return (f"{folder}: invalid contributor folder name {name!r} (contains {''.join(bad)!r}); use letters "
                'in any script, digits, spaces and punctuation other than \\ / : * ? " < > |')
    return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def decoded_pixels(im: Image.Image, size: int | None = None) -> int:
    """Pixels Pillow will decode for ``im`` (JPEG at 1/8 scale where ``load_image`` drafts it)."""
    w, h = im.size
    if im.format == "JPEG" and min(w, h) // JPEG_DRAFT_FACTOR >= 4 * (size or 32):
        return (-(-w // JPEG_DRAFT_FACTOR)) * (-(-h // JPEG_DRAFT_FACTOR))
    return w * h


def check_image(path: Path) -> str | None:
    """Return a problem description, or None when the file decodes as an image."""
    if path.stat().st_size == 0:
        return f"{path}: zero-byte file (an interrupted upload?); replace or delete it"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            with Image.open(path) as im:
                w, h = im.size
                if decoded_pixels(im) > MAX_IMAGE_PIXELS:
                    return (f"{path}: {w}x{h} = {w * h:,} pixels exceeds the limit of {MAX_IMAGE_PIXELS:,} "
                            "(the model trains on small images); downscale it or save it as JPEG")
                im.verify()  # reads the whole file: catches truncation and bad checksums
    except Image.DecompressionBombError as exc:
        return f"{path}: too large to decode safely ({exc}); downscale it"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"{path}: not a readable PNG/JPEG image ({exc.__class__.__name__}: {exc}); replace or delete it"
    return None


def validate_folder(folder: Path, check_images: bool = True) -> tuple[Contributor | None, list[str]]:
    """One contributor folder: (the contributor, []) when valid, else (None, every problem)."""
    problem = name_problem(folder)
    if problem:
        return None, [problem]
    problems: list[str] = []
    files, skipped = [], []
    for f in sorted(folder.rglob("*")):
        if f.is_dir() or any(part.startswith(".") for part in f.relative_to(folder).parts):
            continue
        if f.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(f.name)
            warnings.warn(f"{f}: not a PNG/JPEG file, skipped", stacklevel=3)
            continue
        bad = check_image(f) if check_images else None
        if bad:
            problems.append(bad)
        else:
            files.append(f)
    if not files and not problems:
        problems.append(f"{folder}: contributor {folder.name!r} has no PNG/JPEG images (yet); add images "
                        "or remove the folder")
    if problems:
        return None, problems
    h = hashlib.sha256()
    file_hashes = []
    for f in files:
        digest = sha256_file(f)
        file_hashes.append(digest)
        h.update(f.relative_to(folder).as_posix().encode() + b"\0" + digest.encode())
    return Contributor(contributor_id(folder.name), folder, tuple(files), h.hexdigest()[:16], tuple(skipped),
                       tuple(file_hashes)), []


def contributor_folders(root: Path) -> list[Path]:
    """The candidate contributor folders of ``root``: visible sub-folders, sorted by name."""
    out = []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if not p.is_dir():
            warnings.warn(f"{p}: a file at the top of the contributors directory is ignored", stacklevel=3)
            continue
        out.append(p)
    return out


def scan_contributors(root: str | Path, check_images: bool = True,
                      only: Iterable[str] | None = None) -> ContributorScan:
    """Validate every contributor folder of ``root`` (or only the ids in ``only``) independently.

    Never raises for a bad folder: it lands in ``rejected`` with its problems. Raises
    ContributorValidationError only when ``root`` is not a directory, or when an id of ``only``
    has no folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise ContributorValidationError(root, [f"{root}: no such directory; pass --contributors DIR"])
    folders = contributor_folders(root)
    by_id: dict[str, list[Path]] = defaultdict(list)
    for folder in folders:
        by_id[contributor_id(folder.name)].append(folder)
    wanted = None if only is None else set(only)
    if wanted is not None:
        absent = sorted(wanted - set(by_id))
        if absent:
            raise ContributorValidationError(root, [f"{root / a}: contributor {a!r} is gone (removed or renamed "
                                                    "since it was validated)" for a in absent])
    accepted: list[Contributor] = []
    rejected: dict[str, list[str]] = {}
    for cid, paths in sorted(by_id.items()):
        if wanted is not None and cid not in wanted:
            continue
        if len(paths) > 1:
            rejected[cid] = [f"{root}: folders {[p.name for p in paths]} are the same contributor id {cid!r} once "
                             "normalised (Unicode NFC); merge or rename them"]
            continue
        found, problems = validate_folder(paths[0], check_images)
        if found is None:
            rejected[paths[0].name] = problems
        else:
            accepted.append(found)
    return ContributorScan(root, accepted, rejected)


def shared_image_hashes(contributors: Iterable[Contributor]) -> set[str]:
    """SHA-256 of every image file that more than one contributor submitted."""
    owners: dict[str, set[str]] = defaultdict(set)
    for c in contributors:
        for digest in getattr(c, "file_hashes", ()):  # sources other than folders carry none
            owners[digest].add(c.contributor)
    return {d for d, ids in owners.items() if len(ids) > 1}


def duplicate_images(contributors: Iterable[Contributor]) -> dict[str, dict[str, int]]:
    """{contributor: {other: number of byte-identical images both submitted}}."""
    owners: dict[str, set[str]] = defaultdict(set)
    for c in contributors:
        for digest in getattr(c, "file_hashes", ()):  # sources other than folders carry none
            owners[digest].add(c.contributor)
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for ids in owners.values():
        if len(ids) > 1:
            for a in ids:
                for b in ids - {a}:
                    out[a][b] += 1
    return {a: dict(sorted(d.items())) for a, d in sorted(out.items())}


def discover_contributors(root: str | Path, check_images: bool = True) -> list[Contributor]:
    """Validate ``root`` and return its contributors sorted by id.

    Strict: raises ContributorValidationError naming every bad file or folder; nothing is written.
    """
    scan = scan_contributors(root, check_images)
    problems = [p for ps in scan.rejected.values() for p in ps]
    if not problems and len(scan.accepted) < MIN_CONTRIBUTORS:
        problems.append(
            f"{scan.root}: found {len(scan.accepted)} contributor folder(s); a valuation needs at least {MIN_CONTRIBUTORS}"
        )
    if problems:
        raise ContributorValidationError(scan.root, problems)
    return scan.accepted


def load_image(path: Path, size: int, channels: int) -> np.ndarray:
    """Decode one image into uint8 ``(channels, size, size)``.

    Any mode is accepted: 16-bit grayscale is rescaled to 8 bits, alpha is composited on white,
    palette images are expanded. Non-square images are centre-cropped to a square, then resized
    with a Lanczos filter (anti-aliased).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # validation applied our own limit
        im = Image.open(path)
    with im:
        if decoded_pixels(im, size) < im.size[0] * im.size[1]:  # a large JPEG: decode at 1/8 scale
            im.draft("L" if channels == 1 else "RGB", (im.size[0] // JPEG_DRAFT_FACTOR, im.size[1] // JPEG_DRAFT_FACTOR))
        im = ImageOps.exif_transpose(im)
        factor = min(im.size) // (4 * size)
        if factor >= 2:  # box-average a large image early, so that later conversions stay small
            if im.mode.startswith("I;16"):
                im = im.convert("I")
            if im.mode in ("L", "LA", "RGB", "RGBA", "I", "F"):
                im = im.reduce(factor)
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


def stack_member_arrays(paths: Iterable[Path], hint: str = "") -> tuple[np.ndarray, np.ndarray]:
    """The cached arrays of a coalition's members (one ``.npy`` per member, in member order),
    concatenated along the first axis, and the member index of each row (int64 ``(N,)``).
    A missing file is a ``FileNotFoundError`` naming it and the asset that writes it (+ ``hint``)."""
    arrays, labels = [], []
    for j, path in enumerate(paths):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} is missing: materialize the `contributors` asset first{hint}")
        a = np.load(path)
        arrays.append(a)
        labels.append(np.full(len(a), j, dtype=np.int64))
    return np.concatenate(arrays), np.concatenate(labels)


def to_model_range(images_uint8: np.ndarray):
    """uint8 ``(N,C,H,W)`` in 0..255 → float32 torch tensor in [-1, 1]."""
    import torch

    return torch.from_numpy(images_uint8.astype(np.float32) / 127.5 - 1.0)


def to_uint8(images) -> np.ndarray:
    """float tensor/array in [-1, 1] ``(N,C,H,W)`` → uint8 ``(N,C,H,W)``."""
    arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    return np.clip(np.round((arr + 1.0) * 127.5), 0, 255).astype(np.uint8)
