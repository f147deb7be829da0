"""A trusted reference set: images no contributor made, one sub-folder per class.

The default instrument (``stages/reference.py``) is trained on it and the quality reference
statistics are computed from it, so the yardstick does not move when contributors arrive or leave,
and a junk contributor cannot pull it toward itself. Its images must already be at the model's
resolution and colour mode: a reference is a measurement standard, it is not resized silently.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from attribution_pipeline.data.contributors import ContributorValidationError, load_contributor_images, scan_contributors

MODES = {1: ("L",), 3: ("RGB",)}
MAX_LISTED = 5


class ReferenceError(ValueError):
    """The reference folder cannot serve; ``problems`` lists every reason."""

    def __init__(self, root: Path, problems: list[str]):
        self.root, self.problems = root, problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"reference folder {root} is not usable ({len(problems)} problem(s)); fix it or point "
                         f"--reference (properties.reference_dir) elsewhere:\n{lines}")


@dataclass
class ReferenceSet:
    """Validated reference images: uint8 ``(N, C, S, S)``, their class index, the class names (the
    sub-folders), a hash of every file, and each file's SHA-256 (to find contributors' copies)."""

    root: Path
    classes: list[str]
    images: np.ndarray
    labels: np.ndarray
    data_hash: str
    file_hashes: frozenset[str]


def _format_problems(scan, size: int, channels: int) -> list[str]:
    bad = []
    for c in scan.accepted:
        for f in c.files:
            with Image.open(f) as im:
                if im.size != (size, size) or im.mode not in MODES[channels]:
                    bad.append(f"{f}: {im.size[0]}x{im.size[1]} {im.mode}")
    if not bad:
        return []
    listed = "; ".join(bad[:MAX_LISTED]) + (f"; and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else "")
    return [f"{len(bad)} image(s) are not {size}x{size} {MODES[channels][0]} (the model's images): {listed}"]


def scan_reference(root: str | Path, size: int, channels: int):
    """The validated class folders of ``root``; raises ReferenceError naming every problem."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ReferenceError(root, [f"{root} does not exist or is not a folder"])
    try:
        scan = scan_contributors(root)
    except ContributorValidationError as exc:
        raise ReferenceError(root, exc.problems) from exc
    problems = [p for ps in scan.rejected.values() for p in ps]
    if len(scan.accepted) + len(scan.rejected) < 2:
        problems.append(f"{root}: {len(scan.accepted)} class folder(s); a reference needs at least 2 (one "
                        "sub-folder of images per class: the instrument learns to tell them apart)")
    problems += _format_problems(scan, size, channels)
    if problems:
        raise ReferenceError(root, problems)
    return scan


def load_reference(root: str | Path, size: int, channels: int) -> ReferenceSet:
    """Validate and read a reference folder (see the module docstring)."""
    scan = scan_reference(root, size, channels)
    arrays = [load_contributor_images(c, size, channels) for c in scan.accepted]
    labels = np.concatenate([np.full(len(a), j, dtype=np.int64) for j, a in enumerate(arrays)])
    return ReferenceSet(scan.root, [c.contributor for c in scan.accepted], np.concatenate(arrays), labels,
                        _digest(scan), frozenset(h for c in scan.accepted for h in c.file_hashes))


def _digest(scan) -> str:
    return hashlib.sha256("\n".join(f"{c.contributor}:{c.data_hash}" for c in scan.accepted).encode()).hexdigest()[:16]


def reference_hash(root: str | Path, size: int, channels: int) -> str:
    """The content hash of a reference folder (what an instrument trained on it is signed with)."""
    return _digest(scan_reference(root, size, channels))


def spatial_correlation(images: np.ndarray) -> float:
    """Mean correlation of horizontally and vertically neighbouring pixels of uint8 ``(N, C, H, W)``
    images: high for natural images and digits, about 0 for pixel noise or shuffled pixels."""
    x = images.astype(np.float64)
    pairs = [(x[..., :, :-1], x[..., :, 1:]), (x[..., :-1, :], x[..., 1:, :])]
    out = []
    for a, b in pairs:
        a, b = a.reshape(len(x), -1), b.reshape(len(x), -1)
        a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
        denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
        out.append(np.where(denom > 0, (a * b).sum(axis=1) / np.where(denom > 0, denom, 1.0), 0.0))
    return float(np.mean(out))
