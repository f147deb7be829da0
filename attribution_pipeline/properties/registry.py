"""The properties a coalition's generated images can be scored with, by name.

A property is a global function of an image set: ``fn(images, context) -> float``, where
``images`` is ``(N, C, H, W)`` in [-1, 1] and ``context`` (``PropertyContext``) holds the
instruments: the instrument classifier (trained on a trusted reference set, or the fallback's
classifier of contributors; ``stages/reference.py``), the reference images' feature statistics and
the feature extractor they were computed with. Every property records its valid range; a value outside it
(or not finite) is an error, not a utility.

Adding a property is one call::

    register_property("brightness", lambda images, ctx: float(images.mean()), valid_range=(-1, 1))

Built in: ``quality`` (−FID, (−inf, 0]), ``diversity`` (entropy of predicted classes in bits,
[0, log2 K]), ``diversity_mean_prob`` (the same on mean probabilities) and ``quality_kid`` (−KID);
with local instruments (``config.PropertiesConfig``): ``inception_score``, ``fid``, ``kid``
(``inception.py``), ``diversity_entropy`` (``embedding_diversity.py``) and ``aesthetic``
(``aesthetic.py``).

A property can also be named in the configuration without registering it: ``"package.module:function"``
(imported on first use), or the name of an entry point in the group ``attribution_pipeline.properties``.
The function takes ``images`` (and optionally the context) and returns a float.
"""

from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import torch

from attribution_pipeline.properties.classifier import ReferenceClassifier
from attribution_pipeline.properties.diversity import diversity, max_diversity
from attribution_pipeline.properties.quality import (FeatureExtractor, ReferenceStats, kid, make_extractor,
                                                     quality)

CLASSIFIER_FILE = "classifier.pt"


def stats_file_name(extractor: str) -> str:
    """File name of the reference statistics in a feature space: ``reference_stats_<name>.npz``."""
    return f"reference_stats_{extractor}.npz"


# ---- the instruments ---------------------------------------------------------------------------
@dataclass
class PropertyContext:
    """What properties may use: the reference classifier, the real images' statistics and the
    feature extractor those statistics live in (``stats.extractor == extractor.name``)."""

    classifier: ReferenceClassifier
    stats: ReferenceStats
    extractor: FeatureExtractor
    settings: Any = None  # config.PropertiesConfig: the instruments of the extra properties
    folder: Path | None = None  # where build_property_reference wrote the instruments
    inception_weights: str | None = None
    device: str = "cpu"  # where property models run

    def instrument(self, key: tuple, build: Callable[[], Any]) -> Any:
        """A loaded instrument (a model, cluster centroids), built once per process per ``key``."""
        if key not in _INSTRUMENTS:
            _INSTRUMENTS[key] = build()
        return _INSTRUMENTS[key]

    def require(self, name: str, field: str) -> Any:
        """The ``PropertiesConfig`` field ``field``; a clear error when it is unset."""
        value = getattr(self.settings, field, None) if self.settings is not None else None
        if value is None:
            raise ValueError(f"property {name!r} needs properties.{field} (a local path) in the configuration")
        return value

    def __post_init__(self) -> None:
        self.stats.check(self.extractor)

    @property
    def n_classes(self) -> int:
        return self.classifier.n_classes

    @classmethod
    def from_files(cls, classifier_path: str | Path, stats_path: str | Path,
                   inception_weights: str | Path | None = None, *, settings: Any = None,
                   device: str = "cpu") -> "PropertyContext":
        """Load a saved classifier and reference statistics. Statistics computed in Inception
        space need ``inception_weights`` (a local file); classifier-space ones must not get it."""
        classifier = ReferenceClassifier.load(classifier_path)
        stats = ReferenceStats.load(stats_path)
        if stats.extractor == "inception" and not inception_weights:
            raise ValueError(f"{stats_path} holds Inception statistics: pass inception_weights (the local "
                             "Inception file they were computed with)")
        if stats.extractor != "inception" and inception_weights:
            raise ValueError(f"{stats_path} holds {stats.extractor!r} statistics but inception_weights was given: "
                             "build the reference with inception_weights set, or leave it unset")
        return cls(classifier, stats, make_extractor(classifier, inception_weights, device=device), settings,
                   Path(classifier_path).parent, str(inception_weights) if inception_weights else None, str(device))

    @classmethod
    def load(cls, folder: str | Path, inception_weights: str | Path | None = None, *, settings: Any = None,
             device: str = "cpu") -> "PropertyContext":
        """Load the context ``build_reference`` wrote under ``folder``."""
        folder = Path(folder)
        name = "inception" if inception_weights else "classifier"
        stats_path = folder / stats_file_name(name)
        if not stats_path.is_file() and (folder / CLASSIFIER_FILE).is_file():
            raise FileNotFoundError(f"{stats_path} is missing: the reference in {folder} was built without "
                                    f"{name} features; rebuild it (build_reference) with the same inception_weights")
        return cls.from_files(folder / CLASSIFIER_FILE, stats_path, inception_weights, settings=settings,
                              device=device)


def build_reference(classifier: ReferenceClassifier, images: torch.Tensor, folder: str | Path,
                    inception_weights: str | Path | None = None) -> PropertyContext:
    """Write the instruments under ``folder``: ``classifier.pt`` and the statistics of the real
    ``images`` (all contributors, ``(N, C, H, W)`` in [-1, 1]) in the classifier's feature space,
    plus Inception space when ``inception_weights`` is set. Returns the context to score with."""
    folder = Path(folder)
    # Build every extractor first so that missing Inception weights fail before anything is written.
    extractors = [make_extractor(classifier)] + ([make_extractor(classifier, inception_weights)]
                                                 if inception_weights else [])
    classifier.save(folder / CLASSIFIER_FILE)
    for extractor in extractors:
        stats = ReferenceStats.from_images(images, extractor)
        stats.save(folder / stats_file_name(extractor.name))
    return PropertyContext(classifier, stats, extractors[-1])


# ---- the registry ------------------------------------------------------------------------------
PropertyFn = Callable[[torch.Tensor, PropertyContext], float]
Range = Union[tuple[float, float], Callable[[PropertyContext], tuple[float, float]]]


@dataclass(frozen=True)
class Property:
    """A named property with its valid range (fixed, or a function of the context, e.g. of K)."""

    name: str
    fn: PropertyFn
    valid_range: Range = (-math.inf, math.inf)
    description: str = ""

    def range_for(self, context: PropertyContext) -> tuple[float, float]:
        lo, hi = self.valid_range(context) if callable(self.valid_range) else self.valid_range
        return float(lo), float(hi)

    def __call__(self, images: torch.Tensor, context: PropertyContext) -> float:
        value = float(self.fn(images, context))
        lo, hi = self.range_for(context)
        tol = 1e-9 * max(1.0, abs(lo) if math.isfinite(lo) else 1.0, abs(hi) if math.isfinite(hi) else 1.0)
        if not math.isfinite(value) or not lo - tol <= value <= hi + tol:
            raise ValueError(f"property {self.name!r} returned {value}, outside its valid range [{lo}, {hi}]: "
                             "fix the property function or the valid_range it was registered with")
        return min(max(value, lo), hi)  # round-off just past a bound is put back on it


_REGISTRY: dict[str, Property] = {}
_INSTRUMENTS: dict[tuple, Any] = {}
ENTRY_POINT_GROUP = "attribution_pipeline.properties"


def register_property(name: str, fn: PropertyFn, valid_range: Range = (-math.inf, math.inf), *,
                      description: str = "", replace: bool = False) -> Property:
    """Make ``fn(images, context) -> float`` scorable as ``name``; ``valid_range`` is ``(lo, hi)``
    or a function of the context returning it. Re-registering a name needs ``replace=True``."""
    if not name or not isinstance(name, str):
        raise ValueError(f"a property name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"property {name!r} is already registered; pass replace=True to replace it")
    if not callable(valid_range):
        lo, hi = valid_range
        if not lo <= hi:
            raise ValueError(f"valid_range of {name!r} must be (lo, hi) with lo <= hi, got {valid_range}")
    prop = Property(name, fn, valid_range, description)
    _REGISTRY[name] = prop
    return prop


def unregister_property(name: str) -> None:
    """Remove a registered property (no error if absent)."""
    _REGISTRY.pop(name, None)


def known_properties() -> list[str]:
    return sorted(_REGISTRY)


def _adapt(fn: Callable) -> PropertyFn:
    """``fn(images)`` or ``fn(images, context)`` as a ``PropertyFn``."""
    try:
        n_args = len([p for p in inspect.signature(fn).parameters.values()
                      if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])
    except (TypeError, ValueError):  # builtins without a signature
        n_args = 1
    return fn if n_args >= 2 else (lambda images, ctx: fn(images))


def _resolve(name: str) -> Property | None:
    """A property named by ``"package.module:function"`` or by an entry point, registered on first use."""
    fn = None
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"property {name!r}: cannot import {attr!r} from module {module!r} ({exc}); "
                             "put the module on PYTHONPATH or fix the name") from exc
    else:
        found = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if found:
            fn = found[0].load()
    if fn is None:
        return None
    if not callable(fn):
        raise ValueError(f"property {name!r} is not a function: it must take images (and optionally the context) "
                         "and return a float")
    return register_property(name, _adapt(fn), description=f"user property {name}", replace=True)


def get_property(name: str) -> Property:
    if name in _REGISTRY:
        return _REGISTRY[name]
    prop = _resolve(name)
    if prop is None:
        raise ValueError(f"unknown property {name!r}; known properties: {', '.join(known_properties())} "
                         "(add one with register_property, name a function as 'package.module:function', "
                         f"or declare an entry point in the group {ENTRY_POINT_GROUP!r})")
    return prop


def score_properties(images: torch.Tensor, names: Sequence[str], context: PropertyContext) -> dict[str, float]:
    """``{name: value}`` for each property of ``names`` on ``images`` ``(N, C, H, W)`` in [-1, 1].
    All names are checked before anything is computed."""
    props = [get_property(n) for n in dict.fromkeys(names)]
    return {p.name: p(images, context) for p in props}


def recognized_fraction(images: torch.Tensor, classifier: ReferenceClassifier, threshold: float = 0.5) -> float:
    """Fraction of ``images`` whose most probable contributor class has probability ≥ ``threshold``
    (a check that a trained model generates recognisable samples), in [0, 1]."""
    if len(images) == 0:
        raise ValueError("recognized_fraction needs at least one image")
    return float((classifier.predict_proba(images).max(dim=1).values >= threshold).double().mean())


# ---- built-in properties -----------------------------------------------------------------------
register_property("quality", lambda images, ctx: quality(images, ctx.stats, ctx.extractor), (-math.inf, 0.0),
                  description="−FID to the reference images in the instrument's features (clean-fid math)")
register_property("diversity", lambda images, ctx: diversity(images, ctx.classifier, "argmax"),
                  lambda ctx: (0.0, max_diversity(ctx.n_classes)),
                  description="entropy (bits) of the instrument's classes predicted for the images")
register_property("diversity_mean_prob", lambda images, ctx: diversity(images, ctx.classifier, "mean_prob"),
                  lambda ctx: (0.0, max_diversity(ctx.n_classes)),
                  description="entropy (bits) of the mean predicted class probabilities")
register_property("quality_kid", lambda images, ctx: -kid(images, ctx.stats, ctx.extractor),
                  description="−KID to the real images (unbiased, so it may be slightly positive)")
