"""Generated image sets on disk: ``images.npy`` (uint8 ``(N,C,H,W)``) plus a preview grid PNG."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from attribution_pipeline.data.contributors import to_model_range, to_uint8
from attribution_pipeline.storage.artifacts import atomic_folder, read_manifest

IMAGES_FILE = "images.npy"
GRID_FILE = "grid.png"


def image_grid(images_uint8: np.ndarray, max_images: int = 64, scale: int = 4) -> Image.Image:
    """Tile up to ``max_images`` images into one picture, each upscaled ``scale`` times."""
    imgs = images_uint8[:max_images]
    n, c, h, w = imgs.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.zeros((c, rows * (h + 1), cols * (w + 1)), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        canvas[:, r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = imgs[i]
    mode_arr = canvas[0] if c == 1 else canvas.transpose(1, 2, 0)
    pic = Image.fromarray(mode_arr)
    return pic.resize((pic.width * scale, pic.height * scale), Image.Resampling.NEAREST)


def save_image_set(images, folder: Path, metadata: dict | None = None) -> dict:
    """Save a float ``(N,C,H,W)`` [-1,1] tensor (or uint8 array) atomically; returns the manifest."""
    arr = images if isinstance(images, np.ndarray) and images.dtype == np.uint8 else to_uint8(images)
    meta = {"kind": "image_set", "n_images": int(arr.shape[0]), "shape": list(arr.shape[1:]), **(metadata or {})}
    with atomic_folder(folder, meta) as tmp:
        np.save(tmp / IMAGES_FILE, arr)
        image_grid(arr).save(tmp / GRID_FILE)
    return read_manifest(folder)


def load_image_set(folder: Path):
    """The image set as a float tensor in [-1, 1] (checks the manifest first)."""
    read_manifest(folder)
    return to_model_range(np.load(Path(folder) / IMAGES_FILE))


def image_set_problems(folder: Path, expected_n: int, expected_shape: tuple[int, ...] | None = None) -> list[str]:
    """Why an image set cannot be scored, or []: incomplete (no manifest), a count or a shape other
    than expected, or constant images (every pixel equal: a collapsed or broken generator)."""
    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        return [f"{folder}: incomplete image set (no manifest)"]
    arr = np.load(folder / IMAGES_FILE, mmap_mode="r")
    problems = []
    if arr.shape[0] != expected_n:
        problems.append(f"{folder}: {arr.shape[0]} images, expected {expected_n}")
    if expected_shape is not None and tuple(arr.shape[1:]) != tuple(expected_shape):
        problems.append(f"{folder}: images of shape {tuple(arr.shape[1:])}, expected {tuple(expected_shape)}")
    flat = np.asarray(arr).reshape(arr.shape[0], -1)
    constant = int(np.sum(flat.min(axis=1) == flat.max(axis=1))) if flat.size else 0
    if constant:
        problems.append(f"{folder}: {constant} constant image(s) (every pixel equal)")
    return problems
