"""Matrix products of a training step: our Numba-CUDA matmul versions and our CuPy GEMM beside cuBLAS.

Every version is first checked against :func:`kernels.reference.matmul` on ragged shapes and on the
step's shapes (no timing of a wrong kernel), then timed on the products of one step at batch 128,
hidden 512, latent 1000 (MNIST: D = 784). Each is warmed up, run ``--repeats`` times, timed with CUDA
events, and reported as median GFLOP/s and as a fraction of cuBLAS (``cupy.matmul``) measured in the
same run.

    python -m benchmarks.kernels [--repeats 20] [--json kernels.json]

cuBLAS is the FP32 reference: TF32 (tensor cores on float32 inputs, 10 mantissa bits) is turned
off before CuPy is imported (``CUPY_TF32=0``, read by CuPy at its first float32 product, and
``NVIDIA_TF32_OVERRIDE=0``, which keeps every NVIDIA library off TF32), and the compute type CuPy
then uses for float32 is read back and printed. ``--json`` also writes every time and the
summary per version: its fraction of cuBLAS over the whole step (the sum of cuBLAS's times over
the sum of its own, i.e. FLOP-weighted) and per product.

Without a usable GPU it exits at once with a one-line message.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def _no_gpu():
    """None when CuPy and Numba-CUDA can both use a GPU, else the reason."""
    from kernels.numba_cuda._util import gpu_usable

    ok, why = gpu_usable()  # also refuses the CUDA simulator, whose timings would mean nothing
    if not ok:
        return f"Numba-CUDA: {why}"
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
        (cupy.ones(4) * 2).sum().item()
    except Exception as e:  # noqa: BLE001
        return f"CuPy cannot use a GPU ({type(e).__name__}: {e})"
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    # Before CuPy is imported: cuBLAS in full float32, the reference our kernels are measured against.
    os.environ["CUPY_TF32"] = "0"
    os.environ["NVIDIA_TF32_OVERRIDE"] = "0"
    why = _no_gpu()
    if why:
        sys.exit(f"benchmarks.kernels: no usable GPU, nothing to time: {why}")

    import cupy
    from numba import cuda

    from kernels.cupy.ops import CupyOps
    from kernels.numba_cuda import matmul as nc
    from kernels.numba_cuda._util import assert_close, time_kernel
    from kernels.reference import matmul as matmul_ref

    nc.check()  # every Numba-CUDA version on ragged shapes and every transpose mode
    own = CupyOps(own_gemm=True)

    def time_cupy(fn, repeats):
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
        return float(np.median(times))

    names = [f"numba v{v}" for v in nc.VERSIONS] + ["cupy own", "cuBLAS"]
    compute_type = _float32_compute_type(cupy)
    device = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    device = device.decode() if isinstance(device, bytes) else str(device)
    print(f"{device}; cuBLAS float32 compute type: {compute_type}; {args.repeats} repeats, medians")
    rows = []
    print(f"{'product':>24} " + " ".join(f"{n:>16}" for n in names) + "   (GFLOP/s, fraction of cuBLAS)")
    rng = np.random.default_rng(0)
    for M, K, N, ta, tb in nc.STEP_SHAPES:
        a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
        b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
        want = matmul_ref(a, b, ta, tb)
        label = f"{M}×{K}{'ᵀ' if ta else ''}·{K}×{N}{'ᵀ' if tb else ''}"
        na, nb, nout = cuda.to_device(a), cuda.to_device(b), cuda.device_array((M, N), np.float32)
        ca, cb, cout = cupy.asarray(a), cupy.asarray(b), cupy.empty((M, N), np.float32)
        runs = {}
        for v in nc.VERSIONS:
            nc.matmul(na, nb, nout, ta, tb, version=v)
            assert_close(f"numba v{v} {label}", nout.copy_to_host(), want, atol=1e-2, rtol=1e-3)  # K ≤ 2000 sums
            runs[f"numba v{v}"] = lambda v=v: nc.matmul(na, nb, nout, ta, tb, version=v)
        own.matmul(ca, cb, cout, ta, tb)
        assert_close(f"cupy own {label}", cupy.asnumpy(cout), want, atol=1e-2, rtol=1e-3)
        runs["cupy own"] = lambda: own.matmul(ca, cb, cout, ta, tb)
        runs["cuBLAS"] = lambda: cupy.matmul(ca.T if ta else ca, cb.T if tb else cb, out=cout)
        # Numba launches on its own default stream, CuPy on its: both timers wrap one launch and
        # synchronise on their own events, the same way for every version.
        secs = {}
        for n in names:
            if n.startswith("numba"):
                secs[n] = time_kernel(runs[n], repeats=args.repeats)
            else:
                secs[n] = time_cupy(runs[n], args.repeats)
        flops = 2 * M * N * K
        cells = [f"{flops / secs[n] / 1e9:9.0f} ({secs['cuBLAS'] / secs[n]:4.2f})" for n in names]
        print(f"{label:>24} " + " ".join(f"{c:>16}" for c in cells))
        rows.append({"product": label, "M": M, "K": K, "N": N, "ta": ta, "tb": tb, "flops": flops,
                     "seconds": secs, "gflops": {n: flops / secs[n] / 1e9 for n in names},
                     "fraction_of_cublas": {n: secs["cuBLAS"] / secs[n] for n in names}})
    summary = summarize(rows, names)
    print(f"{'whole step':>24} " + " ".join(
        f"{summary[n]['gflops']:9.0f} ({summary[n]['fraction_of_cublas']:4.2f})".rjust(16) for n in names))
    if args.json:
        doc = {"device": device, "cublas_float32_compute_type": compute_type,
               "env": {k: os.environ.get(k) for k in ("CUPY_TF32", "NVIDIA_TF32_OVERRIDE")},
               "cupy": cupy.__version__, "numba_cuda": _version("numba-cuda"), "repeats": args.repeats,
               "timing": "median of CUDA-event times of one launch, after 3 warm-up launches",
               "products": rows, "whole_step": summary}
        tmp = f"{args.json}.tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, args.json)
        print(f"wrote {args.json}")


def summarize(rows, names):
    """Per kernel, over all the step's products: GFLOP/s = Σ FLOPs / Σ seconds, and the fraction of
    cuBLAS = Σ cuBLAS seconds / Σ its seconds (the share of cuBLAS's speed on the whole step)."""
    flops = sum(r["flops"] for r in rows)
    out = {}
    for n in names:
        secs = sum(r["seconds"][n] for r in rows)
        fractions = [r["fraction_of_cublas"][n] for r in rows]
        out[n] = {"gflops": flops / secs / 1e9, "fraction_of_cublas": sum(r["seconds"]["cuBLAS"] for r in rows) / secs,
                  "fraction_min": min(fractions), "fraction_median": float(np.median(fractions))}
    return out


def _float32_compute_type(cupy):
    """The compute type CuPy's cuBLAS calls use for float32, as a word: 'FP32' or 'TF32' (or why unknown)."""
    try:
        from cupy._core import _routines_linalg as linalg

        ct = int(linalg.get_compute_type(np.dtype(np.float32)))
        # CuPy's enum (cupy/_core/_routines_linalg.pxd): DEFAULT = 1, PEDANTIC = 2, FP32 = 4, TF32 = 7
        words = {getattr(linalg, "COMPUTE_TYPE_DEFAULT", 1): "FP32", getattr(linalg, "COMPUTE_TYPE_PEDANTIC", 2): "FP32",
                 getattr(linalg, "COMPUTE_TYPE_FP32", 4): "FP32", getattr(linalg, "COMPUTE_TYPE_TF32", 7): "TF32"}
        return words.get(ct, f"unknown ({ct})")
    except Exception as e:  # noqa: BLE001 - a CuPy without this internal: say so, do not fail
        return f"unknown ({type(e).__name__}: {e})"


def _version(dist):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    main()
