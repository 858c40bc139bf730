"""The reference VAE learns real MNIST digits: a few hundred Adam steps on the offline sample."""

import numpy as np
import pytest

import minivae
from minivae import metrics

data = pytest.importorskip("minivae.data")


@pytest.fixture(scope="module")
def digits():
    x, _ = data.load_offline_sample()
    x = x.astype(np.float32) / 255
    return x[:2000], x[-500:]  # train, held out


def test_a_few_hundred_steps_learn_the_digits(digits):
    train, test = digits
    vae = minivae.VAE(latent=20, hidden=(128,), seed=0)
    rng = np.random.default_rng(0)
    before = metrics.evaluate(vae, test, np.random.default_rng(1))["loss"]
    opt = minivae.Adam(vae.params, lr=1e-3)
    for _ in range(400):
        idx = rng.choice(len(train), 100, replace=False)
        vae.forward(train[idx])
        opt.step(vae.backward())
    after = metrics.evaluate(vae, test, np.random.default_rng(1))
    # An untrained decoder outputs p ≈ ½ everywhere: 784·log 2 ≈ 543 nats. After training the
    # held-out negative ELBO must be far below that and below what a pixel-mean model achieves.
    assert before > 400
    p = train.mean(axis=0).clip(1e-3, 1 - 1e-3)
    mean_image_nll = -(test * np.log(p) + (1 - test) * np.log(1 - p)).sum(axis=1).mean()  # ≈ 206
    assert after["loss"] < 0.9 * mean_image_nll, (after, mean_image_nll)
    assert after["kl"] > 1  # the latents are in use
    # Sensible reconstructions: closer to their own digit than to the other digits.
    rec = vae.reconstruct(test[:100])
    own = ((rec - test[:100]) ** 2).sum(axis=1)
    other = ((rec - np.roll(test[:100], 1, axis=0)) ** 2).sum(axis=1)
    assert (own < other).mean() > 0.9
