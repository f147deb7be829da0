"""The embedded data sets, built deterministically from scikit-learn's bundled digits (no download).

1,797 8x8 images ship inside scikit-learn (0..16 intensities, written here as 8-bit grayscale PNGs
scaled to 0..255). They are split once, by content hash, into

- a **trusted reference** (``REFERENCE_FRACTION`` of each digit class, ``data/reference/digit_<d>``):
  no contributor holds any of its images; the default instrument (a digit classifier, the default's
  "Inception") is trained on it and the quality reference statistics come from it;
- a **pool** the contributor sets are drawn from:
  - ``default`` (``data/contributors``): 11 contributors that differ in *quality*, not only in class.
    Six clean ones of mixed classes, and five a data buyer would pay less for: ``noisy`` (pixel noise),
    ``blurred``, ``shifted`` (off-centre), ``scrambled`` (pixels shuffled: junk) and ``few`` (a dozen
    clean images). Near-copies of another contributor's images are not among them: ``quality`` measures
    images, and a twelfth contributor of faint copies of ``clean_a`` ranked first
    (``benchmarks/results/instruments-near-duplicates.md``). Expected ``quality`` order (``EXPECTED_QUALITY_ORDER``): the clean ones first, ``scrambled`` and
    ``noisy`` last;
  - ``classes`` (``data/contributors-classes``): the paper's game, one contributor per digit class;
  - ``fidelity`` (``data/contributors-fidelity``): 30 contributors, each digit class split across a
    large clean, a small clean and a defective contributor, for the fidelity benchmark (with 10
    contributors a random attribution already scores LDS ±60–75).

Identical images (the digits hold a few exact duplicates) always land on the same side of the split.
Every write is atomic (a temporary folder renamed into place).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from attribution_pipeline.storage.artifacts import temp_prefix

N_CLASSES = 10
REFERENCE_FRACTION = 0.3
SEED = 20261201  # every draw below; changing it changes the committed data sets
DATA_SETS = ("reference", "default", "classes", "fidelity")
FOLDERS = {"reference": "reference", "default": "contributors", "classes": "contributors-classes",
           "fidelity": "contributors-fidelity"}
EXPECTED_QUALITY_ORDER = ("clean_a", "clean_b", "clean_c", "clean_d", "clean_e", "clean_f", "few",
                          "shifted", "blurred", "noisy", "scrambled")


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (1797, 8, 8) in 0..255, labels int (1797,))."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    return images, d.target.astype(np.int64)


def class_folder(label: int) -> str:
    """The folder (and contributor id, in the ``classes`` set) of a digit class."""
    return f"digit_{label}"


def reference_split(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(reference indices, pool indices): ``REFERENCE_FRACTION`` of each class, chosen by a seeded
    order of content hashes, so that byte-identical images are never on both sides."""
    digest = [hashlib.sha256(im.tobytes()).hexdigest() for im in images]
    rank = {h: hashlib.sha256(f"{SEED}:{h}".encode()).hexdigest() for h in set(digest)}
    reference = []
    for label in range(N_CLASSES):
        hashes = sorted({digest[i] for i in np.flatnonzero(labels == label)}, key=rank.get)
        chosen = set(hashes[: round(REFERENCE_FRACTION * len(hashes))])
        reference += [i for i in np.flatnonzero(labels == label) if digest[i] in chosen]
    reference_hashes = {digest[i] for i in reference}
    pool = [i for i in range(len(images)) if digest[i] not in reference_hashes]
    return np.array(sorted(reference)), np.array(pool)


# ---- defects a data buyer cares about (uint8 (N, 8, 8) in, uint8 out) ---------------------------
def add_noise(x: np.ndarray, rng: np.random.Generator, sd: float = 70.0) -> np.ndarray:
    return np.clip(x.astype(np.float64) + rng.normal(0.0, sd, x.shape), 0, 255).round().astype(np.uint8)


def blur(x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """3x3 box blur (edges replicated)."""
    padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1)), mode="edge")
    out = sum(padded[:, i:i + 8, j:j + 8] for i in range(3) for j in range(3)) / 9.0
    return out.round().astype(np.uint8)


def shift(x: np.ndarray, rng: np.random.Generator | None = None, by: int = 2) -> np.ndarray:
    """Off-centre: moved ``by`` pixels right and down, the uncovered border black."""
    out = np.zeros_like(x)
    out[:, by:, by:] = x[:, :-by, :-by]
    return out


def scramble(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Junk: each image's pixels shuffled (same intensities, no digit left)."""
    flat = x.reshape(len(x), -1).copy()
    for row in flat:
        rng.shuffle(row)
    return flat.reshape(x.shape)


def _default_set(images: np.ndarray, pool: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    order = rng.permutation(pool)
    size = 100
    parts = {f"clean_{c}": order[i * size:(i + 1) * size] for i, c in enumerate("abcdef")}
    defects: dict[str, Callable] = {"noisy": add_noise, "blurred": blur, "shifted": shift, "scrambled": scramble}
    out = {name: images[idx] for name, idx in parts.items()}
    for j, (name, fn) in enumerate(defects.items()):
        out[name] = fn(images[order[(6 + j) * size:(7 + j) * size]], rng)
    out["few"] = images[order[10 * size:10 * size + 12]]
    return out


def _fidelity_set(images: np.ndarray, labels: np.ndarray, pool: np.ndarray,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per class: a large clean contributor, a small clean one and a defective one (noise or blur)."""
    out = {}
    for d in range(N_CLASSES):
        idx = rng.permutation(pool[labels[pool] == d])
        third = len(idx) // 3
        out[f"d{d}_large"] = images[idx[third:]]
        out[f"d{d}_small"] = images[idx[: third // 2]]
        out[f"d{d}_{'noisy' if d % 2 == 0 else 'blurred'}"] = (add_noise if d % 2 == 0 else blur)(
            images[idx[third // 2: third]], rng)
    return out


def data_set(name: str) -> dict[str, np.ndarray]:
    """{contributor (or reference class folder): uint8 images (N, 8, 8)} of one embedded data set."""
    if name not in DATA_SETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {DATA_SETS}")
    images, labels = digits_arrays()
    reference, pool = reference_split(images, labels)
    rng = np.random.default_rng(SEED)
    if name == "reference":
        return {class_folder(d): images[reference[labels[reference] == d]] for d in range(N_CLASSES)}
    if name == "classes":
        return {class_folder(d): images[pool[labels[pool] == d]] for d in range(N_CLASSES)}
    if name == "fidelity":
        return _fidelity_set(images, labels, pool, rng)
    return _default_set(images, pool, rng)


def write_data_set(name: str, root: str | Path, overwrite: bool = False) -> Path:
    """Write data set ``name`` under ``root`` (one folder of PNGs per contributor) and return it."""
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"{root} is not empty; pass --overwrite to rewrite it")
    folders = data_set(name)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(root.name), dir=root.parent))
    try:
        for folder, arrays in folders.items():
            (tmp / folder).mkdir()
            for i, im in enumerate(arrays):
                Image.fromarray(im, mode="L").save(tmp / folder / f"img_{i:04d}.png", optimize=False)
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root
