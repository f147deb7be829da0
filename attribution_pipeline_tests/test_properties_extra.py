"""The paper's properties on tiny local instruments: Inception Score / FID / KID (clean-fid's
Inception interface), diversity entropy over Ward clusters, the LAION aesthetic quantile, and a
user property named in the configuration."""

from __future__ import annotations

import math
from importlib import metadata

import numpy as np
import pytest
import torch

from attribution_pipeline.config import PropertiesConfig
from attribution_pipeline.properties import quality, registry
from attribution_pipeline.properties.aesthetic import load_aesthetic_head
from attribution_pipeline.properties.classifier import ReferenceClassifier
from attribution_pipeline.properties.embedding_diversity import (
    build_diversity_clusters,
    entropy_of_assignments,
    nearest_centroid,
    ward_clusters,
)
from attribution_pipeline.properties.inception import inception_score_from_probs
from attribution_pipeline.properties.quality import InceptionFeatures, ReferenceStats
from attribution_pipeline.properties.registry import PropertyContext, get_property, score_properties
from attribution_pipeline.properties.vision import l2_normalise, load_vision_encoder
from attribution_pipeline_tests.tiny_models import (
    colour_images,
    write_aesthetic_head,
    write_image_folder,
)


def brightness_levels(levels: int, per_level: int, size: int = 8) -> torch.Tensor:
    """Flat grey images at the centres of ``levels`` equal brightness bins, ``per_level`` each."""
    centres = (torch.arange(levels) + 0.5) / levels * 2 - 1
    return centres.repeat_interleave(per_level)[:, None, None, None].expand(-1, 3, size, size).clone()


def context(zoo, settings=None, stats_images=None, folder=None) -> PropertyContext:
    net = InceptionFeatures(zoo["inception"])
    real = stats_images if stats_images is not None else brightness_levels(8, 4)
    return PropertyContext(ReferenceClassifier(3, 8, 2), ReferenceStats.from_images(real, net), net,
                           settings or PropertiesConfig(is_splits=1), folder, str(zoo["inception"]), "cpu")


# ---- Inception Score, FID, KID --------------------------------------------------------------------
def test_inception_score_known_answers():
    k = 5
    assert inception_score_from_probs(np.eye(k)[np.arange(100) % k], splits=1) == pytest.approx(k)
    assert inception_score_from_probs(np.full((40, 7), 1 / 7), splits=4) == pytest.approx(1.0)
    half = np.vstack([np.eye(4)[[0, 1]]] * 10)  # two classes used out of four
    assert inception_score_from_probs(half, splits=2) == pytest.approx(2.0)


def test_inception_score_through_the_local_inception_file(model_zoo):
    ctx = context(model_zoo)
    spread = score_properties(brightness_levels(8, 4), ["inception_score"], ctx)["inception_score"]
    assert spread == pytest.approx(8.0, rel=1e-3)  # the stand-in's classes are 8 brightness bins
    assert get_property("inception_score")(brightness_levels(1, 16), ctx) == pytest.approx(1.0, abs=1e-6)
    assert get_property("inception_score")(brightness_levels(2, 16), ctx) == pytest.approx(2.0, rel=1e-3)


def _low_rank_fid(mu1, sigma1, mu2, sigma2):
    """Exact FID for covariances of rank < 64, fast: tr sqrt(S1 S2) is the sum of the singular
    values of F1ᵀ F2 for factors S = F Fᵀ, found in the (exact) range of each low-rank S."""
    def factor(sigma):
        q, _ = np.linalg.qr(sigma @ np.random.default_rng(0).normal(size=(sigma.shape[0], 64)))
        w, v = np.linalg.eigh(q.T @ sigma @ q)
        keep = w > 1e-9 * max(w.max(), 1e-30)
        return (q @ v[:, keep]) * np.sqrt(w[keep])

    f1, f2 = factor(sigma1), factor(sigma2)
    s = np.linalg.svd(f1.T @ f2, compute_uv=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * s.sum())


def test_fid_and_kid_compare_inception_features_of_generated_and_real_images(model_zoo, monkeypatch):
    real = torch.rand(24, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ctx = context(model_zoo, stats_images=real)
    noise = torch.rand(24, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.2 - 1  # dark images
    kid = get_property("kid")
    assert abs(kid(real, ctx)) < kid(noise, ctx)  # unbiased: about 0 on the real images themselves
    # clean-fid's frechet_distance takes minutes on 2048-d covariances on shared CPU cores; the
    # property's inputs (2048-d Inception statistics) are checked and the distance computed exactly
    seen = []

    def spy(mu1, sigma1, mu2, sigma2):
        seen.append(sigma1.shape)
        return _low_rank_fid(mu1, sigma1, mu2, sigma2)

    monkeypatch.setattr(quality, "frechet_distance", spy)
    fid = get_property("fid")
    assert fid(real, ctx) == pytest.approx(0.0, abs=1e-3)
    assert fid(noise, ctx) > 1.0
    assert seen == [(2048, 2048)] * 2


def test_fid_needs_inception_statistics(model_zoo):
    ctx = context(model_zoo)
    classifier_space = PropertyContext(ctx.classifier, ReferenceStats.from_features(np.random.rand(10, 4), "classifier"),
                                       quality.ClassifierFeatures(ctx.classifier), ctx.settings, None, None, "cpu")
    with pytest.raises(ValueError, match="inception_weights"):
        get_property("fid")(brightness_levels(2, 2), classifier_space)


# ---- diversity entropy ----------------------------------------------------------------------------
def test_ward_clusters_and_entropy_known_answers():
    rng = np.random.default_rng(0)
    centres = np.eye(4) * 10
    ref = np.vstack([c + rng.normal(0, 0.1, (5, 4)) for c in centres])
    labels, centroids = ward_clusters(ref, 4)
    assert sorted(np.bincount(labels).tolist()) == [5, 5, 5, 5]  # one cluster per blob
    even = np.vstack([c + rng.normal(0, 0.1, (3, 4)) for c in centres])
    assert entropy_of_assignments(nearest_centroid(even, centroids), 4) == pytest.approx(2.0)
    one = centres[2] + rng.normal(0, 0.1, (9, 4))
    assert entropy_of_assignments(nearest_centroid(one, centroids), 4) == 0.0
    two = np.vstack([centres[0] + rng.normal(0, 0.1, (6, 4)), centres[3] + rng.normal(0, 0.1, (2, 4))])
    p = np.array([0.75, 0.25])
    assert entropy_of_assignments(nearest_centroid(two, centroids), 4) == pytest.approx(-(p * np.log2(p)).sum())
    with pytest.raises(ValueError, match="n_clusters"):
        ward_clusters(ref[:3], 4)


def test_diversity_entropy_through_a_local_vision_encoder(model_zoo, tmp_path):
    palette = [(220, 30, 30), (30, 220, 30), (30, 30, 220), (230, 230, 230), (20, 20, 20), (200, 120, 20)]
    ref = [(f"{k}_{i}.png", im) for k, rgb in enumerate(palette) for i, im in enumerate(colour_images(4, 16, rgb, k))]
    write_image_folder(tmp_path / "reference", ref)
    settings = PropertiesConfig(vision_encoder=str(model_zoo["clip"]), diversity_reference_dir=str(tmp_path / "reference"),
                                n_clusters=4, batch_size=16)
    info = build_diversity_clusters(settings, tmp_path)
    assert info["n_reference"] == 24 and 0 < info["reference_entropy"] <= 2.0
    ctx = context(model_zoo, settings=settings, folder=tmp_path)
    prop = get_property("diversity_entropy")
    one_face = torch.from_numpy(colour_images(1, 16, palette[0], 0)).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert prop(one_face.repeat(10, 1, 1, 1), ctx) == 0.0  # every image in one cluster
    varied = torch.from_numpy(np.stack([im for _, im in ref])).permute(0, 3, 1, 2).float() / 127.5 - 1
    value = prop(varied, ctx)
    assert 0.5 < value <= 2.0 and prop.range_for(ctx) == (0.0, 2.0)
    # the reference images score the entropy of their own clusters' nearest-centroid assignment
    encoder = load_vision_encoder(str(model_zoo["clip"]))
    with np.load(tmp_path / "diversity_clusters.npz") as z:
        centroids = z["centroids"]
    expected = entropy_of_assignments(nearest_centroid(l2_normalise(encoder(varied)), centroids), 4)
    assert value == pytest.approx(expected)


# ---- aesthetic ------------------------------------------------------------------------------------
def test_aesthetic_is_a_quantile_of_the_linear_head_on_normalised_clip_embeddings(model_zoo, tmp_path):
    images = torch.from_numpy(colour_images(20, 16, (120, 80, 60), 3)).permute(0, 3, 1, 2).float() / 127.5 - 1
    w = torch.linspace(-1, 1, 8)
    head = write_aesthetic_head(tmp_path / "head.pth", w, 4.0)
    settings = PropertiesConfig(clip_model=str(model_zoo["clip"]), aesthetic_head=str(head), aesthetic_quantile=0.9)
    ctx = context(model_zoo, settings=settings)
    emb = l2_normalise(load_vision_encoder(str(model_zoo["clip"]))(images))
    expected = np.quantile(emb @ w.double().numpy() + 4.0, 0.9)
    assert get_property("aesthetic")(images, ctx) == pytest.approx(expected, rel=1e-5)
    constant = write_aesthetic_head(tmp_path / "flat.pth", torch.zeros(8), 6.5)
    flat = context(model_zoo, settings=PropertiesConfig(clip_model=str(model_zoo["clip"]), aesthetic_head=str(constant)))
    assert get_property("aesthetic")(images, flat) == pytest.approx(6.5)


def test_aesthetic_head_errors_say_what_is_expected(tmp_path):
    write_aesthetic_head(tmp_path / "wide.pth", torch.ones(768), 0.0)
    assert load_aesthetic_head(tmp_path / "wide.pth").in_features == 768
    torch.save({"layers.0.weight": torch.zeros(1024, 768)}, tmp_path / "mlp.pth")
    with pytest.raises(ValueError, match="'weight' \\(1, D\\)"):
        load_aesthetic_head(tmp_path / "mlp.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_aesthetic_head(tmp_path / "missing.pth")


# ---- a user's property ----------------------------------------------------------------------------
def mean_brightness(images: torch.Tensor) -> float:
    """A user property: the mean pixel value, in [-1, 1]."""
    return float(images.mean())


def brightness_spread(images, context) -> float:
    return float(images.mean(dim=(1, 2, 3)).std()) + 0 * context.n_classes


def test_a_property_named_by_module_and_function(model_zoo):
    ctx = context(model_zoo)
    images = brightness_levels(4, 2)
    here = "attribution_pipeline_tests.test_properties_extra"
    try:
        out = score_properties(images, [f"{here}:mean_brightness", f"{here}:brightness_spread"], ctx)
        assert out[f"{here}:mean_brightness"] == pytest.approx(float(images.mean()))
        assert out[f"{here}:brightness_spread"] == pytest.approx(float(images.mean(dim=(1, 2, 3)).std()))
        with pytest.raises(ValueError, match="cannot import 'nope'"):
            get_property(f"{here}:nope")
    finally:
        registry.unregister_property(f"{here}:mean_brightness")
        registry.unregister_property(f"{here}:brightness_spread")


def test_a_property_from_an_entry_point(model_zoo, monkeypatch):
    ep = metadata.EntryPoint("brightness", "attribution_pipeline_tests.test_properties_extra:mean_brightness",
                             registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry.metadata, "entry_points",
                        lambda group=None: [ep] if group == registry.ENTRY_POINT_GROUP else [])
    try:
        assert get_property("brightness")(brightness_levels(2, 2), context(model_zoo)) == pytest.approx(0.0, abs=1e-7)
    finally:
        registry.unregister_property("brightness")
    assert math.isfinite(get_property("quality").range_for(context(model_zoo))[0]) is False
