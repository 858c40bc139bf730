"""A roofline of the training step: each part of one cpu-fused step against what the machine can do.

For each latent size Z, a cpu-fused VAE (D = 784 → H → 2Z, Z → H → D, ReLU, Bernoulli loss from
logits plus the Gaussian KL, Adam; H = 512, batch B = 128, float32 by default) does one training
step while every call it makes to its ops object (:class:`kernels.cpu_fused.CpuFusedOps`) is
recorded with its arguments. Each call is one *part*, timed by calling it again exactly as the
step made it: the same op (OpenBLAS, or our GEMM where the choice table of
:mod:`kernels.gemm_choice` says so, for a product), reading the step's own arrays and writing
private copies of what it writes (an in-place part reads a private copy of its input too), so
that no part changes what another reads. The parts of a step with one hidden layer each side:

    noise ε           (B, Z): Philox4x32-10 + Box–Muller
    forward           x·W₁ (B, D)·(D, H), h·W₂ (B, H)·(H, 2Z), z·W₃ (B, Z)·(Z, H), h·W₄ (B, H)·(H, D)
    bias + act        bias + ReLU on (B, H) twice, bias alone on (B, 2Z) and on (B, D)
    reparam + KL      z = μ + σ⊙ε and the KL: (B, 2Z) → (B, Z), (B,)
    Bernoulli NLL     the loss ℓ and ∂L/∂logits: (B, D) → (B,), (B, D)
    ∂W                xᵀ·∂a (D, B)·(B, H), hᵀ·∂a (H, B)·(B, 2Z), zᵀ·∂a (Z, B)·(B, H), hᵀ·∂a (H, B)·(B, D)
    ∂x                ∂a·Wᵀ for every layer but the first (the data needs no gradient): three
    backward passes   ReLU backward twice, four column sums (∂b), reparam + KL backward (B, Z) → (B, 2Z)
    Adam              one pass over the P parameters, their gradients and both moments

11 products in all: three per dense layer, two for the encoder's first (6L − 1 for L layers a
side). Every part is timed in interleaved repeats (repeat 1 of every part, then repeat 2, …; each
repeat runs as many calls as fill ``--target`` seconds, after ``--settle`` seconds of rest),
beside two more runners: the whole step (forward, backward, Adam, as ``benchmarks/throughput.py``
times it) and the 11 products alone, back to back. A part's time is the median over the repeats.

Counting (F = 4 bytes per float32; bytes are the minimum that must cross memory: every array the
part reads, once, plus every array it writes, once, also when it writes in place):

    product op(a) (M, K) · op(b) (K, N) → (M, N)     2MKN FLOPs     4(MK + KN + MN) bytes
    Adam, per parameter: reads θ, g, m, v and writes θ, m, v     14 FLOPs     28 bytes
    bias + ReLU, per element of (B, N)      2 FLOPs   reads a, b, writes y: 4(2BN + N) bytes
    bias + identity / tanh                  1 / 2 FLOPs, the same bytes (libm's tanh counts 1)
    ReLU / tanh backward, per element       1 / 3 FLOPs   reads ∂y, y, writes ∂a: 12BN bytes
    column sums (B, N) → (N,)               (B − 1)N FLOPs    4(BN + N) bytes
    reparam + KL, per latent                40 FLOPs   reads μ, log σ², ε, writes z, KL: 4(4BZ + B) bytes
    reparam + KL backward, per latent       41 FLOPs   reads ∂z, μ, log σ², ε, writes ∂μ, ∂log σ²: 24BZ bytes
    Bernoulli NLL, per pixel                60 FLOPs   reads logits, x, writes ∂logits, ℓ: 4(3BD + B) bytes
    noise, per number                       25 FLOPs   writes ε: 4BZ bytes

A kernel's FLOPs are those of its formula as :mod:`kernels.cpu_fused` computes it: each +, −, ×,
÷, √, min, max, abs, floor and compare-select one FLOP, a fused multiply-add two; our exp32
counts 30 and log1p32 18 (their polynomials as written); integer work (Philox, exponent bits) and
conversions none.

The machine, measured once per run before the parts: the memory bandwidth, STREAM-like (Numba
``prange`` loops over float32 arrays of ``--stream-mib`` MiB each, far larger than the last-level
cache; copy c = a counts 8 bytes per element, triad a = b + s·c 12; best of several) on 1 and 2
threads; and the GEMM peak, the best GFLOP/s of OpenBLAS (through NumPy) and of our GEMM
(:mod:`kernels.gemm_cpu`, v3 on one thread, v4 on more; v5 / v6 with AVX-512) on one ``--peak-n``³ float32 product, on 1
thread and on the run's threads. The run's roofs are the peak and the triad bandwidth on its own
thread count; their ratio is the machine balance (FLOP/byte).

Per part: its time, its share of the sum of the parts, GFLOP/s and GB/s, its arithmetic intensity
(FLOPs over bytes), *compute*-bound when that is at least the machine balance, else *memory*-bound,
and "of roof": GFLOP/s over the peak for a compute-bound part, GB/s over the bandwidth for a
memory-bound one. Parts timed alone keep their arrays in cache from one call to the next (a
(B, H) activation is 256 KB), so a memory-bound part can run above the bandwidth (of roof > 1):
its arrays did not come from memory. Per Z: the sum of the parts against the timed whole step
(the rest is Python, loss copies and the cache misses parts timed alone do not meet) and the
step over the products alone (paired: the median over the repeats of the two times in the same
repeat, with quartiles).

    python benchmarks/roofline.py --threads 1        # Z = 20 and 1000, hidden 512, batch 128 (minutes)
    python benchmarks/roofline.py --quick            # seconds
    python benchmarks/roofline.py --threads 1 --latents 1000 --trained RUN_DIR --data-dir DIR

A fresh model's step reads its initial weights and a batch of uniform noise. ``--trained RUN_DIR``
times a trained model's step too (a run folder of ``minivae.train``, or a model ``minivae.sweep
--keep-models`` kept): it takes ``--state-steps`` Adam steps on real digits first (its moments
start at 0), then the recorded step on one more batch. Each part also counts the subnormal
numbers it reads (0 < |a| < 2⁻¹²⁶): on many x86 CPUs arithmetic on them takes a slow microcode
path, and training makes them where initial weights have none (pixels black in every digit drive
their logits low enough that ∂L/∂logits underflows; the moments of dead units decay towards 0).

Writes ``roofline-t<threads>.json`` into ``--out`` (``runs/bench/`` under the current folder by
default, ignored by git): the settings, the machine record of :mod:`benchmarks.machine` with the
measured roofs, every part of every Z (``latents``) and of every trained model (``trained``).
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from benchmarks import machine, peers, throughput
from benchmarks.kernels import shape_label
from minivae import cli

D = 784
LATENTS = (20, 1000)
DEFAULT_OUT = Path("runs/bench")  # under the current folder; benchmarks/results holds the committed tables
F = 4  # bytes per float32

# FLOPs per element of each fused kernel, counted in its source (see the module docstring).
EXP32, LOG1P32 = 30, 18
BIAS_ACT_FLOPS = {"relu": 2, "identity": 1, "tanh": 2}
ACT_BACKWARD_FLOPS = {"relu": 1, "tanh": 3, "identity": 0}
REPARAM_KL_FLOPS = 1 + EXP32 + 2 + 6 + 1  # σ = exp(½ log σ²), z = μ + σε, the KL term, its sum
REPARAM_KL_BACKWARD_FLOPS = 1 + EXP32 + 2 + 8  # σ, ∂μ = ∂z + cμ, ∂log σ² = ∂z·½σε + c·½(σ² − 1)
BERNOULLI_NLL_FLOPS = 2 + EXP32 + 1 + LOG1P32 + 3 + 3 + 2 + 1  # e = exp(−|a|), softplus − xa, ∂a, sum
NOISE_FLOPS = 25  # Box–Muller per number (log32, √, the sin and cos polynomials); Philox is integer work
ADAM_FLOPS = 14  # m: 3, v: 4, θ: 7 (÷c₁ and ÷c₂ as products, √, + ε, × α, ÷, −)
ADAM_BYTES = 7 * F  # reads θ, g, m, v; writes θ, m, v

# The ops of kernels.reference.Ops a step calls (the memory methods aside): the calls recorded.
OPS = (
    "standard_normal",
    "matmul",
    "bias_act",
    "act_backward",
    "colsum",
    "reparam_kl",
    "reparam_kl_backward",
    "bernoulli_nll",
    "adam",
)
KINDS = ("product", "element-wise", "Adam")
KIND_WORDS = {"product": "products", "element-wise": "element-wise kernels", "Adam": "Adam"}


# --------------------------------------------------------------------------------------------
# Bytes and FLOPs
# --------------------------------------------------------------------------------------------


def product_cost(M, K, N):
    """(FLOPs, bytes) of op(a) (M, K) · op(b) (K, N) → (M, N): 2MKN, and 4(MK + KN + MN)."""
    return 2 * M * K * N, F * (M * K + K * N + M * N)


def adam_cost(P):
    """(FLOPs, bytes) of one Adam step over P parameters: 14 and 28 per parameter."""
    return ADAM_FLOPS * P, ADAM_BYTES * P


def _product_dims(g):
    """(M, K, N) of a recorded ``matmul`` call's arguments ``g``."""
    M, N = g["out"].shape
    return M, g["a"].shape[0 if g["ta"] else 1], N


def cost(op, g):
    """(FLOPs, bytes) of one call of ``op`` with the arguments ``g`` (name → value), by the rules of
    the module docstring."""
    if op == "matmul":
        return product_cost(*_product_dims(g))
    if op == "adam":
        return adam_cost(g["p"].size)
    if op == "standard_normal":
        return NOISE_FLOPS * g["out"].size, F * g["out"].size
    if op in ("reparam_kl", "reparam_kl_backward"):
        B, Z = g["eps"].shape
        if op == "reparam_kl":
            return REPARAM_KL_FLOPS * B * Z, F * (4 * B * Z + B)
        return REPARAM_KL_BACKWARD_FLOPS * B * Z, F * 6 * B * Z
    first = g["a"] if op in ("bias_act", "bernoulli_nll") else g["dy"]
    B, N = first.shape
    if op == "bias_act":
        return BIAS_ACT_FLOPS[g["act"]] * B * N, F * (2 * B * N + N)
    if op == "act_backward":
        if g["act"] == "identity":  # a copy of ∂y, or nothing in place (the engine never calls it)
            return 0, 0 if g["out"] is g["dy"] else 2 * F * B * N
        return ACT_BACKWARD_FLOPS[g["act"]] * B * N, 3 * F * B * N
    if op == "colsum":
        return (B - 1) * N, F * (B * N + N)
    if op == "bernoulli_nll":
        return BERNOULLI_NLL_FLOPS * B * N, F * (3 * B * N + B)
    raise ValueError(f"no cost for the op {op!r}")


# --------------------------------------------------------------------------------------------
# The parts: the ops calls of one recorded step
# --------------------------------------------------------------------------------------------


# The arguments each op writes (in place where the step passes an input as one of them).
WRITES = {
    "standard_normal": ("out",),
    "matmul": ("out",),
    "bias_act": ("out",),
    "act_backward": ("out",),
    "colsum": ("out",),
    "reparam_kl": ("z", "kl"),
    "reparam_kl_backward": ("dh",),
    "bernoulli_nll": ("loss", "da"),
    "adam": ("p", "m", "v"),
}


def record_step(vae, opt, x):
    """One training step of ``vae`` (a cpu-fused :class:`kernels.fast.FastVAE`) and its Adam
    ``opt`` on the batch x, with every call to the ops object recorded. → [(op, method, args,
    before)] in the order of the step: ``method`` is the ops object's own bound method, ``args``
    its arguments by name (defaults applied), ``before`` a copy of each array it writes
    (:data:`WRITES`) as it was just before the call."""
    ops, calls = vae.engine.ops, []
    for op in OPS:
        method = getattr(ops, op)
        sig = inspect.signature(method)  # once per op, not at every call

        def recorder(*args, _op=op, _method=method, _sig=sig, **kwargs):
            bound = _sig.bind(*args, **kwargs)
            bound.apply_defaults()
            g = dict(bound.arguments)
            calls.append((_op, _method, g, {k: np.array(g[k], copy=True) for k in WRITES[_op]}))
            return _method(*args, **kwargs)

        setattr(ops, op, recorder)  # on the instance: the engine and Adam call through it
    try:
        vae.forward(x)
        opt.step(vae.backward())
    finally:
        for op in OPS:
            delattr(ops, op)  # the class's methods again
    return calls


def private_arguments(op, g, before):
    """The arguments a part is timed with: the step's own arrays for what it only reads, and a
    private copy (from ``before``, the values just before the step's call) of every array it
    writes. A part that works in place (``bias_act`` with out = a: y ← act(y + b)) reads a second
    private copy of the input instead, which no call writes. So a part timed thousands of times
    computes the same numbers at every call and leaves the step's arrays alone: called again in
    place on the step's own y, the bias add would accumulate (y + nb) until the next layers
    overflow into inf and NaN, and the parts downstream would be timed on those. Adam alone
    still changes its private θ, m, v at each call (by about one learning rate per call), as a
    training step does."""
    private = dict(g)
    for k in WRITES[op]:
        private[k] = before[k].copy()
        for name, value in g.items():
            if name not in WRITES[op] and isinstance(value, np.ndarray) and np.shares_memory(value, g[k]):
                if op == "act_backward" and g["act"] == "identity":
                    private[name] = private[k]  # nothing to do in place: keep it in place
                else:
                    private[name] = before[k].copy()  # the input of an in-place part, read only
    return private


def _key(a):
    return a.ctypes.data, a.shape


def array_names(engine, B):
    """(address, shape) → name of the arrays whose names label the parts: every parameter
    (``enc0.W``), its gradient (``∂enc0.W``), and each layer's output y (``enc0.y``) at batch B."""
    names = {_key(a): k for k, a in engine.params.items()}
    names.update({_key(a): "∂" + k for k, a in engine.grads.items()})
    ws = engine.workspace(B)
    for layers, ys in ((engine.enc_layers, ws.enc_y), (engine.dec_layers, ws.dec_y)):
        names.update({_key(y): layer[0] + ".y" for layer, y in zip(layers, ys, strict=True)})
    return names


FIXED_LABELS = {
    "standard_normal": "noise ε",
    "reparam_kl": "reparam + KL",
    "reparam_kl_backward": "reparam + KL backward",
    "bernoulli_nll": "Bernoulli NLL + ∂logits",
    "adam": "Adam",
}


def label(op, g, names):
    """The part's name: ``enc0 forward``, ``dec1 ∂W``, ``dec0 ∂x``, ``enc0 bias + relu``, …"""
    if op in FIXED_LABELS:
        return FIXED_LABELS[op]

    def layer(a):
        return names.get(_key(a), "?").lstrip("∂").rsplit(".", 1)[0]

    if op == "matmul":
        if names.get(_key(g["out"]), "").startswith("∂"):
            return f"{layer(g['out'])} ∂W"
        return f"{layer(g['b'])} {'∂x' if g['tb'] else 'forward'}"
    if op == "bias_act":
        return f"{layer(g['b'])} bias + {g['act']}"
    if op == "act_backward":
        return f"{layer(g['y'])} {g['act']} backward"
    return f"{layer(g['out'])} ∂b (column sums)"  # colsum


def shape_text(op, g):
    """The part's shape in words: ``128×784·784×512`` for a product, ``128×512`` for a pass over a
    (B, N) array, ``P = 835,128`` for Adam."""
    if op == "matmul":
        return shape_label(*_product_dims(g), g["ta"], g["tb"])
    if op == "adam":
        return f"P = {g['p'].size:,}"
    first = {"standard_normal": "out", "colsum": "dy", "act_backward": "dy"}.get(op, "a")
    if op.startswith("reparam"):
        first = "h"
    return "×".join(map(str, g[first].shape))


def implementation(op, g, ops):
    """What runs the part: ``OpenBLAS`` or ``ours vN`` (:func:`kernels.gemm_cpu.best_version`) for a product (as
    :meth:`kernels.cpu_fused.CpuFusedOps.matmul` chooses), ``Numba`` (``Numba ×2``: its prange
    version on two threads) for a kernel."""
    threads = numba.get_num_threads()
    if op == "matmul":
        from kernels import gemm_choice

        key = gemm_choice.key(*_product_dims(g), g["ta"], g["tb"], threads)
        if key not in (ops.gemm_table or ()):
            return "OpenBLAS"
        from kernels import gemm_cpu

        return f"ours v{gemm_cpu.best_version(threads)}"
    size = {"adam": ("p", ops.parallel_min_adam), "bernoulli_nll": ("a", ops.parallel_min_nll)}.get(op)
    if size and threads > 1 and g[size[0]].size >= size[1]:
        return f"Numba ×{threads}"
    return "Numba"


TINY = np.finfo(np.float32).tiny  # 2⁻¹²⁶, the smallest normal float32


def subnormal_reads(op, kw):
    """How many numbers the part reads are subnormal (0 < |a| < 2⁻¹²⁶), over every float32 array
    among its arguments ``kw`` (:func:`private_arguments`) that it reads: those it does not write,
    and for Adam θ, m and v too. Arithmetic on them takes a slow microcode path on many x86 CPUs
    (a product reading them ran 2× slower on an Intel Xeon), so a step timed at the initial
    weights, which have none, can be faster than the same step late in training."""
    reads = [a for k, a in kw.items() if k not in WRITES[op] or op == "adam"]
    return sum(
        int(np.count_nonzero((a != 0) & (np.abs(a) < TINY)))
        for a in reads
        if isinstance(a, np.ndarray) and a.dtype == np.float32
    )


def step_parts(vae, calls):
    """The parts of a recorded step (:func:`record_step`): one dict per call, with its name, op,
    kind, shape, implementation, FLOPs and bytes, how many of the numbers it reads are subnormal,
    and ``call``, a function that makes the call again on the part's own arguments
    (:func:`private_arguments`; not kept in the JSON)."""
    ops = vae.engine.ops
    B = next(g["a"].shape[0] for op, _, g, _ in calls if op == "bias_act")
    names, parts = array_names(vae.engine, B), []
    for op, method, g, before in calls:
        kw = private_arguments(op, g, before)
        flops, nbytes = cost(op, g)
        kind = {"matmul": "product", "adam": "Adam"}.get(op, "element-wise")
        parts.append(
            {
                "part": label(op, g, names),
                "op": op,
                "kind": kind,
                "shape": shape_text(op, g),
                "impl": implementation(op, g, ops),
                "flops": flops,
                "bytes": nbytes,
                "subnormal_reads": subnormal_reads(op, kw),
                "call": lambda method=method, kw=kw: method(**kw),
            }
        )
    return parts


def build_step(Z, hidden, B, seed=0):
    """A cpu-fused VAE at latent size Z, its Adam and a batch, after one warm-up step (Numba
    loads its kernels there). → (vae, opt, x)."""
    import minivae

    vae = minivae.VAE(data_dim=D, latent=Z, hidden=hidden, seed=seed, dtype="float32", backend="cpu-fused")
    opt = minivae.Adam(vae.params, lr=1e-4)
    x = np.random.default_rng(seed).random((B, D)).astype(np.float32)
    vae.forward(x)
    opt.step(vae.backward())
    return vae, opt, x


# --------------------------------------------------------------------------------------------
# The machine: memory bandwidth and the GEMM peak
# --------------------------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True)
def stream_copy(a, c):
    """c = a, the elements spread over Numba's threads."""
    for i in numba.prange(a.shape[0]):
        c[i] = a[i]


@numba.njit(parallel=True, cache=True)
def stream_triad(a, b, c, s):
    """a = b + s·c, the elements spread over Numba's threads."""
    for i in numba.prange(a.shape[0]):
        a[i] = b[i] + s * c[i]


def best_seconds(fn, repeats, times=None):
    """The fastest of ``repeats`` calls of ``fn`` (after one untimed call); ``times`` receives each."""
    fn()
    times = [] if times is None else times
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def stream_threads(threads):
    """The thread counts the bandwidth is measured on: 1, 2 and the run's, as far as Numba and the
    cores allow."""
    most = min(numba.config.NUMBA_NUM_THREADS, os.cpu_count() or 1)
    return sorted(t for t in {1, 2, threads} if t <= most)


def stream(mib, thread_counts, repeats, spreads):
    """GB/s of copy and triad over float32 arrays of ``mib`` MiB each, best of ``repeats``, per
    thread count: {threads: {"copy_gbs", "triad_gbs"}}."""
    n = mib * 2**20 // F
    a, b, c = np.full(n, 1.0, np.float32), np.full(n, 2.0, np.float32), np.full(n, 0.5, np.float32)
    s, before, out = np.float32(0.5), numba.get_num_threads(), {}
    try:
        for t in thread_counts:
            numba.set_num_threads(t)
            copy_times, triad_times = [], []
            copy = best_seconds(lambda: stream_copy(a, c), repeats, copy_times)
            triad = best_seconds(lambda: stream_triad(a, b, c, s), repeats, triad_times)
            out[t] = {"copy_gbs": 2 * F * n / copy / 1e9, "triad_gbs": 3 * F * n / triad / 1e9}
            spreads[f"STREAM copy on {t} thread(s)"] = machine.spread(copy_times)
            spreads[f"STREAM triad on {t} thread(s)"] = machine.spread(triad_times)
    finally:
        numba.set_num_threads(before)
    return out


def gemm_peak(n, threads, repeats):
    """Best GFLOP/s of one n³ float32 product on ``threads`` threads: {"OpenBLAS": …, "ours vK": …}
    (OpenBLAS through NumPy; our GEMM :func:`kernels.gemm_cpu.best_version`: v3 on one thread, v4
    on more, v5 / v6 with AVX-512)."""
    from threadpoolctl import threadpool_limits

    from kernels import gemm_cpu

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    out, flops, version = np.empty((n, n), np.float32), 2 * n**3, gemm_cpu.best_version(threads)
    before = numba.get_num_threads()
    try:
        with threadpool_limits(threads):
            blas = best_seconds(lambda: np.matmul(a, b, out=out), repeats)
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        ours = best_seconds(lambda: gemm_cpu.matmul(a, b, out, version=version), repeats)
    finally:
        numba.set_num_threads(before)
    return {"OpenBLAS": flops / blas / 1e9, f"ours v{version}": flops / ours / 1e9}


def measure_roofs(args, threads, spreads):
    """The bandwidth and GEMM peaks (see the module docstring), printed; the run's roofs are the
    peak and the triad bandwidth on ``threads`` (or on the most threads measured below it)."""
    bw = stream(args.stream_mib, stream_threads(threads), args.stream_repeats, spreads)
    peaks = {t: gemm_peak(args.peak_n, t, args.peak_repeats) for t in sorted({1, threads})}
    bw_threads = max(t for t in bw if t <= threads)
    best = max(peaks[threads], key=peaks[threads].get)
    roofs = {
        "stream": {"mib": args.stream_mib, "by_threads": {str(t): v for t, v in bw.items()}},
        "gemm_peak": {"n": args.peak_n, "by_threads": {str(t): v for t, v in peaks.items()}},
        "peak_gflops": peaks[threads][best],
        "peak_from": f"{best}, {threads} thread{'s' if threads > 1 else ''}",
        "bandwidth_gbs": bw[bw_threads]["triad_gbs"],
        "bandwidth_from": f"triad, {bw_threads} thread{'s' if bw_threads > 1 else ''}",
    }
    roofs["balance_flop_per_byte"] = roofs["peak_gflops"] / roofs["bandwidth_gbs"]
    print_roofs(roofs, bw, peaks, threads)
    return roofs


def print_roofs(roofs, bw, peaks, threads):
    missing = [t for t in (1, 2) if t not in bw]
    note = f" ({', '.join(map(str, missing))} thread(s): not measured, NUMBA_NUM_THREADS or cores)" if missing else ""
    cli.say(
        f"memory bandwidth (float32 arrays of {roofs['stream']['mib']} MiB): "
        + "; ".join(
            f"{t} thread{'s' if t > 1 else ''}: copy {v['copy_gbs']:.1f}, triad {v['triad_gbs']:.1f} GB/s"
            for t, v in bw.items()
        )
        + note,
        f"GEMM peak ({roofs['gemm_peak']['n']}³ float32): "
        + "; ".join(
            f"{t} thread{'s' if t > 1 else ''}: " + ", ".join(f"{k} {v:.1f}" for k, v in p.items()) + " GFLOP/s"
            for t, p in peaks.items()
        ),
        f"roofs of this run ({threads} thread{'s' if threads > 1 else ''}): {roofs['peak_gflops']:.1f} GFLOP/s "
        f"({roofs['peak_from']}), {roofs['bandwidth_gbs']:.1f} GB/s ({roofs['bandwidth_from']}); "
        f"balance {roofs['balance_flop_per_byte']:.2f} FLOP/byte",
    )


# --------------------------------------------------------------------------------------------
# Timing the parts and reading them against the roofs
# --------------------------------------------------------------------------------------------


def runners(vae, opt, x, parts):
    """name → (function, None) of every part (its name numbered: a step may repeat one), the
    whole step and the products alone, for :func:`benchmarks.throughput.measure`."""
    out = {f"{i:02d} {p['part']}": (p["call"], None) for i, p in enumerate(parts)}
    products = [p["call"] for p in parts if p["kind"] == "product"]

    def step():
        vae.forward(x)
        opt.step(vae.backward())

    def products_alone():
        for call in products:
            call()

    out["whole step"] = (step, None)
    out["products alone"] = (products_alone, None)
    return out


def read_part(part, ts, n, total, roofs):
    """The JSON row of one part from its per-repeat times ``ts`` (seconds per call, ``n`` calls
    per repeat): time, share of ``total``, rates, intensity, bound and fraction of its roof."""
    t = float(np.median(ts))
    row = {k: v for k, v in part.items() if k != "call"}
    row.update(seconds=t, repeats_s=ts, calls_per_repeat=n, share=t / total)
    row.update(gflops=part["flops"] / t / 1e9, gbs=part["bytes"] / t / 1e9)
    row["intensity"] = part["flops"] / part["bytes"] if part["bytes"] else None
    compute = row["intensity"] is None or row["intensity"] >= roofs["balance_flop_per_byte"]
    row["bound"] = "compute" if compute else "memory"
    row["fraction_of_peak"] = row["gflops"] / roofs["peak_gflops"]
    row["fraction_of_bandwidth"] = row["gbs"] / roofs["bandwidth_gbs"]
    row["fraction_of_roof"] = row["fraction_of_peak"] if compute else row["fraction_of_bandwidth"]
    return row


def summarize(rows, timed, roofs):
    """Per kind (products, element-wise, Adam) and for the whole step: times, shares, FLOPs,
    bytes; the sum of the parts against the timed step, and the step over the products alone."""
    total = sum(r["seconds"] for r in rows)
    kinds = {}
    for kind in KINDS:
        mine = [r for r in rows if r["kind"] == kind]
        t = sum(r["seconds"] for r in mine)
        flops = sum(r["flops"] for r in mine)
        kinds[kind] = {"parts": len(mine), "seconds": t, "share": t / total, "flops": flops}
        kinds[kind]["bytes"] = sum(r["bytes"] for r in mine)
    step_ts, products_ts = timed["whole step"][0], timed["products alone"][0]
    step, products = float(np.median(step_ts)), float(np.median(products_ts))
    ratio, quartiles = throughput.paired_ratio(step_ts, products_ts)
    flops = sum(r["flops"] for r in rows)
    return {
        "kinds": kinds,
        "sum_of_parts_s": total,
        "step_s": step,
        "step_repeats_s": step_ts,
        "parts_over_step": total / step,
        "products_alone_s": products,
        "step_over_products": ratio,
        "step_over_products_quartiles": quartiles,
        "step_flops": flops,
        "step_bytes": sum(r["bytes"] for r in rows),
        "step_gflops": flops / step / 1e9,
        "step_fraction_of_peak": flops / step / 1e9 / roofs["peak_gflops"],
    }


HEADER = (
    f"{'part':<26} {'shape':<20} {'impl':<9} {'ms':>7} {'share':>6} {'GFLOP/s':>8} {'GB/s':>7}"
    f" {'FLOP/B':>7} {'bound':<8} {'of roof':>7}"
)


def print_latent(title, rows, summary, params):
    lines = [f"\n{title}: {params:,} parameters; {len(rows)} parts", HEADER]
    for r in rows:
        ai = f"{r['intensity']:7.2f}" if r["intensity"] is not None else f"{'':>7}"
        lines.append(
            f"{r['part']:<26} {r['shape']:<20} {r['impl']:<9} {1e3 * r['seconds']:7.3f} {r['share']:6.1%}"
            f" {r['gflops']:8.2f} {r['gbs']:7.2f} {ai} {r['bound']:<8} {r['fraction_of_roof']:7.2f}"
        )
    for kind, k in summary["kinds"].items():
        name = f"{KIND_WORDS[kind]} ({k['parts']})"
        lines.append(f"{name:<26} {'':<20} {'':<9} {1e3 * k['seconds']:7.3f} {k['share']:6.1%}")
    slow = [f"{r['part']} {r['subnormal_reads']:,}" for r in rows if r["subnormal_reads"]]
    lines.append("subnormal numbers read: " + ("; ".join(slow) if slow else "none"))
    s = summary
    q1, q3 = s["step_over_products_quartiles"]
    lines.append(
        f"sum of parts {1e3 * s['sum_of_parts_s']:.2f} ms; whole step {1e3 * s['step_s']:.2f} ms "
        f"(parts / step {s['parts_over_step']:.2f}; step {s['step_gflops']:.1f} GFLOP/s, "
        f"{s['step_fraction_of_peak']:.2f} of peak); products alone {1e3 * s['products_alone_s']:.2f} ms; "
        f"step / products alone {s['step_over_products']:.2f} ({q1:.2f}–{q3:.2f})"
    )
    cli.say(*lines)


def time_latent(Z, args, roofs, spreads):
    """Record, time and read every part of a step at latent size Z, printed. → the JSON entry."""
    vae, opt, x = build_step(Z, args.hidden, args.batch)
    return time_model(vae, opt, x, args, roofs, spreads, f"Z = {Z}")


def time_model(vae, opt, x, args, roofs, spreads, title):
    """Record, time and read every part of one step of ``vae`` and ``opt`` on the batch x,
    printed under ``title`` (``Z = 1000``, ``Z = 1000, trained: <run>``). → the JSON entry."""
    parts = step_parts(vae, record_step(vae, opt, x))
    timed = throughput.measure(runners(vae, opt, x, parts), args.repeats, args.warmup, args.target, args.settle)
    total = sum(float(np.median(ts)) for name, (ts, _) in timed.items() if name[:2].isdigit())
    rows = []
    for i, part in enumerate(parts):
        ts, n = timed[f"{i:02d} {part['part']}"]
        rows.append(read_part(part, ts, n, total, roofs))
        spreads[f"{part['part']} at {title}"] = machine.spread(ts)
    spreads[f"the whole step at {title}"] = machine.spread(timed["whole step"][0])
    summary = summarize(rows, timed, roofs)
    for row in rows:
        row["share_of_step"] = row["seconds"] / summary["step_s"]  # the shares above are of the sum of the parts
    print_latent(title, rows, summary, vae.engine.P)
    return {"params": vae.engine.P, "parts": rows, **summary}


# --------------------------------------------------------------------------------------------
# A trained model's step (--trained)
# --------------------------------------------------------------------------------------------

STATE_LR = 1e-4  # Adam's rate for the --state-steps before a trained model's step is recorded


def check_trained(folders):
    """Each --trained run folder read and its model built on cpu-fused, before anything is
    measured: [(folder, model)]. A folder that is not a run (:func:`minivae.cli.load_run`),
    a model that is not float32, or one whose inputs are not D = 784 pixels is
    :class:`minivae.cli.UsageError`, one line naming the folder."""
    models = []
    for folder in folders:
        vae = cli.load_run(folder, "cpu-fused", named=True)[1]
        if vae.dtype != np.float32 or vae.data_dim != D:
            raise cli.UsageError(
                f"--trained {folder}: the roofline times float32 models of D = {D} pixels, "
                f"this one is {np.dtype(vae.dtype).name} with D = {vae.data_dim}"
            )
        models.append((folder, vae))
    return models


def load_digits(data_dir):
    """The training digits a trained model's batches are drawn from (``--data-dir``, else the
    default source, without downloading); a folder that is not MNIST is a one-line UsageError."""
    if data_dir is not None:  # a name the system cannot look up is one line too, not a traceback
        cli.require_folder(data_dir, "--data-dir")
    data = cli.load_digits(data_dir, download=False, seed=0)
    cli.say_data(data)
    return data.train_x


def trained_step(vae, digits, batch, steps, seed=0):
    """A trained model ready for :func:`time_model`: ``steps`` Adam steps (rate :data:`STATE_LR`,
    its moments starting at 0) on batches of ``batch`` digits drawn at random from ``digits``, so
    that the gradients, the moments and the activations are those of training with real digits,
    then one more batch for the recorded step. → (vae, opt, x)."""
    import minivae

    rng = np.random.default_rng(seed)
    opt = minivae.Adam(vae.params, lr=STATE_LR)
    for _ in range(steps + 1):  # the first also has Numba load its kernels
        x = np.ascontiguousarray(digits[rng.integers(0, len(digits), batch)], dtype=np.float32)
        vae.forward(x)
        opt.step(vae.backward())
    x = np.ascontiguousarray(digits[rng.integers(0, len(digits), batch)], dtype=np.float32)
    return vae, opt, x


def time_trained(folder, vae, digits, args, roofs, spreads):
    """Every part of a trained model's step (:func:`trained_step`), timed and read. → the JSON
    entry, with where the model came from, its latent size and the steps taken before."""
    vae, opt, x = trained_step(vae, digits, args.batch, args.state_steps)
    entry = time_model(vae, opt, x, args, roofs, spreads, f"Z = {vae.latent}, trained: {folder.name}")
    where = {"from": folder.name, "latent": vae.latent, "hidden": list(vae.hidden), "state_steps": args.state_steps}
    return {**where, **entry}


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------

PROG = "python benchmarks/roofline.py"
DEFAULTS = {"repeats": 15, "warmup": 3, "target": 0.05, "settle": 0.1, "stream_mib": 128, "peak_n": 2048}
QUICK = {"repeats": 3, "warmup": 1, "target": 0.005, "settle": 0.01, "stream_mib": 32, "peak_n": 512}


def parser():
    """The command line's options, each with its default in its help."""
    ap = cli.Parser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument(
        "--latents",
        type=cli.positive_ints("latent sizes", "20,1000"),
        default=None,
        help=f"comma-separated latent sizes Z of fresh models (default {','.join(map(str, LATENTS))}; none "
        "when --trained is given)",
    )
    ap.add_argument(
        "--trained",
        type=cli.path,
        action="append",
        default=[],
        metavar="RUN_DIR",
        help="also time the step of this trained model (a run folder of minivae.train, or one "
        "minivae.sweep --keep-models kept), on real digits; may be given more than once",
    )
    ap.add_argument(
        "--data-dir",
        type=cli.path,
        default=None,
        help="MNIST IDX files for --trained's batches (default: the download cache, else the "
        "offline sample; never downloads)",
    )
    ap.add_argument(
        "--state-steps",
        type=cli.non_negative_int,
        default=100,
        help=f"Adam steps (rate {STATE_LR:g}, moments from 0) a --trained model takes on real digits "
        "before its step is recorded",
    )
    ap.add_argument(
        "--hidden",
        type=cli.widths,
        default=(512,),
        metavar="H1,H2",
        help="comma-separated hidden widths of the encoder; the decoder mirrors them",
    )
    ap.add_argument("--batch", type=cli.positive_int, default=128, help="mini-batch size B")
    ap.add_argument(
        "--threads",
        type=throughput.thread_count,
        default=None,
        help="threads for BLAS and Numba (default: BLAS's own count); with fewer than the cores the "
        "process is pinned to that many, after the machine is measured",
    )
    ap.add_argument("--quick", action="store_true", help="few short repeats, a small peak and STREAM: seconds")
    ap.add_argument(
        "--out",
        type=cli.path,
        default=DEFAULT_OUT,
        help=f"folder for roofline-t<threads>.json (default {DEFAULT_OUT} under the current folder; "
        "--out benchmarks/results for the committed tables)",
    )
    _timing_options(ap)
    return ap


def _option(ap, name, kind, what):
    throughput.quick_option(ap, name, kind, what, DEFAULTS, QUICK)


def _timing_options(ap):
    """How often and how long the parts and the machine are timed."""
    _option(ap, "--repeats", cli.positive_int, "interleaved timed repeats of every part")
    _option(ap, "--warmup", cli.non_negative_int, "untimed calls of every part before its repeats")
    _option(ap, "--target", cli.positive_float, "seconds per timed repeat of a part")
    _option(ap, "--settle", throughput.settle_seconds, "seconds of rest before each timed repeat")
    _option(ap, "--stream-mib", cli.positive_int, "MiB per array of the bandwidth measurement")
    _option(ap, "--peak-n", cli.positive_int, "size n of the n³ product that measures the GEMM peak")
    ap.add_argument(
        "--stream-repeats", type=cli.positive_int, default=5, help="timed passes of copy and triad, the best kept"
    )
    ap.add_argument("--peak-repeats", type=cli.positive_int, default=3, help="timed n³ products, the best kept")


def parse_args(argv=None):
    """The options, each checked by its type: a bad value is one line on stderr and exit code 2.
    The options of :data:`DEFAULTS` take :data:`QUICK`'s value with ``--quick`` when not given;
    ``--latents`` is 20,1000 unless ``--trained`` is given."""
    args = throughput.with_defaults(parser().parse_args(argv), DEFAULTS, QUICK)
    if args.latents is None:
        args.latents = () if args.trained else LATENTS
    return args


def set_threads(threads):
    """Every BLAS pool and Numba on ``threads`` threads, for the rest of the process."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def make_config(args, threads):
    """The run's settings, as the JSON's ``config`` keeps them, printed in a line or two."""
    from kernels import gemm_choice

    ours = gemm_choice.load()
    cli.say(
        f"hidden {list(args.hidden)}, batch {args.batch}, float32, {threads} thread{'s' if threads > 1 else ''}; "
        f"{args.repeats} interleaved repeats of ~{args.target} s after {args.settle} s of rest, medians; "
        f"products: our GEMM on {len(ours)} shape(s) of the choice table, OpenBLAS on the rest"
    )
    return {
        "latents": list(args.latents),
        "hidden": list(args.hidden),
        "trained": [str(folder) for folder in args.trained],
        "state_steps": args.state_steps if args.trained else None,
        "batch": args.batch,
        "dtype": "float32",
        "threads": threads,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "target_s": args.target,
        "settle_s": args.settle,
        "gemm_choice": {"table": machine.home_as_tilde(gemm_choice.table_path()), "ours": sorted(ours)},
    }


def run(args, load_start=None):
    """Measure the machine, then every part at each latent size; write the JSON. → the document."""
    threads = args.threads or machine.blas_threads()
    throughput.check_sizes(args.latents, args.hidden, args.batch, copies=2)
    throughput.check_out(args.out, f"roofline-t{threads}.json")
    trained = check_trained(args.trained)  # every folder before anything is measured
    digits = load_digits(args.data_dir) if trained else None
    cli.check_memory(3 * args.stream_mib * 2**20 + 3 * F * args.peak_n**2, "the bandwidth and peak measurements")
    set_threads(threads)
    host = machine.start(threads, load_start)
    config, spreads = make_config(args, threads), {}
    roofs = measure_roofs(args, threads, spreads)
    config["pinned_cores"] = peers.limit_cores(threads)  # after STREAM has used every core it asked for
    set_threads(threads)
    latents = {str(Z): time_latent(Z, args, roofs, spreads) for Z in args.latents}
    models = [time_trained(folder, vae, digits, args, roofs, spreads) for folder, vae in trained]
    host.update(numpy=np.__version__, numba=numba.__version__, numba_threads=numba.get_num_threads())
    doc = {"config": config, "machine": machine.finish(host, spreads), "roofs": roofs, "latents": latents}
    doc["trained"] = models
    throughput.write_doc(args.out, f"roofline-t{threads}.json", doc)
    return doc


def main(argv=None):
    load_start = machine.load()  # before this process adds its own load
    return throughput.run_command(cli.command_name(PROG), lambda args: run(args, load_start), parse_args, argv)


if __name__ == "__main__":
    code = main()
    sys.exit(code if isinstance(code, int) else 0)
