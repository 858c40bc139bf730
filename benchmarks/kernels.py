"""Matrix products of a training step: our Numba-CUDA matmul versions and our CuPy GEMM beside cuBLAS.

Every version is first checked against :func:`kernels.reference.matmul` on ragged shapes and on the
step's shapes (no timing of a wrong kernel), then timed on the products of one step at batch 128,
hidden 512, latent 1000 (MNIST: D = 784). Each is warmed up, run ``--repeats`` times, timed with CUDA
events, and reported as median GFLOP/s and as a fraction of cuBLAS (``cupy.matmul``) measured in the
same run.

    python -m benchmarks.kernels [--repeats 20]

Without a usable GPU it exits at once with a one-line message.
"""

from __future__ import annotations

import argparse
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
    args = ap.parse_args(argv)
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


if __name__ == "__main__":
    main()
