"""out = op(a) · op(b), op = identity or transpose: the matrix products of a training step.

The backward pass needs three forms: a·b (forward), aᵀ·b (weight gradient xᵀ·dy) and a·bᵀ (input
gradient dy·Wᵀ). Each version is compiled once per transpose mode (``ta``, ``tb`` are compile-time
constants, so the index arithmetic of the unused layout disappears) and handles any shape: tiles
that stick out past the matrix edge read zeros and write nothing. Shapes: op(a) is (M, K),
op(b) is (K, N), out is (M, N).

Versions
    matmul_v1   naive: one thread per output element, a K-long dot product from global memory
    matmul_v2   shared-memory tiles: a 16×16 block stages 16×16 tiles of op(a) and op(b)
    matmul_v3   register-blocked 2-D tiles: a 64×64 block tile, each thread computes 4×4 outputs

What one thread computes, and the global-memory traffic per output element (float32 loads):
    v1  one out[i, j]; loads 2K (a whole row of op(a) and column of op(b), no reuse in the block)
    v2  one out[i, j]; loads 2K/16 (each element staged in shared memory serves 16 threads)
    v3  4×4 outputs; loads 2K/64 (a 64×64 tile reuses each staged element 64 times; each thread
        reuses each value it reads from shared memory 4 times from registers)
All versions loop over output tiles grid-stride, so any grid size covers any shape. Staging loads
are coalesced in every transpose mode: consecutive threads read consecutive addresses of the
stored (not the transposed) matrix.

Run the check of every version against :func:`kernels.reference.matmul` and the benchmark
(GFLOP/s on the shapes of a training step; needs a GPU):
    python -m kernels.numba_cuda.matmul
Check only, on the simulator (no GPU):
    NUMBA_ENABLE_CUDASIM=1 python -m kernels.numba_cuda.matmul --check
The comparison with cuBLAS is ``python -m benchmarks.kernels``.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda, float32

from kernels.numba_cuda._util import F32_2D, assert_close, cdiv, jitted, run_file, time_kernel

VERSIONS = {
    1: "naive: one thread per output element, a K-long dot product from global memory",
    2: "shared-memory tiles: a 16×16 block stages 16×16 tiles of op(a) and op(b)",
    3: "register-blocked 2-D tiles: a 64×64 block tile, each thread computes 4×4 outputs",
}
MODES = ((False, False), (True, False), (False, True), (True, True))  # (ta, tb)

MAX_GRID = 65535  # the y dimension of a grid is limited to this; grid-stride covers the rest

# v1, v2: a T×T block of threads, one output each
T = 16
# v3: a BM×BN output tile per block, stepping through K by BK; each thread a TM×TN patch
BM, BN, BK, TM, TN = 64, 64, 8, 4, 4
V3_THREADS = (BN // TN, BM // TM)  # (x, y) = (16, 16)
NT3 = (BM // TM) * (BN // TN)  # 256 threads per block


# --------------------------------------------------------------------------------------------
# v1: naive
# --------------------------------------------------------------------------------------------


@functools.cache
def matmul_v1_kernel(ta, tb):
    TA, TB = bool(ta), bool(tb)

    def matmul_v1(a, b, out):
        M, N = out.shape
        K = a.shape[0] if TA else a.shape[1]
        x0, y0 = cuda.grid(2)  # x → column j, y → row i
        sx, sy = cuda.gridsize(2)
        for i in range(y0, M, sy):
            for j in range(x0, N, sx):
                acc = float32(0)
                for k in range(K):
                    aik = a[k, i] if TA else a[i, k]  # op(a)[i, k]
                    bkj = b[j, k] if TB else b[k, j]  # op(b)[k, j]
                    acc += aik * bkj
                out[i, j] = acc

    return matmul_v1


# --------------------------------------------------------------------------------------------
# v2: shared-memory tiles
# --------------------------------------------------------------------------------------------


@functools.cache
def matmul_v2_kernel(ta, tb):
    TA, TB = bool(ta), bool(tb)

    def matmul_v2(a, b, out):
        M, N = out.shape
        K = a.shape[0] if TA else a.shape[1]
        As = cuda.shared.array((T, T), float32)  # As[r, kk] = op(a)[bi·T + r, k0 + kk]
        Bs = cuda.shared.array((T, T), float32)  # Bs[kk, c] = op(b)[k0 + kk, bj·T + c]
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        for bi in range(cuda.blockIdx.y, (M + T - 1) // T, cuda.gridDim.y):
            for bj in range(cuda.blockIdx.x, (N + T - 1) // T, cuda.gridDim.x):
                acc = float32(0)
                for k0 in range(0, K, T):
                    # Stage one tile of each operand; thread x walks the stored matrix's rows.
                    if TA:  # a is (K, M): As[tx, ty] = a[k0 + ty, bi·T + tx]
                        i, k = bi * T + tx, k0 + ty
                        As[tx, ty] = a[k, i] if (i < M and k < K) else float32(0)
                    else:  # a is (M, K): As[ty, tx] = a[bi·T + ty, k0 + tx]
                        i, k = bi * T + ty, k0 + tx
                        As[ty, tx] = a[i, k] if (i < M and k < K) else float32(0)
                    if TB:  # b is (N, K): Bs[tx, ty] = b[bj·T + ty, k0 + tx]
                        k, j = k0 + tx, bj * T + ty
                        Bs[tx, ty] = b[j, k] if (k < K and j < N) else float32(0)
                    else:  # b is (K, N): Bs[ty, tx] = b[k0 + ty, bj·T + tx]
                        k, j = k0 + ty, bj * T + tx
                        Bs[ty, tx] = b[k, j] if (k < K and j < N) else float32(0)
                    cuda.syncthreads()
                    for kk in range(T):
                        acc += As[ty, kk] * Bs[kk, tx]
                    cuda.syncthreads()  # before the next tile overwrites As, Bs
                i, j = bi * T + ty, bj * T + tx
                if i < M and j < N:
                    out[i, j] = acc

    return matmul_v2


# --------------------------------------------------------------------------------------------
# v3: register-blocked 2-D tiles
# --------------------------------------------------------------------------------------------


@functools.cache
def matmul_v3_kernel(ta, tb):
    TA, TB = bool(ta), bool(tb)

    def matmul_v3(a, b, out):
        M, N = out.shape
        K = a.shape[0] if TA else a.shape[1]
        As = cuda.shared.array((BK, BM), float32)  # As[kk, r] = op(a)[i0 + r, k0 + kk]
        Bs = cuda.shared.array((BK, BN), float32)  # Bs[kk, c] = op(b)[k0 + kk, j0 + c]
        acc = cuda.local.array((TM, TN), float32)  # this thread's TM×TN outputs
        ar = cuda.local.array(TM, float32)  # a column of As, in registers
        br = cuda.local.array(TN, float32)  # a row of Bs, in registers
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        t = ty * (BN // TN) + tx  # 0 … NT3 − 1
        for bi in range(cuda.blockIdx.y, (M + BM - 1) // BM, cuda.gridDim.y):
            for bj in range(cuda.blockIdx.x, (N + BN - 1) // BN, cuda.gridDim.x):
                i0, j0 = bi * BM, bj * BN
                for r in range(TM):
                    for c in range(TN):
                        acc[r, c] = float32(0)
                for k0 in range(0, K, BK):
                    # Stage a BM×BK tile of op(a), BM·BK/NT3 elements a thread, on consecutive addresses of a.
                    for e in range(t, BM * BK, NT3):
                        if TA:  # a is (K, M): contiguous along i
                            kk, r = e // BM, e % BM
                        else:  # a is (M, K): contiguous along k
                            r, kk = e // BK, e % BK
                        i, k = i0 + r, k0 + kk
                        if i < M and k < K:
                            As[kk, r] = a[k, i] if TA else a[i, k]
                        else:
                            As[kk, r] = float32(0)
                    for e in range(t, BK * BN, NT3):  # stage a BK×BN tile of op(b) the same way
                        if TB:  # b is (N, K): contiguous along k
                            c, kk = e // BK, e % BK
                        else:  # b is (K, N): contiguous along j
                            kk, c = e // BN, e % BN
                        k, j = k0 + kk, j0 + c
                        if k < K and j < N:
                            Bs[kk, c] = b[j, k] if TB else b[k, j]
                        else:
                            Bs[kk, c] = float32(0)
                    cuda.syncthreads()
                    # Outer products of a TM-column of As and a TN-row of Bs, in registers.
                    for kk in range(BK):
                        for r in range(TM):
                            ar[r] = As[kk, ty * TM + r]
                        for c in range(TN):
                            br[c] = Bs[kk, tx * TN + c]
                        for r in range(TM):
                            for c in range(TN):
                                acc[r, c] += ar[r] * br[c]
                    cuda.syncthreads()
                for r in range(TM):
                    i = i0 + ty * TM + r
                    for c in range(TN):
                        j = j0 + tx * TN + c
                        if i < M and j < N:
                            out[i, j] = acc[r, c]

    return matmul_v3


_FACTORIES = {1: matmul_v1_kernel, 2: matmul_v2_kernel, 3: matmul_v3_kernel}


def launch_config(version, M, N):
    """(blocks, threads) of a launch covering an (M, N) output."""
    if version == 3:
        threads, tile_m, tile_n = V3_THREADS, BM, BN
    else:
        threads, tile_m, tile_n = (T, T), T, T
    blocks = (min(cdiv(N, tile_n), MAX_GRID), min(cdiv(M, tile_m), MAX_GRID))
    return blocks, threads


def matmul(a, b, out, ta=False, tb=False, version=3, blocks=None):
    """out = op(a)·op(b) on device arrays (float32, C-contiguous); ``version`` picks the kernel.

    ``blocks`` overrides the grid (x, y); the grid-stride loops make any grid correct.
    """
    M, K = (a.shape[1], a.shape[0]) if ta else a.shape
    Kb, N = (b.shape[1], b.shape[0]) if tb else b.shape
    if K != Kb or out.shape != (M, N):
        raise ValueError(f"matmul shapes: op(a) {(M, K)}, op(b) {(Kb, N)}, out {out.shape}")
    default_blocks, threads = launch_config(version, M, N)
    jitted(_FACTORIES[version](bool(ta), bool(tb)))[blocks or default_blocks, threads](a, b, out)


# --------------------------------------------------------------------------------------------
# PTX cases, check, benchmark
# --------------------------------------------------------------------------------------------


def ptx_cases():
    """(label, python function, argument types) of every kernel, for numba.cuda.compile_ptx."""
    return [
        (f"matmul_v{v} ta={ta} tb={tb}", _FACTORIES[v](ta, tb), (F32_2D, F32_2D, F32_2D))
        for v in VERSIONS
        for ta, tb in MODES
    ]


# Ragged cases (M, K, N, ta, tb, blocks): no size a multiple of a tile. Every version runs
# 17×29·29×13 and 1×5·5×3 in every transpose mode; then outputs spanning two v3 tiles in each
# direction; then a grid of one block, which the grid-stride loops must walk over every tile.
CHECK_CASES = (
    *((M, K, N, ta, tb, None) for ta, tb in MODES for M, K, N in ((17, 29, 13), (1, 5, 3))),
    (65, 9, 3, True, False, None),
    (3, 9, 66, False, True, None),
    (65, 9, 17, False, False, (1, 1)),
)


def check(versions=None, cases=CHECK_CASES, seed=0):
    """Every version on every case against :func:`kernels.reference.matmul`."""
    from kernels.reference import matmul as matmul_ref

    rng = np.random.default_rng(seed)
    for v in versions or VERSIONS:
        for M, K, N, ta, tb, blocks in cases:
            a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
            b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
            out = cuda.device_array((M, N), np.float32)
            matmul(cuda.to_device(a), cuda.to_device(b), out, ta, tb, version=v, blocks=blocks)
            # K ≤ 29 products of N(0, 1) numbers: float32 rounding stays far below this
            assert_close(
                f"matmul_v{v} ta={ta} tb={tb} {M}×{K}·{K}×{N} blocks={blocks}",
                out.copy_to_host(),
                matmul_ref(a, b, ta, tb),
                atol=1e-4,
                rtol=1e-4,
            )


# the products of a training step at batch 128, hidden 512, latent 1000, data 784: (M, K, N, ta, tb)
STEP_SHAPES = (
    (128, 784, 512, False, False),  # encoder hidden:  x · W1
    (128, 512, 2000, False, False),  # encoder head:    h · W2 → [μ | log σ²]
    (128, 1000, 512, False, False),  # decoder hidden:  z · W3
    (128, 512, 784, False, False),  # decoder logits:  h · W4
    (512, 128, 784, True, False),  # dW4 = hᵀ · da
    (128, 784, 512, False, True),  # dh  = da · W4ᵀ
    (1000, 128, 512, True, False),  # dW3 = zᵀ · dh
    (128, 512, 1000, False, True),  # dz  = dh · W3ᵀ
    (512, 128, 2000, True, False),  # dW2 = hᵀ · d[μ | log σ²]
    (128, 2000, 512, False, True),  # dh  = d[μ | log σ²] · W2ᵀ
    (784, 128, 512, True, False),  # dW1 = xᵀ · dh
)


def benchmark(shapes=STEP_SHAPES, repeats=20):
    """Print the median time and GFLOP/s of every version on every shape."""
    rng = np.random.default_rng(0)
    print(f"{'shape':>28} " + " ".join(f"{'v' + str(v) + ' GFLOP/s':>12}" for v in VERSIONS))
    for M, K, N, ta, tb in shapes:
        a = cuda.to_device(rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32))
        b = cuda.to_device(rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32))
        out = cuda.device_array((M, N), np.float32)
        cells = []
        for v in VERSIONS:
            s = time_kernel(functools.partial(matmul, a, b, out, ta, tb, version=v), repeats=repeats)
            cells.append(f"{2 * M * N * K / s / 1e9:12.1f}")
        label = f"{M}×{K}{'ᵀ' if ta else ''}·{K}×{N}{'ᵀ' if tb else ''}"
        print(f"{label:>28} " + " ".join(cells))


if __name__ == "__main__":
    run_file("matmul", check, benchmark)
