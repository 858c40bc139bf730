"""The figures of a training run, written with matplotlib's non-interactive Agg backend."""

from __future__ import annotations

import io

import numpy as np

ACTIVE_THRESHOLD = 0.01


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    from minivae.train import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def image_grid(images, rows, cols, pad=1):
    """Tile (n, 784) images into one (rows·29 − 1, cols·29 − 1) array, 1-pixel white gaps."""
    side = int(round(np.sqrt(images.shape[1])))
    grid = np.ones((rows * (side + pad) - pad, cols * (side + pad) - pad))
    for i, img in enumerate(images[: rows * cols]):
        r, c = divmod(i, cols)
        grid[r * (side + pad): r * (side + pad) + side, c * (side + pad): c * (side + pad) + side] = \
            img.reshape(side, side)
    return grid


def show_grid(ax, grid, title=None):
    ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)


def reconstructions(path, originals, recon, n=12, title="Test digits (top) and reconstructions (bottom)"):
    """Pairs of rows: originals over the decoded posterior means."""
    plt = _pyplot()
    rows = []
    for start in range(0, 2 * n, n):
        rows.append(originals[start:start + n])
        rows.append(recon[start:start + n])
    fig, ax = plt.subplots(figsize=(n * 0.55, 4 * 0.6))
    show_grid(ax, image_grid(np.concatenate(rows), 4, n), title)
    _save(fig, path)


def samples(path, probs, rows=8, cols=8, title="Samples: sigmoid(decoder(z)), z ~ N(0, I)"):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(cols * 0.55, rows * 0.55 + 0.4))
    show_grid(ax, image_grid(probs, rows, cols), title)
    _save(fig, path)


def kl_per_dim(path, kl, activity, title=None):
    """Per-dimension KL (nats), sorted from largest; active units (Var μ > 0.01) shaded."""
    plt = _pyplot()
    order = np.argsort(kl)[::-1]
    k = np.maximum(kl[order], 1e-6)
    active = activity[order] > ACTIVE_THRESHOLD
    x = np.arange(1, len(k) + 1)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.bar(x[active], k[active], width=1.0, color="tab:blue", label=f"active ({active.sum()})")
    ax.bar(x[~active], k[~active], width=1.0, color="tab:gray", label=f"inactive ({(~active).sum()})")
    ax.set_yscale("log")
    ax.set_xlim(0.5, len(k) + 0.5)
    ax.set_xlabel("latent dimension, sorted by KL")
    ax.set_ylabel("mean KL per dimension (nats)")
    ax.set_title(title or f"KL per latent dimension: {active.sum()} of {len(k)} active "
                          f"(Var_x μ > {ACTIVE_THRESHOLD})", fontsize=10)
    ax.legend(fontsize=9)
    ax.grid(True, which="major", axis="y", alpha=0.3)
    _save(fig, path)


def loss_curve(path, history):
    plt = _pyplot()
    ep = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(ep, [r["train_loss"] for r in history], "o-", label="train −ELBO")
    ax.plot(ep, [r["test_loss"] for r in history], "s-", label="test −ELBO")
    ax.plot(ep, [r["test_recon"] for r in history], ":", label="test reconstruction")
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("nats per digit")
    ax.set_title("Negative ELBO per epoch", fontsize=10)
    ax.legend(fontsize=9)
    ax.grid(True, alpha=0.3)
    _save(fig, path)


def save_all(out, vae, test_x, mu, logvar, history, rng):
    """The four figures of a run into folder ``out``."""
    from minivae import metrics

    n = 12
    reconstructions(out / "reconstructions.png", test_x[: 2 * n], _host(vae.decode(mu[: 2 * n].astype(vae.dtype))), n)
    samples(out / "samples.png", _host(vae.sample(64, rng=rng)))
    _, activity = metrics.active_units(mu)
    kl_per_dim(out / "kl_per_dim.png", metrics.kl_per_dim(mu, logvar), activity)
    loss_curve(out / "loss_curve.png", history)


def _host(a):
    from minivae.metrics import _host as host

    return np.asarray(host(a))
