"""The ``quality`` property: −FID between a coalition's generated images and all real images.

The distance is clean-fid's own math (``cleanfid.fid.frechet_distance`` on feature means and
covariances; ``cleanfid.fid.kernel_distance`` for KID), over a pluggable feature space:

- ``ClassifierFeatures`` (default): the reference classifier's embedding. Works offline and at any
  image size; FIDs in this space are comparable only between runs that share the classifier.
- ``InceptionFeatures``: clean-fid's Inception-v3 (the TorchScript network clean-fid uses), loaded
  from a local weights file the user configures; never downloaded. Images are resized to 299x299
  the way clean-fid's "clean" mode does (PIL bicubic on float pixels in 0..255).

The real images' statistics are computed once (``ReferenceStats``); scoring an image set then only
embeds the generated images.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from cleanfid.fid import frechet_distance, get_batch_features, kernel_distance

from attribution_pipeline.properties.classifier import ReferenceClassifier
from attribution_pipeline.storage.artifacts import atomic_write_bytes

INCEPTION_FILE = "inception-2015-12-05.pt"  # the name clean-fid gives its TorchScript weights
INCEPTION_DIM = 2048


class FeatureExtractor(Protocol):
    """images ``(N, C, H, W)`` in [-1, 1] → features ``(N, D)`` float64; ``name`` tags the space."""

    name: str

    def __call__(self, images: torch.Tensor) -> np.ndarray: ...


class ClassifierFeatures:
    """The reference classifier's penultimate layer as the FID feature space."""

    name = "classifier"

    def __init__(self, classifier: ReferenceClassifier):
        self.classifier = classifier

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        return self.classifier.embed(images).numpy().astype(np.float64)


def _load_inception(weights: Path) -> torch.nn.Module:
    """clean-fid's ``InceptionV3W`` wrapper around a local TorchScript file (no download).

    ``InceptionV3W(path, download=False)`` only accepts a folder holding ``inception-2015-12-05.pt``;
    to accept any file name we load the TorchScript module ourselves and keep clean-fid's forward
    (pixels 0..255 → (x − 128) / 128 → 2048 pool features).
    """
    from cleanfid.inception_torchscript import InceptionV3W

    model = InceptionV3W.__new__(InceptionV3W)
    torch.nn.Module.__init__(model)
    model.base = torch.jit.load(str(weights), map_location="cpu").eval()
    model.layers = model.base.layers
    model.resize_inside = False
    return model.eval()


class InceptionFeatures:
    """clean-fid's Inception-v3 features (2048-d), from a local weights file.

    ``weights`` is clean-fid's TorchScript file (``inception-2015-12-05.pt``) or a folder holding it.
    Images with 1 channel are repeated to RGB (as clean-fid's ``convert('RGB')`` does), quantised
    to uint8 as a saved PNG would be, and resized to 299x299 with clean-fid's "clean" resizer.
    """

    name = "inception"

    def __init__(self, weights: str | Path, batch_size: int = 64, device: str | torch.device = "cpu"):
        path = Path(weights)
        if path.is_dir():
            path = path / INCEPTION_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception weights file {path} does not exist. Put clean-fid's {INCEPTION_FILE} there "
                "(nothing is downloaded at run time), or unset `inception_weights` to use the reference "
                "classifier's features.")
        from cleanfid.resize import build_resizer

        self.weights = path
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.model = _load_inception(path).to(self.device)
        self._resize = build_resizer("clean")

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"Inception features need images (N, 1 or 3, H, W), got {tuple(images.shape)}")
        pixels = ((images.detach().float().cpu() + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8)
        if pixels.shape[1] == 1:
            pixels = pixels.repeat(1, 3, 1, 1)
        hwc = pixels.permute(0, 2, 3, 1).numpy()
        return torch.from_numpy(np.stack([self._resize(im) for im in hwc]).transpose(0, 3, 1, 2).copy())

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        feats = [get_batch_features(self._prepare(images[i:i + self.batch_size]), self.model, self.device)
                 for i in range(0, len(images), self.batch_size)]
        if not feats:
            return np.empty((0, INCEPTION_DIM))
        return np.concatenate(feats).astype(np.float64)


def make_extractor(classifier: ReferenceClassifier, inception_weights: str | Path | None = None, *,
                   device: str | torch.device = "cpu") -> FeatureExtractor:
    """The FID feature space: Inception when local weights are configured, else the classifier."""
    if inception_weights:
        return InceptionFeatures(inception_weights, device=device)
    return ClassifierFeatures(classifier)


# ---- reference statistics ----------------------------------------------------------------------
@dataclass(frozen=True)
class ReferenceStats:
    """Feature statistics of the real images of all contributors.

    ``mu`` (D,), ``sigma`` (D, D) (unbiased covariance, as clean-fid), ``features`` (N, D) float32
    (kept for KID), ``extractor`` the name of the feature space they live in.
    """

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    extractor: str

    @classmethod
    def from_features(cls, features: np.ndarray, extractor: str) -> "ReferenceStats":
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"need features (N >= 2, D), got shape {features.shape}")
        return cls(features.mean(axis=0), np.cov(features, rowvar=False), features.astype(np.float32), extractor)

    @classmethod
    def from_images(cls, images: torch.Tensor, extractor: FeatureExtractor) -> "ReferenceStats":
        return cls.from_features(extractor(images), extractor.name)

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` atomically (temporary sibling, then rename)."""
        path = Path(path)
        buffer = io.BytesIO()  # a file object, so numpy does not append ".npz"
        np.savez(buffer, mu=self.mu, sigma=self.sigma, features=self.features, extractor=np.array(self.extractor))
        atomic_write_bytes(path, buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ReferenceStats":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"reference statistics {path} do not exist: build them first "
                                    "(ReferenceStats.from_images(...).save(path), or materialize `property_reference`)")
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["mu"], z["sigma"], z["features"], str(z["extractor"]))
        except Exception as exc:
            raise ValueError(f"reference statistics {path} are unreadable ({type(exc).__name__}: {exc}); "
                             "delete the file and build them again") from exc

    def check(self, extractor: FeatureExtractor) -> None:
        if extractor.name != self.extractor:
            raise ValueError(f"reference statistics were computed with {self.extractor!r} features but the "
                             f"{extractor.name!r} extractor was given; rebuild the reference statistics "
                             "with the same feature extractor")


# ---- distances ---------------------------------------------------------------------------------
def fid_from_features(features: np.ndarray, stats: ReferenceStats) -> float:
    """Fréchet distance between the Gaussian fitted to ``features`` and the reference, ≥ 0.

    clean-fid's ``frechet_distance`` (it adds 1e-6 to the diagonals when the product of the
    covariances is singular, e.g. fewer images than dimensions). Tiny negative values from
    round-off are clipped to 0.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != stats.dim or len(features) < 2:
        raise ValueError(f"need at least 2 feature rows of dimension {stats.dim}, got shape {features.shape}")
    mu, sigma = features.mean(axis=0), np.cov(features, rowvar=False)
    return max(0.0, float(frechet_distance(mu, sigma, stats.mu, stats.sigma)))


def fid(images: torch.Tensor, stats: ReferenceStats, extractor: FeatureExtractor) -> float:
    """FID of an image set ``(N, C, H, W)`` in [-1, 1] against the reference statistics."""
    stats.check(extractor)
    return fid_from_features(extractor(images), stats)


def quality(images: torch.Tensor, stats: ReferenceStats, extractor: FeatureExtractor) -> float:
    """The ``quality`` utility: −FID, in (−inf, 0]; higher is closer to the real images."""
    return -fid(images, stats, extractor)


def kid_from_features(features: np.ndarray, stats: ReferenceStats, *, seed: int = 0,
                      num_subsets: int = 100, max_subset_size: int = 1000) -> float:
    """clean-fid's KID (unbiased MMD², cubic polynomial kernel, averaged over random subsets).

    clean-fid draws its subsets from numpy's global RNG; we seed it for reproducibility and
    restore its state afterwards. Unbiased, so it can be slightly negative for matching sets.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != stats.dim or len(features) < 2:
        raise ValueError(f"need at least 2 feature rows of dimension {stats.dim}, got shape {features.shape}")
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return float(kernel_distance(features, stats.features.astype(np.float64),
                                     num_subsets=num_subsets, max_subset_size=max_subset_size))
    finally:
        np.random.set_state(state)


def kid(images: torch.Tensor, stats: ReferenceStats, extractor: FeatureExtractor, *, seed: int = 0,
        num_subsets: int = 100, max_subset_size: int = 1000) -> float:
    """KID of an image set ``(N, C, H, W)`` in [-1, 1] against the reference features."""
    stats.check(extractor)
    return kid_from_features(extractor(images), stats, seed=seed, num_subsets=num_subsets,
                             max_subset_size=max_subset_size)
