"""out = op(a) · op(b) on the CPU, written by hand: the matrix products of a training step.

The same contract as :func:`kernels.reference.matmul` (the oracle) and the GPU versions in
:mod:`kernels.numba_cuda.matmul`: op = identity or transpose, chosen by ``ta`` / ``tb``; op(a) is
(M, K), op(b) is (K, N), out is (M, N); float32, every array C-contiguous. A training step needs
three forms: a·b (forward), aᵀ·b (weight gradient xᵀ·dy) and a·bᵀ (input gradient dy·Wᵀ); every
version also does aᵀ·bᵀ. Any shape: nothing needs to be a multiple of a block.

Versions
    matmul_v1   plain loops (i, k, j): out[i, :] += op(a)[i, k] · op(b)[k, :]
    matmul_v2   cache blocking MC × KC × NC with packed panels of op(a) and op(b) (the GotoBLAS /
                BLIS structure), the 6 × 16 micro-kernel written as plain loops
    matmul_v3   v2 with a register-blocked micro-kernel: 12 ymm accumulators, explicit vector FMA
    matmul_v4   v3 spread over the cores: the output split into one column (or row) strip per
                thread, each thread running the v3 loops on its strip with its own packed panels
    matmul_v5   v3 on 512-bit vectors (AVX-512): a 12 × 32 micro-tile in 24 zmm accumulators
    matmul_v6   v5 spread over the cores as v4

v5 and v6 give v3's numbers bit for bit (each element sums its products in the same order); the
cpu-fused backend runs them where the CPU has AVX-512 (:func:`best_version`).

The machine these block sizes are chosen for: AMD EPYC Zen 3 (AVX2 + FMA, no AVX-512; two
256-bit FMA units per core), 32 KiB L1d and 512 KiB L2 per core, 32 MiB L3 shared.

The arithmetic. One product is 2·M·N·K flops (a multiply and an add per term). A core retires two
8-wide float32 FMAs per cycle, 32 flops; at ~3.8 GHz that is ~120 GFLOP/s. To get near it the
FMA units must be fed from registers: a load from L1 serves one FMA operand, and there are only
two load ports, so each number loaded must be used several times.

The micro-kernel (v3; v2 runs the same arithmetic as plain loops): an MR × NR = 6 × 16 tile of
out lives in registers for the whole length of the K loop. Per step k it loads one row of 16
numbers of op(b) (two ymm registers) and six numbers of op(a) (each broadcast to a ymm register),
and does 6 × 2 = 12 FMAs: 12 FMAs for 2 vector loads + 6 broadcasts, 16 of the 16 ymm registers
in use (12 accumulators, 2 for the row of op(b), 1 for the broadcast, 1 spare). Its inputs come
from packed panels laid out in the order it reads them, so every load is at the next address:

    Ap panel (MR × kc):  Ap[k·MR + r] = op(a)[i + r, p + k]     r < MR, k < kc
    Bp panel (kc × NR):  Bp[k·NR + c] = op(b)[p + k, j + c]     c < NR

Rows or columns past the matrix edge are packed as zeros, so the micro-kernel always runs a full
6 × 16 tile; a tile that sticks out of out is computed into a scratch tile and only its valid part
copied (nothing is read or written outside the arrays). Packing is also where the transposes are
handled: the micro-kernel never sees them.

Cache blocking (v2–v4), the loops around the micro-kernel (Goto & van de Geijn, "Anatomy of
high-performance matrix multiplication", ACM TOMS 34(3), 2008; the loop names of BLIS):

    for jc in steps of NC over N:           a kc × nc block of op(b) → Bp   (lives in L3)
      for pc in steps of KC over K:
        pack op(b)[pc:pc+kc, jc:jc+nc] into NR-wide panels
        for ic in steps of MC over M:       an mc × kc block of op(a) → Ap  (lives in L2)
          pack op(a)[ic:ic+mc, pc:pc+kc] into MR-high panels
          for jr in steps of NR:            one kc × NR panel of Bp         (lives in L1)
            for ir in steps of MR:          one MR × kc panel of Ap, streamed from L2
              out tile (MR × NR) (+)= Ap panel · Bp panel       (= for pc = 0, += after)

    KC = 256   a Bp panel is KC × NR × 4 B = 16 KiB: half of L1d, the other half for the Ap panel
               (6 KiB) streaming past it
    MC = 144   an Ap block is MC × KC × 4 B = 144 KiB: under a third of L2 (room for the Bp panel
               and the out tiles passing through); MC is a multiple of MR
    NC = 4080  a Bp block is KC × NC × 4 B ≈ 4 MiB: an eighth of L3; NC is a multiple of NR.
               The step's products have N ≤ 2000, so jc runs once and op(b) is packed once per kc.

(These are the sizes BLIS's configuration for Zen 3 gives single precision: MR × NR = 6 × 16,
MC = 144, KC = 256, NC = 4080; they follow from the cache sizes as above, not from a search here.)

The micro-kernel of v3 is a Numba ``@intrinsic`` that emits LLVM IR with <8 x float> vectors and
``llvm.fma.v8f32``. Its assembly, read with ``python -m kernels.gemm_cpu --asm`` (Numba 0.68,
LLVM 20, compiled for this Zen 3 CPU): the K loop is 12 ``vfmadd231ps`` on ymm registers (the
twelve accumulators stay in ymm0–ymm11 for the whole loop), 2 ``vmovups`` loads of the Bp row
and 6 ``vbroadcastss`` of the Ap numbers per step, unrolled by LLVM to two steps per iteration
(24 FMAs, 4 loads, 12 broadcasts); nothing spills to the stack, and the tile is stored with
``vmovups`` (after a ``vaddps`` with the old values when adding). The plain-loop micro-kernel of
v2 is NOT vectorized: it compiles to scalar ``vfmadd213ss``, each with a load and a store of its
accumulator, because LLVM cannot prove that the accumulator array and Bp do not overlap (and
Numba's wraparound of negative indices adds index arithmetic). v2 shows what the blocking alone
gives; v3 what the registers give.

The 512-bit micro-kernel (v5). AVX-512 doubles the vector width and the register file (32 zmm
registers of 16 floats). The tile grows to MR × NR = 12 × 32: per k, two zmm loads of the Bp row
(32 numbers), twelve broadcasts of the Ap numbers, 24 FMAs into 24 zmm accumulators — 27 of the 32
registers, twice v3's FMAs per number loaded (the shape of BLIS's Skylake-X sgemm kernel, 32 × 12
there in column-major terms). Packing makes panels of 12 rows and 32 columns; KC and MC stay (a
Bp panel of 256 × 32 floats is 32 KiB, the Ap block of 144 rows a multiple of 12), and the NC
block is cut to 4064 columns, a whole number of 32-wide panels. Read its assembly with
``python -m kernels.gemm_cpu --asm``: 24 ``vfmadd231ps`` on zmm registers per k step.

Threads (v4). The step's products have M = 128 (batch) or N ≥ 512, so the output is split along
its longer side into one strip per thread (a multiple of NR columns or MR rows each), and each
thread runs the v3 loops on its strip with its own packed buffers. Each thread packs op(a) (or
op(b)) in full for itself: each core has its own L2 to fill anyway. The buffers are allocated
once per thread count and reused (no allocation inside a product).

Epilogues: what BLAS cannot do. At the last KC block a tile leaves the registers with its final
sums; whatever the next op does to each element of the product can be done there, while the tile
is in L1, instead of in another pass over the whole output (:func:`epilogue_tile`):

    matmul_bias_act    out = act(op(a) · op(b) + bias)    the forward of a dense layer, (B, N)
    weight_grad_adam   g = xᵀ · dy is applied to W by Adam tile by tile and never written to
                       memory (fan_in, fan_out); the bias gradient Σ_batch dy is summed from the
                       packed panels of dy, then applied to the bias by Adam
These are the kernels with their tests (``tests/test_gemm_cpu.py``, against
:mod:`kernels.reference`). The cpu-fused backend runs :func:`matmul` on the products that
:mod:`kernels.gemm_choice` timed faster than OpenBLAS; it does not use the epilogues yet. Such a
tile goes from the registers to a 6 × 16 scratch tile (in L1) and through the epilogue's Numba loop, one row of 1-D
views at a time, which LLVM vectorizes: its assembly has the Adam step in ymm registers (``vdivps``,
``vsqrtps``) and ReLU as ``vmaxps``; tanh stays one libm call per element. Whether the fusion pays
is for ``benchmarks.kernels --cpu`` to measure.

Check every version against :func:`kernels.reference.matmul` on ragged shapes (also
``tests/test_gemm_cpu.py``) and print the micro-kernel's inner loop:
    python -m kernels.gemm_cpu [--asm]
The GFLOP/s beside OpenBLAS (and XLA) on the step's shapes: ``python -m benchmarks.kernels --cpu``.
"""

from __future__ import annotations

import functools
import sys

import numba
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir as lir  # "ir" is the micro-kernel loop's index (jc, pc, ic, jr, ir)
from numba import njit, prange
from numba.core import cgutils, types
from numba.extending import intrinsic

from kernels.cpu_fused import adam_kernel

VERSIONS = {
    1: "plain loops (i, k, j)",
    2: "cache blocking MC×KC×NC, packed panels, 6×16 micro-kernel in plain loops",
    3: "v2 with a register-blocked micro-kernel: 12 ymm accumulators, explicit vector FMA",
    4: "v3 over the cores: one strip of the output per thread",
    5: "v3 with a 512-bit micro-kernel: a 12×32 tile in 24 zmm accumulators (AVX-512)",
    6: "v5 over the cores: one strip of the output per thread",
}
MODES = ((False, False), (True, False), (False, True), (True, True))  # (ta, tb)

MR, NR = 6, 16  # the micro-tile: 6 rows × 16 columns (two 8-float ymm registers per row)
MR_Z, NR_Z = 12, 32  # v5's micro-tile: 12 rows × 32 columns (two 16-float zmm registers per row)
MC, KC, NC = 144, 256, 4080  # the cache blocks (see the module docstring); MC is a multiple of both MRs
_VEC = 8  # floats in a ymm register
KERNEL_LOOPS, KERNEL_YMM, KERNEL_ZMM = 0, 1, 2  # the micro-kernel of v2, of v3/v4, of v5/v6

_FMA = {"contract"}  # lets the plain-loop micro-kernel use fused multiply-adds, as v3 does


# --------------------------------------------------------------------------------------------
# Arguments: everything is checked before any kernel runs (the kernels index without bounds checks)
# --------------------------------------------------------------------------------------------


def product_shape(a, b, out, ta=False, tb=False):
    """(M, K, N) of out = op(a) · op(b), after checking that all three are 2-D float32 C-contiguous
    NumPy arrays of matching shapes, out writeable and not overlapping a or b. Raises ValueError
    (TypeError for a non-array) with one line saying what is wrong."""
    for name, x in (("a", a), ("b", b), ("out", out)):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"matmul: {name} must be a NumPy array, not {type(x).__name__}")
        if x.dtype != np.float32 or x.ndim != 2:
            raise ValueError(f"matmul: {name} must be a 2-D float32 array, got {x.ndim}-D {x.dtype}")
        if not x.flags.c_contiguous:
            raise ValueError(f"matmul: {name} must be C-contiguous (np.ascontiguousarray)")
    if not out.flags.writeable:
        raise ValueError("matmul: out is read-only")
    M, K = (a.shape[1], a.shape[0]) if ta else a.shape
    Kb, N = (b.shape[1], b.shape[0]) if tb else b.shape
    if K != Kb or out.shape != (M, N):
        raise ValueError(f"matmul shapes: op(a) {(M, K)}, op(b) {(Kb, N)}, out {out.shape}")
    if np.shares_memory(out, a) or np.shares_memory(out, b):
        raise ValueError("matmul: out overlaps an input")
    return M, K, N


# --------------------------------------------------------------------------------------------
# v1: plain loops
# --------------------------------------------------------------------------------------------


@njit(cache=True, error_model="numpy")
def matmul_v1_kernel(a, b, out, ta, tb):
    """out[i, :] = Σ_k op(a)[i, k] · op(b)[k, :]: the loop order i, k, j walks rows of b and out
    (unit stride) in the inner loop, which LLVM vectorizes when b is not transposed."""
    M, N = out.shape
    K = a.shape[0] if ta else a.shape[1]
    for i in range(M):
        for j in range(N):
            out[i, j] = 0.0
        for k in range(K):
            aik = a[k, i] if ta else a[i, k]
            if tb:
                for j in range(N):
                    out[i, j] += aik * b[j, k]
            else:
                for j in range(N):
                    out[i, j] += aik * b[k, j]


# --------------------------------------------------------------------------------------------
# Packing (v2–v4)
# --------------------------------------------------------------------------------------------


@njit(cache=True, error_model="numpy")
def pack_a(a, ta, i0, mc, p0, kc, Ap, MR=MR):
    """Ap ← op(a)[i0 : i0 + mc, p0 : p0 + kc] as ⌈mc / MR⌉ panels of MR rows, panel q at q·MR·kc,
    Ap[q·MR·kc + k·MR + r] = op(a)[i0 + q·MR + r, p0 + k]; rows past mc are zeros. (v5 packs
    panels of MR_Z rows.)"""
    for q in range((mc + MR - 1) // MR):
        base = q * MR * kc
        rows = min(MR, mc - q * MR)
        if ta:  # a is (K, M): op(a)[i, k] = a[k, i], a row of a holds consecutive i
            for k in range(kc):
                for r in range(rows):
                    Ap[base + k * MR + r] = a[p0 + k, i0 + q * MR + r]
        else:  # a is (M, K): consecutive k along a row of a
            for r in range(rows):
                for k in range(kc):
                    Ap[base + k * MR + r] = a[i0 + q * MR + r, p0 + k]
        for r in range(rows, MR):
            for k in range(kc):
                Ap[base + k * MR + r] = 0.0


@njit(cache=True, error_model="numpy")
def pack_b(b, tb, p0, kc, j0, nc, Bp, NR=NR):
    """Bp ← op(b)[p0 : p0 + kc, j0 : j0 + nc] as ⌈nc / NR⌉ panels of NR columns, panel q at q·NR·kc,
    Bp[q·NR·kc + k·NR + c] = op(b)[p0 + k, j0 + q·NR + c]; columns past nc are zeros. (v5 packs
    panels of NR_Z columns.)"""
    for q in range((nc + NR - 1) // NR):
        base = q * NR * kc
        cols = min(NR, nc - q * NR)
        if tb:  # b is (N, K): op(b)[k, j] = b[j, k], a row of b holds consecutive k
            for c in range(cols):
                for k in range(kc):
                    Bp[base + k * NR + c] = b[j0 + q * NR + c, p0 + k]
        else:  # b is (K, N): consecutive j along a row of b
            for k in range(kc):
                for c in range(cols):
                    Bp[base + k * NR + c] = b[p0 + k, j0 + q * NR + c]
        for k in range(kc):
            for c in range(cols, NR):
                Bp[base + k * NR + c] = 0.0


# --------------------------------------------------------------------------------------------
# Micro-kernels: one MR × NR tile of out from an Ap panel and a Bp panel
#   c[c_off + r·ldc + j] (+)= Σ_k Ap[a_off + k·MR + r] · Bp[b_off + k·NR + j],  r < MR, j < NR
# (= when add is 0, += when add is 1)
# --------------------------------------------------------------------------------------------


@njit(cache=True, error_model="numpy", fastmath=_FMA)
def ukernel_loops(kc, Ap, a_off, Bp, b_off, c, c_off, ldc, add, acc):
    """The micro-kernel as plain loops (v2); ``acc`` (MR·NR,) is a scratch accumulator."""
    for t in range(MR * NR):
        acc[t] = 0.0
    for k in range(kc):
        for r in range(MR):
            ar = Ap[a_off + k * MR + r]
            for j in range(NR):
                acc[r * NR + j] += ar * Bp[b_off + k * NR + j]
    for r in range(MR):
        for j in range(NR):
            if add:
                c[c_off + r * ldc + j] += acc[r * NR + j]
            else:
                c[c_off + r * ldc + j] = acc[r * NR + j]


_F32 = types.Array(types.float32, 1, "C")


def _store_tile(builder, accs, pc0, ldc_v, add_v, intp, vtp):
    """Emit the store of a finished tile: row r of the accumulators (two vectors, ``accs[2r]`` and
    ``accs[2r + 1]``) to c at pc0 + r·ldc, added to what is there when ``add_v`` is not 0."""
    vec = vtp.pointee.count
    is_add = builder.icmp_signed("!=", add_v, lir.Constant(intp, 0))
    for r in range(len(accs) // 2):
        row = builder.gep(pc0, [builder.mul(ldc_v, lir.Constant(intp, r))])
        for h in range(2):
            p = builder.bitcast(builder.gep(row, [lir.Constant(intp, h * vec)]), vtp)
            val = builder.load(accs[2 * r + h])
            with builder.if_else(is_add) as (then, otherwise):
                with then:
                    builder.store(builder.fadd(builder.load(p, align=4), val), p, align=4)
                with otherwise:
                    builder.store(val, p, align=4)


def _fma_micro_kernel(mr, nr, vec):
    """The register-blocked micro-kernel of an mr × nr tile in LLVM IR, for vectors of ``vec``
    floats (nr = 2·vec): 2·mr vector accumulators; per k, two vector loads of the Bp row, mr
    broadcasts of the Ap column, 2·mr ``llvm.fma`` on <vec x float>. Returns the Numba intrinsic
    (arguments as :func:`ukernel_loops` without ``acc``; the arrays 1-D float32, the rest
    integers). The caller guarantees that every index is inside its array (there are no checks)."""
    assert nr == 2 * vec

    def ukernel(typingctx, kc, Ap, a_off, Bp, b_off, c, c_off, ldc, add):
        for arr in (Ap, Bp, c):
            if arr != _F32:
                return None
        sig = types.void(types.intp, _F32, types.intp, _F32, types.intp, _F32, types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            kc_v, ap_v, aoff_v, bp_v, boff_v, c_v, coff_v, ldc_v, add_v = args
            f32 = lir.FloatType()
            vt = lir.VectorType(f32, vec)
            vtp = vt.as_pointer()
            intp = context.get_value_type(types.intp)
            i32 = lir.IntType(32)

            def data(arr_v):
                return context.make_array(_F32)(context, builder, arr_v).data

            pa0 = builder.gep(data(ap_v), [aoff_v])
            pb0 = builder.gep(data(bp_v), [boff_v])
            pc0 = builder.gep(data(c_v), [coff_v])
            zero = lir.Constant(vt, [lir.Constant(f32, 0.0)] * vec)
            accs = [cgutils.alloca_once_value(builder, zero) for _ in range(mr * 2)]  # → registers
            undef = lir.Constant(vt, lir.Undefined)
            splat = lir.Constant(lir.VectorType(i32, vec), [lir.Constant(i32, 0)] * vec)
            fma = cgutils.get_or_insert_function(  # x·y + z per lane, rounded once
                builder.module, lir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{vec}f32"
            )
            with cgutils.for_range(builder, kc_v, intp=intp) as loop:
                pa = builder.gep(pa0, [builder.mul(loop.index, lir.Constant(intp, mr))])
                pb = builder.gep(pb0, [builder.mul(loop.index, lir.Constant(intp, nr))])
                b_lo = builder.load(builder.bitcast(pb, vtp), align=4)
                b_hi = builder.load(builder.bitcast(builder.gep(pb, [lir.Constant(intp, vec)]), vtp), align=4)
                for r in range(mr):
                    ar = builder.load(builder.gep(pa, [lir.Constant(intp, r)]))
                    av = builder.shuffle_vector(
                        builder.insert_element(undef, ar, lir.Constant(i32, 0)), undef, splat
                    )  # ar in every lane
                    for h, bv in enumerate((b_lo, b_hi)):
                        slot = accs[2 * r + h]
                        builder.store(builder.call(fma, [av, bv, builder.load(slot)]), slot)
            _store_tile(builder, accs, pc0, ldc_v, add_v, intp, vtp)
            return context.get_dummy_value()

        return sig, codegen

    ukernel.__name__ = ukernel.__qualname__ = f"ukernel_fma_{mr}x{nr}"
    return intrinsic(ukernel)


# v3: twelve <8 x float> (ymm) accumulators, twelve ``llvm.fma.v8f32`` per k.
ukernel_fma = _fma_micro_kernel(MR, NR, _VEC)
# v5: the same loop on 512-bit vectors: a 12 × 32 tile in 24 <16 x float> (zmm) accumulators, 24
# ``llvm.fma.v16f32`` per k for 2 vector loads and 12 broadcasts — 27 of the 32 zmm registers of
# AVX-512. Each element of out sums its K products in the same order as v3 (one FMA chain per KC
# block, the blocks added in turn), so v5 gives v3's result bit for bit. On a CPU without AVX-512
# LLVM splits each 16-wide FMA in two 8-wide ones: the same numbers, no faster.
ukernel_fma_zmm = _fma_micro_kernel(MR_Z, NR_Z, 2 * _VEC)


# --------------------------------------------------------------------------------------------
# Epilogues: what happens to a finished tile on its way out of the registers
# --------------------------------------------------------------------------------------------

EPI_STORE, EPI_BIAS_ACT, EPI_ADAM = 0, 1, 2  # out (+)= tile;  out = act(tile + bias);  Adam on out
ACT_CODES = {"identity": 0, "relu": 1, "tanh": 2}
_0 = np.float32(0.0)


@njit(cache=True, error_model="numpy", inline="always")
def _adam_row(p, g, m, v, n, lr, b1, omb1, b2, omb2, eps, c1, c2):
    """Adam on p[:n] from the gradient g[:n] and the moments m[:n], v[:n] (1-D views): the flat
    buffers' kernel, :func:`kernels.cpu_fused.adam_kernel`, on the first n of each."""
    adam_kernel(p[:n], g[:n], m[:n], v[:n], lr, b1, omb1, b2, omb2, eps, c1, c2)


@njit(cache=True, error_model="numpy", fastmath={"contract", "arcp"})
def epilogue_tile(out, tile, ldt, i0, j0, mr, nr, add, epi, act, bias, m, v, hyper):
    """Write the valid mr × nr corner of ``tile`` (a micro-tile's sums in rows of ``ldt`` floats —
    NR, or NR_Z for v5 —, in L1) into out at (i0, j0), through the epilogue ``epi``:

        EPI_STORE     out[i, j] = s (+ out[i, j] when add)
        EPI_BIAS_ACT  out[i, j] = act(s (+ out[i, j] when add) + bias[j]),  act by ACT_CODES
        EPI_ADAM      g = s: m ← β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²;  out ← out − α·(m/c1) / (√(v/c2) + ε)
                      (out is the weight; m, v its moments, same shape; hyper = [α, β₁, 1 − β₁, β₂,
                      1 − β₂, ε, c1, c2] in float32, the arithmetic of cpu_fused.adam_kernel)
    """
    if epi == EPI_ADAM:
        lr, b1, omb1, b2, omb2, eps, c1, c2 = (
            hyper[0],
            hyper[1],
            hyper[2],
            hyper[3],
            hyper[4],
            hyper[5],
            hyper[6],
            hyper[7],
        )
        for r in range(mr):  # one row at a time, on 1-D views: LLVM vectorizes this loop
            g, p = tile[r * ldt : r * ldt + nr], out[i0 + r, j0 : j0 + nr]
            mr_, vr_ = m[i0 + r, j0 : j0 + nr], v[i0 + r, j0 : j0 + nr]
            if nr == NR:  # a whole row of the tile: a trip count of 16 known to LLVM, 2 × 8 lanes
                _adam_row(p, g, mr_, vr_, NR, lr, b1, omb1, b2, omb2, eps, c1, c2)
            elif nr == NR_Z:  # a whole row of v5's tile: 32, 2 × 16 lanes
                _adam_row(p, g, mr_, vr_, NR_Z, lr, b1, omb1, b2, omb2, eps, c1, c2)
            else:
                _adam_row(p, g, mr_, vr_, nr, lr, b1, omb1, b2, omb2, eps, c1, c2)
        return
    bias_cols = bias[j0 : j0 + nr] if epi == EPI_BIAS_ACT else bias[:0]
    for r in range(mr):
        t, o = tile[r * ldt : r * ldt + nr], out[i0 + r, j0 : j0 + nr]
        for j in range(nr):
            s = t[j]
            if add:
                s += o[j]
            if epi == EPI_BIAS_ACT:
                s += bias_cols[j]
                if act == 1:
                    s = s if s > _0 else _0
                elif act == 2:
                    s = np.tanh(s)
            o[j] = s


# --------------------------------------------------------------------------------------------
# v2, v3: the blocked loops around the micro-kernel
# --------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def tile_shape(kernel):
    """(rows, columns) of the micro-tile of ``kernel``: MR_Z × NR_Z for KERNEL_ZMM, else MR × NR."""
    return (MR_Z, NR_Z) if kernel == KERNEL_ZMM else (MR, NR)


@njit(cache=True, error_model="numpy")
def gemm_blocked(a, b, out, ta, tb, i_lo, i_hi, j_lo, j_hi, Ap, Bp, tile, kernel, epi, act, bias, m, v, hyper, colsum):
    """out[i_lo:i_hi, j_lo:j_hi] = (op(a) · op(b))[i_lo:i_hi, j_lo:j_hi] with the five loops of the
    module docstring. Ap (MC·KC,), Bp (KC·NC,), tile (2·MR_Z·NR_Z,): float32 work buffers.
    ``kernel`` picks the micro-kernel: KERNEL_LOOPS (v2), KERNEL_YMM (v3), KERNEL_ZMM (v5: MR_Z ×
    NR_Z tiles, packed panels to match).

    The epilogue (:func:`epilogue_tile`) ``epi`` with ``act``, ``bias``, ``m``, ``v``, ``hyper`` is
    applied to each tile at the last KC block (EPI_ADAM needs K ≤ KC: one block; the arguments it
    does not use may be any arrays of the right types). When ``colsum`` has any elements, the column
    sums of op(b)[:, j_lo:j_hi] (over all of K) are added into colsum[j_lo:j_hi], read from each
    packed block of op(b) while it is in cache: the bias gradient Σ_batch dy of a weight gradient
    xᵀ·dy."""
    K = a.shape[0] if ta else a.shape[1]
    ldc = out.shape[1]
    cf = out.reshape(-1)  # out is C-contiguous: a flat view of the same memory
    MRk, NRk = tile_shape(kernel)
    scratch = tile[: MRk * NRk]  # a micro-tile on its way to an epilogue or past the edge of out
    acc = tile[MR_Z * NR_Z :]  # the accumulators of the plain-loop micro-kernel
    if K == 0:
        for i in range(i_lo, i_hi):
            for j in range(j_lo, j_hi):
                out[i, j] = 0.0
        return
    ncb = NC // NRk * NRk  # a whole number of panels: 4080 for NR = 16, 4064 for NR_Z = 32
    for jc in range(j_lo, j_hi, ncb):
        nc = min(ncb, j_hi - jc)
        for pc in range(0, K, KC):
            kc = min(KC, K - pc)
            add = 1 if pc > 0 else 0
            tile_epi = epi if pc + kc >= K else EPI_STORE
            pack_b(b, tb, pc, kc, jc, nc, Bp, NRk)
            if colsum.shape[0] > 0:
                for q in range((nc + NRk - 1) // NRk):
                    for k in range(kc):
                        for c in range(min(NRk, nc - q * NRk)):
                            colsum[jc + q * NRk + c] += Bp[q * NRk * kc + k * NRk + c]
            for ic in range(i_lo, i_hi, MC):
                mc = min(MC, i_hi - ic)
                pack_a(a, ta, ic, mc, pc, kc, Ap, MRk)
                for jr in range(0, nc, NRk):
                    nr = min(NRk, nc - jr)
                    for ir in range(0, mc, MRk):
                        mr = min(MRk, mc - ir)
                        direct = mr == MRk and nr == NRk and tile_epi == EPI_STORE  # straight into out
                        if direct:
                            c, c_off, ld, add_c = cf, (ic + ir) * ldc + jc + jr, ldc, add
                        else:
                            c, c_off, ld, add_c = scratch, 0, NRk, 0
                        if kernel == KERNEL_ZMM:
                            ukernel_fma_zmm(kc, Ap, ir * kc, Bp, jr * kc, c, c_off, ld, add_c)
                        elif kernel == KERNEL_YMM:
                            ukernel_fma(kc, Ap, ir * kc, Bp, jr * kc, c, c_off, ld, add_c)
                        else:
                            ukernel_loops(kc, Ap, ir * kc, Bp, jr * kc, c, c_off, ld, add_c, acc)
                        if not direct:  # from the scratch tile, through the epilogue
                            epilogue_tile(
                                out, scratch, NRk, ic + ir, jc + jr, mr, nr, add, tile_epi, act, bias, m, v, hyper
                            )


# --------------------------------------------------------------------------------------------
# v4: one strip of the output per thread
# --------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True, error_model="numpy")
def gemm_parallel(a, b, out, ta, tb, Ap, Bp, tile, kernel, epi, act, bias, m, v, hyper, colsum):
    """out = op(a) · op(b) (through the epilogue of :func:`gemm_blocked`), the output split along
    its longer side into T = Ap.shape[0] strips (a multiple of the tile's columns or rows each),
    strip t computed by :func:`gemm_blocked` with the micro-kernel ``kernel`` (KERNEL_YMM: v4,
    KERNEL_ZMM: v6) and the work buffers Ap[t], Bp[t], tile[t]. Strips of rows all read every
    column of op(b): only strip 0 adds the column sums."""
    M, N = out.shape
    T = Ap.shape[0]
    MRk, NRk = tile_shape(kernel)
    by_columns = N >= M
    size = N if by_columns else M
    unit = NRk if by_columns else MRk
    strip = ((size + T - 1) // T + unit - 1) // unit * unit
    for t in prange(T):
        lo = min(size, t * strip)
        hi = min(size, lo + strip)
        if lo < hi:
            i0, i1, j0, j1 = (0, M, lo, hi) if by_columns else (lo, hi, 0, N)
            sums = colsum if by_columns or t == 0 else colsum[:0]
            gemm_blocked(
                a, b, out, ta, tb, i0, i1, j0, j1, Ap[t], Bp[t], tile[t], kernel, epi, act, bias, m, v, hyper, sums
            )


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------

_WORK = {}  # threads → (Ap, Bp, tile): the packed buffers, made once and reused
_NONE1 = np.zeros(0, np.float32)  # an epilogue argument that is not used
_NONE2 = np.zeros((0, 0), np.float32)


def work_buffers(threads):
    """The packed buffers of ``threads`` threads: Ap (T, MC·KC), Bp (T, KC·NC), tile
    (T, 2·MR_Z·NR_Z): room for either micro-kernel's tile."""
    if threads not in _WORK:
        _WORK[threads] = (
            np.zeros((threads, MC * KC), np.float32),
            np.zeros((threads, KC * NC), np.float32),
            np.zeros((threads, 2 * MR_Z * NR_Z), np.float32),
        )
    return _WORK[threads]


@functools.cache
def fastest_kernel():
    """KERNEL_ZMM when Numba compiles for a CPU with AVX-512F (the host, unless ``NUMBA_CPU_NAME``
    names another), else KERNEL_YMM. Both give the same numbers; only the speed differs."""
    if numba.config.CPU_NAME not in (None, "host"):
        return KERNEL_YMM
    try:
        features = llvm.get_host_cpu_features()
    except RuntimeError:  # LLVM could not read them
        return KERNEL_YMM
    return KERNEL_ZMM if features.get("avx512f", False) else KERNEL_YMM


def best_version(threads):
    """The version of ours to run on ``threads`` threads on this CPU: v5 / v6 with AVX-512, else
    v3 / v4 (the same numbers bit for bit)."""
    zmm = fastest_kernel() == KERNEL_ZMM
    if threads == 1:
        return 5 if zmm else 3
    return 6 if zmm else 4


_ONE_CORE = {2: KERNEL_LOOPS, 3: KERNEL_YMM, 5: KERNEL_ZMM}  # version → micro-kernel
_THREADED = {4: KERNEL_YMM, 6: KERNEL_ZMM}


def matmul(a, b, out, ta=False, tb=False, version=4):
    """out = op(a) · op(b) with our kernel ``version`` (1–6); arguments checked by
    :func:`product_shape` first. Returns out. v4 and v6 use Numba's thread count
    (``numba.set_num_threads``)."""
    product_shape(a, b, out, ta, tb)
    ta, tb = bool(ta), bool(tb)
    plain = (EPI_STORE, 0, _NONE1, _NONE2, _NONE2, _NONE1, _NONE1)
    if version == 1:
        matmul_v1_kernel(a, b, out, ta, tb)
    elif version in _ONE_CORE:
        Ap, Bp, tile = work_buffers(1)
        kernel = _ONE_CORE[version]
        gemm_blocked(a, b, out, ta, tb, 0, out.shape[0], 0, out.shape[1], Ap[0], Bp[0], tile[0], kernel, *plain)
    elif version in _THREADED:
        gemm_parallel(a, b, out, ta, tb, *work_buffers(numba.get_num_threads()), _THREADED[version], *plain)
    else:
        raise ValueError(f"matmul: no version {version!r}; choose from {sorted(VERSIONS)}")
    return out


def _vector(name, x, n):
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape == (n,) and x.flags.c_contiguous):
        raise ValueError(f"{name} must be a C-contiguous float32 array of shape ({n},)")


def matmul_bias_act(a, b, bias, act, out, ta=False, tb=False):
    """out = act(op(a) · op(b) + bias): the forward of a dense layer (op(a) the input (B, fan_in),
    op(b) the weight (fan_in, N), bias (N,), out (B, N)), the bias and the activation applied to
    each 6 × 16 tile as it leaves the registers, so that there is no second pass over out. ``act``
    is ``"relu"``, ``"tanh"`` or ``"identity"``. v4's loops; Numba's threads. Returns out."""
    M, K, N = product_shape(a, b, out, ta, tb)
    _vector("matmul_bias_act: bias", bias, N)
    if act not in ACT_CODES:
        raise ValueError(f"matmul_bias_act: act must be one of {', '.join(ACT_CODES)}, not {act!r}")
    if K == 0:
        raise ValueError("matmul_bias_act: the inner dimension K must be at least 1")
    gemm_parallel(
        a,
        b,
        out,
        bool(ta),
        bool(tb),
        *work_buffers(numba.get_num_threads()),
        fastest_kernel(),
        EPI_BIAS_ACT,
        ACT_CODES[act],
        bias,
        _NONE2,
        _NONE2,
        _NONE1,
        _NONE1,
    )
    return out


@njit(cache=True, error_model="numpy")
def _adam_vector(p, g, m, v, hyper):
    """Adam on a 1-D parameter (the bias) with the hyper-parameters of :func:`epilogue_tile`."""
    adam_kernel(p, g, m, v, hyper[0], hyper[1], hyper[2], hyper[3], hyper[4], hyper[5], hyper[6], hyper[7])


def weight_grad_adam(x, dy, W, mW, vW, bias, mb, vb, lr, b1, b2, eps, c1, c2, db):
    """The backward of a dense layer's parameters fused with their Adam step: the weight gradient
    g = xᵀ·dy (fan_in, fan_out) is applied to W by Adam tile by tile as it leaves the registers
    (it is never written to memory: each 6 × 16 tile goes from the registers to a scratch tile in
    L1 and from there into W, mW, vW); the bias gradient Σ_batch dy is summed from the packed
    panels of dy into ``db`` (fan_out,), then applied to bias by Adam.

    x (B, fan_in), dy (B, fan_out), W, mW, vW (fan_in, fan_out), bias, mb, vb, db (fan_out,); all
    float32, C-contiguous; updated in place. c1 = 1 − β₁ᵗ, c2 = 1 − β₂ᵗ, as
    :func:`minivae.optim.adam_update`. The whole batch must fit one KC block (1 ≤ B ≤ KC = 256:
    the gradient of a tile is complete when the tile leaves the registers). Returns db.
    """
    M, K, N = product_shape(x, dy, W, True, False)
    if not 1 <= K <= KC:
        raise ValueError(f"weight_grad_adam: the batch must be 1 … {KC} rows, got {K}")
    for name, arr in (("mW", mW), ("vW", vW)):
        if not (
            isinstance(arr, np.ndarray) and arr.dtype == np.float32 and arr.shape == W.shape and arr.flags.c_contiguous
        ):
            raise ValueError(f"weight_grad_adam: {name} must be a C-contiguous float32 array like W {W.shape}")
    for name, arr in (("bias", bias), ("mb", mb), ("vb", vb), ("db", db)):
        _vector(f"weight_grad_adam: {name}", arr, N)
    f = np.float32
    hyper = np.array([lr, b1, 1 - b1, b2, 1 - b2, eps, c1, c2], np.float64).astype(f)
    db[...] = 0
    buffers = work_buffers(numba.get_num_threads())
    gemm_parallel(x, dy, W, True, False, *buffers, fastest_kernel(), EPI_ADAM, 0, _NONE1, mW, vW, hyper, db)
    _adam_vector(bias, db, mb, vb, hyper)
    return db


def step_shapes(Z, B=128, H=512, D=784):
    """The 11 matrix products of a training step of the VAE D → H → 2Z, Z → H → D at batch B, as
    (M, K, N, ta, tb): four forward products, four weight gradients (aᵀ·b) and three input
    gradients (a·bᵀ; the data input needs none). At Z = 1000 these are
    :data:`kernels.numba_cuda.matmul.STEP_SHAPES`."""
    return (
        (B, D, H, False, False),  # encoder hidden:  x · W1
        (B, H, 2 * Z, False, False),  # encoder head:    h · W2 → [μ | log σ²]
        (B, Z, H, False, False),  # decoder hidden:  z · W3
        (B, H, D, False, False),  # decoder logits:  h · W4
        (H, B, D, True, False),  # dW4 = hᵀ · da
        (B, D, H, False, True),  # dh  = da · W4ᵀ
        (Z, B, H, True, False),  # dW3 = zᵀ · dh
        (B, H, Z, False, True),  # dz  = dh · W3ᵀ
        (H, B, 2 * Z, True, False),  # dW2 = hᵀ · d[μ | log σ²]
        (B, 2 * Z, H, False, True),  # dh  = d[μ | log σ²] · W2ᵀ
        (D, B, H, True, False),  # dW1 = xᵀ · dh
    )


# --------------------------------------------------------------------------------------------
# Check and assembly
# --------------------------------------------------------------------------------------------

# Ragged cases (M, K, N): none a multiple of MR, NR, MC or KC; tiles cut on every side, several
# KC blocks (K = 600: 256 + 256 + 88), several MC blocks (M = 300: 144 + 144 + 12), a K of 0 and 1.
CHECK_CASES = ((1, 1, 1), (5, 7, 3), (6, 16, 16), (7, 3, 17), (13, 29, 35), (300, 37, 50), (20, 600, 33), (1, 0, 4))


def check(versions=None, cases=CHECK_CASES, seed=0):
    """Every version in every transpose mode against :func:`kernels.reference.matmul` (computed in
    float64 from the same float32 inputs): |ours − ref| ≤ 1e-4·√K + 1e-4·|ref|, every element
    written (out starts as NaN). Raises AssertionError naming the first case that fails."""
    from kernels.reference import matmul as matmul_ref

    rng = np.random.default_rng(seed)
    for v in versions or VERSIONS:
        for M, K, N in cases:
            for ta, tb in MODES:
                a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
                b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
                out = np.full((M, N), np.nan, np.float32)
                matmul(a, b, out, ta, tb, version=v)
                ref = matmul_ref(a.astype(np.float64), b.astype(np.float64), ta, tb)
                err = np.abs(out - ref) - (1e-4 * max(K, 1) ** 0.5 + 1e-4 * np.abs(ref))
                if not np.all(err <= 0):  # also catches NaN
                    raise AssertionError(
                        f"gemm_cpu v{v} ta={ta} tb={tb} {M}×{K}·{K}×{N}: "
                        f"{int(np.sum(~(err <= 0)))} of {err.size} elements off"
                    )


def micro_kernel_asm(version=3):
    """The assembly of the micro-kernel of v3 (``ukernel_fma``), v5 (``ukernel_fma_zmm``) or v2
    (``ukernel_loops``), as text. Compiled afresh, without the on-disk cache (Numba shows no
    assembly for cached code)."""
    if version == 3:

        def ukernel(kc, Ap, a_off, Bp, b_off, c, c_off, ldc, add, acc):
            ukernel_fma(kc, Ap, a_off, Bp, b_off, c, c_off, ldc, add)
    elif version == 5:

        def ukernel(kc, Ap, a_off, Bp, b_off, c, c_off, ldc, add, acc):
            ukernel_fma_zmm(kc, Ap, a_off, Bp, b_off, c, c_off, ldc, add)
    else:
        ukernel = ukernel_loops.py_func
    f = njit(error_model="numpy", fastmath=_FMA)(ukernel)
    buf = np.zeros(MR_Z * NR_Z * 4, np.float32)
    f(4, buf, 0, buf, 0, buf, 0, NR_Z, 0, buf[: MR * NR])
    return f.inspect_asm(f.signatures[0])


def count_instructions(asm, names=("vfmadd", "vbroadcastss", "vmovups")):
    """How many lines of ``asm`` hold each instruction name, and how many use ymm and zmm registers."""
    lines = asm.splitlines()
    out = {n: sum(1 for ln in lines if n in ln) for n in names}
    for reg in ("ymm", "zmm"):
        out[f"vfmadd on {reg}"] = sum(1 for ln in lines if "vfmadd" in ln and reg in ln)
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if any(x != "--asm" for x in argv):
        print("usage: python -m kernels.gemm_cpu [--asm]", file=sys.stderr)
        sys.exit(2)
    check()
    print(
        f"gemm_cpu: versions {sorted(VERSIONS)} match the reference on {len(CHECK_CASES)} ragged "
        f"shapes × 4 transpose modes"
    )
    if "--asm" in argv:
        for v in (2, 3, 5):
            print(f"v{v} micro-kernel, instruction lines:", count_instructions(micro_kernel_asm(v)))
        print("v3, the FMAs and their loads:")
        print(
            "\n".join(
                ln
                for ln in micro_kernel_asm(3).splitlines()
                if any(n in ln for n in ("vfmadd", "vbroadcastss", "vmovups"))
            )
        )


if __name__ == "__main__":
    main()
