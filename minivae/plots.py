"""The figures of a training run (:func:`save_all`), of the latent-size study (:func:`study_figures`),
of the budget curves and the unused units' noise, and of a trained model's latent space
(:mod:`minivae.explore`), written with matplotlib's non-interactive Agg backend."""

from __future__ import annotations

import io
import weakref

import numpy as np

from minivae import metrics
from minivae.data import D
from minivae.files import atomic_write

_LATENT_AXES = weakref.WeakKeyDictionary()  # an axis of latent sizes → the sizes ticked on it


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    _thin_latent_labels(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def image_grid(images, rows, cols, pad=1):
    """Tile (n, D) images into one (rows·29 − 1, cols·29 − 1) array, 1-pixel white gaps."""
    side = int(round(np.sqrt(images.shape[1])))
    grid = np.ones((rows * (side + pad) - pad, cols * (side + pad) - pad))
    for i, img in enumerate(images[: rows * cols]):
        r, c = divmod(i, cols)
        grid[r * (side + pad) : r * (side + pad) + side, c * (side + pad) : c * (side + pad) + side] = img.reshape(
            side, side
        )
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
        rows.append(originals[start : start + n])
        rows.append(recon[start : start + n])
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
    active = activity[order] > metrics.ACTIVE_THRESHOLD
    x = np.arange(1, len(k) + 1)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for group, color, name in ((active, "tab:blue", "active"), (~active, "tab:gray", "inactive")):
        if group.any():  # an empty group would still get a legend entry, in the wrong colour
            ax.bar(x[group], k[group], width=1.0, color=color, label=f"{name} ({group.sum()})")
    ax.set_yscale("log")
    ax.set_xlim(0.5, len(k) + 0.5)
    ax.set_xlabel("latent dimension, sorted by KL")
    ax.set_ylabel("mean KL per dimension (nats)")
    ax.set_title(
        title or f"KL per latent dimension: {active.sum()} of {len(k)} active (Var_x μ > {metrics.ACTIVE_THRESHOLD})",
        fontsize=10,
    )
    ax.legend(fontsize=9)
    ax.grid(True, which="major", axis="y", alpha=0.3)
    _save(fig, path)


def loss_curve(path, history):
    plt = _pyplot()
    ep = [r["epoch"] for r in history]
    one = len(ep) == 1  # a single point: a line is not drawn, so every series gets a marker
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(ep, [r["train_loss"] for r in history], "o-", label="train −ELBO")
    ax.plot(ep, [r["test_loss"] for r in history], "s-", label="test −ELBO")
    ax.plot(ep, [r["test_recon"] for r in history], "^:" if one else ":", label="test reconstruction")
    ax.set_xlabel("epoch")
    if one:  # one tick at the epoch, not 0.96 … 1.04
        ax.set_xticks(ep)
        ax.set_xlim(ep[0] - 1, ep[0] + 1)
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("nats per digit")
    ax.set_title("Negative ELBO per epoch", fontsize=10)
    ax.legend(fontsize=9)
    ax.grid(True, alpha=0.3)
    _save(fig, path)


def save_all(out, vae, test_x, mu, logvar, history, rng):
    """The four figures of a run into folder ``out``."""
    n = 12
    reconstructions(out / "reconstructions.png", test_x[: 2 * n], vae.decode(mu[: 2 * n].astype(vae.dtype)), n)
    samples(out / "samples.png", vae.sample(64, rng=rng))
    _, activity = metrics.active_units(mu)
    kl_per_dim(out / "kl_per_dim.png", metrics.kl_per_dim(mu, logvar), activity)
    loss_curve(out / "loss_curve.png", history)


# --------------------------------------------------------------------------------------------
# The latent-size study (minivae.sweep)
# --------------------------------------------------------------------------------------------


def _mark_data_dim(ax):
    """A dashed line at Z = D, named in the legend (a label drawn on the axes hid data points)."""
    ax.axvline(D, color="0.55", lw=1, ls="--", label=f"Z = D = {D}")


def _latent_axis(ax, sizes):
    """A log axis of latent sizes ticked at the sizes drawn, written plainly, and Z = D marked.
    Labels that would touch are left off when the figure is saved (:func:`_thin_latent_labels`).
    Matplotlib's own minor labels overlapped on an axis spanning less than a decade."""
    ax.set_xscale("log")
    ticks = sorted(set(sizes))
    ax.set_xticks(ticks)
    ax.set_xticklabels([_count_label(z) for z in ticks])
    ax.minorticks_off()
    _mark_data_dim(ax)
    _LATENT_AXES[ax] = ticks


def _thin_latent_labels(fig):
    """On each latent axis of ``fig``, as laid out, leave off a size's label where it would touch
    its neighbour's (3 points apart at least). From the largest size down, so the large sizes keep
    theirs; D gives way to a neighbour, as its dashed line names it. Every size keeps its tick. A
    fixed spacing let "500", "1000" and "2000" run together on a panel a third of a figure wide."""
    axes = [ax for ax in fig.axes if ax in _LATENT_AXES]
    if not axes:
        return
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    pad = 3 * fig.dpi / 72
    for ax in axes:
        ticks = _LATENT_AXES[ax]
        box = dict(zip(ticks, (t.get_window_extent(renderer) for t in ax.get_xticklabels()), strict=True))
        kept = []
        for z in reversed(ticks):
            if kept and box[z].x1 + pad > box[kept[-1]].x0:
                kept[-1] = z if kept[-1] == D else kept[-1]
            else:
                kept.append(z)
        ax.set_xticklabels([_count_label(z) if z in kept else "" for z in ticks])


def _count_label(n):
    """A count as a tick label: whole thousands as "1k", "160k" (latent sizes, budgets in steps)."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def study_figures(out, rows, originals):
    """All figures of a sweep, from its result rows and the arrays each run saved.

    Rows of the main hidden width are drawn per latent size (means over seeds, bars = ± one
    standard deviation); runs with other hidden widths appear as controls where they apply.
    Pictures of single runs use the lowest seed.
    """
    from minivae.study import compares_sizes, groups, main_hidden, run_file

    hidden = main_hidden(rows)
    main = [r for r in rows if tuple(r["hidden"]) == hidden]
    arrays = {}
    for (model, _, z), g in groups(main).items():
        first = min(g, key=lambda r: r["seed"])
        path = out / "runs" / run_file(first)
        if path.exists():
            with np.load(path) as f:
                arrays[(model, z)] = {k: f[k] for k in f.files}
    if compares_sizes(rows):  # a figure against Z needs two sizes at least
        metrics_vs_latent(out / "metrics_vs_latent.png", main)
        active_units_vs_latent(out / "active_units.png", rows, hidden)
        probe_vs_latent(out / "probe.png", main)
    learning_curves(out / "learning_curves.png", main)
    vae_arrays = {z: a for (m, z), a in sorted(arrays.items()) if m == "vae"}
    if vae_arrays:
        kl_spectra(out / "kl_spectra.png", vae_arrays)
        grid_by_latent(
            out / "samples_by_latent.png",
            vae_arrays,
            "samples",
            "VAE samples sigmoid(decoder(z)), z ~ N(0, I), per latent size",
        )
        grid_by_latent(
            out / "reconstructions_by_latent.png",
            vae_arrays,
            "reconstructions",
            "VAE reconstructions per latent size (top row: the test digits)",
            originals=originals,
        )
    common = sorted(z for (m, z) in arrays if m == "vae" and ("ae", z) in arrays)
    if common:
        z = 1000 if 1000 in common else common[-1]
        vae_vs_ae(out / "vae_vs_ae.png", originals, arrays[("vae", z)], arrays[("ae", z)], z)


_STYLE = {"vae": dict(marker="o", color="tab:blue", capsize=3), "ae": dict(marker="s", color="tab:red", capsize=3)}


def _mean_sd(rows, model, key):
    """[(Z, mean, sd)] over the seeds of each Z (sd 0 for one seed)."""
    from minivae.study import aggregate, groups

    pts = []
    for (m, _, z), g in groups(rows).items():
        mean, sd, _ = aggregate(g, key)
        if m == model and mean is not None:
            pts.append((z, mean, sd or 0.0))
    return sorted(pts)


def metrics_vs_latent(path, rows):
    plt = _pyplot()
    panels = [
        ("test_loss", "test −ELBO"),
        ("test_iw_nll", "test −log p(x), IW estimate"),
        ("test_recon", "test reconstruction term (AE: its whole loss)"),
        ("test_kl", "test KL term"),
        ("gap", "test − train −ELBO"),
        ("samples_per_s", "training samples / s"),
    ]
    from minivae.study import converged

    # Sizes with a run whose last 20% of steps still gained ≥ 1 nat.
    unconverged = {m: {r["latent"] for r in rows if r["model"] == m and converged(r) is False} for m in _STYLE}
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.4))
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        circle_label = "not converged"  # one legend entry for the circles of both models
        for model in ("vae", "ae"):
            if key in ("test_loss", "test_kl") and model == "ae":
                continue  # the autoencoder has no ELBO and no KL: its loss is the reconstruction term
            pts = _mean_sd(rows, model, key)
            if pts:
                z, mean, sd = zip(*pts, strict=True)
                ax.errorbar(z, mean, yerr=sd, label=model.upper(), **_STYLE[model])
            circled = [(zz, m) for zz, m, _ in pts if zz in unconverged[model]]
            if circled:  # said in the figure as in the report: these sizes had not stopped improving
                ax.plot(
                    *zip(*circled, strict=True),
                    "o",
                    ms=13,
                    mfc="none",
                    mec="tab:orange",
                    mew=1.5,
                    label=circle_label,
                )
                circle_label = None
        _latent_axis(ax, [r["latent"] for r in rows])
        if key == "samples_per_s" or (key == "test_recon" and _mean_sd(rows, "ae", key)):
            ax.set_yscale("log")  # the AE reconstructs an order of magnitude better: both on one axis
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("latent size Z")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("nats per digit")
    axes[1, 0].set_ylabel("nats per digit")
    fig.suptitle("How the latent size changes the results (test digits; mean ± sd over seeds)", fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def active_units_vs_latent(path, rows, hidden):
    """Burda's active units and the principal directions against Z; other hidden widths as controls."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.6))
    main = [r for r in rows if r["model"] == "vae" and tuple(r["hidden"]) == hidden]
    units, dirs = _mean_sd(main, "vae", "active_units"), _mean_sd(main, "vae", "directions")
    if units:
        zs = [z for z, _, _ in units]
        ax.plot(zs, zs, color="0.7", lw=1, label="every unit active (y = Z)")
        z, m, sd = zip(*units, strict=True)
        ax.errorbar(
            z,
            m,
            yerr=sd,
            fmt="o-",
            color="tab:blue",
            capsize=3,
            label=f"active units (Var_x μ_u > {metrics.ACTIVE_THRESHOLD}), hidden {list(hidden)}",
        )
        z, m, sd = zip(*dirs, strict=True)
        ax.errorbar(
            z, m, yerr=sd, fmt="D-", color="tab:green", capsize=3, label="directions (eigenvalues of Cov_x μ > 0.01)"
        )
        ax.axhline(hidden[-1], color="tab:green", lw=0.8, ls=":")
        ax.text(
            zs[0],
            hidden[-1],
            f" last hidden width H = {hidden[-1]}: at most H directions",
            va="bottom",
            fontsize=7,
            color="tab:green",
        )
    for h in sorted({tuple(r["hidden"]) for r in rows if r["model"] == "vae"} - {hidden}):
        ctrl = [r for r in rows if r["model"] == "vae" and tuple(r["hidden"]) == h]
        for key, marker in (("active_units", "o"), ("directions", "D")):
            pts = _mean_sd(ctrl, "vae", key)
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker,
                mfc="none",
                color="tab:purple",
                ms=8,
                label=f"{key.replace('_', ' ')}, hidden {list(h)} (control)",
            )
    _latent_axis(ax, [r["latent"] for r in rows])
    ax.set_yscale("log")
    ax.set_xlabel("latent size Z")
    ax.set_ylabel("count")
    ax.set_title("Units and directions the VAE uses, against latent size", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="upper left")
    _save(fig, path)


def learning_curves(path, rows):
    """Test −ELBO, active units and directions against Adam steps: one line per Z (VAE, mean over seeds)."""
    from minivae.study import converged, groups

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    vae = {z: g for (m, _, z), g in sorted(groups(rows).items(), key=lambda kv: kv[0][2]) if m == "vae"}
    cmap = plt.get_cmap("viridis")
    for i, (z, g) in enumerate(vae.items()):
        curves = [r["curve"] for r in g if r.get("curve")]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        steps = [p["step"] for p in curves[0][:n]]
        colour = cmap(i / max(len(vae) - 1, 1))
        label = f"Z = {z}" + (" (not converged)" if any(converged(r) is False for r in g) else "")
        for ax, key in zip(axes, ("test_loss", "active_units", "directions"), strict=True):
            mean = np.mean([[p[key] for p in c[:n]] for c in curves], axis=0)
            ax.plot(steps, mean, "o-", ms=3, color=colour, label=label)
    titles = (
        "test −ELBO (nats)",
        f"active units (Var_x μ_u > {metrics.ACTIVE_THRESHOLD})",
        "directions (eigenvalues of Cov_x μ > 0.01)",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("Adam steps")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
    for ax in axes[1:]:  # a log axis where the counts span a factor of 10 or more, else plain
        lo, hi = ax.dataLim.y0, ax.dataLim.y1
        if lo > 0 and hi >= 10 * lo:
            ax.set_yscale("log")
    if vae:
        lo = min(min(p["test_loss"] for r in g for p in r.get("curve", [])[-3:]) for g in vae.values())
        axes[0].set_ylim(lo - 5, lo + 60)
    axes[0].legend(fontsize=8)
    fig.suptitle("Learning curves of the VAE per latent size (test digits; mean over seeds)", fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def probe_vs_latent(path, rows):
    """Probe accuracies on the posterior means against Z, for the VAE and the autoencoder."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for model in ("vae", "ae"):
        for key, ls, what in (("probe_logreg", "-", "logistic regression"), ("probe_knn", "--", "5-NN")):
            pts = _mean_sd(rows, model, key)
            if pts:
                z, m, sd = zip(*pts, strict=True)
                style = dict(_STYLE[model])
                ax.errorbar(z, m, yerr=sd, ls=ls, label=f"{model.upper()}, {what}", **style)
    _latent_axis(ax, [r["latent"] for r in rows])
    ax.set_xlabel("latent size Z")
    ax.set_ylabel("test accuracy")
    ax.set_title("How much of the digit's class the code keeps (probes on μ(x))", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    _save(fig, path)


def kl_spectra(path, vae_arrays):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    cmap = plt.get_cmap("viridis")
    for i, (z, a) in enumerate(vae_arrays.items()):
        kl = np.maximum(a["kl_per_dim"], 1e-6)
        ax.plot(np.arange(1, len(kl) + 1), kl, color=cmap(i / max(len(vae_arrays) - 1, 1)), label=f"Z = {z}")
    ax.axhline(metrics.ACTIVE_THRESHOLD, color="0.6", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("latent dimension, sorted by KL (rank)")
    ax.set_ylabel("mean KL per dimension (nats)")
    ax.set_title("Sorted per-dimension KL: how much information each latent carries", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)


def grid_by_latent(path, vae_arrays, key, title, originals=None, n=12):
    plt = _pyplot()
    rows, labels = [], []
    if originals is not None:
        rows.append(originals[:n])
        labels.append("test digits")
    for z, a in vae_arrays.items():
        rows.append(a[key][:n])
        labels.append(f"Z = {z}")
    fig, ax = plt.subplots(figsize=(n * 0.5 + 1, len(rows) * 0.5 + 0.6))
    show_grid(ax, image_grid(np.concatenate(rows), len(rows), n), title)
    ax.set_yticks([i * 29 + 14 for i in range(len(rows))])
    ax.set_yticklabels(labels, fontsize=8)
    _save(fig, path)


def vae_vs_ae(path, originals, vae, ae, z, n=8):
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    rec = np.concatenate([originals[:n], vae["reconstructions"][:n], ae["reconstructions"][:n]])
    show_grid(axes[0], image_grid(rec, 3, n), f"Reconstructions at Z = {z}")
    axes[0].set_yticks([14, 43, 72])
    axes[0].set_yticklabels(["test digits", "VAE", "AE"], fontsize=8)
    gen = np.concatenate([vae["samples"][:n], ae["samples"][:n]])
    show_grid(axes[1], image_grid(gen, 2, n), f"Decoded random codes z ~ N(0, I), Z = {z}")
    axes[1].set_yticks([14, 43])
    axes[1].set_yticklabels(["VAE", "AE"], fontsize=8)
    _save(fig, path)


# --------------------------------------------------------------------------------------------
# Looking inside a trained model (minivae.explore)
# --------------------------------------------------------------------------------------------


def _label_rows(ax, labels, side=28, pad=1, fontsize=8):
    ax.set_yticks([i * (side + pad) + side // 2 for i in range(len(labels))])
    ax.set_yticklabels(labels, fontsize=fontsize)


def _label_cols(ax, labels, side=28, pad=1, fontsize=7):
    ax.set_xticks([i * (side + pad) + side // 2 for i in range(len(labels))])
    ax.set_xticklabels(labels, fontsize=fontsize)
    ax.tick_params(axis="x", length=0)


def temperature_samples(path, by_tau, rows=8, cols=8, z=None):
    """Side by side, decoded draws z = τ·ε, ε ~ N(0, I), one panel per temperature τ (the same ε
    in every panel). by_tau: [(τ, (rows·cols, D) pixel probabilities)]."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(by_tau), figsize=(len(by_tau) * cols * 0.42 + 0.4, rows * 0.42 + 0.8))
    for ax, (tau, probs) in zip(np.atleast_1d(axes), by_tau, strict=True):
        show_grid(ax, image_grid(probs, rows, cols), f"τ = {tau:g}")
    z_text = f", Z = {z}" if z is not None else ""
    fig.suptitle(f"Samples sigmoid(decoder(τ·ε)), ε ~ N(0, I){z_text}: the same ε in each panel", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def interpolations(path, rows, left, right, ts, title):
    """One row per pair: test digit a, decoded points along the line between the posterior means
    μ_a → μ_b (one column per t in ``ts``), test digit b.  rows: (P, len(ts), D); left, right: (P, D)."""
    plt = _pyplot()
    n_pairs, steps = rows.shape[0], rows.shape[1]
    images = np.concatenate([np.concatenate([left[i : i + 1], rows[i], right[i : i + 1]]) for i in range(n_pairs)])
    cols = steps + 2
    fig, ax = plt.subplots(figsize=(cols * 0.5 + 0.6, n_pairs * 0.5 + 0.8))
    show_grid(ax, image_grid(images, n_pairs, cols), title)
    _label_cols(ax, ["digit a"] + [f"{t:.2g}" for t in ts] + ["digit b"])
    ax.set_xlabel("t in z = (1 − t)·μ_a + t·μ_b", fontsize=8)
    for x in (28.5, (cols - 1) * 29 - 0.5):  # rules between the test digits and the decoded line
        ax.axvline(x, color="tab:blue", lw=2)
    _save(fig, path)


def traversals(path, images, lam, ts, title):
    """One row per principal direction u_i: decoded μ̄ + t·√λ_i·u_i for t in ``ts``, labelled with
    λ_i.  images: (k, len(ts), D); lam: (k,)."""
    plt = _pyplot()
    k, steps = images.shape[0], images.shape[1]
    fig, ax = plt.subplots(figsize=(steps * 0.5 + 1.4, k * 0.5 + 0.8))
    show_grid(ax, image_grid(images.reshape(k * steps, -1), k, steps), title)
    _label_rows(ax, [f"u{i + 1}: λ = {lam_i:.3g}" for i, lam_i in enumerate(lam)])
    _label_cols(ax, [f"{t:+.2g}" if t else "0" for t in ts])
    ax.set_xlabel("t in z = μ̄ + t·√λ·u", fontsize=8)
    _save(fig, path)


def latent_map(path, coords, labels, axis_names, title):
    """The test digits' codes as points coloured by digit label.  coords: (N, 2), or (N, 1) for a
    one-dimensional latent space (then drawn against the label, with a little vertical jitter)."""
    plt = _pyplot()
    labels = np.asarray(labels)
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    cmap = plt.get_cmap("tab10")
    one_d = coords.shape[1] == 1
    jitter = np.random.default_rng(0).uniform(-0.3, 0.3, len(labels))
    size = 4 if len(labels) > 2000 else 10
    for digit in np.unique(labels):
        m = labels == digit
        y = digit + jitter[m] if one_d else coords[m, 1]
        ax.scatter(coords[m, 0], y, s=size, alpha=0.6, color=cmap(int(digit) % 10), lw=0, label=str(digit))
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel("digit label" if one_d else axis_names[1])
    if one_d:
        ax.set_yticks(np.unique(labels))
    if not one_d:
        ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(title, fontsize=10)
    ax.legend(
        title="digit",
        fontsize=8,
        markerscale=2.5 if size == 4 else 1.5,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        frameon=False,
    )
    ax.grid(True, alpha=0.25)
    _save(fig, path)


def manifold(path, images, values, title):
    """The decoded grid over two latent coordinates (Kingma & Welling 2013, Fig. 4): row i,
    column j decodes z = (values[j], values[n−1−i]) — z₁ grows to the right, z₂ upwards.
    images: (n·n, D), values: (n,)."""
    plt = _pyplot()
    n = len(values)
    fig, ax = plt.subplots(figsize=(n * 0.4 + 0.8, n * 0.4 + 0.8))
    show_grid(ax, image_grid(images, n, n), title)
    ax.set_xticks([j * 29 + 14 for j in range(n)])
    ax.set_xticklabels([f"{v:.2f}" for v in values], fontsize=6, rotation=90)
    ax.set_yticks([i * 29 + 14 for i in range(n)])
    ax.set_yticklabels([f"{v:.2f}" for v in values[::-1]], fontsize=6)
    ax.set_xlabel("z₁", fontsize=9)
    ax.set_ylabel("z₂", fontsize=9)
    _save(fig, path)


def budget_curves(path, rows):
    """The cooled −log p(x) (VAE; the autoencoder's reconstruction loss is left out) against the
    step budget, log axis, one line per latent size, bars ± one sd over seeds. When the values span
    more than 10 nats, a second panel shows the same lines with the y axis cut to the 8 nats above
    the best value (where the sizes that train well differ)."""
    from minivae.study import budget_curves as curves
    from minivae.study import main_hidden

    vae = [r for r in rows if r["model"] == "vae"]
    hidden = main_hidden(vae)
    lines = {z: [p for p in pts if p[1] is not None] for (m, h, z), pts in curves(vae).items() if h == hidden}
    if not any(lines.values()):
        return
    values = [p[1] for pts in lines.values() for p in pts]
    best, zoom = min(values), max(values) - min(values) > 10
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(12, 4.8) if zoom else (7.5, 4.8), squeeze=False)
    axes = axes[0]
    cmap = plt.get_cmap("viridis")
    budgets = sorted({p[0] for pts in lines.values() for p in pts})
    for ax in axes:
        for i, (z, pts) in enumerate(sorted(lines.items())):
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                yerr=[p[2] or 0 for p in pts],
                marker="o",
                ms=4,
                capsize=3,
                color=cmap(0.85 * i / max(1, len(lines) - 1)),  # viridis' last yellow is too pale
                label=f"Z = {z}" + (" (= D)" if z == 784 else ""),
            )
        ax.set_xscale("log")
        _budget_ticks(ax, budgets)
        ax.set_xlabel("training budget (Adam steps, batch 128; wsd schedule, cooled)")
        ax.set_ylabel("test −log p(x) (nats, IW)")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"Cooled −log p(x) against the budget (VAE, hidden {list(hidden)})")
    if zoom:
        axes[1].set_ylim(best - 0.5, best + 8)
        axes[1].set_title("The same, near the best value")
        axes[0].legend(fontsize=8, ncol=2, loc="lower right", bbox_to_anchor=(1.0, 0.46))  # the gap below Z = 2
    else:
        axes[0].legend(fontsize=8, ncol=2)
    _save(fig, path)


def budget_deficit(path, rows):
    """Worse, or only slower? For each size larger than the reference (the best at the largest
    shared budget, :func:`minivae.study.budget_deficits`), against the budget: left, how many nats
    it lies behind the reference of the same seed; right, how many times fewer steps the reference
    needs to do as well. Small dots are seeds, lines their means. Only slower would show a gap
    falling to 0 and a flat factor. Draws nothing (returns False) without a larger size."""
    from minivae.study import budget_deficits

    ref, deficits = budget_deficits(rows)
    if not deficits:
        return False
    gaps = [g for by_t in deficits.values() for pts in by_t.values() for _, g, _ in pts]
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    cmap = plt.get_cmap("viridis")
    shown = sorted(deficits)
    for z, by_t in sorted(deficits.items()):
        color = cmap(0.85 * shown.index(z) / max(1, len(shown) - 1))  # viridis' last yellow is too pale
        label = f"Z = {z}" + (" (= D)" if z == 784 else "")
        for ax, k in ((left, 1), (right, 2)):
            seeds = [(t, p[k]) for t, pts in by_t.items() for p in pts if p[k] is not None]
            if not seeds:
                continue
            ax.plot(*zip(*seeds, strict=True), ".", color=color, ms=4, alpha=0.6)
            # a mean only where every seed has a value (a factor is missing where Z = ref's curve
            # does not reach as far: the mean of the others would flatter it)
            full = [(t, [p[k] for p in pts]) for t, pts in sorted(by_t.items())]
            means = [(t, float(np.mean(vs))) for t, vs in full if None not in vs]
            ax.plot(*zip(*means, strict=True), "o-", color=color, ms=4, label=label)
    budgets = sorted({t for by_t in deficits.values() for t in by_t})
    for ax in (left, right):
        ax.set_xscale("log")
        _budget_ticks(ax, budgets)
        ax.set_xlabel("training budget (Adam steps, wsd schedule, cooled)")
        ax.grid(alpha=0.3)
    if min(gaps) > 0:
        left.set_yscale("log")
        ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if min(gaps) / 2 <= t <= max(gaps) * 2]
        left.set_yticks(ticks)
        left.set_yticklabels([f"{t:g}" for t in ticks])
        left.minorticks_off()
    else:
        left.axhline(0, color="black", lw=0.8)
    left.set_ylabel(f"−log p(x) behind Z = {ref} of the same seed (nats)")
    left.set_title(
        f"How far behind Z = {ref} (dots: seeds; lines: their mean)\n(only slower: falls to 0 as the curves flatten)"
    )
    left.legend(fontsize=8)
    right.axhline(1, color="black", lw=0.8)
    right.set_ylabel(f"budget / budget at which Z = {ref} does as well")
    right.set_title(f"How many times fewer steps Z = {ref} needs to do as well\n(only slower: flat)")
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=8)
    _save(fig, path)
    return True


def unused_noise(path, rows):
    """What the unused latents feed the decoder, per latent size (VAE, main width, lowest seed).
    Left: Σ_{u inactive} E[σ_u²]‖W_u‖² along the learning curve of the largest budget (constant
    rate until its decay, then the decay), with each budget's value after its cool-down. Right:
    test −log p(x) of each budget's model, and of the same model pruned of its inactive units."""
    from minivae.study import main_hidden

    vae = [r for r in rows if r["model"] == "vae" and not r.get("diverged")]
    hidden = main_hidden(vae)
    by_z = {}
    for r in vae:
        if tuple(r["hidden"]) == hidden:
            by_z.setdefault(r["latent"], []).append(r)
    if not by_z:
        return
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    cmap = plt.get_cmap("viridis")
    for i, (z, rs) in enumerate(sorted(by_z.items())):
        color = cmap(0.85 * i / max(1, len(by_z) - 1))
        seed = min(r["seed"] for r in rs)
        rs = sorted((r for r in rs if r["seed"] == seed), key=lambda r: r["steps"])
        longest = rs[-1]["curve"]
        pts = [(p["step"], p["noise_inactive"]) for p in longest if p.get("noise_inactive")]
        if pts:
            left.plot(*zip(*pts, strict=True), color=color, label=f"Z = {z}")
        cooled = [(r["steps"], r["noise_inactive"]) for r in rs if r.get("noise_inactive")]
        if cooled:
            left.plot(*zip(*cooled, strict=True), "o", color=color, ms=5, mfc="white")
        full = [(r["steps"], r["test_iw_nll"]) for r in rs if r.get("test_iw_nll") is not None]
        pruned = [(r["steps"], r["test_iw_nll_pruned"]) for r in rs if r.get("test_iw_nll_pruned") is not None]
        if full:
            right.plot(*zip(*full, strict=True), "o-", color=color, ms=4, label=f"Z = {z}")
        if pruned:
            right.plot(*zip(*pruned, strict=True), "x--", color=color, ms=6)
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("Adam step (largest budget's run: constant rate, then its decay)")
    left.set_ylabel("Σ over inactive units of E[σ²]·‖W_u‖²")
    left.set_title("Noise the unused latents feed the decoder\n(line: along training; circles: each budget, cooled)")
    left.grid(alpha=0.3)
    if left.get_legend_handles_labels()[0]:  # no line where no unit was ever inactive
        left.legend(fontsize=8)
    right.set_xscale("log")
    _budget_ticks(right, sorted({r["steps"] for rs in by_z.values() for r in rs}))
    right.set_xlabel("training budget (Adam steps, wsd schedule, cooled)")
    right.set_ylabel("test −log p(x) (nats, IW)")
    right.set_title("The model (solid) and the same model with its\ninactive units removed, z fixed at 0 (dashed)")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    _save(fig, path)


def _budget_ticks(ax, budgets):
    """Ticks at the budgets of a log axis, written 5k, 10k, …"""
    ax.set_xticks(budgets)
    ax.set_xticklabels([_count_label(b) for b in budgets])
    ax.minorticks_off()
