"""Matrix products of a training step: our Numba-CUDA matmul versions and our CuPy GEMM beside cuBLAS.

Every version is first checked against :func:`kernels.reference.matmul` on ragged shapes and on the
step's shapes (no timing of a wrong kernel), then timed on the products of one step at batch 128,
hidden 512, latent 1000 (MNIST: D = 784). Each is warmed up, run ``--repeats`` times, timed with CUDA
events, and reported as median GFLOP/s and as a fraction of cuBLAS (``cupy.matmul``) measured in the
same run.

    python -m benchmarks.kernels [--repeats 20] [--out runs/bench]

cuBLAS is the FP32 reference: TF32 (tensor cores on float32 inputs, 10 mantissa bits) is turned
off before CuPy is imported (``CUPY_TF32=0``, read by CuPy at its first float32 product, and
``NVIDIA_TF32_OVERRIDE=0``, which keeps every NVIDIA library off TF32), and the compute type CuPy
then uses for float32 is read back and printed. ``--json`` also writes every time and the
summary per version: its fraction of cuBLAS over the whole step (the sum of cuBLAS's times over
the sum of its own, i.e. FLOP-weighted) and per product.

Without a usable GPU it exits at once with a one-line message.

Where the results go: ``kernels.json`` (GPU) or ``gemm-cpu-t<threads>.json`` (``--cpu``) in
``--out``, by default ``runs/bench/`` under the current folder (ignored by git), so that a run never
replaces the committed tables; ``--out benchmarks/results`` updates those, and ``--json PATH``
writes one file of any name instead. Each document holds the machine record of
:mod:`benchmarks.machine` (``machine``: CPU, its vector ISA, BLAS kernel and threads, load average).

``--cpu`` times our CPU matrix product instead (:mod:`kernels.gemm_cpu`, versions v1–v6) beside
OpenBLAS (``np.matmul`` into a preallocated output) and, when ``jax`` is installed, XLA (a jitted
product): the same 11 products of a training step, at each latent size of ``--latents`` (default
20 and 1000), every version first checked against the float64 product of the same inputs. Each
number is a median over ``--repeats`` calls after warm-up calls (the slow v1 and v2 stop after
~2 s per product). ``--threads`` (default: all cores) is given to OpenBLAS, Numba (our v4, v6; v1–v3 and
v5 run on one thread by construction) and XLA; with fewer threads than cores the process is pinned to
that many cores (see :mod:`benchmarks.peers`):

    python -m benchmarks.kernels --cpu [--threads 1] [--latents 20,1000] [--versions 2,3,4]

After each latent size's table, a second one times our fused epilogues (:mod:`kernels.gemm_cpu`)
against the same work as a product plus separate passes: the forward products with bias + ReLU,
the weight gradients with the bias gradient and both Adam steps (milliseconds, medians).
"""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also as `python benchmarks/kernels.py`

from benchmarks import machine, throughput
from minivae import cli

DEFAULT_OUT = Path("runs/bench")  # under the current folder; benchmarks/results holds the committed tables


def _no_gpu():
    """None when CuPy and Numba-CUDA can both use a GPU, else the reason (the simulator, whose
    timings would mean nothing, does not count)."""
    from minivae.backend import gpu_usable

    for library, name in (("numba-cuda", "Numba-CUDA: "), ("cupy", "")):
        ok, why = gpu_usable(library)
        if not ok:
            return name + why
    return None


PROG = "python -m benchmarks.kernels"


def parser():
    """The command line's options, each with its default in its help."""
    ap = cli.Parser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=cli.positive_int, default=20, help="timed calls per product (default 20)")
    ap.add_argument(
        "--out",
        type=cli.path,
        default=DEFAULT_OUT,
        help="folder for kernels.json (GPU) or gemm-cpu-t<threads>.json (--cpu) (default runs/bench under the "
        "current folder; --out benchmarks/results updates the committed tables)",
    )
    ap.add_argument(
        "--json",
        type=cli.path,
        default=None,
        metavar="PATH",
        help="write the results to this file instead of into --out (default: none, --out)",
    )
    ap.add_argument("--cpu", action="store_true", help="time our CPU GEMM versions beside OpenBLAS and XLA instead")
    ap.add_argument(
        "--threads",
        type=throughput.thread_count,
        default=None,
        help="--cpu: threads for every library (default: all cores)",
    )
    ap.add_argument(
        "--latents",
        type=cli.positive_ints("latent sizes", "20,1000"),
        default=(20, 1000),
        help="--cpu: comma-separated latent sizes (default 20,1000)",
    )
    ap.add_argument(
        "--versions",
        type=cli.positive_ints("versions", "3,4"),
        default=None,
        help="--cpu: comma-separated versions of ours, of 1 … 6 (default: all)",
    )
    return ap


def parse_args(argv=None):
    """The options, each checked by its type: a bad value is one line on stderr and exit code 2."""
    return parser().parse_args(argv)


def main(argv=None):
    load_start = machine.load()  # before this process adds its own load
    return throughput.run_command("benchmarks.kernels", lambda args: run(args, load_start), parse_args, argv)


def run(args, load_start=None):
    """The GPU benchmark (:func:`gpu_main`), or with ``--cpu`` the CPU one (:func:`cpu_main`).
    Returns the document written."""
    return cpu_main(args, load_start) if args.cpu else gpu_main(args, load_start)


def shape_label(M, K, N, ta, tb):
    """A product in words: ``128×784ᵀ·784×512``."""
    return f"{M}×{K}{'ᵀ' if ta else ''}·{K}×{N}{'ᵀ' if tb else ''}"


def product_row(shape, secs, names, ref, key):
    """The JSON row of one product (M, K, N, ta, tb) timed by every kernel of ``names`` (seconds
    ``secs``), with each kernel's fraction of the reference ``ref`` under ``key``."""
    M, K, N, ta, tb = shape
    flops = 2 * M * N * K
    return {
        "product": shape_label(*shape),
        "M": M,
        "K": K,
        "N": N,
        "ta": ta,
        "tb": tb,
        "flops": flops,
        "seconds": secs,
        "gflops": {n: flops / secs[n] / 1e9 for n in names},
        key: {n: secs[ref] / secs[n] for n in names},
    }


def print_product(row, names, ref, digits):
    """One line of the table: GFLOP/s and the fraction of ``ref``, per kernel."""
    cells = [f"{row['gflops'][n]:9.{digits}f} ({row['seconds'][ref] / row['seconds'][n]:4.2f})" for n in names]
    print(f"{row['product']:>24} " + " ".join(f"{c:>16}" for c in cells))


def print_whole_step(summary, names, key, digits):
    print(
        f"{'whole step':>24} "
        + " ".join(f"{summary[n]['gflops']:9.{digits}f} ({summary[n][key]:4.2f})".rjust(16) for n in names)
    )


# --------------------------------------------------------------------------------------------
# On the GPU
# --------------------------------------------------------------------------------------------


def time_cupy(cupy, fn, repeats):
    """(median seconds, every time) of one launch of ``fn`` timed with CUDA events, after 3
    warm-up launches."""
    for _ in range(3):
        fn()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(repeats):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return float(np.median(times)), times


def gpu_runs(shape, rng, own):
    """name → a call of that kernel on one product of the step, each first checked against the
    reference product (no timing of a wrong kernel)."""
    import cupy
    from numba import cuda

    from kernels.numba_cuda import matmul as nc
    from kernels.numba_cuda._util import assert_close
    from kernels.reference import matmul as matmul_ref

    M, K, N, ta, tb = shape
    label = shape_label(*shape)
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    want = matmul_ref(a, b, ta, tb)
    na, nb, nout = cuda.to_device(a), cuda.to_device(b), cuda.device_array((M, N), np.float32)
    ca, cb, cout = cupy.asarray(a), cupy.asarray(b), cupy.empty((M, N), np.float32)
    runs = {}
    for v in nc.VERSIONS:
        nc.matmul(na, nb, nout, ta, tb, version=v)
        assert_close(f"numba v{v} {label}", nout.copy_to_host(), want, atol=1e-2, rtol=1e-3)  # K ≤ 2000 sums
        runs[f"numba v{v}"] = partial(nc.matmul, na, nb, nout, ta, tb, version=v)
    own.matmul(ca, cb, cout, ta, tb)
    assert_close(f"cupy own {label}", cupy.asnumpy(cout), want, atol=1e-2, rtol=1e-3)
    runs["cupy own"] = partial(own.matmul, ca, cb, cout, ta, tb)
    runs["cuBLAS"] = _library_product(cupy.matmul, ca, cb, cout, ta, tb)
    return runs


def time_gpu_product(runs, repeats, spreads, label):
    """name → median seconds. Numba launches on its own default stream, CuPy on its: both timers
    wrap one launch and synchronise on their own events, the same way for every version."""
    import cupy

    from kernels.numba_cuda._util import time_kernel

    secs = {}
    for n, fn in runs.items():
        if n.startswith("numba"):
            secs[n] = time_kernel(fn, repeats=repeats)
        else:
            secs[n], times = time_cupy(cupy, fn, repeats)
            spreads[f"{n} on {label}"] = machine.spread(times)
    return secs


def gpu_main(args, load_start=None):
    """Our Numba-CUDA versions and CuPy GEMM beside cuBLAS on the step's products."""
    # Before CuPy is imported: cuBLAS in full float32, the reference our kernels are measured against.
    os.environ["CUPY_TF32"] = "0"
    os.environ["NVIDIA_TF32_OVERRIDE"] = "0"
    path = result_path(args, "kernels.json")
    why = _no_gpu()
    if why:
        sys.exit(f"benchmarks.kernels: no usable GPU, nothing to time: {why}")
    import cupy

    from kernels.cupy.ops import CupyOps
    from kernels.numba_cuda import matmul as nc

    nc.check()  # every Numba-CUDA version on ragged shapes and every transpose mode
    own, spreads, rng = CupyOps(own_gemm=True), {}, np.random.default_rng(0)
    names = [f"numba v{v}" for v in nc.VERSIONS] + ["cupy own", "cuBLAS"]
    compute_type = _float32_compute_type(cupy)
    device = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    device = device.decode() if isinstance(device, bytes) else str(device)
    host = machine.start(machine.blas_threads(), load_start)
    print(f"{device}; cuBLAS float32 compute type: {compute_type}; {args.repeats} repeats, medians")
    print(f"{'product':>24} " + " ".join(f"{n:>16}" for n in names) + "   (GFLOP/s, fraction of cuBLAS)")
    rows = []
    for shape in nc.STEP_SHAPES:
        secs = time_gpu_product(gpu_runs(shape, rng, own), args.repeats, spreads, shape_label(*shape))
        rows.append(product_row(shape, secs, names, "cuBLAS", "fraction_of_cublas"))
        print_product(rows[-1], names, "cuBLAS", 0)
    summary = summarize(rows, names)
    print_whole_step(summary, names, "fraction_of_cublas", 0)
    doc = {
        "device": device,
        "cublas_float32_compute_type": compute_type,
        "env": {k: os.environ.get(k) for k in ("CUPY_TF32", "NVIDIA_TF32_OVERRIDE")},
        "cupy": cupy.__version__,
        "numba_cuda": _version("numba-cuda"),
        "repeats": args.repeats,
        "timing": "median of CUDA-event times of one launch, after 3 warm-up launches",
        "products": rows,
        "whole_step": summary,
        "machine": machine.finish(host, spreads),
    }
    write_result(path, doc)
    return doc


def result_path(args, name):
    """Where the results go: ``--json`` when given, else ``name`` in ``--out``; checked before
    anything is timed (a folder that cannot be made or written into, or a file that cannot be
    one, is one line and exit code 2)."""
    if args.json is None:
        throughput.check_out(args.out, name)
        return args.out / name
    try:
        is_dir = args.json.is_dir()
    except OSError as e:  # a name too long, a loop of links
        raise cli.UsageError(f"cannot write --json {args.json}: {e.strerror or e}") from None
    if is_dir:
        raise cli.UsageError(f"--json {args.json} is a folder, not a file")
    throughput.check_out(args.json.parent, args.json.name, what="--json's folder")
    return args.json


def write_result(path, doc):
    """``doc`` as indented JSON into ``path`` (:func:`benchmarks.throughput.write_doc`: whole or
    not at all; a write that fails is :class:`benchmarks.throughput.WriteFailed`)."""
    throughput.write_doc(path.parent, path.name, doc)


def check_latents(latents):
    """Refuse, before anything is timed, a latent size whose products no BLAS takes or whose
    matrices (float32 operands and result, the float64 reference) exceed the memory available."""
    from kernels import gemm_cpu

    too_big = [Z for Z in latents if 2 * Z > throughput.MAX_SIZE]
    if too_big:
        raise cli.UsageError(f"--latents {too_big[0]}: at most {throughput.MAX_SIZE // 2:,}")
    needed = max(16 * (M * K + K * N + M * N) for Z in latents for M, K, N, _, _ in gemm_cpu.step_shapes(Z))
    cli.check_memory(needed, f"timing the products at Z = {max(latents)}")


# --------------------------------------------------------------------------------------------
# On the CPU
# --------------------------------------------------------------------------------------------


def cpu_libraries(threads):
    """Pin the cores, set every library to ``threads`` threads, import jax. → (pinned cores or
    None, jax or None, the notes on XLA and jax)."""
    from benchmarks import peers

    cores = peers.limit_cores(threads)  # XLA sizes its pool by the cores it may use
    xla_note = peers.set_xla_threads(threads)  # before jax is imported
    import numba
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    jax, jax_note = peers.import_jax()
    return cores, jax, xla_note, jax_note


def cpu_document(args, threads, host, cores, jax, xla_note, jax_note):
    """The document's settings (its per-latent tables come later), printed in a line or three."""
    blas = host["blas"]
    blas_name = f"{blas[0]['internal_api']} {blas[0]['version']}" if blas else "unknown BLAS"
    device = f"{host['cpu_model']} ({host['cpu_count']} cores)"
    print(
        f"{device}; {threads} thread{'s' if threads > 1 else ''}; NumPy's BLAS: {blas_name}; "
        f"{'XLA (jax ' + jax.__version__ + ')' if jax else jax_note}; {args.repeats} repeats, medians"
    )
    if xla_note and jax is not None:
        print(f"note: {xla_note}")
    if cores is not None:
        print(f"pinned to core{'s' if len(cores) > 1 else ''} {', '.join(map(str, cores))} (every library)")
    return {
        "device": device,
        "threads": threads,
        "pinned_cores": cores,
        "blas": blas_name,
        "jax": jax.__version__ if jax else None,
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "notes": [n for n in (xla_note, jax_note) if n],
        "repeats": args.repeats,
        "timing": "median wall time of one call, after 2 warm-up calls",
        "latents": {},
    }


def cpu_runs(shape, versions, jax, rng):
    """name → (call, seconds after which its timing may stop or None) of every kernel on one
    product, each first checked against the float64 product of the same inputs."""
    from benchmarks import peers
    from kernels import gemm_cpu

    M, K, N, ta, tb = shape
    label = shape_label(*shape)
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    out = np.empty((M, N), np.float32)
    want = np.matmul(
        a.T.astype(np.float64) if ta else a.astype(np.float64),
        b.T.astype(np.float64) if tb else b.astype(np.float64),
    )
    runs = {}
    for v in versions:
        out[...] = np.nan
        gemm_cpu.matmul(a, b, out, ta, tb, version=v)
        _check_close(f"ours v{v} {label}", out, want, K)
        runs[f"ours v{v}"] = (partial(gemm_cpu.matmul, a, b, out, ta, tb, version=v), 2.0 if v <= 2 else None)
    runs["OpenBLAS"] = (_library_product(np.matmul, a, b, out, ta, tb), None)
    if jax is not None:
        f = peers.jax_matmul(jax, ta, tb)
        ja, jb = jax.numpy.asarray(a), jax.numpy.asarray(b)
        _check_close(f"XLA {label}", np.asarray(f(ja, jb)), want, K)
        runs["XLA"] = (partial(_jax_call, f, ja, jb), None)
    return runs


def cpu_latent(Z, versions, names, jax, repeats, rng, spreads):
    """The step's products at latent size Z timed for every kernel, then the fused epilogues:
    the document's entry for Z, printed as two tables."""
    from benchmarks import peers
    from kernels import gemm_cpu

    print(f"\nZ = {Z}")
    print(f"{'product':>24} " + " ".join(f"{n:>16}" for n in names) + "   (GFLOP/s, fraction of OpenBLAS)")
    rows = []
    for shape in gemm_cpu.step_shapes(Z):
        secs, label = {}, shape_label(*shape)
        for n, (fn, max_s) in cpu_runs(shape, versions, jax, rng).items():
            times = []
            secs[n] = peers.median_seconds(fn, repeats, max_s=max_s, times=times)
            spreads[f"{n} on {label} at Z = {Z}"] = machine.spread(times)
        rows.append(product_row(shape, secs, names, "OpenBLAS", "fraction_of_openblas"))
        print_product(rows[-1], names, "OpenBLAS", 1)
    summary = summarize(rows, names, ref="OpenBLAS")
    print_whole_step(summary, names, "fraction_of_ref", 1)
    return {"products": rows, "whole_step": summary, "epilogues": epilogue_table(Z, repeats, rng)}


def cpu_main(args, load_start=None):
    """``--cpu``: our CPU versions, OpenBLAS and XLA on the step's products at each latent size."""
    from kernels import gemm_cpu

    versions = list(args.versions) if args.versions else sorted(gemm_cpu.VERSIONS)
    if any(v not in gemm_cpu.VERSIONS for v in versions):
        raise cli.UsageError(f"--versions: choose from {', '.join(map(str, sorted(gemm_cpu.VERSIONS)))}")
    threads = args.threads or os.cpu_count()
    check_latents(args.latents)
    path = result_path(args, f"gemm-cpu-t{threads}.json")
    cores, jax, xla_note, jax_note = cpu_libraries(threads)
    gemm_cpu.check(versions)  # every version on ragged shapes and every transpose mode
    names = [f"ours v{v}" for v in versions] + ["OpenBLAS"] + (["XLA"] if jax is not None else [])
    host = machine.start(threads, load_start)
    doc = cpu_document(args, threads, host, cores, jax, xla_note, jax_note)
    rng, spreads = np.random.default_rng(0), {}
    for Z in args.latents:
        doc["latents"][str(Z)] = cpu_latent(Z, versions, names, jax, args.repeats, rng, spreads)
    doc["machine"] = machine.finish(host, spreads)
    write_result(path, doc)
    return doc


def epilogue_table(Z, repeats, rng):
    """Our fused epilogues against the same work done as a product plus separate passes: the
    forward products with bias + ReLU (OpenBLAS then cpu_fused's bias_relu_kernel, in place), and
    the weight gradients with the bias gradient and both Adam steps (OpenBLAS into g, then
    colsum_kernel and adam_kernel on W and on the bias). Prints and returns the median times."""
    from benchmarks import peers
    from kernels import gemm_cpu

    hp = dict(lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, c1=0.1, c2=0.001)
    f = np.float32
    adam_args = (f(hp["lr"]), f(0.9), f(0.1), f(0.999), f(1 - 0.999), f(1e-8), f(0.1), f(0.001))
    print(f"{'fused epilogue':>24} {'BLAS + passes':>14} {'ours + passes':>14} {'ours fused':>12}   (ms)")
    rows = []
    for M, K, N, ta, tb in gemm_cpu.step_shapes(Z):
        label = f"{M}×{K}{'ᵀ' if ta else ''}·{K}×{N}{'ᵀ' if tb else ''}"
        if not ta and not tb:  # a forward product: out = relu(a·W + bias)
            runs, what = _forward_epilogue_runs(M, K, N, rng), "relu(a·W + b)"
        elif ta:  # a weight gradient: Adam on W and on the bias, from xᵀ·dy and Σ dy
            runs, what = _weight_grad_epilogue_runs(M, K, N, rng, hp, adam_args), "Adam(W, xᵀ·dy), Adam(b, Σ dy)"
        else:
            continue  # an input gradient: its epilogue (the activation's backward) is not fused yet
        secs = {n: peers.median_seconds(fn, repeats) for n, fn in runs.items()}
        print(
            f"{label:>24} "
            + " ".join(
                f"{1e3 * secs[n]:>{w}.3f}"
                for n, w in (("BLAS + passes", 14), ("ours + passes", 14), ("ours fused", 12))
            )
            + f"   {what}"
        )
        rows.append({"product": label, "epilogue": what, "seconds": secs})
    return rows


def _forward_epilogue_runs(M, K, N, rng):
    """The timed calls for a forward product out = relu(a·W + bias), a (M, K), W (K, N): OpenBLAS or
    our product followed by the bias + ReLU pass, and our fused epilogue."""
    from kernels import cpu_fused, gemm_cpu

    a = rng.standard_normal((M, K)).astype(np.float32)
    W = rng.standard_normal((K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    out = np.empty((M, N), np.float32)

    def separate(mm):
        mm()
        cpu_fused.bias_relu_kernel(out, bias, out)

    return {
        "BLAS + passes": lambda: separate(lambda: np.matmul(a, W, out=out)),
        "ours + passes": lambda: separate(lambda: gemm_cpu.matmul(a, W, out)),
        "ours fused": lambda: gemm_cpu.matmul_bias_act(a, W, bias, "relu", out),
    }


def _weight_grad_epilogue_runs(M, K, N, rng, hp, adam_args):
    """The timed calls for a weight gradient g = xᵀ·dy, x (K, M), dy (K, N), with the bias gradient
    Σ dy and Adam on W and on the bias: OpenBLAS or our product followed by the colsum and Adam
    passes, and our fused epilogue."""
    from kernels import cpu_fused, gemm_cpu

    x = rng.standard_normal((K, M)).astype(np.float32)
    dy = rng.standard_normal((K, N)).astype(np.float32)
    W, mW, vW, g = (np.zeros((M, N), np.float32) for _ in range(4))
    bias, mb, vb, db = (np.zeros(N, np.float32) for _ in range(4))

    def separate(mm):
        mm()
        cpu_fused.colsum_kernel(dy, db)
        cpu_fused.adam_kernel(W.reshape(-1), g.reshape(-1), mW.reshape(-1), vW.reshape(-1), *adam_args)
        cpu_fused.adam_kernel(bias, db, mb, vb, *adam_args)

    return {
        "BLAS + passes": lambda: separate(lambda: np.matmul(x.T, dy, out=g)),
        "ours + passes": lambda: separate(lambda: gemm_cpu.matmul(x, dy, g, True, False)),
        "ours fused": lambda: gemm_cpu.weight_grad_adam(x, dy, W, mW, vW, bias, mb, vb, db=db, **hp),
    }


def _library_product(matmul, a, b, out, ta, tb):
    """A timed call of a library's ``matmul`` (``np.matmul``, ``cupy.matmul``) on the product with
    a and/or b transposed as flagged: the transposed views are made in each call, as a caller would."""
    return lambda: matmul(a.T if ta else a, b.T if tb else b, out=out)


def _jax_call(f, a, b):
    """One call of the jitted product ``f``, waiting for its result (XLA returns before it is ready)."""
    return f(a, b).block_until_ready()


def _check_close(name, got, want, K):
    """Refuse to time a wrong product: |got − want| ≤ 1e-4·√K·max|want| + 1e-4·|want| (float32
    sums of K terms against the float64 product of the same inputs)."""
    err = np.abs(got - want) - (1e-4 * np.sqrt(max(K, 1)) * np.abs(want).max() + 1e-4 * np.abs(want))
    if not np.all(err <= 0):  # also catches NaN
        raise AssertionError(f"{name}: {int(np.sum(~(err <= 0)))} of {err.size} elements off the float64 product")


def summarize(rows, names, ref="cuBLAS"):
    """Per kernel, over all the step's products: GFLOP/s = Σ FLOPs / Σ seconds, and the fraction of
    the reference library ``ref`` (cuBLAS on the GPU, OpenBLAS on the CPU) = Σ its seconds / Σ the
    kernel's seconds (the share of the reference's speed on the whole step)."""
    flops = sum(r["flops"] for r in rows)
    ref_secs = sum(r["seconds"][ref] for r in rows)
    out = {}
    for n in names:
        secs = sum(r["seconds"][n] for r in rows)
        fractions = [ref_secs_n / secs_n for ref_secs_n, secs_n in ((r["seconds"][ref], r["seconds"][n]) for r in rows)]
        key = "fraction_of_cublas" if ref == "cuBLAS" else "fraction_of_ref"
        out[n] = {
            "gflops": flops / secs / 1e9,
            key: ref_secs / secs,
            "fraction_min": min(fractions),
            "fraction_median": float(np.median(fractions)),
        }
    return out


def _float32_compute_type(cupy):
    """The compute type CuPy's cuBLAS calls use for float32, as a word: 'FP32' or 'TF32' (or why unknown)."""
    try:
        from cupy._core import _routines_linalg as linalg

        ct = int(linalg.get_compute_type(np.dtype(np.float32)))
        # CuPy's enum (cupy/_core/_routines_linalg.pxd): DEFAULT = 1, PEDANTIC = 2, FP32 = 4, TF32 = 7
        words = {
            getattr(linalg, "COMPUTE_TYPE_DEFAULT", 1): "FP32",
            getattr(linalg, "COMPUTE_TYPE_PEDANTIC", 2): "FP32",
            getattr(linalg, "COMPUTE_TYPE_FP32", 4): "FP32",
            getattr(linalg, "COMPUTE_TYPE_TF32", 7): "TF32",
        }
        return words.get(ct, f"unknown ({ct})")
    except Exception as e:  # noqa: BLE001 - a CuPy without this internal: say so, do not fail
        return f"unknown ({type(e).__name__}: {e})"


def _version(dist):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001 - not installed or no metadata: record no version
        return None


if __name__ == "__main__":
    code = main()
    sys.exit(code if isinstance(code, int) else 0)
