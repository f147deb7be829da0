"""The diffusion model, its training loop and DDIM generation, on tiny configs."""

import pytest
import torch

from attribution_pipeline.config import ModelConfig
from attribution_pipeline.data.contributors import to_model_range
from attribution_pipeline.data.digits import digits_arrays
from attribution_pipeline.models.sampling import generate_images, initial_noise
from attribution_pipeline.models.train import prediction_target, train_diffusion
from attribution_pipeline.models.unet import build_unet, count_parameters, load_unet, save_unet

TINY = ModelConfig(block_out_channels=(16, 32))


@pytest.fixture(scope="module")
def digits():
    images, _ = digits_arrays()
    return to_model_range(images[:400, None])


def test_default_model_size_and_seeded_init():
    m = build_unet(ModelConfig(), seed=0)
    assert 0.6e6 < count_parameters(m) < 0.8e6
    a, b = build_unet(TINY, seed=1), build_unet(TINY, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_training_lowers_the_loss_and_is_reproducible(digits):
    r1 = train_diffusion(build_unet(TINY), digits, TINY, steps=60, batch_size=32, lr=2e-3, seed=0, warmup_steps=5)
    r2 = train_diffusion(build_unet(TINY), digits, TINY, steps=60, batch_size=32, lr=2e-3, seed=0, warmup_steps=5)
    assert len(r1.losses) == 60
    assert r1.final_loss < 0.7 * r1.first_loss
    assert r1.losses == r2.losses


def test_batch_slices_give_the_same_model_in_one_process_or_two(digits):
    """models/shards.py: the base model trains its batch slices in as many processes as the engine
    grants; the weights, the EMA and every loss must not depend on that count, bit for bit. Two
    slices in one process are a different (equally valid) float sum than one whole batch, so that
    pair differs in the last bits (its losses agree to 1e-5)."""
    kwargs = dict(steps=25, batch_size=32, lr=2e-3, seed=4, warmup_steps=3)
    whole = train_diffusion(build_unet(TINY, seed=2), digits, TINY, **kwargs)
    one = train_diffusion(build_unet(TINY, seed=2), digits, TINY, shards=2, processes=1, **kwargs)
    two = train_diffusion(build_unet(TINY, seed=2), digits, TINY, shards=2, processes=2, **kwargs)
    assert one.losses == two.losses
    assert all(torch.equal(p, q) for p, q in zip(one.model.parameters(), two.model.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(one.model.parameters(), whole.model.parameters()))
    assert max(abs(a - b) for a, b in zip(one.losses, whole.losses)) < 1e-5
    with pytest.raises(ValueError, match="divide batch_size"):
        train_diffusion(build_unet(TINY), digits, TINY, shards=3, **kwargs)


def test_a_slice_process_that_dies_fails_the_training_at_once(digits):
    """A helper process killed mid-loop (out of memory, a node lost) must fail the training with the
    transport's error, not leave it waiting on the collective until the 10-minute timeout."""
    import threading
    import time

    import psutil

    def helpers():
        found = []
        for child in psutil.Process().children(recursive=True):
            try:
                if "spawn_main" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                    found.append(child)
            except psutil.Error:  # ended or a zombie meanwhile
                pass
        return found

    def kill_helper():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if helpers():
                time.sleep(3)  # inside the loop by now
                for helper in helpers():
                    helper.kill()
                return
            time.sleep(0.2)

    threading.Thread(target=kill_helper, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(RuntimeError):
        train_diffusion(build_unet(TINY), digits, TINY, steps=2_000, batch_size=32, lr=1e-3, seed=0, shards=2,
                        processes=2)
    assert time.monotonic() - start < 120


def test_ema_modes_differ_and_none_returns_raw_weights(digits):
    start = build_unet(TINY, seed=3)
    w0 = [p.detach().clone() for p in start.parameters()]
    kwargs = dict(steps=20, batch_size=16, lr=1e-3, seed=0)
    cont = train_diffusion(build_unet(TINY, seed=3), digits, TINY, ema="continue", ema_decay=0.999, **kwargs).model
    reset = train_diffusion(build_unet(TINY, seed=3), digits, TINY, ema="reset", **kwargs).model
    raw = train_diffusion(build_unet(TINY, seed=3), digits, TINY, ema="none", **kwargs).model

    def dist(m):
        return sum(float((p.detach() - q).pow(2).sum()) for p, q in zip(m.parameters(), w0))

    # a fixed 0.999 decay stays close to the start; the warm-up EMA follows the fine-tune
    assert dist(cont) < 0.2 * dist(reset)
    assert dist(reset) > 0 and dist(raw) > 0 and dist(reset) != dist(raw)
    with pytest.raises(ValueError, match="ema"):
        train_diffusion(build_unet(TINY), digits, TINY, ema="bogus", **kwargs)
    with pytest.raises(ValueError, match="non-empty"):
        train_diffusion(build_unet(TINY), digits[:0], TINY, **kwargs)
    with pytest.raises(ValueError, match="model_cfg or a noise scheduler"):
        train_diffusion(build_unet(TINY), digits, None, **kwargs)


class _PerMember(torch.nn.Module):
    """A 'model' predicting one learned constant per member, times a gain the loop must not train."""

    def __init__(self, members: int):
        super().__init__()
        self.level = torch.nn.Parameter(torch.zeros(members, 1, 1, 1))
        self.gain = torch.nn.Parameter(torch.ones(1))


def test_the_loop_hooks_condition_on_the_batch_rows_and_choose_target_and_parameters():
    from diffusers import DDPMScheduler

    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    levels = torch.tensor([-0.5, 0.25, 0.75])
    images = levels[labels].view(-1, 1, 1, 1).expand(-1, 1, 4, 4).clone()  # member k's rows are levels[k]
    seen = []

    def predict(model, noisy, timesteps, rows):  # conditioning looked up from the rows of this batch
        seen.append(rows.clone())
        return (model.level[labels[rows]] * model.gain).expand_as(noisy)

    model = _PerMember(3)
    # prediction_type "sample": the target is x0 itself, so each member's level is learnable exactly
    # only if the hook is handed the rows that were noised
    result = train_diffusion(model, images, None, steps=300, batch_size=6, lr=0.05, seed=0, ema="none",
                             predict=predict, parameters=[model.level], weight_decay=0.0,
                             scheduler=DDPMScheduler(num_train_timesteps=50, prediction_type="sample"))
    torch.testing.assert_close(result.model.level.detach().flatten(), levels, atol=1e-2, rtol=0)
    assert torch.equal(result.model.gain.detach(), torch.ones(1))  # not in `parameters`: untouched
    assert len(seen) == 300 and all(r.shape == (6,) and r.max() < 6 for r in seen)
    assert result.final_loss < 1e-3 < result.first_loss


def test_prediction_target_follows_the_scheduler():
    from diffusers import DDPMScheduler

    g = torch.Generator().manual_seed(0)
    x0, noise, t = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g), torch.tensor([1, 40, 99])
    assert prediction_target(DDPMScheduler(num_train_timesteps=100), x0, noise, t) is noise
    v_sched = DDPMScheduler(num_train_timesteps=100, prediction_type="v_prediction")
    ab = v_sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(prediction_target(v_sched, x0, noise, t), ab.sqrt() * noise - (1 - ab).sqrt() * x0)
    bogus = DDPMScheduler(num_train_timesteps=100)
    bogus.register_to_config(prediction_type="bogus")
    with pytest.raises(ValueError, match="prediction_type"):
        prediction_target(bogus, x0, noise, t)


def test_bf16_training_learns_like_fp32(digits):
    """bf16 autocast must wrap each forward pass, not the whole loop: autocast caches its bf16
    copies of the weights until its outermost context exits, and a loop inside one context kept
    training on the first step's weights (a flat loss)."""
    from attribution_pipeline.config import PipelineConfig
    from attribution_pipeline.models.backends import Data, DDPMBackend

    def losses(precision):
        cfg = PipelineConfig().override({"model": {"block_out_channels": [16, 32]},
                                         "hardware": {"device": "cpu", "precision": precision}})
        backend = DDPMBackend(cfg)
        assert backend.precision == precision
        data = Data(digits, torch.zeros(len(digits), dtype=torch.long))
        return backend.train(backend.build(seed=2), data, steps=15, batch_size=8, lr=2e-3, seed=3).losses

    bf16, fp32 = losses("bf16"), losses("fp32")
    assert sum(bf16[-5:]) < 0.7 * sum(bf16[:5])
    assert max(abs(a - b) for a, b in zip(bf16, fp32)) < 0.05


def test_generation_uses_common_random_numbers():
    m1, m2 = build_unet(TINY, seed=0), build_unet(TINY, seed=1)
    a = generate_images(m1, TINY, n_images=10, ddim_steps=3, seed=7, batch_size=4)
    b = generate_images(m1, TINY, n_images=10, ddim_steps=3, seed=7, batch_size=10)
    c = generate_images(m2, TINY, n_images=10, ddim_steps=3, seed=7)
    assert a.shape == (10, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    torch.testing.assert_close(a, b)  # batching does not change the images
    assert not torch.allclose(a, c)  # another model, same noise, other images
    # image i's starting noise does not depend on how many images are drawn after it
    torch.testing.assert_close(initial_noise(TINY, 5, 7), initial_noise(TINY, 10, 7)[:5])
    with pytest.raises(ValueError):
        generate_images(m1, TINY, n_images=0, ddim_steps=3, seed=7)


def test_save_and_load_round_trip(tmp_path):
    m = build_unet(TINY, seed=0)
    manifest = save_unet(m, tmp_path / "m", {"note": "x"})
    assert manifest["note"] == "x" and manifest["n_parameters"] == count_parameters(m)
    m2 = load_unet(tmp_path / "m")
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 500])
    torch.testing.assert_close(m(x, t).sample, m2(x, t).sample)
