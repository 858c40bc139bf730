"""Should the bandwidth-bound passes of a cpu-fused step use every thread? Measured, side by side.

Two passes of the step have a version that splits the work over Numba's threads
(:mod:`kernels.cpu_fused`): Adam over the P parameters (``adam_parallel_kernel``, chunks of 65,536)
and the Bernoulli loss with its gradient over the (B, D) logits (``bernoulli_nll_parallel_kernel``).
:class:`kernels.cpu_fused.CpuFusedOps` runs them from a size on (``parallel_min_adam``,
``parallel_min_nll``), when Numba has more than one thread. This command times, on ``--threads``
threads (2 by default), in one process, interleaved (repeat 1 of every runner, then repeat 2, …;
each repeat as many calls as fill ``--target`` seconds after ``--settle`` seconds of rest):

    per Z:  the whole training step (forward, backward, Adam) with the thresholds as shipped,
            the same with both passes on every thread (thresholds 0),
            Adam alone over the model's P parameters, one thread and every thread,
            the loss pass alone over (B, D), one thread and every thread.

It prints medians, the paired ratio shipped / all threads of the whole step (above 1: the
threads help) with its quartiles, and writes ``passes-t<threads>.json`` into ``--out`` with the
machine record of :mod:`benchmarks.machine` (CPU model, vector ISA, BLAS core type, load).

    python benchmarks/passes.py                       # Z = 20 and 1000, hidden 512, batch 128
    python benchmarks/passes.py --quick               # seconds
"""

from __future__ import annotations

import sys
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from benchmarks import machine, peers, throughput
from minivae import cli

D = 784
DEFAULT_OUT = Path("runs/bench")
DEFAULTS = {"repeats": 15, "warmup": 3, "target": 0.1, "settle": 0.1}
QUICK = {"repeats": 3, "warmup": 1, "target": 0.005, "settle": 0.0}
PROG = "python benchmarks/passes.py"


def build(Z, hidden, B, parallel, seed=0):
    """A cpu-fused VAE at latent size Z with its Adam and a batch, after one step; with
    ``parallel`` its ops run both passes on every thread at any size. → (vae, opt, x)."""
    import minivae

    vae = minivae.VAE(data_dim=D, latent=Z, hidden=hidden, seed=seed, dtype="float32", backend="cpu-fused")
    if parallel:
        vae.engine.ops.parallel_min_adam = vae.engine.ops.parallel_min_nll = 0  # on this instance only
    opt = minivae.Adam(vae.params, lr=1e-4)
    x = (np.random.default_rng(seed).random((B, D)) < 0.5).astype(np.float32)
    vae.forward(x)
    opt.step(vae.backward())
    return vae, opt, x


def runners(Z, hidden, B):
    """name → (function, None): the two whole steps and the two passes alone on 1 and all threads."""
    from kernels import cpu_fused

    out = {}
    for name, parallel in (("step, as shipped", False), ("step, passes on all threads", True)):
        vae, opt, x = build(Z, hidden, B, parallel)

        def step(vae=vae, opt=opt, x=x):
            vae.forward(x)
            opt.step(vae.backward())

        out[name] = (step, None)
    P = vae.engine.P
    rng = np.random.default_rng(1)
    p, g = (rng.standard_normal(P).astype(np.float32) for _ in range(2))
    m, v = np.zeros(P, np.float32), np.full(P, 1e-4, np.float32)
    f = np.float32
    hyper = (f(1e-4), f(0.9), f(0.1), f(0.999), f(1 - 0.999), f(1e-8), f(0.1), f(0.001))
    a = rng.standard_normal((B, D)).astype(np.float32)
    xb, loss, da = (a > 0).astype(np.float32), np.empty(B, np.float32), np.empty_like(a)
    scale = f(1.0 / B)
    out["Adam, 1 thread"] = (lambda: cpu_fused.adam_kernel(p, g, m, v, *hyper), None)
    out["Adam, all threads"] = (lambda: cpu_fused.adam_parallel_kernel(p, g, m, v, *hyper), None)
    out["loss, 1 thread"] = (lambda: cpu_fused.bernoulli_nll_kernel(a, xb, scale, loss, da), None)
    out["loss, all threads"] = (lambda: cpu_fused.bernoulli_nll_parallel_kernel(a, xb, scale, loss, da), None)
    return out, P


def time_latent(Z, args, spreads):
    """Time every runner at latent size Z, print the medians and the paired ratio. → the JSON entry."""
    runs, P = runners(Z, args.hidden, args.batch)
    timed = throughput.measure(runs, args.repeats, args.warmup, args.target, args.settle)
    medians = {name: float(np.median(ts)) for name, (ts, _) in timed.items()}
    for name, (ts, _) in timed.items():
        spreads[f"{name} at Z = {Z}"] = machine.spread(ts)
    ratios = {}
    for what, (one, every) in {
        "step": ("step, as shipped", "step, passes on all threads"),
        "Adam": ("Adam, 1 thread", "Adam, all threads"),
        "loss": ("loss, 1 thread", "loss, all threads"),
    }.items():
        r, q = throughput.paired_ratio(timed[one][0], timed[every][0])
        ratios[what] = {"ratio": r, "quartiles": q}
    lines = [f"\nZ = {Z}: P = {P:,} parameters; (B, D) = ({args.batch}, {D})"]
    lines += [f"  {name:<30} {1e3 * t:9.3f} ms" for name, t in medians.items()]
    for what, v in ratios.items():
        q1, q3 = v["quartiles"]
        lines.append(f"  {what:<5} one thread (or shipped) / all threads: {v['ratio']:.2f} ({q1:.2f}–{q3:.2f})")
    cli.say(*lines)
    return {
        "params": P,
        "median_s": medians,
        "repeats_s": {name: ts for name, (ts, _) in timed.items()},
        "calls_per_repeat": {name: n for name, (_, n) in timed.items()},
        "one_over_all": ratios,
    }


def parser():
    ap = cli.Parser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument(
        "--latents", type=cli.positive_ints("latent sizes", "20,1000"), default=(20, 1000), help="comma-separated Z"
    )
    ap.add_argument(
        "--hidden", type=cli.widths, default=(512,), metavar="H1,H2", help="hidden widths of the encoder (mirrored)"
    )
    ap.add_argument("--batch", type=cli.positive_int, default=128, help="mini-batch size B")
    ap.add_argument("--threads", type=throughput.thread_count, default=2, help="threads for BLAS and Numba")
    ap.add_argument("--quick", action="store_true", help="few short repeats: seconds")
    ap.add_argument(
        "--out", type=cli.path, default=DEFAULT_OUT, help=f"folder for passes-t<threads>.json (default {DEFAULT_OUT})"
    )
    for name, kind, what in (
        ("--repeats", cli.positive_int, "interleaved timed repeats of every runner"),
        ("--warmup", cli.non_negative_int, "untimed calls of every runner first"),
        ("--target", cli.positive_float, "seconds per timed repeat"),
        ("--settle", throughput.settle_seconds, "seconds of rest before each timed repeat"),
    ):
        throughput.quick_option(ap, name, kind, what, DEFAULTS, QUICK)
    return ap


def parse_args(argv=None):
    """The options, each checked by its type: a bad value is one line on stderr and exit code 2."""
    return throughput.with_defaults(parser().parse_args(argv), DEFAULTS, QUICK)


def run(args, load_start=None):
    """Time every Z on ``--threads`` threads; write the JSON. → the document."""
    threads = args.threads
    if threads > numba.config.NUMBA_NUM_THREADS:
        raise cli.UsageError(f"--threads {threads}: Numba allows {numba.config.NUMBA_NUM_THREADS} here")
    throughput.check_sizes(args.latents, args.hidden, args.batch, copies=2)
    throughput.check_out(args.out, f"passes-t{threads}.json")
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    numba.set_num_threads(threads)
    host = machine.start(threads, load_start)
    pinned = peers.limit_cores(threads)
    cli.say(
        f"hidden {list(args.hidden)}, batch {args.batch}, float32, {threads} thread(s); {args.repeats} interleaved "
        f"repeats of ~{args.target} s after {args.settle} s of rest, medians"
    )
    spreads = {}
    latents = {str(Z): time_latent(Z, args, spreads) for Z in args.latents}
    host.update(numpy=np.__version__, numba=numba.__version__, numba_threads=numba.get_num_threads())
    config = {k: getattr(args, k) for k in ("repeats", "warmup", "target", "settle", "batch", "threads")}
    config.update(latents=list(args.latents), hidden=list(args.hidden), pinned_cores=pinned)
    doc = {"config": config, "machine": machine.finish(host, spreads), "latents": latents}
    throughput.write_doc(args.out, f"passes-t{threads}.json", doc)
    return doc


def main(argv=None):
    load_start = machine.load()
    return throughput.run_command(cli.command_name(PROG), lambda args: run(args, load_start), parse_args, argv)


if __name__ == "__main__":
    code = main()
    sys.exit(code if isinstance(code, int) else 0)
