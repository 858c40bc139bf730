"""The latent-size study's results: how runs are named, grouped over seeds and compared, and the
report written from them. Pure functions of the result rows of :mod:`minivae.sweep` (one JSON
object per run in ``results.jsonl``), shared by the sweep and the figures in :mod:`minivae.plots`.
"""

from __future__ import annotations

import math

import numpy as np

CONVERGED = 1.0  # nats: a run has converged when its last 20% of steps gained less than this


def run_tag(model, latent, hidden, seed):
    """The name of a run's files: e.g. ``vae-1000-h512-s0``."""
    return f"{model}-{latent}-h{'x'.join(str(h) for h in hidden)}-s{seed}"


def run_file(r, suffix=".npz"):
    """The name of one of a run's files under ``runs/``: its tag and its settings key, e.g.
    ``vae-1000-h512-s0-aa0106ef8bed.npz`` — runs of other settings (another budget, say) in the
    same folder never share a file."""
    return f"{run_tag(r['model'], r['latent'], r['hidden'], r['seed'])}-{r['settings']}{suffix}"


def run_key(r):
    """What tells two runs of one study apart."""
    return r["model"], r["latent"], tuple(r["hidden"]), r["seed"]


def kl90(kl_dim):
    """The fewest latents that hold 90% of the KL term (None when there is no KL)."""
    kl = np.sort(np.asarray(kl_dim, np.float64))[::-1]
    if kl.sum() <= 0:
        return None
    return int(np.searchsorted(np.cumsum(kl) / kl.sum(), 0.9) + 1)


def _fmt(v, nd=1):
    return "–" if v is None else f"{v:,.{nd}f}" if isinstance(v, float) else f"{v:,}"


def aggregate(rows, field):
    """Mean and sample standard deviation (ddof = 1) of ``field`` over rows, ignoring missing
    values: (mean, sd, n); sd is None for fewer than two values, and mean too for none."""
    values = np.array([r[field] for r in rows if r.get(field) is not None], dtype=np.float64)
    if len(values) == 0:
        return None, None, 0
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None, len(values)


def _pm(rows, field, nd=1):
    mean, sd, n = aggregate(rows, field)
    if mean is None:
        return "–"
    return f"{mean:,.{nd}f}" + (f" ± {sd:,.{nd}f}" if sd is not None else "")


def groups(rows):
    """Runs grouped by (model, hidden, Z) over seeds, in the order of ``rows``: {key: [rows]}."""
    out = {}
    for r in rows:
        out.setdefault((r["model"], tuple(r["hidden"]), r["latent"]), []).append(r)
    return out


def main_hidden(rows):
    """The hidden widths most runs used: the study's main setting (others are controls)."""
    counts = {}
    for r in rows:
        counts[tuple(r["hidden"])] = counts.get(tuple(r["hidden"]), 0) + 1
    return max(counts, key=counts.get) if counts else None


def compares_sizes(rows):
    """Whether the rows hold two or more latent sizes at the main hidden width: the figures drawn
    against Z (metrics, units and directions, probes) need them; with one size they are left out."""
    hidden = main_hidden(rows)
    return len({r["latent"] for r in rows if tuple(r["hidden"]) == hidden}) > 1


def figure_names(rows):
    """The PNG files a sweep with these rows draws, in the order the report lists them."""
    against_z = ["metrics_vs_latent.png", "active_units.png"] if compares_sizes(rows) else []
    names = ["learning_curves.png", *against_z, "kl_spectra.png"]
    names += ["probe.png"] if against_z else []
    names += ["samples_by_latent.png", "reconstructions_by_latent.png"]
    return names + (["vae_vs_ae.png"] if {"vae", "ae"} <= {r["model"] for r in rows} else [])


def converged(r):
    """True, False, or None (no curve): did the last 20% of steps gain less than CONVERGED nats?"""
    gain = r.get("last20_gain")
    return None if gain is None else gain < CONVERGED


def separated(a, b, field):
    """Whether two groups of runs differ in ``field`` by more than their seed spreads: the gap of
    the means exceeds the sum of the two standard deviations (False with fewer than two seeds)."""
    (ma, sa, _), (mb, sb, _) = aggregate(a, field), aggregate(b, field)
    if sa is None or sb is None:
        return False
    return abs(ma - mb) > sa + sb


def _iw_digits(rows, settings):
    """How many test digits the log-likelihood estimate averaged over: what the runs record
    (fewer than --iw-examples when the test set is smaller), else the setting."""
    used = sorted({r["iw_examples"] for r in rows if r.get("iw_examples")})
    return ", ".join(f"{n:,}" for n in used) if used else f"{settings['iw_examples']:,}"


def is_cooled(settings):
    """Whether a study's runs end with a rate decay (a schedule other than the constant rate): then
    their last 20% of steps is the cool-down, and the last-20% rule judges no convergence."""
    return settings.get("lr_schedule", "constant") != "constant"


def report(rows, settings, source):
    """The tables and a short reading of them, every statement computed from the rows. Under a
    decaying rate (``lr_schedule`` not constant) the last 20% of the steps are the cool-down: their
    gain is shown as such, and convergence is left to the budget curves (:func:`budget_report`)."""
    steps = settings["steps"]
    cooled = is_cooled(settings)
    gain_name = "cool-down gain" if cooled else "last-20% gain"
    lines = [
        "# Latent-size study",
        "",
        f"Data: {source}.  ",
        f"Budget: {steps:,} Adam steps per run (batch {settings['batch_size']}, lr {settings['lr']}, "
        f"{settings['binarize']} binarization). Log-likelihood: importance-weighted with "
        f"K = {settings['iw_samples']} on the first {_iw_digits(rows, settings)} test digits. "
        "Means ± sample standard deviations over the seeds (n); all numbers on the test digits "
        "unless said otherwise, in nats per digit.",
        "",
        "| model | hidden | Z | n | test −ELBO | −log p(x) (IW) | recon | KL | active units | "
        "directions | PR | KL-90 | test − train | probe (logreg) | probe (5-NN) | "
        f"{gain_name} (max) | samples/s | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (model, hidden, z), g in groups(rows).items():
        gains = [r["last20_gain"] for r in g if r.get("last20_gain") is not None]
        lines.append(
            f"| {model} | {','.join(map(str, hidden))} | {z} | {len(g)} | {_pm(g, 'test_loss')} | "
            f"{_pm(g, 'test_iw_nll')} | {_pm(g, 'test_recon')} | "
            f"{_pm(g, 'test_kl') if model == 'vae' else '–'} | {_pm(g, 'active_units', 0)} | "
            f"{_pm(g, 'directions', 0)} | {_pm(g, 'participation_ratio')} | {_pm(g, 'kl90', 0)} | "
            f"{_pm(g, 'gap')} | {_pm(g, 'probe_logreg', 3)} | {_pm(g, 'probe_knn', 3)} | "
            f"{_fmt(max(gains)) if gains else '–'} | {_pm(g, 'samples_per_s', 0)} | {_pm(g, 'wall_s', 0)} |"
        )
    lines += [
        "",
        "Directions: eigenvalues of Cov_x[μ(x)] above 0.01 (the threshold of Burda's unit "
        "count). PR: participation ratio (Σλ)²/Σλ² of those eigenvalues. KL-90: the fewest latents "
        "that hold 90% of the KL term. Probes: accuracy of a logistic regression and of 5 nearest "
        "neighbours on the posterior means (training digits → test digits). "
        + (
            "Cool-down gain: test −ELBO at 80% of the steps minus at the end, under a decaying rate: no "
            "test of convergence (the budget curves are). "
            if cooled
            else f"Last-20% gain: test −ELBO at 80% of the steps minus at the end; below {CONVERGED:g} nat counts "
            "as converged. "
        )
        + "For the autoencoder, test −ELBO is its reconstruction loss (no KL, no likelihood), and "
        "its units and directions are those of its code, which no prior ties to N(0, I).",
        "",
        *every_run(rows, cooled),
        "",
        *reading(rows, cooled),
        "",
        "Figures: " + ", ".join(f"`{name}`" for name in figure_names(rows)) + ".",
        "",
    ]
    return "\n".join(lines)


def every_run(rows, cooled=False):
    """The table of every run, one row each (``cooled``: runs that end with a rate decay, whose
    convergence this table does not judge)."""
    lines = [
        "## Every run",
        "",
        "| model | Z | hidden | seed | test −ELBO | −log p(x) (IW) | active units | directions | "
        f"{'cool-down gain' if cooled else 'last-20% gain'} | converged | epochs | wall s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        ok = None if cooled else converged(r)
        lines.append(
            f"| {r['model']} | {r['latent']} | {','.join(map(str, r['hidden']))} | {r['seed']} | "
            f"{_fmt(r['test_loss'])} | {_fmt(r.get('test_iw_nll'))} | {r['active_units']} | "
            f"{r['directions']} | {_fmt(r.get('last20_gain'), 2)} | "
            f"{'–' if ok is None else 'yes' if ok else '**no**'} | {r['epochs']} | "
            f"{r['wall_s']:,.0f} |"
        )
    return lines


def _convergence(rows, run, cooled):
    """The reading's lines on convergence by the last-20% rule (none but a pointer to the budget
    curves for runs that end with a rate decay); ``run(r)`` names a run."""
    if cooled:
        return ["- Convergence: see the budget curves below (a doubling of the budget against the cooled value)."]
    not_conv = [r for r in rows if converged(r) is False]
    if not_conv:
        out = [
            f"- Not converged (last 20% of the steps gained ≥ {CONVERGED:g} nat): "
            + ", ".join(f"{run(r)} ({r['last20_gain']:.2f})" for r in not_conv)
            + "."
        ]
    else:
        out = [f"- Every run gained less than {CONVERGED:g} nat over its last 20% of steps."]
    rose = [r for r in rows if r.get("last20_gain") is not None and r["last20_gain"] < 0]
    if rose:
        out.append(
            "- Worse at the end than at 80% of the steps (a negative gain, counted as converged since "
            "nothing was left to gain): " + ", ".join(f"{run(r)} (+{-r['last20_gain']:.2f})" for r in rose) + "."
        )
    return out


def reading(rows, cooled=False):
    """Statements computed from the rows (the VAE at the main hidden width); with ``cooled``, none
    on convergence (the budget curves judge it)."""
    hidden = main_hidden([r for r in rows if r["model"] == "vae"])
    vae = {z: g for (m, h, z), g in groups(rows).items() if m == "vae" and h == hidden}
    vae = {z: [r for r in g if not r.get("diverged")] for z, g in vae.items()}
    vae = {z: g for z, g in vae.items() if g}
    if not vae:
        return []
    out = ["## Reading", ""]
    field = "test_iw_nll" if all(aggregate(g, "test_iw_nll")[0] is not None for g in vae.values()) else "test_loss"
    name = "−log p(x)" if field == "test_iw_nll" else "test −ELBO"
    best = min(vae, key=lambda z: aggregate(vae[z], field)[0])
    out.append(f"- Best {name}: {_pm(vae[best], field)} nats at Z = {best} (hidden {list(hidden)}).")
    for z, g in vae.items():
        if z == best:
            continue
        (mean, sd, _), (best_mean, best_sd, _) = aggregate(g, field), aggregate(vae[best], field)
        diff = mean - best_mean
        if sd is None and best_sd is None:
            spread = "one seed each: no spread to compare with"
        elif best_sd is None:
            spread = f"Z = {best} has one seed: no spread to compare with"
        elif sd is None:
            spread = "one seed: no spread to compare with"
        else:
            spread = f"{'beyond' if separated(g, vae[best], field) else 'within'} the seed spread"
        out.append(f"  - Z = {z}: {_pm(g, field)} ({diff:+.1f}; {spread})")

    def run(r):
        width = "" if tuple(r["hidden"]) == tuple(hidden) else f" hidden {','.join(map(str, r['hidden']))}"
        return f"{r['model'].upper()} Z = {r['latent']}{width} seed {r['seed']}"

    out += _convergence(rows, run, cooled)
    out.append(
        "- Active units / directions (mean over seeds): "
        + ", ".join(
            f"Z = {z}: {aggregate(g, 'active_units')[0]:.0f} / {aggregate(g, 'directions')[0]:.0f}"
            for z, g in vae.items()
        )
        + "."
    )
    ae = {z: g for (m, h, z), g in groups(rows).items() if m == "ae" and h == hidden}
    both = [z for z in vae if z in ae]
    if both:
        out.append(
            "- Reconstruction term, VAE vs autoencoder: "
            + ", ".join(f"Z = {z}: {_pm(vae[z], 'test_recon')} vs {_pm(ae[z], 'test_recon')}" for z in both)
            + " nats."
        )
    return out


BUDGET_CONVERGED = 0.3  # nats: a size has converged when doubling its budget changes its cooled −log p(x) less


def budget_field(model):
    """What a budget curve follows: the VAE's −log p(x), the autoencoder's reconstruction loss."""
    return "test_iw_nll" if model == "vae" else "test_loss"


def budget_curves(rows):
    """{(model, hidden, Z): [(budget, mean, sd, n)]} over the seeds, budgets ascending, from the
    rows of a budget-curve sweep (one row per model, Z, seed and budget)."""
    out = {}
    for (model, hidden, z), g in sorted(groups(rows).items(), key=lambda kv: kv[0]):  # model, widths, Z
        by_budget = {}
        for r in g:
            by_budget.setdefault(r["steps"], []).append(r)
        out[(model, hidden, z)] = [
            (t, *aggregate(by_budget[t], budget_field(model))) for t in sorted(by_budget) if by_budget[t]
        ]
    return out


def budget_change(rows, field):
    """(change of ``field`` from the previous budget to the last, ratio of the two budgets) for the
    rows of one size: the mean over the seeds measured at both budgets, each seed against itself
    (a seed run only to the smaller budget does not enter); (None, None) without two budgets and
    a seed at both."""
    by_budget = {}
    for r in rows:
        if r.get(field) is not None:
            by_budget.setdefault(r["steps"], {})[r["seed"]] = r[field]
    budgets = sorted(by_budget)
    if len(budgets) < 2:
        return None, None
    last, prev = by_budget[budgets[-1]], by_budget[budgets[-2]]
    both = sorted(set(last) & set(prev))
    if not both:
        return None, None
    return float(np.mean([last[s] - prev[s] for s in both])), budgets[-1] / budgets[-2]


def matching_budget(curve, value):
    """The budget T′ at which a curve [(T, v)] (budgets ascending, v falling) reaches ``value``:
    linear in log T between the two budgets whose values bracket it,
    log T′ = log T₁ + (v₁ − value)/(v₁ − v₂) · (log T₂ − log T₁);
    None where no two neighbouring budgets bracket it (the value lies outside the curve)."""
    for (t1, v1), (t2, v2) in zip(curve, curve[1:], strict=False):
        if v1 >= value >= v2 and v1 > v2:
            frac = (v1 - value) / (v1 - v2)
            return math.exp(math.log(t1) + frac * (math.log(t2) - math.log(t1)))
    return None


def budget_deficits(rows):
    """How far each size larger than the reference lies behind it, seed by seed: "worse, or only
    slower?" in numbers. The reference is the VAE size (main width) with the lowest mean −log p(x)
    at the largest budget two or more sizes reached. For each larger size Z, budget T and seed s
    run at both sizes:

        gap    = −log p(x)[Z, s, T] − −log p(x)[ref, s, T]      (nats; > 0: Z is worse)
        factor = T / T′, T′ the budget at which the reference of seed s does as well
                 (:func:`matching_budget`; None where its curve does not bracket the value)

    A size that is only slower has a gap that shrinks to 0 as both curves flatten, and a factor
    that stays put; a size that is worse where training settles keeps its gap.
    Returns (reference Z or None, {Z: {T: [(seed, gap, factor)]}})."""
    field = budget_field("vae")
    vae = [r for r in rows if r["model"] == "vae" and r.get(field) is not None and not r.get("diverged")]
    hidden = main_hidden(vae)
    value = {(r["latent"], r["seed"], r["steps"]): r[field] for r in vae if tuple(r["hidden"]) == hidden}
    by_budget = {}
    for z, _, t in value:
        by_budget.setdefault(t, set()).add(z)
    shared = [t for t in sorted(by_budget) if len(by_budget[t]) > 1]
    if not shared:
        return None, {}
    last = shared[-1]
    at_last = {}
    for (z, _, t), v in value.items():
        if t == last:
            at_last.setdefault(z, []).append(v)
    means = {z: float(np.mean(vs)) for z, vs in at_last.items()}
    ref = min(means, key=means.get)
    ref_curves = {}  # seed → [(T, value)] of the reference, budgets ascending
    for (z, s, t), v in sorted(value.items()):
        if z == ref:
            ref_curves.setdefault(s, []).append((t, v))
    out = {}
    for (z, s, t), v in sorted(value.items()):
        if z <= ref or (ref, s, t) not in value:
            continue
        match = matching_budget(ref_curves[s], v)
        factor = None if match is None else t / match
        out.setdefault(z, {}).setdefault(t, []).append((s, v - value[(ref, s, t)], factor))
    return ref, out


def budget_report(rows):
    """The budget-curve section of a report: per size, the cooled measure at every budget and
    whether the last doubling changed it by less than BUDGET_CONVERGED."""
    curves, by_size = budget_curves(rows), groups(rows)
    budgets = sorted({r["steps"] for r in rows})
    lines = [
        "## Budget curves",
        "",
        "Each budget's model is trained with the wsd schedule of that many steps (constant rate, then a "
        "linear decay to 0 over the last fraction): the value *after the cool-down*. VAE: −log p(x) (IW); "
        "autoencoder: reconstruction loss; nats per test digit, mean ± sd over seeds (n at the largest "
        "budget); the last change is over the seeds run to both of the last two budgets. Converged: the last "
        f"doubling of the budget changed it by less than {BUDGET_CONVERGED:g} nat.",
        "",
        "| model | hidden | Z | n | " + " | ".join(f"{t:,}" for t in budgets) + " | last change | converged |",
        "|---|---|---:|---:|" + "---:|" * len(budgets) + "---:|---|",
    ]
    for (model, hidden, z), points in curves.items():
        at = {t: (m, sd) for t, m, sd, _ in points}
        cells = [
            "–" if t not in at or at[t][0] is None else f"{at[t][0]:.2f}" + (f" ± {at[t][1]:.2f}" if at[t][1] else "")
            for t in budgets
        ]
        change, ratio = budget_change(by_size[(model, hidden, z)], budget_field(model))
        ok = "–" if change is None or ratio != 2 else "yes" if abs(change) < BUDGET_CONVERGED else "**no**"
        said = "–" if change is None else f"{change:+.2f}" + ("" if ratio == 2 else f" (×{ratio:g} budget)")
        lines.append(
            f"| {model} | {','.join(map(str, hidden))} | {z} | {points[-1][3]} | "
            + " | ".join(cells)
            + f" | {said} | {ok} |"
        )
    ref, deficits = budget_deficits(rows)
    if deficits:
        lines += [
            "",
            f"Behind Z = {ref} (the best size at the largest budget two sizes share), seed against seed: the gap "
            f"in nats and how many times fewer steps Z = {ref} of the same seed needs to do as well (linear in "
            "log budget between its neighbouring budgets; – where its curve does not reach). A size that is "
            "only slower has a gap falling towards 0 and a flat factor.",
            "",
            "| Z | " + " | ".join(f"{t:,}" for t in budgets) + " |",
            "|---:|" + "---:|" * len(budgets),
        ]
        for z, by_t in deficits.items():
            cells = []
            for t in budgets:
                pts = by_t.get(t, [])
                gap = f"{np.mean([g for _, g, _ in pts]):+.2f}" if pts else "–"
                factors = [f for _, _, f in pts]
                fac = f" (×{np.mean(factors):.1f})" if pts and None not in factors else ""
                cells.append(gap + fac + (f", n = {len(pts)}" if len(pts) > 1 else ""))
            lines.append(f"| {z} | " + " | ".join(cells) + " |")
    figures = ["budget_curves.png", "unused_noise.png"] + (["budget_deficit.png"] if deficits else [])
    lines += ["", "Figures: " + ", ".join(f"`{f}`" for f in figures) + ".", ""]
    return "\n".join(lines)
