"""The reference classifier: which contributor does a generated image look like?

Its labels are the contributors (class k = contributor k). It scores generated image sets in two
ways: its class probabilities give the ``diversity`` property and ``recognized_fraction``, and its
penultimate layer (the embedding) is the default feature space of the ``quality`` property (FID),
which works offline at any image size, unlike Inception.

The network is a few 3x3 convolutions, adaptive average pooling to a fixed grid (so any C, H, W
given at construction works), an embedding layer and a linear head. Training is one seeded loop:
Adam, cosine learning rate, label smoothing, optional ±1 pixel shifts, and a stratified held-out
split to report accuracy.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from attribution_pipeline.storage.artifacts import atomic_write_bytes

FORMAT = "attribution_pipeline.reference_classifier/1"
# Intra-op threads for this small network. Its tensors are tiny, so extra threads only add
# synchronisation, which becomes a 50x slow-down when the cores are shared with other work.
NUM_THREADS = 1


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` torch intra-op threads (``None``: unchanged), then restore."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ReferenceClassifier(nn.Module):
    """CNN over images ``(N, C, H, W)`` in [-1, 1] → logits over ``n_classes`` contributors.

    ``embed`` returns the ``embed_dim`` penultimate features (the embedding layer's output before
    its ReLU), the FID feature space.
    """

    def __init__(self, in_channels: int, image_size: Sequence[int], n_classes: int, *,
                 embed_dim: int = 64, width: int = 32, class_names: Sequence[str] | None = None):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2 (one class per contributor), got {n_classes}")
        h, w = (int(image_size), int(image_size)) if isinstance(image_size, int) else map(int, image_size)
        if class_names is not None and len(class_names) != n_classes:
            raise ValueError(f"{len(class_names)} class names for {n_classes} classes")
        self.config = {"in_channels": int(in_channels), "image_size": [h, w], "n_classes": int(n_classes),
                       "embed_dim": int(embed_dim), "width": int(width)}
        names = class_names if class_names is not None else range(n_classes)
        self.class_names = [str(c) for c in names]
        # One 2x downsampling only when the image is large enough to keep a 4x4 grid; the adaptive
        # pool then maps any remaining size to 4x4 (identity for the 8x8 digits).
        grid = 4
        down = nn.MaxPool2d(2) if min(h, w) >= 2 * grid else nn.Identity()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            down,
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(grid),
            nn.Flatten(),
        )
        # The embedding is read before its ReLU: after it, units that never fire would make the
        # feature covariance singular (about half of them on the digits).
        self.embedding = nn.Linear(2 * width * grid * grid, embed_dim)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(embed_dim, n_classes)

    # ---- shapes -------------------------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        return self.config["n_classes"]

    @property
    def embed_dim(self) -> int:
        return self.config["embed_dim"]

    def _check(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.config["in_channels"]:
            raise ValueError(f"expected images (N, {self.config['in_channels']}, H, W) in [-1, 1], "
                             f"got shape {tuple(images.shape)}")
        return images.to(device=next(self.parameters()).device, dtype=torch.float32)

    # ---- network ------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, n_classes)``; trains in ``train()`` mode (dropout on)."""
        return self.head(self.dropout(F.relu(self.embedding(self.features(images)))))

    @torch.no_grad()
    def _batched(self, images: torch.Tensor, fn, out_dim: int, batch_size: int) -> torch.Tensor:
        images = self._check(images)
        was_training = self.training
        self.eval()
        try:
            with torch_threads(NUM_THREADS):
                out = [fn(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
        finally:
            self.train(was_training)
        if not out:
            return torch.empty(0, out_dim)
        return torch.cat(out).cpu()

    def embed(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Penultimate features ``(N, embed_dim)`` (float32, CPU), in eval mode."""
        return self._batched(images, lambda x: self.embedding(self.features(x)), self.embed_dim, batch_size)

    def logits(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Logits ``(N, n_classes)`` (float32, CPU), in eval mode."""
        return self._batched(images, self.forward, self.n_classes, batch_size)

    def predict_proba(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Class probabilities ``(N, n_classes)``; each row sums to 1."""
        return torch.softmax(self.logits(images, batch_size), dim=1)

    def predict(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Most probable class index per image, int64 ``(N,)``."""
        return self.logits(images, batch_size).argmax(dim=1)

    # ---- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write weights, constructor arguments and class names to ``path`` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": FORMAT, "config": dict(self.config), "class_names": list(self.class_names),
                   "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()}}
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "ReferenceClassifier":
        """Rebuild a classifier written by ``save`` (in eval mode)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"reference classifier {path} does not exist: train one with "
                                    "train_classifier and save it there (or materialize `property_reference`)")
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # truncated file, not a torch file, ...
            raise ValueError(f"reference classifier {path} is unreadable ({type(exc).__name__}: {exc}); "
                             "delete it and train the classifier again") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{path} is not a reference classifier file (expected format {FORMAT!r}); "
                             "delete it and train the classifier again")
        cfg = payload["config"]
        model = cls(cfg["in_channels"], cfg["image_size"], cfg["n_classes"], embed_dim=cfg["embed_dim"],
                    width=cfg["width"], class_names=payload["class_names"])
        model.load_state_dict(payload["state_dict"])
        return model.eval()


# ---- training ---------------------------------------------------------------------------------
def holdout_split(labels: torch.Tensor | np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified seeded split: (train indices, held-out indices), each sorted.

    Every class keeps round(fraction * n_class) images out, but at least one in training.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        held.append(idx[:min(int(round(fraction * len(idx))), len(idx) - 1)])
    held_idx = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), held_idx)
    return train_idx, held_idx


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to one pixel in each direction (edge pixels replicated)."""
    n, c, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    dy = torch.randint(0, 3, (n,), generator=gen)
    dx = torch.randint(0, 3, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def _labelled_cpu(images, labels, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` as float32 ``(N, C, H, W)`` and ``labels`` as int64 ``(N,)`` in ``0..n_classes-1``,
    on the CPU; a ValueError when the shapes or labels do not fit."""
    images = torch.as_tensor(images, dtype=torch.float32).cpu()
    labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
    if images.ndim != 4 or len(images) != len(labels):
        raise ValueError(f"expected images (N, C, H, W) and labels (N,), "
                         f"got {tuple(images.shape)} and {tuple(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}, got {int(labels.min())}..{int(labels.max())}")
    return images, labels


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, n_classes: int, *, class_names: Sequence[str] | None = None,
    seed: int = 0, epochs: int = 15, batch_size: int = 64, lr: float = 3e-3, holdout_fraction: float = 0.1,
    augment: bool = True, label_smoothing: float = 0.1, embed_dim: int = 64, width: int = 32,
    num_threads: int | None = NUM_THREADS,
) -> tuple[ReferenceClassifier, float]:
    """Train the reference classifier on ``images`` ``(N, C, H, W)`` in [-1, 1] with ``labels``
    (int64 ``(N,)`` in ``0..n_classes-1``).

    A stratified ``holdout_fraction`` of each class (``holdout_split(labels, fraction, seed)``) is
    kept out of training. Label smoothing keeps the classifier from being confident on images that
    look like no contributor (uniform noise on the digits: ~30% of images reach probability 0.5
    with 0.1, ~80% without), which ``recognized_fraction`` relies on.

    Returns ``(classifier in eval mode, held-out accuracy in [0, 1])``; the accuracy is NaN when
    ``holdout_fraction`` is 0. Deterministic for a given seed on one device; the global torch RNG
    and thread count are left untouched (``num_threads`` torch threads are used while training;
    ``None`` keeps torch's setting).
    """
    images, labels = _labelled_cpu(images, labels, n_classes)  # trained on CPU: the network is tiny
    train_idx, held_idx = holdout_split(labels.numpy(), holdout_fraction, seed)
    x, y = images[train_idx], labels[train_idx]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ReferenceClassifier(images.shape[1], images.shape[2:], n_classes, embed_dim=embed_dim,
                                    width=width, class_names=class_names)
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = max(1, math.ceil(len(x) / batch_size))
    total = epochs * steps_per_epoch

    def cosine(step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(1, total))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)

    model.train()
    with torch.random.fork_rng(devices=[]), torch_threads(num_threads):
        torch.manual_seed(seed + 2)  # dropout masks
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), batch_size):
                idx = order[i:i + batch_size]
                xb = _shift(x[idx], gen) if augment else x[idx]
                loss = F.cross_entropy(model(xb), y[idx], label_smoothing=label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    model.eval()

    if len(held_idx) == 0:
        return model, float("nan")
    accuracy = float((model.predict(images[held_idx]) == labels[held_idx]).float().mean())
    return model, accuracy

