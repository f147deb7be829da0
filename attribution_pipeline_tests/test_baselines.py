"""The baseline attributions' pure core: aggregation by image id, similarity, the gradient cache and
the TRAK family, heuristics. Known answers on small inputs; the gradient rows checked against a plain
autograd loop and against a shuffled visiting order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attribution_pipeline.baselines import aggregate, gradients, heuristics, influence, similarity


@pytest.fixture
def index():
    return aggregate.ImageIndex.from_counts({"a": 2, "b": 3})


def test_by_contributor_joins_on_ids_whatever_the_order(index):
    scores = np.array([1.0, 3.0, 10.0, 20.0, 60.0])
    ref = {h: aggregate.by_contributor(index, index.ids, scores, h) for h in aggregate.AGGREGATES}
    assert ref["mean"].tolist() == [2.0, 30.0] and ref["max"].tolist() == [3.0, 60.0]
    assert ref["sum"].tolist() == [4.0, 90.0]
    perm = np.random.default_rng(0).permutation(len(index))
    ids = [index.ids[k] for k in perm]
    for h in aggregate.AGGREGATES:
        assert aggregate.by_contributor(index, ids, scores[perm], h).tolist() == ref[h].tolist()


def test_by_contributor_refuses_missing_duplicate_and_foreign_rows(index):
    with pytest.raises(ValueError, match="b has 2 rows for 3 images"):
        aggregate.by_contributor(index, index.ids[:4], np.zeros(4))
    with pytest.raises(ValueError, match="duplicate"):
        aggregate.by_contributor(index, [*index.ids[:4], index.ids[0]], np.zeros(5))
    with pytest.raises(KeyError, match="not in this valuation"):
        aggregate.by_contributor(index, [*index.ids[:4], "c/0"], np.zeros(5))
    with pytest.raises(ValueError, match="aggregate must be"):
        aggregate.by_contributor(index, index.ids, np.zeros(5), "median")


def test_max_takes_each_generated_images_closest_then_averages(index):
    # two generated images; a's images are close to g0 only, b's best image differs per g
    m = np.array([[0.9, 0.1, 0.2, 0.3, 0.4],
                  [0.0, 0.2, 0.8, 0.1, 0.1]])
    out = aggregate.mean_and_max(index, index.ids, m)
    assert np.allclose(out["max"], [(0.9 + 0.2) / 2, (0.4 + 0.8) / 2])
    assert np.allclose(out["mean"], [m[:, :2].mean(), m[:, 2:].mean()])
    # not the other order (max over images of the mean over generated images)
    assert not np.isclose(out["max"][1], m[:, 2:].mean(axis=0).max())


def test_cosine_matrix_known_values():
    g = np.array([[1.0, 0.0], [1.0, 1.0]])
    t = np.array([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    out = similarity.cosine_matrix(g, t, block=2)
    s = 1 / np.sqrt(2)
    assert np.allclose(out, [[1, 0, -1], [s, s, -s]])
    with pytest.raises(ValueError, match="all zeros"):
        similarity.cosine_matrix(g, np.zeros((1, 2)))


def test_pixel_features_flatten_rows():
    x = torch.arange(2 * 1 * 2 * 2, dtype=torch.float32).reshape(2, 1, 2, 2)
    assert similarity.pixel_features(x).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_count_sketch_preserves_inner_products_on_average():
    rng = np.random.default_rng(1)
    a, b = torch.tensor(rng.normal(size=(1, 400))), torch.tensor(rng.normal(size=(1, 400)))
    b = 0.6 * a + 0.8 * b  # correlated, inner product ≈ 240
    true = float((a * b).sum())
    est = [float((s(a) * s(b)).sum()) for s in (gradients.CountSketch(400, 64, seed) for seed in range(200))]
    # unbiased: the mean over sketches is within a few standard errors of the truth
    assert abs(np.mean(est) - true) < 4 * np.std(est) / np.sqrt(len(est))
    s1, s2 = gradients.CountSketch(400, 64, 7), gradients.CountSketch(400, 64, 7)
    assert torch.equal(s1(a), s2(a))  # seeded


def _tiny_unet():
    from attribution_pipeline.config import ModelConfig
    from attribution_pipeline.models.unet import build_unet, noise_scheduler

    cfg = ModelConfig(sample_size=8, channels=1, block_out_channels=[8, 16], norm_num_groups=4,
                      attention_head_dim=4, layers_per_block=1,
                      down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"])
    return cfg, build_unet(cfg, seed=0), noise_scheduler(cfg)


def test_gradient_rows_match_a_plain_autograd_loop():
    cfg, model, sched = _tiny_unet()
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    ids = ["a/0", "a/1", "b/0"]
    out = gradients.gradient_features(model, sched, images, ids, n_timesteps=3, dim=32, seed=5, batch_size=2)
    assert out.features.shape == (3, 32) and out.ids == ids and out.meta["dim"] == 32
    sketch = gradients.CountSketch(sum(p.numel() for p in model.parameters()), 32, 5)
    t = gradients.fixed_timesteps(sched.config.num_train_timesteps, 3)
    for k, i in enumerate(ids):
        noise = torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(gradients.row_seed(5, i)))
        x_t = sched.add_noise(images[k:k + 1].expand(3, -1, -1, -1), noise, t)
        model.zero_grad()
        ((model(x_t, t).sample - noise) ** 2).mean().backward()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])[None]
        assert np.allclose(out.features[k], sketch(g).numpy()[0], rtol=1e-3, atol=1e-5)
    norm = gradients.gradient_features(model, sched, images, ids, output="output_norm", n_timesteps=3, dim=32, seed=5)
    assert not np.allclose(norm.features, out.features)


def test_shuffled_loader_order_gives_the_same_attributions():
    """The reference code's bug (rows written by batch position of a shuffled loader) cannot recur:
    rows travel with their ids, and the TRAK scores per contributor are the same in any order."""
    cfg, model, sched = _tiny_unet()
    index = aggregate.ImageIndex.from_counts({"a": 3, "b": 3})
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(6, 1, 8, 8, generator=gen) * 2 - 1
    images[3:] *= 0.2  # b's images differ from a's
    generated = torch.rand(4, 1, 8, 8, generator=gen) * 2 - 1
    kw = dict(n_timesteps=2, dim=24, seed=3, batch_size=4)
    g = gradients.gradient_features(model, sched, generated, [f"g/{k}" for k in range(4)], **kw)

    def attributions(order):
        ids = [index.ids[k] for k in order]
        train = gradients.gradient_features(model, sched, images[order], ids, **kw)
        phi = influence.align(train, index.ids)
        scores = influence.trak_scores(phi, g.features, lam=0.5)["trak"]
        return aggregate.by_contributor(index, index.ids, scores, "mean")

    straight = attributions(np.arange(6))
    shuffled = attributions(np.array([4, 1, 5, 0, 3, 2]))
    assert np.allclose(straight, shuffled, rtol=1e-6)
    # and positional reading of the shuffled rows (the bug) would give different credit
    order = np.array([4, 1, 5, 0, 3, 2])
    wrong = gradients.gradient_features(model, sched, images[order], [index.ids[k] for k in order], **kw)
    scores = influence.trak_scores(wrong.features.astype(float), g.features, lam=0.5)["trak"]
    assert not np.allclose(aggregate.by_contributor(index, index.ids, scores, "mean"), straight)


def test_align_refuses_missing_rows():
    f = gradients.GradientFeatures(["a/0", "a/1"], np.eye(2, dtype=np.float32))
    assert influence.align(f, ["a/1", "a/0"]).tolist() == [[0, 1], [1, 0]]
    with pytest.raises(ValueError, match="differ"):
        influence.align(f, ["a/0"])


def test_trak_scores_known_answer():
    phi = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    gen = np.array([[1.0, 0.0], [1.0, 2.0]])
    lam = 0.5
    K = np.linalg.inv(phi.T @ phi + lam * np.eye(2))
    expect = np.array([np.mean([g @ K @ p for g in gen]) for p in phi])
    out = influence.trak_scores(phi, gen, lam)
    assert np.allclose(out["trak"], expect)
    assert np.allclose(out["renormalized_if"], expect / np.linalg.norm(phi, axis=1))
    assert np.allclose(out["relative_if"], expect / np.linalg.norm(phi @ K, axis=1))
    with pytest.raises(ValueError, match="lambda"):
        influence.trak_scores(phi, gen, 0.0)


def test_journey_features_follow_the_trajectory():
    cfg, model, sched = _tiny_unet()
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    states, steps, final = gradients.ddim_trajectory(model, cfg, noise, ddim_steps=4, n_points=2)
    assert states.shape == (3, 2, 1, 8, 8) and len(steps) == 2 and steps[0] > steps[1]
    assert torch.equal(states[:, 0], noise)  # the first point is the shared starting noise
    from attribution_pipeline.models.sampling import generate_images

    same = generate_images(model, cfg, n_images=3, ddim_steps=4, seed=0)
    assert torch.allclose(final, same, atol=1e-5)  # the trajectory ends where generation does
    j = gradients.journey_features(model, cfg, sched, noise, ["g/0", "g/1", "g/2"], ddim_steps=4, n_points=2, dim=16)
    assert j.features.shape == (3, 16) and np.isfinite(j.features).all()


def test_heuristics_known_answers():
    assert heuristics.size_share([1, 3]).tolist() == [0.25, 0.75]
    with pytest.raises(ValueError):
        heuristics.size_share([0, 0])
    assert heuristics.leave_one_out(10.0, [7.0, 10.5]).tolist() == [3.0, -0.5]
    images = {"a": torch.zeros(2, 1, 2, 2), "b": torch.ones(3, 1, 2, 2)}
    own = heuristics.own_property(lambda x: {"brightness": float(x.mean()), "n": len(x)}, images, ["brightness", "n"])
    assert own["brightness"].tolist() == [0.0, 1.0] and own["n"].tolist() == [2, 3]
