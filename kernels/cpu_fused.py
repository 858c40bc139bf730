"""The ``cpu-fused`` backend: NumPy's BLAS for the matrix products, Numba kernels for the rest.

A training step spends most of its time in matrix products (three per dense layer, two for the
first; BLAS already runs them near the machine's peak; a product whose shape was timed faster on
our own GEMM runs there instead, see :mod:`kernels.gemm_choice`). Everything else in the reference path is
a chain of small NumPy expressions, each of which reads its inputs from memory, allocates a
temporary and writes it back. Here every such chain is ONE compiled loop (``@njit``) that reads
each input once and writes its outputs in place, in float32 throughout (constants are
``np.float32``; the scalar arguments are converted to float32 before the call).

Kernels (each tested against its oracle in :mod:`kernels.reference` by ``tests/test_cpu_fused.py``):

    bias_relu_kernel          y = max(a + b, 0)                         in place   (B, N)
    bias_tanh_kernel          y = tanh(a + b)                           in place   (B, N)
    bias_identity_kernel      y = a + b                                 in place   (B, N)
    relu_backward_kernel      da = dy ⊙ [y > 0]                                    (B, N)
    tanh_backward_kernel      da = dy ⊙ (1 − y²)                                   (B, N)
    colsum_kernel             db = Σ_batch dy                           (B, N) → (N,)
    reparam_kl_kernel         z = μ + σ⊙ε,  KL = Σ ½(μ² + σ² − log σ² − 1)   (B, 2Z) → (B, Z), (B,)
    reparam_kl_backward_kernel  ∂L/∂μ = dz + c·μ,  ∂L/∂log σ² = dz⊙½σ⊙ε + c·½(σ² − 1)   (B, 2Z)
    exp32, log1p32, sum64     helpers of the loss and KL kernels (vectorizable; tested directly)
    bernoulli_nll_kernel      ℓ = Σ softplus(a) − x·a,  da = s·(sigmoid(a) − x)     (B,), (B, D)
    bernoulli_nll_parallel_kernel   the same, blocks of rows over the threads (prange)
    adam_kernel               one Adam step over the flat buffers θ, g, m, v (subnormal moments → 0)   (P,)
    adam_parallel_kernel      the same, chunks of the buffers over the threads (prange)
    philox_kernel             the words of Philox4x32-10 blocks 0 … n₄ − 1 for a key       (4, n₄)
    standard_normal_kernel    ε ~ N(0, 1): Philox words through Box–Muller                 (n,)
    philox4x32, log32, box_muller32   helpers of the noise kernels (vectorizable; tested directly)

Threads. The passes over one layer's activations (B × N ≈ 64 K floats, in cache) take tens of
microseconds: waking a thread pool costs as much, and on a machine whose cores are busy it costs
far more, so they run on one thread. Only the two big passes — the Bernoulli loss (an exp and a
log1p per pixel) and Adam (all P parameters) — have ``prange`` versions, used from a size
threshold on (:class:`CpuFusedOps` ``parallel_min_*``) when Numba has more than one thread.

Numerics. Each element is computed in float32 with the oracle's formula; exp and log1p are our
own vectorizable float32 versions (``exp32``, ``log1p32``, within 2 ulp). ``error_model="numpy"``
(division by zero gives inf, as in NumPy, instead of raising) lets LLVM vectorize loops that
divide. ``fastmath`` is used with two kinds of flags. The kernels with polynomials (exp, log,
sin, cos: the KL, the loss, the noise) and Adam allow ``contract`` (a·b + c as one fused
multiply-add, rounded once) and ``arcp`` (x/y as x·(1/y), one more rounding); they take ~25 % off
the polynomial kernels and ~30 % off Adam when its buffers are in cache, and keep every result
within the tests' few-ulp tolerances. No flag assumes finite values,
so ±∞ and NaN behave as in NumPy. ``sum64`` allows ``reassoc``: the row sums of the losses (KL,
Bernoulli NLL) accumulate in float64 with reassociation, so they vectorize and are at least as
accurate as NumPy's pairwise float32 sum in the oracle. Every kernel is compiled with ``cache=True``: the first
process compiles (seconds), later ones load the machine code.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic

from kernels import gemm_choice, reference
from kernels.reference import HostMemory

_FMA = {"contract", "arcp"}  # fused multiply-adds, x/y as x·(1/y): see "Numerics" above
_0 = np.float32(0.0)
_HALF = np.float32(0.5)
_1 = np.float32(1.0)
_2 = np.float32(2.0)
_TINY = np.float32(np.finfo(np.float32).tiny)  # the smallest normal float32, 2⁻¹²⁶

# --------------------------------------------------------------------------------------------
# exp and log1p in float32 that LLVM can vectorize (libm's expf and log1pf are opaque calls,
# one element at a time; these are a few multiply-adds, eight elements per AVX2 instruction)
# --------------------------------------------------------------------------------------------


@intrinsic
def _float_bits(typingctx, x):
    """The bits of a float32 as an int32 (a reinterpretation, not a conversion)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def _bits_float(typingctx, i):
    """The float32 whose bits are the int32 i."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@njit(cache=True, inline="always")
def _pow2(n):
    """2ⁿ for an integer-valued float32 n in [−126, 127]: n + 127 written into a float's exponent bits."""
    return _bits_float((np.int32(n) + np.int32(127)) << np.int32(23))


_LOG2E = np.float32(1.44269504088896341)
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)  # ln 2 = hi + lo, hi exact
_EXP_MIN, _EXP_MAX = np.float32(-103.0), np.float32(88.8)  # e^x is a float32 > 0 in between
_EXP_P = tuple(
    np.float32(c)
    for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
)
_INF = np.float32(np.inf)


@njit(cache=True, error_model="numpy", inline="always", fastmath=_FMA)
def exp32(x):
    """eˣ in float32 to about 2 ulp (Cephes expf): eˣ = 2ⁿ · eʳ with n = round(x / ln 2), |r| ≤ ½ ln 2,
    eʳ ≈ 1 + r + r²·p(r); 2ⁿ is applied in two halves so that subnormal and the largest results
    come out right. Below −103 gives 0 and above 88.72 overflows to ∞, like expf."""
    xc = min(max(x, _EXP_MIN), _EXP_MAX)
    n = np.floor(xc * _LOG2E + _HALF)
    r = xc - n * _LN2_HI - n * _LN2_LO
    p = _EXP_P[0]
    p = p * r + _EXP_P[1]
    p = p * r + _EXP_P[2]
    p = p * r + _EXP_P[3]
    p = p * r + _EXP_P[4]
    p = p * r + _EXP_P[5]
    n1 = np.floor(n * _HALF)
    y = (p * r * r + r + _1) * _pow2(n1) * _pow2(n - n1)
    y = y if x >= _EXP_MIN else _0
    return y if x <= _EXP_MAX else _INF


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def sum64(row):
    """Σ row in float64. ``reassoc`` lets LLVM keep partial sums in vector lanes: this is the
    only place where the order of additions differs from a plain loop."""
    acc = 0.0
    for j in range(row.shape[0]):
        acc += row[j]
    return acc


_LOG1P_C = tuple(np.float32(2.0 / k) for k in (15, 13, 11, 9, 7, 5, 3, 1))


@njit(cache=True, error_model="numpy", inline="always", fastmath=_FMA)
def log1p32(e):
    """log(1 + e) in float32 for 0 ≤ e ≤ 1, to a few ulp, without a cancellation for small e:
    log(1 + e) = 2 atanh(s) = 2(s + s³/3 + s⁵/5 + …) with s = e / (2 + e) ≤ ⅓ (terms to s¹⁵)."""
    s = e / (_2 + e)
    w = s * s
    q = _LOG1P_C[0]
    for c in _LOG1P_C[1:]:
        q = q * w + c
    return s * q


_S_SMALL = np.float32(2.0**-50)


@njit(cache=True, error_model="numpy", inline="always", fastmath=_FMA)
def log1p32_tiny_safe(e):
    """log1p32(e), the same float32, without computing s·s where it would underflow: for
    s < 2⁻⁵⁰ every q·w below is under 2⁻⁹⁹, lost against the coefficient it is added to, so q is
    the last coefficient, 2, either way. For the loss kernel, whose e reaches 2⁻¹²⁶ (log1p32 stays
    as it is for the noise, whose numbers a changed kernel might round differently). A copy of
    log1p32 on purpose: written as ``s·2 if s < 2⁻⁵⁰ else log1p32(e)`` it gives the same numbers,
    but the vectorized loop computes both sides, s·s included, and the loss kernel took 1.05 ms
    again at a trained Z = 1000 model instead of 0.16."""
    s = e / (_2 + e)
    w = s * s if s >= _S_SMALL else _0
    q = _LOG1P_C[0]
    for c in _LOG1P_C[1:]:
        q = q * w + c
    return s * q


# --------------------------------------------------------------------------------------------
# Dense layers: bias + activation forward, activation backward, bias gradient
# --------------------------------------------------------------------------------------------


# When ``out`` is the input itself (in place, as the engine calls them), each kernel runs a loop
# that names only that one array: with two names for one buffer LLVM must assume they overlap
# and gives up vectorizing (a 15× slower loop).


@njit(cache=True, error_model="numpy", inline="always")
def _same(a, b):
    return a.ctypes.data == b.ctypes.data


@njit(cache=True, error_model="numpy")
def bias_relu_kernel(a, b, out):
    """out = max(a + b, 0).     a, out: (B, N)  b: (N,); out may be a."""
    B, N = a.shape
    if _same(a, out):
        for i in range(B):
            for j in range(N):
                v = a[i, j] + b[j]
                a[i, j] = v if v > _0 else _0
    else:
        for i in range(B):
            for j in range(N):
                v = a[i, j] + b[j]
                out[i, j] = v if v > _0 else _0


@njit(cache=True, error_model="numpy")
def bias_tanh_kernel(a, b, out):
    """out = tanh(a + b).     a, out: (B, N)  b: (N,); out may be a (libm's tanhf: not vectorized)."""
    B, N = a.shape
    for i in range(B):
        for j in range(N):
            out[i, j] = np.tanh(a[i, j] + b[j])


@njit(cache=True, error_model="numpy")
def bias_identity_kernel(a, b, out):
    """out = a + b.     a, out: (B, N)  b: (N,); out may be a."""
    B, N = a.shape
    if _same(a, out):
        for i in range(B):
            for j in range(N):
                a[i, j] = a[i, j] + b[j]
    else:
        for i in range(B):
            for j in range(N):
                out[i, j] = a[i, j] + b[j]


@njit(cache=True, error_model="numpy")
def relu_backward_kernel(dy, y, out):
    """out = dy ⊙ [y > 0]  (y is the ReLU's output: y > 0 exactly where its input was).  (B, N)"""
    B, N = dy.shape
    if _same(dy, out):
        for i in range(B):
            for j in range(N):
                dy[i, j] = dy[i, j] if y[i, j] > _0 else _0
    else:
        for i in range(B):
            for j in range(N):
                out[i, j] = dy[i, j] if y[i, j] > _0 else _0


@njit(cache=True, error_model="numpy")
def tanh_backward_kernel(dy, y, out):
    """out = dy ⊙ (1 − y²)  with y = tanh(a).     (B, N); out may be dy."""
    B, N = dy.shape
    if _same(dy, out):
        for i in range(B):
            for j in range(N):
                dy[i, j] = dy[i, j] * (_1 - y[i, j] * y[i, j])
    else:
        for i in range(B):
            for j in range(N):
                out[i, j] = dy[i, j] * (_1 - y[i, j] * y[i, j])


@njit(cache=True, error_model="numpy")
def colsum_kernel(dy, out):
    """out = Σ_batch dy, the rows streamed in order and added into out.  (B, N) → (N,)"""
    B, N = dy.shape
    for j in range(N):
        out[j] = dy[0, j]
    for i in range(1, B):
        for j in range(N):
            out[j] = out[j] + dy[i, j]


# --------------------------------------------------------------------------------------------
# Between encoder and decoder: reparameterization and KL
# --------------------------------------------------------------------------------------------


@njit(cache=True, error_model="numpy", fastmath=_FMA)
def reparam_kl_kernel(h, eps, z, kl):
    """z = μ + σ ⊙ ε,  σ = exp(½ log σ²);  kl = Σ_latents ½(μ² + σ² − log σ² − 1).

    h = [μ | log σ²]: (B, 2Z)   eps, z: (B, Z)   kl: (B,)
    """
    B, Z = z.shape
    terms = np.empty(Z, np.float32)  # the row's KL per latent, summed by sum64
    for i in range(B):
        for j in range(Z):
            mu, logvar = h[i, j], h[i, Z + j]
            sigma = exp32(_HALF * logvar)
            z[i, j] = mu + sigma * eps[i, j]
            terms[j] = _HALF * (mu * mu + sigma * sigma - logvar - _1)
        kl[i] = sum64(terms)


@njit(cache=True, error_model="numpy", fastmath=_FMA)
def reparam_kl_backward_kernel(dz, h, eps, c, dh):
    """∂L/∂h for L = (decoder loss through z) + c · Σ_b KL_b.   dz, eps: (B, Z)   h, dh: (B, 2Z)

    ∂L/∂μ = dz + c·μ                         (∂z/∂μ = 1,          ∂KL/∂μ = μ)
    ∂L/∂log σ² = dz ⊙ ½σ⊙ε + c·½(σ² − 1)     (∂z/∂log σ² = ½σ⊙ε,  ∂KL/∂log σ² = ½(σ² − 1))
    """
    B, Z = dz.shape
    for i in range(B):
        for j in range(Z):
            mu, logvar = h[i, j], h[i, Z + j]
            sigma = exp32(_HALF * logvar)
            dh[i, j] = dz[i, j] + c * mu
            dh[i, Z + j] = dz[i, j] * _HALF * sigma * eps[i, j] + c * _HALF * (sigma * sigma - _1)


# --------------------------------------------------------------------------------------------
# Reconstruction: Bernoulli NLL from logits, with its gradient, in one pass
# --------------------------------------------------------------------------------------------


_NLL_CUT = np.float32(-87.33654)  # the smallest float32 t with exp32(t) ≥ 2⁻¹²⁶ (tests/test_cpu_fused)


@njit(cache=True, error_model="numpy", fastmath=_FMA)
def bernoulli_nll_kernel(a, x, scale, loss, da):
    """loss = Σ_pixels softplus(a) − x·a;  da = scale · (sigmoid(a) − x).   a, x, da: (B, D)  loss: (B,)

    With e = exp(−|a|) ∈ (0, 1] nothing overflows, also for |a| = 1000:
    softplus(a) = max(a, 0) + log1p(e);  sigmoid(a) = 1/(1 + e) for a ≥ 0, e/(1 + e) for a < 0.

    A da below the smallest normal float32 (2⁻¹²⁶ ≈ 1.2·10⁻³⁸) is written as 0. Such values
    come from pixels that are 0 in every digit (the corners): training drives their logits below
    about −82, where scale·e underflows. Both products that read da (∂W = hᵀ·da and ∂h = da·Wᵀ)
    then meet subnormal operands, which x86 CPUs without flush-to-zero handle in microcode: on an
    Intel Xeon, 3.5% subnormal entries in da made a Z = 1000 step after 70,000 steps take 223 ms
    instead of 132 ms with the flush (one thread; 118 ms at the initial weights). Zero in their
    place leaves ∂h as it was (each of its sums also holds normal terms, and a dropped term is
    below half an ulp of them) and changes only the ∂W entries of those pixels' columns, by less
    than 2⁻¹¹⁰: Adam divides by √v + ε ≥ ε = 10⁻⁸, so θ moves by under 10⁻³⁰ more or less, below
    half an ulp of any |θ| > 10⁻²³. From that state, 200 steps with and without the flush gave
    the same θ, float32 for float32 (52 of 2.3 M moments differed, all near 2⁻¹²⁶).

    For the same reason e itself is taken as 0 where it would be subnormal (|a| beyond
    _NLL_CUT ≈ 126 ln 2, the smallest float32 t with exp32(t) ≥ 2⁻¹²⁶), and exp32 is never asked
    for it: computing e, log1p(e) and e/(1 + e) in the subnormal range made this kernel 10.7×
    slower on that Xeon at a trained Z = 1000 model (1.37 against 0.128 ms at the initial weights,
    one thread). Where e is 0 instead of e′ < 2⁻¹²⁶: 1 + e′ and max(a, 0) + e′ round to the same
    float32, so sigmoid(a) and the loss terms of a ≥ 0 are unchanged; for a < 0, sigmoid(a) is 0
    instead of a subnormal (then flushed in da as above) and a pixel's loss term loses e′, which
    a float64 row sum that holds any term above 2⁻⁷⁰ cannot hold (a row of digits has terms of
    order 10⁻² and more). Nor is scale·(p − x) computed where it is below 2⁻¹²⁷ (its product
    would underflow, slowly, to what is written as 0 anyway), nor log1p32's s·s where it would
    underflow (|a| beyond about 35: :func:`log1p32_tiny_safe`, the same float32). With the three,
    this kernel took 0.17 ms at that trained model (0.94 with the first two alone), and from it
    150 steps gave the same θ, float32 for float32, as before. Made in log1p32 itself, the last
    change also changed the noise kernel's numbers (1.2 M of the 2.3 M θ differed after the 150
    steps; the cause was not traced), so the noise keeps log1p32 as it was.
    """
    B, D = a.shape
    terms = np.empty(D, np.float32)  # the row's loss per pixel, summed by sum64
    small = _HALF * _TINY / scale  # |p − x| below it: |scale·(p − x)| < 2⁻¹²⁶, written as 0 anyway
    for i in range(B):
        for j in range(D):
            aj, xj = a[i, j], x[i, j]
            t = -abs(aj)
            below = t < _NLL_CUT  # False for NaN, which goes through exp32 as before
            e = exp32(_NLL_CUT if below else t)  # so exp32 never computes in the subnormal range
            e = _0 if below else e
            pos = aj if aj > _0 else _0
            terms[j] = pos + log1p32_tiny_safe(e) - xj * aj
            p = (_1 if aj >= _0 else e) / (_1 + e)
            q = p - xj
            d = _0 if abs(q) < small else scale * q  # never a subnormal product; NaN stays NaN
            da[i, j] = _0 if abs(d) < _TINY else d  # written so that NaN stays NaN
        loss[i] = sum64(terms)


_ROWS = 16  # rows per task of bernoulli_nll_parallel_kernel


@njit(parallel=True, cache=True, error_model="numpy")
def bernoulli_nll_parallel_kernel(a, x, scale, loss, da):
    """bernoulli_nll_kernel on blocks of rows, the blocks spread over the threads."""
    B = a.shape[0]
    for s in prange((B + _ROWS - 1) // _ROWS):
        i0, i1 = s * _ROWS, min(B, (s + 1) * _ROWS)
        bernoulli_nll_kernel(a[i0:i1], x[i0:i1], scale, loss[i0:i1], da[i0:i1])


# --------------------------------------------------------------------------------------------
# Adam over the flat parameter buffer
# --------------------------------------------------------------------------------------------


@njit(cache=True, error_model="numpy", fastmath=_FMA)
def adam_kernel(p, g, m, v, lr, b1, one_minus_b1, b2, one_minus_b2, eps, c1, c2):
    """One Adam step in place over flat buffers (P,) (see :mod:`minivae.optim`):

    m ← β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²;  θ ← θ − α·(m/c1) / (√(v/c2) + ε)

    1 − β₁ and 1 − β₂ come in precomputed (in float64, as the reference rounds them): in float32,
    1 − 0.999 loses four of its seven digits to cancellation. Written so that LLVM vectorizes it
    (separate stores, ``math.sqrt``; ``error_model="numpy"`` drops Python's zero-division check).
    With ``arcp`` the divisions by c1 and c2 become multiplications by 1/c1 and 1/c2, computed
    once: one division and one square root per parameter instead of three and one, which is what
    limits the pass while the buffers fit in the cache (0.60 → 0.42 ms at P = 835 K, Z = 20).

    A moment below the smallest normal float32 (2⁻¹²⁶ ≈ 1.2·10⁻³⁸) is stored as 0. Without that,
    the moments of a parameter whose gradient stays exactly 0 (a dead ReLU unit) never reach 0:
    β₁m rounds back to m once m is a few subnormal steps (m = 4·2⁻¹⁴⁹ is a fixed point of
    m ← 0.9m; v = 500·2⁻¹⁴⁹ of v ← 0.999v), and arithmetic on subnormals takes a slow microcode
    path on x86 CPUs. Training on MNIST at Z = 20 left ~48 K of 835 K moments stuck there after
    6,000 steps, and a step 1.6× slower than with them flushed. The flush changes θ by at most
    α·2⁻¹²⁶/(c1·ε) ≈ 10⁻³² per step (ε = 10⁻⁸), below half an ulp of any |θ| > 10⁻²⁴, and
    flushing v moves √(v/c2) + ε by under 10⁻⁹ of ε: θ comes out the same float32 as without it.
    """
    for k in range(p.shape[0]):
        gk = g[k]
        mk = b1 * m[k] + one_minus_b1 * gk
        vk = b2 * v[k] + one_minus_b2 * (gk * gk)
        mk = _0 if abs(mk) < _TINY else mk  # written so that NaN (no comparison holds) stays NaN
        vk = _0 if vk < _TINY else vk
        m[k] = mk
        v[k] = vk
        p[k] = p[k] - lr * (mk / c1) / (math.sqrt(vk / c2) + eps)


_CHUNK = 1 << 16  # elements per task of adam_parallel_kernel


@njit(parallel=True, cache=True, error_model="numpy")
def adam_parallel_kernel(p, g, m, v, lr, b1, one_minus_b1, b2, one_minus_b2, eps, c1, c2):
    """adam_kernel on chunks of 65 536 elements, the chunks spread over the threads."""
    P = p.shape[0]
    for s in prange((P + _CHUNK - 1) // _CHUNK):
        k0, k1 = s * _CHUNK, min(P, (s + 1) * _CHUNK)
        adam_kernel(p[k0:k1], g[k0:k1], m[k0:k1], v[k0:k1], lr, b1, one_minus_b1, b2, one_minus_b2, eps, c1, c2)


# --------------------------------------------------------------------------------------------
# Noise: Philox4x32-10 and Box–Muller, the ``standard_normal`` op (oracle:
# kernels.reference.standard_normal_philox). NumPy's generator makes the B·Z = 128 K numbers of
# a step at Z = 1000 in ~1.7 ms, one at a time; these kernels, eight blocks per AVX2 instruction,
# in ~0.35 ms.
# --------------------------------------------------------------------------------------------

_M0, _M1 = np.uint64(reference.PHILOX_M[0]), np.uint64(reference.PHILOX_M[1])
_W0, _W1 = np.uint32(reference.PHILOX_W[0]), np.uint32(reference.PHILOX_W[1])
_32 = np.uint64(32)
_8, _9 = np.uint32(8), np.uint32(9)


@njit(cache=True, inline="always")
def philox4x32(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of the counter (c₀, c₁, c₂, c₃) under the key (k₀, k₁), all uint32 (rounds as
    in :func:`kernels.reference.philox4x32`). Every result is cast back to uint32: Numba widens
    uint32 arithmetic to 64 bits, and the key additions must wrap at 2³²."""
    for _ in range(10):
        p0 = np.uint64(c0) * _M0  # M₀ · c₀, exact in 64 bits
        p1 = np.uint64(c2) * _M1
        c0, c1, c2, c3 = (
            np.uint32(np.uint32(p1 >> _32) ^ c1 ^ k0),
            np.uint32(p1),
            np.uint32(np.uint32(p0 >> _32) ^ c3 ^ k1),
            np.uint32(p0),
        )
        k0, k1 = np.uint32(k0 + _W0), np.uint32(k1 + _W1)
    return c0, c1, c2, c3


_LN2 = np.float32(0.693147180559945309)
_SQRT2 = np.float32(1.41421356237309505)


@njit(cache=True, error_model="numpy", inline="always", fastmath=_FMA)
def log32(u):
    """ln u in float32 for a normal float u > 0, to a few ulp: u = m·2ᵉ read from its bits with
    m ∈ [1, 2), moved to [√½, √2) (m/2, e + 1 when m > √2), then ln u = e·ln 2 + log1p32(m − 1)
    (m − 1 is exact; |m − 1| ≤ 0.42 is inside log1p32's fast-converging range)."""
    bits = _float_bits(u)
    e = (bits >> 23) - 127
    m = _bits_float((bits & 0x7FFFFF) | 0x3F800000)  # the mantissa with the exponent of 1.0
    high = m > _SQRT2
    m = m * _HALF if high else m
    e = e + 1 if high else e
    return np.float32(e) * _LN2 + log1p32(m - _1)


_2M23 = np.float32(2.0**-23)
_ANGLE = np.float32(2 * math.pi * 2.0**-24)  # radians per step of a 24-bit angle
_SIN_C = tuple(np.float32((-1) ** k / math.factorial(2 * k + 1)) for k in (4, 3, 2, 1, 0))
_COS_C = tuple(np.float32((-1) ** k / math.factorial(2 * k)) for k in (4, 3, 2, 1, 0))
_N2 = np.float32(-2.0)


@njit(cache=True, error_model="numpy", inline="always", fastmath=_FMA)
def box_muller32(w_radius, w_angle):
    """(r cos θ, r sin θ) of :func:`kernels.reference.box_muller` in float32, vectorizable:

    r = √(−2 log32(u)).  θ = 2π·k/2²⁴ for the 24-bit k = ⌊w_angle / 2⁸⌋ is split as θ = q·π/2 + φ
    with the quadrant q = round(k / 2²²) and φ = (k − q·2²²)·2π/2²⁴ ∈ [−π/4, π/4] (integer
    arithmetic, so φ is exact up to one rounding). sin φ and cos φ are their Taylor polynomials
    to φ⁹ and φ⁸ (remainder < 10⁻⁸ on [−π/4, π/4]); turning by q quarter turns swaps them when q
    is odd and flips signs: cos θ = (c, −s, −c, s)[q mod 4], sin θ = (s, c, −s, −c)[q mod 4],
    written with selects and sign factors instead of branches, which LLVM vectorizes.
    """
    u = (np.float32(np.int32(w_radius >> _9)) + _HALF) * _2M23  # (0, 1), exact
    r = math.sqrt(_N2 * log32(u))
    k = np.int32(w_angle >> _8)
    q = np.int32((k + np.int32(1 << 21)) >> np.int32(22))
    phi = np.float32(k - (q << np.int32(22))) * _ANGLE
    f2 = phi * phi
    s = (((_SIN_C[0] * f2 + _SIN_C[1]) * f2 + _SIN_C[2]) * f2 + _SIN_C[3]) * f2 + _SIN_C[4]
    c = (((_COS_C[0] * f2 + _COS_C[1]) * f2 + _COS_C[2]) * f2 + _COS_C[3]) * f2 + _COS_C[4]
    s = s * phi
    odd = (q & np.int32(1)) != 0
    cos_t = s if odd else c
    sin_t = c if odd else s
    cos_t = cos_t * np.float32(1 - 2 * (((q + 1) >> 1) & 1))  # − for q = 1, 2
    sin_t = sin_t * np.float32(1 - 2 * ((q >> 1) & 1))  # − for q = 2, 3
    return r * cos_t, r * sin_t


@njit(cache=True, error_model="numpy")
def philox_kernel(k0, k1, out):
    """The words of Philox blocks i = 0 … n₄ − 1 under key (k₀, k₁): out (4, n₄) uint32, row ℓ =
    word ℓ (the raw stream, for tests against the Random123 known answers and the oracle)."""
    for i in range(out.shape[1]):
        w0, w1, w2, w3 = philox4x32(np.uint32(i), np.uint32(0), np.uint32(0), np.uint32(0), k0, k1)
        out[0, i] = w0
        out[1, i] = w1
        out[2, i] = w2
        out[3, i] = w3


@njit(cache=True, error_model="numpy", fastmath=_FMA)
def _normal_quarters(k0, k1, q0, q1, q2, q3):
    """Blocks i = 0 … len(q3) − 1 into the four quarters (each a separate array, so that LLVM
    sees four stores per iteration that it can vectorize)."""
    for i in range(q3.shape[0]):
        w0, w1, w2, w3 = philox4x32(np.uint32(i), np.uint32(0), np.uint32(0), np.uint32(0), k0, k1)
        q0[i], q1[i] = box_muller32(w0, w1)
        q2[i], q3[i] = box_muller32(w2, w3)


@njit(cache=True, error_model="numpy", fastmath=_FMA)
def standard_normal_kernel(k0, k1, out):
    """out (n,) ← the stream of :func:`kernels.reference.standard_normal_philox`: block i's four
    numbers go to out[i], out[n₄ + i], out[2n₄ + i], out[3n₄ + i], four contiguous quarters.
    The last quarter is short by up to 3: the blocks past its end are done one by one."""
    n = out.shape[0]
    n4 = (n + 3) // 4
    full = max(n - 3 * n4, 0)  # blocks with all four numbers in range
    _normal_quarters(k0, k1, out[:n4], out[n4 : 2 * n4], out[2 * n4 : 3 * n4], out[3 * n4 :])
    for i in range(full, n4):
        w0, w1, w2, w3 = philox4x32(np.uint32(i), np.uint32(0), np.uint32(0), np.uint32(0), k0, k1)
        a, b = box_muller32(w0, w1)
        c, _ = box_muller32(w2, w3)
        out[i] = a
        if n4 + i < n:
            out[n4 + i] = b
        if 2 * n4 + i < n:
            out[2 * n4 + i] = c


# --------------------------------------------------------------------------------------------
# The ops object
# --------------------------------------------------------------------------------------------


def _check(op, **arrays):
    """Refuse what would make a kernel read or write out of bounds: ``arrays`` maps each argument's
    name to (array, expected shape); every one must be C-contiguous float32 of exactly that shape.
    O(1) per argument, before the kernel runs."""
    for name, (a, shape) in arrays.items():
        if getattr(a, "dtype", None) != np.float32 or not a.flags.c_contiguous or a.shape != shape:
            got = f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}"
            layout = "" if not hasattr(a, "flags") or a.flags.c_contiguous else ", not C-contiguous"
            raise ValueError(f"{op}: {name} must be a C-contiguous float32 array of shape {shape}, got {got}{layout}")


def _shape2(a, op, name):
    if getattr(a, "ndim", None) != 2:
        raise ValueError(f"{op}: {name} must be a 2-D array, got shape {getattr(a, 'shape', None)}")
    return a.shape


_BIAS_ACT = {"relu": bias_relu_kernel, "tanh": bias_tanh_kernel, "identity": bias_identity_kernel}
_ACT_BACKWARD = {"relu": relu_backward_kernel, "tanh": tanh_backward_kernel}


class CpuFusedOps(HostMemory):
    """The ops of :class:`kernels.reference.Ops` on the CPU: BLAS matmuls and the kernels above (float32).

    A product whose shape the choice table of :mod:`kernels.gemm_choice` lists as ``"ours"`` (timed
    faster there on this machine at this thread count) runs on :func:`kernels.gemm_cpu.matmul`
    instead of OpenBLAS; without a table every product is OpenBLAS's."""

    name = "cpu-fused"
    # From these sizes (elements) on, the prange versions run when Numba has several threads.
    # Measured on a 2-core machine shared with other jobs, the one-thread kernels were faster at
    # every size of benchmarks/throughput.py (the loss at B×D = 100 K: 0.36 ms vs 11.9 ms; Adam at
    # P = 2.3 M: 3.2 ms vs 3.9 ms), so the thresholds sit above those sizes.
    parallel_min_nll = 1 << 20
    parallel_min_adam = 1 << 24

    gemm_table = None  # the products to run with our GEMM (kernels.gemm_choice), read at first use

    def matmul(self, a, b, out, ta=False, tb=False):
        if self.gemm_table is None:
            self.gemm_table = gemm_choice.load()
        if self.gemm_table:
            M, N = _shape2(out, "matmul", "out")
            K = _shape2(a, "matmul", "a")[0 if ta else 1]
            threads = numba.get_num_threads()
            if gemm_choice.key(M, K, N, ta, tb, threads) in self.gemm_table:
                from kernels import gemm_cpu  # checks every argument first

                gemm_cpu.matmul(a, b, out, ta, tb, version=gemm_cpu.best_version(threads))
                return
        # A transposed view of a C-contiguous array is Fortran-contiguous: NumPy hands it to
        # sgemm with a transpose flag, without copying it.
        np.matmul(a.T if ta else a, b.T if tb else b, out=out)

    # Every op checks its arguments' shapes, dtype and layout first (_check): the kernels index
    # by the shapes of their first arguments and trust the rest.

    def bias_act(self, a, b, act, out):
        B, N = _shape2(a, "bias_act", "a")
        _check("bias_act", a=(a, (B, N)), b=(b, (N,)), out=(out, (B, N)))
        _BIAS_ACT[act](a, b, out)

    def act_backward(self, dy, y, act, out):
        B, N = _shape2(dy, "act_backward", "dy")
        _check("act_backward", dy=(dy, (B, N)), out=(out, (B, N)))
        if act == "identity":
            if out is not dy:
                out[...] = dy
            return
        _check("act_backward", y=(y, (B, N)))
        _ACT_BACKWARD[act](dy, y, out)

    def colsum(self, dy, out):
        B, N = _shape2(dy, "colsum", "dy")
        _check("colsum", dy=(dy, (B, N)), out=(out, (N,)))
        colsum_kernel(dy, out)

    def reparam_kl(self, h, eps, z, kl):
        B, Z2 = _shape2(h, "reparam_kl", "h")
        Z = Z2 // 2
        _check("reparam_kl", h=(h, (B, 2 * Z)), eps=(eps, (B, Z)), z=(z, (B, Z)), kl=(kl, (B,)))
        reparam_kl_kernel(h, eps, z, kl)

    def reparam_kl_backward(self, dz, h, eps, c, dh):
        B, Z = _shape2(dz, "reparam_kl_backward", "dz")
        _check("reparam_kl_backward", dz=(dz, (B, Z)), h=(h, (B, 2 * Z)), eps=(eps, (B, Z)), dh=(dh, (B, 2 * Z)))
        reparam_kl_backward_kernel(dz, h, eps, np.float32(c), dh)

    def bernoulli_nll(self, a, x, scale, loss, da):
        B, D = _shape2(a, "bernoulli_nll", "a")
        _check("bernoulli_nll", a=(a, (B, D)), x=(x, (B, D)), loss=(loss, (B,)), da=(da, (B, D)))
        kernel = bernoulli_nll_kernel
        if a.size >= self.parallel_min_nll and numba.get_num_threads() > 1:
            kernel = bernoulli_nll_parallel_kernel
        kernel(a, x, np.float32(scale), loss, da)

    def standard_normal(self, key, out):
        _check("standard_normal", out=(out, getattr(out, "shape", None)))  # a copy would drop the numbers
        standard_normal_kernel(np.uint32(key[0]), np.uint32(key[1]), out.reshape(-1))

    def adam(self, p, g, m, v, lr, b1, b2, eps, c1, c2):
        P = getattr(p, "shape", None)
        if P is None or len(P) != 1:
            raise ValueError(f"adam: p must be a flat (P,) array, got shape {P}")
        _check("adam", p=(p, P), g=(g, P), m=(m, P), v=(v, P))
        f = np.float32
        kernel = adam_kernel
        if p.size >= self.parallel_min_adam and numba.get_num_threads() > 1:
            kernel = adam_parallel_kernel
        kernel(p, g, m, v, f(lr), f(b1), f(1 - b1), f(b2), f(1 - b2), f(eps), f(c1), f(c2))
