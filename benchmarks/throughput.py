"""Training throughput: samples/s of full steps (forward, backward, Adam) across latent sizes.

For each latent size Z, every runner below does the same step on the same MLP (D = 784 →
hidden → 2Z, Z → hidden → D, ReLU, Bernoulli loss from logits plus the Gaussian KL, Adam):

    numpy, cpu-fused, cupy, numba-cuda   minivae.VAE(backend=…), each backend usable here
                                         (cupy: eager, cuBLAS for the matrix products)
    cupy-graph                           the cupy model's whole step captured once into a CUDA
                                         graph and replayed (kernels.cupy.graph.GraphedStep: our
                                         own GEMM, since cuBLAS cannot be captured)
    torch-cpu, torch-cuda                PyTorch eager, the same model, loss and optimizer
                                         (float32 matrix products at full precision: no TF32)
    torch-compile                        torch-cpu's step (forward, backward, Adam) given to
                                         ``torch.compile`` as one function (compiled at build time)
    jax-jit                              the same model, loss and Adam in ``jax.numpy``, one step
                                         compiled by ``jax.jit`` with the parameters, moments and
                                         noise key donated (updated in place); ε from jax.random
    floor                                only the step's matrix products, with NumPy's BLAS into
                                         preallocated outputs, one after another
    floor+adam-io                        the floor, then one pass over four float32 buffers of P
                                         numbers that reads θ, g, m, v and writes θ, m, v: the
                                         memory traffic of a separate Adam step (7 · 4P bytes)
                                         with next to no arithmetic

The runners are interleaved — repeat 1 of every runner, then repeat 2 of every runner, … — so
that a slow moment of the (shared) machine hits all of them alike; each repeat times as many steps
as fill ``--target`` seconds, after warm-up steps, and a runner's time is the median over the
repeats. Ratios are paired: "/floor" is the median over the repeats of (the runner's time in that
repeat) / (the floor's time in the same repeat), ≥ 1, lower is better, printed with its
interquartile range; "×torch" is, the same way, PyTorch's step time over ours on the same device
(= our samples/s over PyTorch's; higher is better). A ratio of two medians taken from the same
noisy repeats moves by more than the paired one. Every runner gets the same number of threads
(``--threads``: BLAS, Numba, PyTorch, and XLA as :mod:`benchmarks.peers` sets it, before jax is
imported); with fewer threads than cores the whole process is also pinned to that many cores,
since XLA sizes its pool by the cores it may use (:func:`benchmarks.peers.limit_cores`). Runners
whose library is not installed are skipped with a note.

The CPU's peak: once per run, before the steps, the best GFLOP/s that any library here (OpenBLAS,
XLA, PyTorch, our own GEMM) reaches on one 2048³ float32 product with the run's threads
(``--peak-n``; 1024 with ``--quick``; :func:`benchmarks.peers.peak_gemm`). Each row's "of peak" is
its step's GFLOP/s over it: with one thread, the fraction of the measured peak of a core. Per Z,
"cpu-fused / fastest peer" is the paired ratio of the fastest of torch-cpu, torch-compile and
jax-jit's step time to cpu-fused's (> 1: cpu-fused is faster).

cpu-fused runs each product on OpenBLAS or on our own GEMM as the choice table of
:mod:`kernels.gemm_choice` says (printed, and kept in the JSON's ``config.gemm_choice``).

Also printed per Z: the parameter count, the bytes of parameters + gradients + Adam moments +
activations of the cpu-fused engine, and the FLOPs of one step's matrix products
(2·B·fan_in·fan_out per product: forward, the weight gradient, and the input gradient of every
layer but the first). Writes ``throughput.json`` and ``throughput.png`` into ``--out``: by default
``runs/bench/`` under the current folder (ignored by git), so that a run never replaces the
committed tables; ``--out benchmarks/results`` updates those. The JSON's ``machine`` is the record
of :mod:`benchmarks.machine` (CPU, its vector ISA, BLAS kernel and threads, load average), printed
at the start, with a warning on stderr when the numbers are not the machine's best.

    python benchmarks/throughput.py              # the full table (several minutes)
    python benchmarks/throughput.py --quick      # two sizes, a few repeats: seconds (torch-compile, when
                                                 # installed, adds about a minute of compiling)
    python benchmarks/throughput.py --runners cupy,cupy-graph,numba-cuda,torch-cuda --batch 1024
                                                 # only these runners (the GPU ones here)

``--runners`` picks runners by name; one that cannot run on this machine is skipped with the
reason, kept in the JSON's ``config.skipped``. Without the floor, "/floor" is left empty.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import minivae
from benchmarks import machine, peers
from minivae import cli
from minivae.backend import available_backends
from minivae.files import WriteError, atomic_write, atomic_write_text
from minivae.guards import OutFolder

LATENTS = (2, 10, 20, 50, 100, 200, 500, 784, 1000, 2000, 5000)
QUICK_LATENTS = (20, 1000)
D = 784
DEFAULT_OUT = Path("runs/bench")  # under the current folder; benchmarks/results holds the committed tables


# --------------------------------------------------------------------------------------------
# Sizes: parameters, memory, FLOPs
# --------------------------------------------------------------------------------------------


def layer_shapes(Z, hidden):
    """(fan_in, fan_out) of every dense layer, encoder first."""
    enc = (D,) + hidden + (2 * Z,)
    dec = (Z,) + hidden[::-1] + (D,)
    return list(zip(enc[:-1], enc[1:], strict=True)) + list(zip(dec[:-1], dec[1:], strict=True))


def sizes(Z, hidden, B):
    shapes = layer_shapes(Z, hidden)
    P = sum(i * o + o for i, o in shapes)
    flops = 0
    for k, (i, o) in enumerate(shapes):
        products = 2 if k == 0 else 3  # forward, ∂L/∂W, and ∂L/∂x except for the data input
        flops += products * 2 * B * i * o
    # cpu-fused engine: y and ∂L/∂y per layer, plus z, ∂L/∂z, ε, x, KL, NLL.
    act = 4 * (2 * B * sum(o for _, o in shapes) + 3 * B * Z + B * D + 2 * B)
    return {
        "params": P,
        "bytes_params": 4 * P,
        "bytes_grads": 4 * P,
        "bytes_adam": 8 * P,
        "bytes_activations": act,
        "bytes_total": 16 * P + act,
        "flops_per_step": flops,
    }


# --------------------------------------------------------------------------------------------
# Runners: each builds its model once and returns a function doing one training step
# --------------------------------------------------------------------------------------------


def minivae_runner(backend, Z, hidden, B, x):
    vae = minivae.VAE(data_dim=D, latent=Z, hidden=hidden, seed=0, dtype="float32", backend=backend)
    opt = minivae.Adam(vae.params, lr=1e-4)

    def step():
        vae.forward(x)  # ε made as in training (on cpu-fused and the GPUs by the backend itself)
        opt.step(vae.backward())

    sync = None
    if backend == "cupy":
        import cupy

        sync = cupy.cuda.Device().synchronize
    elif backend == "numba-cuda":
        from numba import cuda

        sync = cuda.synchronize
    return step, sync


def cupy_graph_runner(Z, hidden, B, x):
    """The cupy model's step captured into a CUDA graph; ``fallback_reason`` says if it ran eagerly."""
    import cupy

    from kernels.cupy.graph import GraphedStep

    vae = minivae.VAE(data_dim=D, latent=Z, hidden=hidden, seed=0, dtype="float32", backend="cupy")
    graphed = GraphedStep(vae, minivae.Adam(vae.params, lr=1e-4), batch_size=B)

    def step():
        graphed(x)  # copies x in, makes ε on the device, replays, copies the two losses out

    return step, cupy.cuda.Device().synchronize, graphed.fallback_reason


def torch_runner(device, Z, hidden, B, x, compile=False):
    import torch
    from torch import nn
    from torch.nn import functional as F

    torch.manual_seed(0)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 products, as cuBLAS in CuPy

    def mlp(widths):
        layers = []
        for k, (i, o) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.Linear(i, o))
            if k < len(widths) - 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    enc = mlp((D,) + hidden + (2 * Z,)).to(device)
    dec = mlp((Z,) + hidden[::-1] + (D,)).to(device)
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-4)
    xt = torch.from_numpy(x).to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        mu, logvar = enc(xt).chunk(2, dim=1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        logits = dec(z)
        recon = F.binary_cross_entropy_with_logits(logits, xt, reduction="none").sum(1)
        kl = 0.5 * (mu * mu + logvar.exp() - logvar - 1).sum(1)
        (recon + kl).mean().backward()
        opt.step()

    sync = torch.cuda.synchronize if device == "cuda" else None
    if compile:
        import logging

        torch._logging.set_logs(dynamo=logging.ERROR)  # not a warning per profiler hook it skips
        step = torch.compile(step)
        step()  # compiles here (tens of seconds), not inside the timed warm-up
    return step, sync


def jax_runner(Z, hidden, B, x):
    """The step of torch_runner in jax.numpy, compiled by XLA as one function: forward, the
    gradients (jax.value_and_grad), Adam; parameters, moments, the step count and the noise key go
    in donated and come out updated, so XLA may write them in place."""
    import functools

    import jax
    import jax.numpy as jnp

    lr, b1, b2, eps_adam = 1e-4, 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults, lr as the others
    n_enc = len(hidden) + 1
    rng = np.random.default_rng(0)
    params = [
        (jnp.asarray((rng.standard_normal((i, o)) / np.sqrt(i)).astype(np.float32)), jnp.zeros(o, jnp.float32))
        for i, o in layer_shapes(Z, hidden)
    ]

    def mlp(layers, h):
        for k, (w, b) in enumerate(layers):
            h = h @ w + b
            if k < len(layers) - 1:
                h = jax.nn.relu(h)
        return h

    def loss_fn(params, x, eps):
        h = mlp(params[:n_enc], x)
        mu, logvar = h[:, :Z], h[:, Z:]
        logits = mlp(params[n_enc:], mu + jnp.exp(0.5 * logvar) * eps)
        recon = jnp.sum(jax.nn.softplus(logits) - x * logits, axis=1)  # Bernoulli NLL from logits
        kl = 0.5 * jnp.sum(mu * mu + jnp.exp(logvar) - logvar - 1, axis=1)
        return jnp.mean(recon + kl)

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2, 3, 4))
    def train_step(params, m, v, t, key, x):
        key, sub = jax.random.split(key)
        loss, g = jax.value_and_grad(loss_fn)(params, x, jax.random.normal(sub, (B, Z), jnp.float32))
        t = t + 1
        c1, c2 = 1 - b1**t, 1 - b2**t
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)
        params = jax.tree_util.tree_map(lambda p, m, v: p - lr * (m / c1) / (jnp.sqrt(v / c2) + eps_adam), params, m, v)
        return params, m, v, t, key, loss

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    state = [params, zeros, jax.tree_util.tree_map(jnp.zeros_like, params), jnp.float32(0), jax.random.PRNGKey(0)]
    xj = jnp.asarray(x)

    def step():
        new = train_step(*state, xj)
        state[:] = new[:5]  # the old buffers were donated to XLA: keep only the new ones
        step.loss = new[5]  # this step's loss (a device scalar, for tests)

    def sync():
        jax.block_until_ready(state)

    step()  # compiles here, not inside the timed warm-up
    sync()
    return step, sync


def floor_runner(Z, hidden, B, x):
    """Only the matrix products of a step, into preallocated outputs: forward, ∂W, ∂x."""
    rng = np.random.default_rng(0)
    shapes = layer_shapes(Z, hidden)
    n_enc = len(hidden) + 1
    W = [(rng.standard_normal((i, o)) / np.sqrt(i)).astype(np.float32) for i, o in shapes]
    dW = [np.empty_like(w) for w in W]
    ins = [x] + [np.empty((B, o), np.float32) for _, o in shapes[:-1]]  # the input of each layer
    z = rng.standard_normal((B, Z)).astype(np.float32)
    ins[n_enc] = z  # the decoder starts from z, not from the encoder's output
    enc_out = np.empty((B, 2 * Z), np.float32)
    outs = ins[1:n_enc] + [enc_out] + ins[n_enc + 1 :] + [np.empty((B, D), np.float32)]
    douts = [(0.01 * rng.standard_normal(o.shape)).astype(np.float32) for o in outs]
    dins = [None] + [np.empty_like(a) for a in ins[1:]]

    def step():
        for k in range(len(W)):
            np.matmul(ins[k], W[k], out=outs[k])
        for k in reversed(range(len(W))):
            np.matmul(ins[k].T, douts[k], out=dW[k])
            if k != 0:
                np.matmul(douts[k], W[k].T, out=dins[k])

    return step, None


def _adam_io(p, g, m, v):
    """Reads θ, g, m, v and writes θ, m, v once, like an Adam step, with one add per array."""
    for k in range(p.shape[0]):
        gk = g[k]
        mk = m[k] + gk
        vk = v[k] + gk
        m[k] = mk
        v[k] = vk
        p[k] = p[k] + mk + vk


_adam_io_compiled = numba.njit(error_model="numpy")(_adam_io)  # compiled at its first call, once


def floor_adam_io_runner(Z, hidden, B, x):
    """The floor, then Adam's memory traffic over P parameters (zeros: no slow floating point)."""
    products, _ = floor_runner(Z, hidden, B, x)
    P = sizes(Z, hidden, B)["params"]
    buffers = [np.zeros(P, np.float32) for _ in range(4)]  # θ, g, m, v

    def step():
        products()
        _adam_io_compiled(*buffers)

    return step, None


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def time_steps(step, sync, n):
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    if sync is not None:
        sync()
    return (time.perf_counter() - t0) / n


def measure(runners, repeats, warmup, target_s, settle_s):
    """Seconds per step of every runner in each of the interleaved repeats, after warm-up:
    name → (list of per-repeat times, steps per repeat).

    Before each timed block the machine is left idle for ``settle_s`` seconds: a thread pool
    keeps its threads spinning for a while after its last task (OpenBLAS's for up to ~0.1 s), and
    a runner timed right after another one's pool would share the cores with those spinning
    threads (measured: PyTorch's step at Z = 20 took 23 ms right after the floor, 12.5 ms after
    0.1 s of rest).
    """
    counts, times = {}, {name: [] for name in runners}
    for name, (step, sync) in runners.items():
        time.sleep(settle_s)
        if warmup:
            time_steps(step, sync, warmup)  # first-call costs (compilation, allocation) go here
        t = time_steps(step, sync, 1)
        counts[name] = max(1, int(target_s / max(t, 1e-6)))
    for _ in range(repeats):
        for name, (step, sync) in runners.items():
            time.sleep(settle_s)
            times[name].append(time_steps(step, sync, counts[name]))
    return {name: (ts, counts[name]) for name, ts in times.items()}


def paired_ratio(num, den):
    """Median and quartiles over the repeats of num[i] / den[i] (two runners' times in repeat i)."""
    q1, q2, q3 = np.percentile(np.asarray(num) / np.asarray(den), [25, 50, 75])
    return float(q2), [float(q1), float(q3)]


# --------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------


def library_versions(info):
    """Add to the machine record ``info`` (:func:`benchmarks.machine.record`) the versions and
    thread counts of the libraries the runners use. Returns ``info``."""
    info["numpy"] = np.__version__
    try:
        import cupy

        info["cupy"] = cupy.__version__
    except Exception:  # noqa: BLE001 - not installed or broken: nothing to record
        pass
    if "jax" in sys.modules:  # imported by the jax-jit runner only: never imported here
        info["jax"] = sys.modules["jax"].__version__
    info["numba"] = numba.__version__
    info["numba_threads"] = numba.get_num_threads()
    try:
        info["numba_threading_layer"] = numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_cuda"] = torch.cuda.is_available()
        if info["torch_cuda"]:
            info["torch_cuda_version"] = torch.version.cuda
            info["torch_gpu"] = torch.cuda.get_device_name(0)
            info["torch_cuda_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    except Exception:  # noqa: BLE001 - not installed, or installed but broken
        info["torch"] = None
    return info


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def plot(results, runners, path, config):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name in runners:
        pts = [(r["latent"], r["samples_per_s"]) for r in results if r["runner"] == name]
        style = {"floor": dict(ls="--", color="gray"), "floor+adam-io": dict(ls=":", color="gray")}.get(name, {})
        ax.plot(*zip(*pts, strict=True), marker="o", label=name, **style)
    ax.axvline(D, color="k", lw=0.8, ls=":")
    ax.text(D, 0.98, " Z = D = 784", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("latent size Z")
    ax.set_ylabel("samples / s (training step: forward, backward, Adam)")
    ax.set_title(
        f"VAE training throughput, hidden {config['hidden']}, batch {config['batch']}, "
        f"float32, {config['threads']} thread{'' if config['threads'] == 1 else 's'}"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


RUNNERS = (
    "numpy",
    "cpu-fused",
    "cupy",
    "cupy-graph",
    "numba-cuda",
    "torch-cpu",
    "torch-compile",
    "jax-jit",
    "torch-cuda",
    "floor",
    "floor+adam-io",
)
GPU_RUNNERS = ("cupy", "cupy-graph", "numba-cuda")  # compared with torch-cuda; the rest with torch-cpu
CPU_PEERS = ("torch-cpu", "torch-compile", "jax-jit")  # the other frameworks cpu-fused is measured against


def _runners(text):
    """--runners: comma-separated names of RUNNERS → a list."""
    wanted = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in RUNNERS]
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(
            f"unknown runner {', '.join(unknown) or '(none given)'}; choose from {', '.join(RUNNERS)}"
        )
    return wanted


PROG = "python benchmarks/throughput.py"
MAX_SIZE = 2**31 - 1  # BLAS takes every dimension of a product as a 32-bit integer
MAX_THREADS = 1024
MAX_SETTLE = 3600.0
thread_count = cli.number(int, lambda v: 1 <= v <= MAX_THREADS, f"a thread count from 1 to {MAX_THREADS}")
settle_seconds = cli.number(float, lambda v: 0 <= v <= MAX_SETTLE, f"a number of seconds from 0 to {MAX_SETTLE:.0f}")
QUICK = {"repeats": 3, "warmup": 1, "target": 0.02, "settle": 0.12}  # what --quick sets, unless given
DEFAULTS = {"repeats": 15, "warmup": 3, "target": 0.25, "settle": 0.2}


def parser():
    """The command line's options, each with its default in its help."""
    ap = cli.Parser(prog=PROG, description=__doc__.splitlines()[0])
    latents = cli.positive_ints("latent sizes", "20,1000")
    ap.add_argument(
        "--latents",
        type=latents,
        default=None,
        help=f"comma-separated latent sizes (default {','.join(map(str, LATENTS))}; "
        f"{','.join(map(str, QUICK_LATENTS))} with --quick)",
    )
    ap.add_argument(
        "--hidden",
        type=cli.widths,
        default=(512,),
        metavar="H1,H2",
        help="comma-separated hidden widths of the encoder; the decoder mirrors them (default 512)",
    )
    ap.add_argument("--batch", type=cli.positive_int, default=128, help="mini-batch size B of every step (default 128)")
    _timing_options(ap)
    _run_options(ap)
    return ap


def _timing_options(ap):
    """How long and how often each runner is timed."""
    ap.add_argument(
        "--repeats",
        type=cli.positive_int,
        default=None,
        help=f"timed repeats of every runner, interleaved (default {DEFAULTS['repeats']}; "
        f"{QUICK['repeats']} with --quick)",
    )
    ap.add_argument(
        "--warmup",
        type=cli.non_negative_int,
        default=None,
        help=f"untimed steps of every runner before its repeats (default {DEFAULTS['warmup']}; "
        f"{QUICK['warmup']} with --quick)",
    )
    ap.add_argument(
        "--target",
        type=cli.positive_float,
        default=None,
        help=f"seconds per timed repeat (default {DEFAULTS['target']}; {QUICK['target']} with --quick)",
    )
    ap.add_argument(
        "--settle",
        type=settle_seconds,
        default=None,
        help=f"seconds of rest before each timed repeat, so that thread pools go idle (default "
        f"{DEFAULTS['settle']}; {QUICK['settle']} with --quick)",
    )


def _run_options(ap):
    """Which runners run, on how many threads, and where the results go."""
    ap.add_argument(
        "--quick",
        action="store_true",
        help="two latent sizes, three short repeats: seconds (options given still apply)",
    )
    ap.add_argument(
        "--threads",
        type=thread_count,
        default=None,
        help="threads for BLAS, Numba, PyTorch and XLA alike (default: BLAS's own count)",
    )
    ap.add_argument(
        "--runners",
        type=_runners,
        default=None,
        help=f"comma-separated runners to time (default: every one usable here): {', '.join(RUNNERS)}",
    )
    ap.add_argument(
        "--no-torch",
        action="store_true",
        help="skip the PyTorch runners (torch-cpu, torch-compile, torch-cuda) even where PyTorch is installed",
    )
    ap.add_argument(
        "--peak-n",
        type=cli.non_negative_int,
        default=None,
        help="size n of the n³ product that measures the CPU's peak (default 2048; 1024 with --quick; 0: none)",
    )
    ap.add_argument(
        "--out",
        type=cli.path,
        default=DEFAULT_OUT,
        help=f"folder for throughput.json and throughput.png (default {DEFAULT_OUT} under the current folder; "
        "--out benchmarks/results updates the committed tables)",
    )


def parse_args(argv=None):
    """The options, each checked by its type: a bad value is one line on stderr and exit code 2.
    ``--repeats``, ``--warmup``, ``--target`` and ``--settle`` take :data:`DEFAULTS`, or
    :data:`QUICK` with ``--quick``, when not given."""
    return with_defaults(parser().parse_args(argv), DEFAULTS, QUICK)


def quick_option(ap, name, kind, what, defaults, quick):
    """An option whose default is ``defaults``' value, or ``quick``'s with --quick (None until
    :func:`with_defaults` fills it in), both said in its help."""
    dest = name.lstrip("-").replace("-", "_")
    ap.add_argument(
        name, type=kind, default=None, help=f"{what} (default {defaults[dest]}; {quick[dest]} with --quick)"
    )


def with_defaults(args, defaults, quick):
    """``args`` with each option of ``defaults`` that was not given set to its default, or to its
    value in ``quick`` when ``--quick`` was."""
    for name, value in (quick if args.quick else defaults).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


class WriteFailed(Exception):
    """The results could not be written once the work was done: one line, exit code 1."""


def write_doc(out, name, doc):
    """``doc`` as indented JSON into ``out``/``name`` (the folder made, the file replaced whole, never
    half-written), said on stdout. → the path. A write that fails is :class:`WriteFailed`."""
    path = out / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    except OSError as e:
        raise WriteFailed(write_failure(path, e)) from None
    cli.say(f"wrote {path}")
    return path


def write_failure(path, e):
    """The one line that says why ``path`` could not be written."""
    text = str(e) if isinstance(e, WriteError) else f"cannot write {path}: {e.strerror or e}"
    return " ".join(text.split())


def check_out(out, *names, what="--out"):
    """Refuse, before anything is timed, an ``--out`` that cannot be written into: a path that is
    not a folder or cannot be made one, a folder that cannot be written into (tried: the folders
    made for the try are removed again, and nothing is left in them), or one of the result files
    ``names`` that cannot be one (a folder of that name, a name too long)."""
    with OutFolder(out, what, who="benchmark"):
        for name in names:
            path = out / name
            try:
                mode = path.stat().st_mode
            except FileNotFoundError:
                continue
            except OSError as e:
                raise cli.UsageError(f"cannot write {path}: {e.strerror or e}") from None
            if not stat.S_ISREG(mode):
                raise cli.UsageError(f"cannot write {path}: it exists and is not a file")


def check_sizes(latents, hidden, batch, copies, peak_n=0):
    """Refuse, before anything is timed, a size that no product takes (over :data:`MAX_SIZE`) or
    models too big for the memory available (``copies`` models of the largest latent size at once,
    and the n³ peak's three n × n matrices)."""
    for what, values in (("--latents", latents), ("--hidden", hidden), ("--batch", (batch,)), ("--peak-n", (peak_n,))):
        too_big = [v for v in values if v > MAX_SIZE]
        if too_big:
            raise cli.UsageError(f"{what} {too_big[0]}: at most {MAX_SIZE:,}")
    if latents:
        needed = copies * max(sizes(Z, tuple(hidden), batch)["bytes_total"] for Z in latents)
        what = f"building every model (Z = {max(latents)}, hidden {','.join(map(str, hidden))}, batch {batch})"
        cli.check_memory(needed, what)
    cli.check_memory(3 * 4 * peak_n**2, f"the peak's {peak_n}³ product")


def run_command(name, run, parse_args, argv=None, interrupted="interrupted"):
    """:func:`minivae.cli.run_command`, and a write that fails once the work was done
    (:class:`WriteFailed`) one line ``<name>: error: …`` on stderr and exit code 1."""
    try:
        return cli.run_command(name, run, parse_args, argv, interrupted)
    except WriteFailed as e:
        cli.report(name, f"error: {e}")
        return cli.EXIT_FAILED


class Libraries:
    """What this process may run: the minivae backends, jax and PyTorch (with the notes that say
    why one is missing), and the threads and cores they all run on."""

    def __init__(self, threads):
        self.threads, self.cores, self.backends = threads, None, []
        self.jax, self.jax_note, self.xla_note = None, None, None
        self.torch_devices, self.torch_note = [], None


def load_jax(libs, want):
    """Import jax for the jax-jit runner (when it is wanted), after its threads are set."""
    libs.xla_note = peers.set_xla_threads(libs.threads)  # before anything imports jax
    if not want("jax-jit"):
        return
    libs.jax, libs.jax_note = peers.import_jax()
    if libs.jax_note:
        libs.jax_note += ": jax-jit skipped"
        print(libs.jax_note)
    elif libs.xla_note:
        print(f"jax-jit: {libs.xla_note}")


def load_torch(libs, want, no_torch):
    """Import PyTorch for the torch runners (when one is wanted), on the run's threads."""
    if no_torch:
        libs.torch_note = "--no-torch: torch runners skipped"
    elif want("torch-cpu") or want("torch-cuda") or want("torch-compile"):
        try:
            import torch

            torch.set_num_threads(libs.threads)  # the same number of threads as our BLAS and Numba
            libs.torch_devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        except Exception as e:  # noqa: BLE001 - not installed, or installed but broken
            libs.torch_note = f"PyTorch not importable ({type(e).__name__}): torch runners skipped"
    if libs.torch_note:
        print(libs.torch_note)


def load_libraries(args, want):
    """Pin the cores, import what the wanted runners need, and give every library the same
    number of threads (``--threads``, else BLAS's own count). → :class:`Libraries`."""
    libs = Libraries(threads=args.threads or machine.blas_threads())
    libs.cores = peers.limit_cores(libs.threads)  # before jax or torch start their thread pools
    load_jax(libs, want)
    libs.backends = available_backends()
    load_torch(libs, want, args.no_torch)
    if args.threads:
        # After importing torch, which may bring its own BLAS: every BLAS and OpenMP pool loaded
        # by now (ours, Numba's, torch's) gets the same limit, for the rest of the process.
        from threadpoolctl import threadpool_limits

        threadpool_limits(libs.threads)
    numba.set_num_threads(min(libs.threads, numba.config.NUMBA_NUM_THREADS))
    return libs


def skip_reason(name, libs):
    """Why runner ``name`` cannot run here."""
    if name == "jax-jit":
        return libs.jax_note
    if name.startswith("torch-"):
        return libs.torch_note or "PyTorch sees no CUDA device"
    if name == "cupy-graph":
        return "needs the cupy backend, which is not usable here"
    return f"backend {name!r} is not usable here"


def choose_runners(wanted, libs):
    """What runs, in the order of RUNNERS, and why each runner asked for does not: (names,
    {name: reason}). Exits with code 2 when none of those asked for can run."""
    usable = set(libs.backends) | {f"torch-{d}" for d in libs.torch_devices} | {"floor", "floor+adam-io"}
    if "cupy" in libs.backends:
        usable.add("cupy-graph")
    if "cpu" in libs.torch_devices:
        usable.add("torch-compile")
    if libs.jax is not None:
        usable.add("jax-jit")
    names = [n for n in RUNNERS if n in usable and (wanted is None or n in wanted)]
    # By default, say why a CPU peer is missing.
    skipped = {n: skip_reason(n, libs) for n in wanted or ("torch-compile", "jax-jit") if n not in usable}
    for n, why in skipped.items():
        if wanted is not None:  # by default the notes printed while loading said it already
            print(f"{n} skipped: {why}")
    if not names:
        print(f"throughput: none of the runners asked for can run here ({', '.join(wanted)})", file=sys.stderr)
        sys.exit(2)
    return names, skipped


def make_config(args, latents, libs, names, skipped):
    """The run's settings, as the JSON's ``config`` keeps them, printed in two lines."""
    config = {
        "latents": list(latents),
        "hidden": list(args.hidden),
        "batch": args.batch,
        "dtype": "float32",
        "repeats": args.repeats,
        "warmup": args.warmup,
        "target_s": args.target,
        "settle_s": args.settle,
        "threads": libs.threads,
        "backends": libs.backends,
        "torch_devices": libs.torch_devices,
        "runners": names,
        "skipped": skipped,
        "notes": {},
        "note": libs.torch_note,
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "xla_note": libs.xla_note if libs.jax is not None else None,
        "pinned_cores": libs.cores,
    }
    if libs.cores is not None:
        cores = libs.cores
        print(f"pinned to core{'s' if len(cores) > 1 else ''} {', '.join(map(str, cores))} (every runner)")
    print(
        f"hidden {args.hidden}, batch {args.batch}, float32, {libs.threads} threads (BLAS, Numba, torch, XLA), "
        f"{args.repeats} interleaved repeats of ~{args.target} s after {args.settle} s of rest, medians"
    )
    return config


def note_gemm_choice(config, names):
    """Say (and keep in ``config``) on which products cpu-fused runs our GEMM."""
    if "cpu-fused" not in names:
        return
    from kernels import gemm_choice

    ours = gemm_choice.load()
    config["gemm_choice"] = {"table": machine.home_as_tilde(gemm_choice.table_path()), "ours": sorted(ours)}
    print(
        f"cpu-fused products: our GEMM on {len(ours)} shape(s) of the choice table, OpenBLAS on the rest"
        " (python -m kernels.gemm_choice)"
    )


def peak_size(args):
    """n of the n³ product that measures the peak: ``--peak-n``, else 1024 with ``--quick``, 2048."""
    return args.peak_n if args.peak_n is not None else (1024 if args.quick else 2048)


def measure_peak(args, libs, names):
    """The CPU's peak (:func:`benchmarks.peers.peak_gemm`), printed; None when not measured
    (``--peak-n 0``, or no CPU runner)."""
    peak_n = peak_size(args)
    cpu_runners = ("numpy", "cpu-fused", "floor", "floor+adam-io") + CPU_PEERS
    if peak_n == 0 or not any(n in cpu_runners for n in names):
        return None
    torch_mod = sys.modules.get("torch") if "cpu" in libs.torch_devices else None
    threads = libs.threads
    by_lib = peers.peak_gemm(threads, n=peak_n, repeats=2 if args.quick else 5, jax=libs.jax, torch=torch_mod)
    best = max(by_lib, key=by_lib.get)
    print(
        f"peak: {by_lib[best]:.1f} GFLOP/s ({best}) on a {peak_n}³ float32 product, {threads} thread"
        f"{'s' if threads > 1 else ''}; " + ", ".join(f"{k} {v:.1f}" for k, v in by_lib.items())
    )
    return {"n": peak_n, "threads": threads, "gflops": by_lib[best], "library": best, "by_library": by_lib}


def build_runners(names, backends, Z, hidden, B, x, config):
    """name → (step, sync) of every runner at latent size Z; a note in ``config`` for a runner
    that falls back (cupy-graph) or cannot be built (torch-compile)."""
    runners = {}
    for name in names:
        if name in backends:
            runners[name] = minivae_runner(name, Z, hidden, B, x)
        elif name == "cupy-graph":
            step, sync, why = cupy_graph_runner(Z, hidden, B, x)
            runners[name] = step, sync
            if why:
                config["notes"][name] = why
                print(f"cupy-graph: {why}")
        elif name == "torch-compile":
            try:
                runners[name] = torch_runner("cpu", Z, hidden, B, x, compile=True)
            except Exception as e:  # noqa: BLE001 - e.g. no C++ compiler for the generated code
                config["notes"][name] = f"Z = {Z}: torch.compile failed ({type(e).__name__}: {e})"
                print(f"torch-compile skipped at Z = {Z}: {type(e).__name__}: {str(e)[:200]}")
        elif name.startswith("torch-"):
            runners[name] = torch_runner(name[len("torch-") :], Z, hidden, B, x)
        elif name == "jax-jit":
            runners[name] = jax_runner(Z, hidden, B, x)
        elif name == "floor":
            runners[name] = floor_runner(Z, hidden, B, x)
        else:
            runners[name] = floor_adam_io_runner(Z, hidden, B, x)
    return runners


HEADER = (
    f"{'Z':>5} {'runner':>13} {'samples/s':>10} {'ms/step':>8} {'×torch':>7} {'/floor':>7}"
    f" {'(quartiles)':>11} {'GFLOP/s':>8} {'of peak':>7}"
)


def result_row(name, timed, Z, B, size, peak):
    """The JSON row of runner ``name`` at latent size Z from ``timed`` (:func:`measure`)."""
    ts, n = timed[name]
    t = float(np.median(ts))
    torch_name = "torch-cuda" if name in GPU_RUNNERS else "torch-cpu"
    vs_torch = None
    if torch_name in timed and name != torch_name and not name.startswith("floor"):
        vs_torch, _ = paired_ratio(timed[torch_name][0], ts)
    floor_ts = timed["floor"][0] if "floor" in timed else None
    vs_floor, vs_floor_q = paired_ratio(ts, floor_ts) if floor_ts is not None else (None, None)
    row = {
        "latent": Z,
        "runner": name,
        "seconds_per_step": t,
        "samples_per_s": B / t,
        "best_seconds_per_step": min(ts),
        "repeats_s": ts,
        "steps_per_repeat": n,
        "vs_torch": vs_torch,
        "vs_floor": vs_floor,
        "vs_floor_quartiles": vs_floor_q,
        "gflops": size["flops_per_step"] / t / 1e9,
        **size,
    }
    row["fraction_of_peak"] = row["gflops"] / peak["gflops"] if peak else None
    return row


def print_row(row, B, peak):
    name, t = row["runner"], row["seconds_per_step"]
    vs_torch, vs_floor, vs_floor_q = row["vs_torch"], row["vs_floor"], row["vs_floor_quartiles"]
    vt = f"{vs_torch:7.2f}" if vs_torch is not None else f"{'':>7}"
    vf = f"{vs_floor:7.2f}" if vs_floor is not None else f"{'':>7}"
    q = f"{vs_floor_q[0]:.2f}–{vs_floor_q[1]:.2f}" if vs_floor_q is not None and name != "floor" else ""
    fp = f"{row['fraction_of_peak']:7.2f}" if peak and name not in GPU_RUNNERS and name != "torch-cuda" else ""
    print(f"{row['latent']:>5} {name:>13} {B / t:10.0f} {1e3 * t:8.2f} {vt} {vf} {q:>11} {row['gflops']:8.1f} {fp:>7}")


def compare_fastest_peer(timed, Z, config):
    """cpu-fused against the fastest of the CPU peers timed at Z: kept in ``config``, printed."""
    present = [n for n in CPU_PEERS if n in timed]
    if "cpu-fused" not in timed or not present:
        return
    fastest = min(present, key=lambda n: float(np.median(timed[n][0])))
    ratio, quartiles = paired_ratio(timed[fastest][0], timed["cpu-fused"][0])
    config.setdefault("vs_fastest_peer", {})[str(Z)] = {"peer": fastest, "ratio": ratio, "quartiles": quartiles}
    print(
        f"{'':>5} {'':>13} cpu-fused / fastest peer ({fastest}): {ratio:.2f}× samples/s "
        f"({quartiles[0]:.2f}–{quartiles[1]:.2f})"
    )


def print_sizes(size):
    print(
        f"{'':>5} {'':>13} params {size['params']:,}, memory {size['bytes_total'] / 2**20:.1f} MiB"
        f" (params+grads+Adam {16 * size['params'] / 2**20:.1f}, activations "
        f"{size['bytes_activations'] / 2**20:.1f}), {size['flops_per_step'] / 1e9:.2f} GFLOP/step"
    )


def time_latent(Z, args, libs, names, config, peak):
    """Build, time and report every runner at latent size Z. → the JSON rows."""
    B, hidden = args.batch, args.hidden
    x = np.random.default_rng(0).random((B, D)).astype(np.float32)
    runners = build_runners(names, libs.backends, Z, hidden, B, x, config)
    timed = measure(runners, args.repeats, args.warmup, args.target, args.settle)
    size = sizes(Z, hidden, B)
    rows = [result_row(name, timed, Z, B, size, peak) for name in timed]
    for row in rows:
        print_row(row, B, peak)
    compare_fastest_peer(timed, Z, config)
    print_sizes(size)
    return rows


def write_results(out, doc, names):
    """throughput.json and throughput.png into ``out``, each whole or not at all; a write that
    fails is :class:`WriteFailed`."""
    out = Path(out)
    path = out / "throughput.json"
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
        path = out / "throughput.png"
        plot(doc["results"], names, path, doc["config"])
    except OSError as e:
        raise WriteFailed(write_failure(path, e)) from None
    print(f"wrote {out / 'throughput.json'} and {out / 'throughput.png'}")


def run(args, load_start=None):
    """Time every runner at each latent size; write throughput.json and its plot. → the document."""
    latents = args.latents or (QUICK_LATENTS if args.quick else LATENTS)
    # before anything is timed: every runner's model of the largest Z is built at once
    check_sizes(latents, args.hidden, args.batch, len(args.runners or RUNNERS), peak_size(args))
    check_out(args.out, "throughput.json", "throughput.png")
    wanted = args.runners
    libs = load_libraries(args, lambda name: wanted is None or name in wanted)
    host = machine.start(libs.threads, load_start)  # after every thread count is set
    names, skipped = choose_runners(wanted, libs)
    config = make_config(args, latents, libs, names, skipped)
    note_gemm_choice(config, names)
    config["peak"] = peak = measure_peak(args, libs, names)
    print(HEADER)
    results = [row for Z in latents for row in time_latent(Z, args, libs, names, config, peak)]
    machine.finish(host, {f"{r['runner']} at Z = {r['latent']}": machine.spread(r["repeats_s"]) for r in results})
    doc = {"config": config, "machine": library_versions(host), "results": results}
    write_results(args.out, doc, names)
    return doc


def main(argv=None):
    """The command: → the document written, or the exit code of a refusal or failure."""
    load_start = machine.load()  # before this process adds its own load
    name = cli.command_name(PROG)
    return run_command(name, lambda args: run(args, load_start), parse_args, argv, "interrupted; nothing was written")


if __name__ == "__main__":
    code = main()
    sys.exit(code if isinstance(code, int) else 0)
