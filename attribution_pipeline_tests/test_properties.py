"""Properties of generated image sets: the reference classifier, quality (−FID), diversity, registry.

Known answers on scikit-learn's digits: the classifier is accurate on held-out digits, real-vs-real
FID is far below real-vs-noise, FID(x, x) = 0, one class has entropy 0 and ten balanced classes
log2(10) bits.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attribution_pipeline.properties.classifier import ReferenceClassifier, holdout_split, train_classifier
from attribution_pipeline.properties.diversity import class_proportions, diversity, entropy_bits
from attribution_pipeline.properties.quality import (ClassifierFeatures, InceptionFeatures, ReferenceStats, fid,
                                                     kid, quality)
from attribution_pipeline.properties.registry import (PropertyContext, build_reference, get_property,
                                                      known_properties, recognized_fraction, register_property,
                                                      score_properties, unregister_property)

HOLDOUT = 0.2
SEED = 0


@pytest.fixture(scope="module")
def digits():
    """sklearn digits as float (N, 1, 8, 8) in [-1, 1] and int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0, torch.tensor(d.target)


@pytest.fixture(scope="module")
def trained(digits):
    images, labels = digits
    classifier, accuracy = train_classifier(images, labels, 10, class_names=[f"digit_{d}" for d in range(10)],
                                            seed=SEED, epochs=15, holdout_fraction=HOLDOUT)
    return classifier, accuracy


@pytest.fixture(scope="module")
def classifier(trained):
    return trained[0]


@pytest.fixture(scope="module")
def halves(digits):
    """Two disjoint random halves of the real digits."""
    images, _ = digits
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return images[perm[: len(images) // 2]], images[perm[len(images) // 2:]]


def uniform_noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---- classifier ------------------------------------------------------------------------------------
def test_classifier_is_accurate_on_held_out_digits(digits, trained):
    images, labels = digits
    classifier, accuracy = trained
    train_idx, held_idx = holdout_split(labels.numpy(), HOLDOUT, SEED)
    assert len(np.intersect1d(train_idx, held_idx)) == 0 and len(train_idx) + len(held_idx) == len(labels)
    # stratified: every class is held out in proportion
    assert set(np.bincount(labels.numpy()[held_idx])) <= {round(HOLDOUT * n) for n in np.bincount(labels.numpy())}
    measured = float((classifier.predict(images[held_idx]) == labels[held_idx]).float().mean())
    assert measured == pytest.approx(accuracy)
    assert accuracy >= 0.95
    probs = classifier.predict_proba(images[:5])
    assert probs.shape == (5, 10) and torch.allclose(probs.sum(1), torch.ones(5))
    assert classifier.embed(images[:5]).shape == (5, 64)


def test_training_is_seeded_and_leaves_global_rng_alone(digits):
    images, labels = digits[0][:200], digits[1][:200]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, _ = train_classifier(images, labels, 10, seed=3, epochs=1, holdout_fraction=0.0)
    assert torch.rand(1) == before  # the global RNG did not move
    b, acc = train_classifier(images, labels, 10, seed=3, epochs=1, holdout_fraction=0.0)
    assert math.isnan(acc)
    assert torch.equal(a.predict_proba(images), b.predict_proba(images))
    c, _ = train_classifier(images, labels, 10, seed=4, epochs=1, holdout_fraction=0.0)
    assert not torch.equal(a.predict_proba(images), c.predict_proba(images))


def test_classifier_adapts_to_channels_and_size():
    for shape in [(3, 20, 12), (1, 5, 5), (2, 64, 64)]:
        model = ReferenceClassifier(shape[0], shape[1:], 4).eval()
        x = torch.rand(3, *shape) * 2 - 1
        assert model.predict_proba(x).shape == (3, 4) and model.embed(x).shape == (3, 64)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        ReferenceClassifier(3, (8, 8), 4).embed(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="n_classes"):
        ReferenceClassifier(1, (8, 8), 1)


def test_save_load_round_trip(classifier, digits, tmp_path):
    path = classifier.save(tmp_path / "ref" / "classifier.pt")
    assert [p.name for p in path.parent.iterdir()] == ["classifier.pt"]  # no temporary left behind
    loaded = ReferenceClassifier.load(path)
    assert loaded.class_names == [f"digit_{d}" for d in range(10)] and loaded.config == classifier.config
    assert torch.equal(loaded.predict_proba(digits[0]), classifier.predict_proba(digits[0]))
    assert torch.equal(loaded.embed(digits[0][:50]), classifier.embed(digits[0][:50]))

    missing = tmp_path / "nowhere.pt"
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        ReferenceClassifier.load(missing)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt.pt"):
        ReferenceClassifier.load(corrupt)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="not a reference classifier"):
        ReferenceClassifier.load(other)


# ---- quality -------------------------------------------------------------------------------------
def test_fid_orders_real_and_noise(classifier, halves):
    first, second = halves
    features = ClassifierFeatures(classifier)
    stats = ReferenceStats.from_images(first, features)
    real = fid(second, stats, features)
    noise = fid(uniform_noise(len(second)), stats, features)
    assert fid(first, stats, features) == pytest.approx(0.0, abs=1e-6)
    assert 0 < real < noise / 10
    assert quality(second, stats, features) == -real


def test_reference_stats_round_trip_and_mismatch(classifier, halves, tmp_path):
    first, second = halves
    features = ClassifierFeatures(classifier)
    stats = ReferenceStats.from_images(first, features)
    assert stats.mu.shape == (64,) and stats.sigma.shape == (64, 64) and stats.features.shape == (len(first), 64)
    path = stats.save(tmp_path / "stats.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["stats.npz"]
    loaded = ReferenceStats.load(path)
    assert loaded.extractor == "classifier"
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert fid(second, loaded, features) == fid(second, stats, features)

    class Other:
        name = "other"

        def __call__(self, images):
            return features(images)

    with pytest.raises(ValueError, match="'classifier' features"):
        fid(second, stats, Other())
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        ReferenceStats.load(tmp_path / "absent.npz")


def test_kid_is_seeded_and_orders_real_and_noise(classifier, halves):
    first, second = halves
    features = ClassifierFeatures(classifier)
    stats = ReferenceStats.from_images(first, features)
    np.random.seed(7)
    state = np.random.get_state()[1].copy()
    real = kid(second[:200], stats, features, num_subsets=5, max_subset_size=200)
    assert np.array_equal(np.random.get_state()[1], state)  # numpy's global RNG restored
    assert real == kid(second[:200], stats, features, num_subsets=5, max_subset_size=200)
    assert real < kid(uniform_noise(200), stats, features, num_subsets=5, max_subset_size=200) / 10


def test_inception_weights_missing_names_the_path(classifier, digits, tmp_path):
    missing = tmp_path / "weights" / "inception-2015-12-05.pt"
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05.pt"):
        InceptionFeatures(missing)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "weights")):
        build_reference(classifier, digits[0][:20], tmp_path / "ref", inception_weights=missing)
    assert not (tmp_path / "ref").exists()  # failed before writing anything


def test_inception_features_from_a_local_torchscript_file(tmp_path):
    """clean-fid's Inception wrapper on a stand-in TorchScript network (same ``layers`` interface),
    so the resize-to-299 path runs offline."""

    class FakeInception(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                              torch.nn.Linear(48, 2048))

        def forward(self, x):
            return self.layers(x)

    torch.manual_seed(0)
    weights = tmp_path / "my_inception.pt"
    torch.jit.script(FakeInception()).save(str(weights))
    features = InceptionFeatures(weights, batch_size=4)
    images = uniform_noise(6)
    resized = features._prepare(images)
    assert resized.shape == (6, 3, 299, 299) and 0 <= resized.min() and resized.max() <= 255
    assert torch.equal(resized[:, 0], resized[:, 2])  # grey repeated to RGB
    out = features(images)  # clean-fid's wrapper asserts 299x299 inputs
    assert out.shape == (6, 2048) and out.dtype == np.float64
    np.testing.assert_allclose(features(images[:2]), out[:2], atol=1e-5)  # batching changes round-off only
    assert not np.allclose(out[0], out[1])
    # (no FID here: clean-fid's sqrtm of a 2048x2048 product takes minutes on two shared cores)


# ---- diversity -----------------------------------------------------------------------------------
def test_entropy_known_answers():
    assert entropy_bits(torch.tensor([0.5, 0.5])) == pytest.approx(1.0)
    assert entropy_bits(torch.tensor([1.0, 0.0, 0.0])) == 0.0
    assert entropy_bits(torch.full((10,), 0.1)) == pytest.approx(math.log2(10))
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    assert torch.allclose(class_proportions(probs, "argmax"), torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))
    assert torch.allclose(class_proportions(probs, "mean_prob"), torch.tensor([1.7 / 3, 1.3 / 3], dtype=torch.float64))
    with pytest.raises(ValueError, match="argmax"):
        class_proportions(probs, "hard")


def test_diversity_of_one_class_and_of_balanced_classes(classifier, digits):
    images, labels = digits
    assert diversity(images[labels == 0], classifier) < 0.05
    balanced = torch.cat([images[labels == d][:100] for d in range(10)])
    assert diversity(balanced, classifier) == pytest.approx(math.log2(10), abs=0.02)
    assert diversity(balanced, classifier, mode="mean_prob") == pytest.approx(math.log2(10), abs=0.02)


def test_recognized_fraction(classifier, digits):
    images, labels = digits
    _, held_idx = holdout_split(labels.numpy(), HOLDOUT, SEED)
    assert recognized_fraction(images[held_idx], classifier) > 0.9
    assert recognized_fraction(uniform_noise(300), classifier) < recognized_fraction(images[held_idx], classifier) - 0.3
    assert recognized_fraction(images[:10], classifier, threshold=0.0) == 1.0
    assert recognized_fraction(images[:10], classifier, threshold=1.01) == 0.0


# ---- registry ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def context(classifier, digits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    build_reference(classifier, digits[0], folder)
    return PropertyContext.load(folder)


def test_context_scores_the_builtin_properties(context, classifier, digits):
    images, labels = digits
    sample = images[::7]
    scores = score_properties(sample, ["quality", "diversity"], context)
    assert list(scores) == ["quality", "diversity"]
    features = ClassifierFeatures(classifier)
    assert scores["quality"] == pytest.approx(quality(sample, ReferenceStats.from_images(images, features), features))
    assert scores["quality"] <= 0 and scores["diversity"] == pytest.approx(diversity(sample, classifier))
    assert get_property("diversity").range_for(context) == (0.0, math.log2(10))
    assert get_property("quality").range_for(context) == (-math.inf, 0.0)
    worse = score_properties(uniform_noise(len(sample)), ["quality"], context)["quality"]
    assert worse < scores["quality"]


def test_unknown_property_lists_known_ones(context, digits):
    with pytest.raises(ValueError, match=r"unknown property 'sharpness'.*diversity.*quality"):
        score_properties(digits[0][:10], ["quality", "sharpness"], context)


def test_user_registered_property_is_scored_and_range_checked(context, digits):
    images = digits[0][:40]
    try:
        register_property("mean_brightness", lambda ims, ctx: float(ims.mean()), valid_range=(-1.0, 1.0))
        assert "mean_brightness" in known_properties()
        scores = score_properties(images, ["mean_brightness", "diversity"], context)
        assert scores["mean_brightness"] == pytest.approx(float(images.mean()))
        with pytest.raises(ValueError, match="already registered"):
            register_property("mean_brightness", lambda ims, ctx: 0.0)
        register_property("mean_brightness", lambda ims, ctx: 2.0, valid_range=(-1.0, 1.0), replace=True)
        with pytest.raises(ValueError, match=r"'mean_brightness' returned 2.0, outside its valid range"):
            score_properties(images, ["mean_brightness"], context)
    finally:
        unregister_property("mean_brightness")
    assert "mean_brightness" not in known_properties()


def test_context_load_needs_matching_statistics(context, tmp_path, classifier, digits):
    build_reference(classifier, digits[0][:50], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classifier.pt", "reference_stats_classifier.npz"]
    with pytest.raises(FileNotFoundError, match="reference_stats_inception.npz"):
        PropertyContext.load(tmp_path, inception_weights=tmp_path / "inception.pt")
    with pytest.raises(FileNotFoundError, match="classifier.pt"):
        PropertyContext.load(tmp_path / "empty")


def test_plugin_properties_register_without_an_import_cycle():
    """The package imports the registry and the plugins; the registry imports no plugin. A fresh
    interpreter that only asks the registry still finds every plugin property."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    import attribution_pipeline.properties.registry as registry

    plugins = {"aesthetic", "embedding_diversity", "inception"}
    imported = set()
    for node in ast.walk(ast.parse(Path(registry.__file__).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported |= {node.module.rsplit(".", 1)[-1]} | {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            imported |= {a.name.rsplit(".", 1)[-1] for a in node.names}
    assert not imported & plugins
    code = ("from attribution_pipeline.properties.registry import get_property, known_properties\n"
            "print(get_property('aesthetic').name, get_property('diversity_entropy').name, get_property('fid').name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(registry.__file__).parents[2])
    assert out.stdout.split() == ["aesthetic", "diversity_entropy", "fid"]
