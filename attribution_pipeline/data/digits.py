"""The embedded default data set: scikit-learn's bundled digits as 10 contributors.

1,797 8x8 images ship inside scikit-learn (no download). Contributor ``digit_d`` holds every
image of class d, written as 8-bit grayscale PNGs (0..16 intensities scaled to 0..255,
rounded). The write is deterministic and atomic (a temporary folder renamed into place).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

N_CLASSES = 10


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (1797, 8, 8) in 0..255, labels int (1797,))."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    return images, d.target.astype(np.int64)


def contributor_id(label: int) -> str:
    return f"digit_{label}"


def write_default_contributors(root: str | Path, overwrite: bool = False) -> Path:
    """Write the 10 digit contributors under ``root`` (created if missing) and return it."""
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"{root} is not empty; pass overwrite=True to rewrite the default contributors")
    images, labels = digits_arrays()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".digits-", dir=root.parent))
    try:
        for label in range(N_CLASSES):
            folder = tmp / contributor_id(label)
            folder.mkdir()
            for i in np.flatnonzero(labels == label):
                Image.fromarray(images[i], mode="L").save(folder / f"img_{i:04d}.png", optimize=False)
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root
