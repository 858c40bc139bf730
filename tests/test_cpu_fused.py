"""Every kernel of the cpu-fused backend against its NumPy oracle in kernels.reference.

Shapes are ragged on purpose (1, primes, one past a strip or chunk boundary). Tolerance for
float32: |ours − ref| ≤ atol + rtol·|ref| with atol = 1e-5, rtol = 1e-5 — a few float32 ulps of
the values involved; the row sums (KL, NLL) may differ by more ulps of each term because we
accumulate in float64 and the oracle pairwise in float32, which the rtol on the sum covers.
"""

import math
import re

import numpy as np
import pytest
from numba import njit

from kernels import cpu_fused, reference
from kernels.cpu_fused import CpuFusedOps

ATOL, RTOL = 1e-5, 1e-5
F32 = np.float32
ops = CpuFusedOps()
ROWS = (1, 7, 130)
COLS = (1, 13, 257, 300)


def close(ours, ref, atol=ATOL, rtol=RTOL):
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape and ours.dtype == F32
    assert np.all(np.isfinite(ours))
    bad = np.abs(ours.astype(np.float64) - ref) > atol + rtol * np.abs(ref)
    assert not bad.any(), f"max error {np.abs(ours - ref).max()} at {np.argwhere(bad)[:3]}"


def rand(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(F32)


@pytest.mark.parametrize("act", reference.ACTS)
@pytest.mark.parametrize("B", ROWS)
@pytest.mark.parametrize("N", COLS)
def test_bias_act(act, B, N):
    rng = np.random.default_rng(B * 1000 + N)
    a, b = rand(rng, B, N, scale=2), rand(rng, N)
    out = np.empty_like(a)
    ops.bias_act(a, b, act, out)
    ref = reference.bias_act(a, b, act)
    close(out, ref)
    ops.bias_act(a, b, act, a)  # in place
    close(a, ref)


@pytest.mark.parametrize("act", reference.ACTS)
@pytest.mark.parametrize("B", ROWS)
@pytest.mark.parametrize("N", COLS)
def test_act_backward(act, B, N):
    rng = np.random.default_rng(B * 1000 + N + 1)
    y = reference.bias_act(rand(rng, B, N, scale=2), np.zeros(N, F32), act)
    dy = rand(rng, B, N)
    out = np.empty_like(dy)
    ops.act_backward(dy, y, act, out)
    ref = reference.act_backward(dy, y, act)
    close(out, ref)
    ops.act_backward(dy, y, act, dy)  # in place
    close(dy, ref)


@pytest.mark.parametrize("B", ROWS)
@pytest.mark.parametrize("N", COLS)
def test_colsum(B, N):
    dy = rand(np.random.default_rng(N), B, N)
    out = np.full(N, np.nan, F32)
    ops.colsum(dy, out)
    close(out, reference.colsum(dy.astype(np.float64)))


@pytest.mark.parametrize("B", ROWS)
@pytest.mark.parametrize("Z", (1, 5, 257))
def test_reparam_kl_and_backward(B, Z):
    rng = np.random.default_rng(B + Z)
    h, eps, dz = rand(rng, B, 2 * Z), rand(rng, B, Z), rand(rng, B, Z)
    z, kl = np.empty((B, Z), F32), np.empty(B, F32)
    ops.reparam_kl(h, eps, z, kl)
    z_ref, kl_ref = reference.reparam_kl(h, eps)
    close(z, z_ref)
    close(kl, kl_ref)
    dh = np.empty_like(h)
    ops.reparam_kl_backward(dz, h, eps, 0.37 / B, dh)
    close(dh, reference.reparam_kl_backward(dz, h, eps, 0.37 / B))


@pytest.mark.parametrize("B", ROWS)
@pytest.mark.parametrize("D", COLS)
def test_bernoulli_nll(B, D):
    rng = np.random.default_rng(B * D)
    a, x = rand(rng, B, D, scale=4), rng.random((B, D)).astype(F32)
    x[:, ::3] = np.round(x[:, ::3])  # binary pixels too
    loss, da = np.empty(B, F32), np.empty_like(a)
    loss_ref, da_ref = reference.bernoulli_nll(a, x, 1 / B)
    for kernel in (cpu_fused.bernoulli_nll_kernel, cpu_fused.bernoulli_nll_parallel_kernel):
        loss, da = np.full(B, np.nan, F32), np.full_like(a, np.nan)
        kernel(a, x, F32(1 / B), loss, da)
        close(loss, loss_ref)
        close(da, da_ref)
    ops.bernoulli_nll(a, x, 1 / B, loss, da)
    close(loss, loss_ref)


def test_bernoulli_nll_extreme_logits_are_finite():
    a = np.array([[1000.0, -1000.0, 0.0, 88.0, -88.0, 1e-30]], F32)
    x = np.array([[0.0, 1.0, 0.5, 1.0, 0.0, 1.0]], F32)
    loss, da = np.empty(1, F32), np.empty_like(a)
    ops.bernoulli_nll(a, x, 1.0, loss, da)
    loss_ref, da_ref = reference.bernoulli_nll(a, x, 1.0)
    assert np.isfinite(loss).all() and np.isfinite(da).all()
    close(loss, loss_ref)  # ≈ 2000 + log 2 + 0: both ±1000 pixels are maximally wrong
    close(da, da_ref)


@njit(cache=False, error_model="numpy", fastmath=cpu_fused._FMA)
def _bernoulli_nll_computing_every_subnormal(a, x, scale, loss, da):
    """bernoulli_nll_kernel as it was before it skipped the subnormal range (e from exp32 at every
    logit, scale·(p − x) always computed): what the kernel must still give, bit for bit."""
    B, D = a.shape
    terms = np.empty(D, np.float32)
    for i in range(B):
        for j in range(D):
            aj, xj = a[i, j], x[i, j]
            e = cpu_fused.exp32(-abs(aj))
            pos = aj if aj > cpu_fused._0 else cpu_fused._0
            terms[j] = pos + cpu_fused.log1p32(e) - xj * aj
            p = (cpu_fused._1 if aj >= cpu_fused._0 else e) / (cpu_fused._1 + e)
            d = scale * (p - xj)
            da[i, j] = cpu_fused._0 if abs(d) < cpu_fused._TINY else d
        loss[i] = cpu_fused.sum64(terms)


def test_log1p32_tiny_safe_is_log1p32_bit_for_bit():
    """Over [0, 1] and down through the normal and subnormal floats, where it skips s·s."""
    rng = np.random.default_rng(5)
    e = np.concatenate([rng.random(5000), 2.0 ** -rng.uniform(0, 149, 5000), [0.0, 1.0, 2.0**-50, 2.0**-49]])
    e = np.concatenate([e.astype(F32), np.nextafter(F32(2.0**-49), F32(0)) + np.zeros(1, F32)])
    for v in e:
        assert cpu_fused.log1p32_tiny_safe(v) == cpu_fused.log1p32(v) or np.isnan(v), v


def test_nll_cut_is_where_exp32_leaves_the_normal_floats():
    cut = cpu_fused._NLL_CUT
    tiny = np.finfo(F32).tiny
    assert cpu_fused.exp32(cut) >= tiny > cpu_fused.exp32(np.nextafter(cut, F32(-np.inf)))


def test_bernoulli_nll_skips_the_subnormal_range_bit_for_bit():
    """Logits across ±200, dense around ±_NLL_CUT and around the logit where scale·(p − x) leaves
    the normal floats (≈ −82.4 at scale 1/128), black, white, grey pixels, ±inf and NaN: the loss
    and ∂L/∂logits are those of the kernel that computed every subnormal, float32 for float32.
    (A row whose every term is below 2⁻⁷⁰, no digit's, may lose a subnormal from its loss.)"""
    rng = np.random.default_rng(11)
    cut = float(cpu_fused._NLL_CUT)
    near = [np.linspace(c - 0.05, c + 0.05, 2001) for c in (cut, -cut, -82.4, -83.1, 82.4)]
    a = np.concatenate([rng.uniform(-200, 200, 20000), *near, [np.inf, -np.inf, np.nan, 0.0, -0.0]])
    a = a.astype(F32)
    a = np.concatenate(
        [a, np.nextafter(cpu_fused._NLL_CUT, F32(np.inf)) + np.zeros(3, F32), cpu_fused._NLL_CUT + np.zeros(3, F32)]
    )
    a = rng.permutation(a[: a.size // 60 * 60]).reshape(60, -1)  # rows of mixed logits, as in a digit
    for x in (
        np.zeros_like(a),
        np.ones_like(a),
        rng.random(a.shape).astype(F32),
        (rng.random(a.shape) < 0.5).astype(F32),
    ):
        for scale in (F32(1 / 128), F32(1 / 60), F32(1.0)):
            loss, da = np.empty(a.shape[0], F32), np.empty_like(a)
            loss0, da0 = np.empty(a.shape[0], F32), np.empty_like(a)
            cpu_fused.bernoulli_nll_kernel(a, x, scale, loss, da)
            _bernoulli_nll_computing_every_subnormal(a, x, scale, loss0, da0)
            np.testing.assert_array_equal(da, da0)
            np.testing.assert_array_equal(loss, loss0)


def test_bernoulli_nll_writes_subnormal_gradients_as_zero():
    """Where scale·(sigmoid(a) − x) is below 2⁻¹²⁶ (a black pixel with a logit below about −82),
    the kernel writes 0 where the oracle keeps the subnormal; every other entry, the loss and a NaN
    are as before. The products that read da come out the same float32 either way."""
    B, D = 64, 300
    rng = np.random.default_rng(3)
    a, x = rand(rng, B, D, scale=3), (rng.random((B, D)) < 0.5).astype(F32)
    a[:, :40] = rng.uniform(-100, -84, (B, 40)).astype(F32)  # the corners: always black, very sure
    x[:, :40] = 0
    a[5, 50], x[5, 50] = np.nan, 1
    loss, da = np.empty(B, F32), np.empty_like(a)
    ops.bernoulli_nll(a, x, 1 / B, loss, da)
    loss_ref, da_ref = reference.bernoulli_nll(a, x, 1 / B)
    tiny = np.finfo(F32).tiny
    sub = (da_ref != 0) & (np.abs(da_ref) < tiny)
    assert sub[:, :40].mean() > 0.9 and not sub[:, 40:].any()  # the case is what it claims to be
    np.testing.assert_array_equal(da[sub], 0)
    assert np.isnan(da[5, 50]) and np.isnan(loss[5])
    ok = np.ones(B, bool)
    ok[5] = False
    kept = ~sub & ok[:, None]
    close(da[kept], da_ref[kept])
    close(loss[ok], loss_ref[ok])
    h = np.maximum(rand(rng, B, 512), 0)  # ∂W = hᵀ·da and ∂h = da·Wᵀ with the flushed da
    W = rand(rng, 512, D, scale=3)
    da_ours = np.where(ok[:, None], da, 0).astype(F32)
    da_sub = da_ours.copy()
    back = sub & ok[:, None]
    da_sub[back] = da_ref[back]  # the same gradient with the subnormals put back
    np.testing.assert_array_equal(da_ours @ W.T, da_sub @ W.T)
    dW, dW_ref = h.T @ da_ours, h.T @ da_sub
    differ = dW != dW_ref  # only the black pixels' columns, and only by a few 2⁻¹²⁶
    assert differ[:, :40].any() and not differ[:, 40:].any()
    assert np.abs(dW_ref[differ]).max() < 2.0**-110
    # ... which moves no weight: one Adam step from the same moments gives the same θ
    p0 = rand(rng, 512 * D)
    m0 = (rand(rng, 512 * D) * 10.0 ** rng.uniform(-20, -3, 512 * D)).astype(F32)
    v0 = (10.0 ** rng.uniform(-33, -6, 512 * D)).astype(F32)
    steps = []
    for g in (dW, dW_ref):
        p, m, v = p0.copy(), m0.copy(), v0.copy()
        ops.adam(p, g.reshape(-1).astype(F32), m, v, 1e-3, 0.9, 0.999, 1e-8, 1 - 0.9**5, 1 - 0.999**5)
        steps.append(p)
    np.testing.assert_array_equal(steps[0], steps[1])


@pytest.mark.parametrize("P", (1, 1000, (1 << 16) + 3))
def test_adam(P):
    rng = np.random.default_rng(P)
    p, g, m = rand(rng, P), rand(rng, P), rand(rng, P, scale=0.1)
    v = (rng.random(P) * 0.01).astype(F32)
    ref = [a.copy() for a in (p, g, m, v)]
    args = (1e-3, 0.9, 0.999, 1e-8, 1 - 0.9**3, 1 - 0.999**3)
    reference.adam(*ref, *args)
    for parallel_min in (1 << 40, 1):  # one thread, then the prange version
        ours = [a.copy() for a in (p, g, m, v)]
        fused = CpuFusedOps()
        fused.parallel_min_adam = parallel_min
        fused.adam(*ours, *args)
        for o, r in zip(ours, ref, strict=True):
            close(o, r)


def test_matmul_and_memory():
    rng = np.random.default_rng(5)
    a, b = rand(rng, 7, 13), rand(rng, 13, 5)
    for ta, tb, x, y in (
        (False, False, a, b),
        (True, False, a.T.copy(), b),
        (False, True, a, b.T.copy()),
        (True, True, a.T.copy(), b.T.copy()),
    ):
        out = ops.empty((7, 5), F32)
        ops.matmul(x, y, out, ta, tb)
        close(out, reference.matmul(x.astype(np.float64), y.astype(np.float64), ta, tb))
    assert ops.zeros((3, 2), F32).sum() == 0 and ops.zeros((3,), F32).dtype == F32
    assert np.array_equal(ops.to_host(ops.to_device(a)), a)


# Which test checks which kernel: the module docstring's list must name exactly these.
# Random123's known-answer vectors for Philox4x32-10 (github.com/DEShawResearch/random123,
# tests/kat_vectors): counter words 0-3, key words 0-1, output words 0-3.
PHILOX_KAT = [
    (
        (0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x00000000, 0x00000000),
        (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8),
    ),
    (
        (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),
        (0xFFFFFFFF, 0xFFFFFFFF),
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
    ),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@njit
def apply(fn, x, out):
    """out[i] = fn(x[i]) for a scalar Numba function fn (the kernels' inline helpers)."""
    for i in range(x.shape[0]):
        out[i] = fn(x[i])


def test_philox_known_answers_and_oracle():
    @njit
    def one_block(c, k):
        return cpu_fused.philox4x32(c[0], c[1], c[2], c[3], k[0], k[1])

    for counter, key, expected in PHILOX_KAT:
        ref = reference.philox4x32([[w] for w in counter], key)
        assert [int(w[0]) for w in ref] == list(expected)
        ours = one_block(np.array(counter, np.uint32), np.array(key, np.uint32))
        assert [int(w) for w in ours] == list(expected)
    # the raw stream of the kernel, block by block, equals the oracle's, bit for bit
    for key in ((0, 0), (123, 4567), (0xFFFFFFFF, 1)):
        words = np.zeros((4, 1001), np.uint32)
        cpu_fused.philox_kernel(np.uint32(key[0]), np.uint32(key[1]), words)
        assert np.array_equal(words, reference.philox_blocks(key, 4 * 1001))


@pytest.mark.parametrize("n", (0, 1, 2, 3, 4, 5, 13, 4097, 100_003))
def test_standard_normal_kernel_matches_oracle(n):
    key = (2 * n + 1, 0xDEADBEEF)
    out = np.full(n, np.nan, F32)
    cpu_fused.standard_normal_kernel(np.uint32(key[0]), np.uint32(key[1]), out)
    # float32 log, sqrt and sin/cos polynomials: about one ulp of each number
    close(out, reference.standard_normal_philox(key, n), atol=1e-6, rtol=1e-6)
    two_d = np.full((7, 9), np.nan, F32)  # the op fills any C-contiguous shape, row by row
    ops.standard_normal(key, two_d)
    close(two_d, reference.standard_normal_philox(key, 63).reshape(7, 9), atol=1e-6, rtol=1e-6)


def test_standard_normal_is_standard_normal():
    """Moments, the Kolmogorov–Smirnov distance to Φ, and independence of the four numbers of a
    block, of the blocks next to each other, and of two keys. Fixed keys: deterministic, and every
    bound is ≥ 5 standard errors (KS: the 0.1 % critical value 1.95/√n) from the expected value."""
    n = 1 << 20
    x = np.empty(n, F32)
    ops.standard_normal((7, 8), x)
    x = x.astype(np.float64)
    se = 1 / math.sqrt(n)
    assert abs(x.mean()) < 5 * se
    assert abs(x.var() - 1) < 5 * math.sqrt(2) * se
    assert abs((x**3).mean()) < 5 * math.sqrt(15) * se  # skewness (E x³ = 0, Var x³ = 15)
    assert abs((x**4).mean() - 3) < 5 * math.sqrt(96) * se  # E x⁴ = 3, Var x⁴ = 96
    s = np.sort(x)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(s / math.sqrt(2)))
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert ks < 1.95 * se
    q = x.reshape(4, n // 4)  # the four numbers of block i are q[:, i]
    c = np.corrcoef(q)  # 4 × 4: the lanes of a block
    for a in range(4):
        for b in range(a + 1, 4):
            assert abs(c[a, b]) < 5 * 2 * se  # 2·se: n/4 pairs
        assert abs(np.corrcoef(q[a, :-1], q[a, 1:])[0, 1]) < 10 * se  # neighbouring blocks
    assert abs(np.corrcoef(q[0] ** 2 + q[1] ** 2, q[2] ** 2 + q[3] ** 2)[0, 1]) < 10 * se  # radii
    y = np.empty(n, F32)
    ops.standard_normal((7, 9), y)  # another key: another, uncorrelated stream
    assert abs(np.corrcoef(x, y)[0, 1]) < 5 * se


def test_log32_and_box_muller32():
    @njit
    def pairs(w, out):
        for i in range(w.shape[1]):
            out[0, i], out[1, i] = cpu_fused.box_muller32(w[0, i], w[1, i])

    u = np.concatenate(
        [np.linspace(2.0**-24, 1, 200_001), np.logspace(-37, 0, 1000), [1 - 2.0**-24, 2.0**-126, 1.5, 1e30]]
    ).astype(F32)
    out = np.empty_like(u)
    apply(cpu_fused.log32, u, out)
    ref = np.log(u.astype(np.float64))
    assert np.all(np.abs(out - ref) <= 2.4e-7 * np.abs(ref) + 1e-12)  # 2 ulp
    # every angle quadrant and the extreme radius words
    w = np.random.default_rng(1).integers(0, 2**32, size=(2, 100_000), dtype=np.uint64).astype(np.uint32)
    w[:, :6] = [
        [0, 0xFFFFFFFF, 0x80000000, 0, 0xFFFFFFFF, 0x1FF],
        [0, 0xFFFFFFFF, 0x40000000, 0xC0000000, 0x3FFFFF00, 0x80000000],
    ]
    out2 = np.empty((2, w.shape[1]), F32)
    pairs(w, out2)
    ref2 = np.stack(reference.box_muller(w[0], w[1]))
    close(out2, ref2, atol=1e-6, rtol=1e-6)
    assert np.abs(ref2).max() <= math.sqrt(48 * math.log(2)) + 1e-12


KERNEL_TESTS = {
    "bias_relu_kernel": test_bias_act,
    "bias_tanh_kernel": test_bias_act,
    "bias_identity_kernel": test_bias_act,
    "relu_backward_kernel": test_act_backward,
    "tanh_backward_kernel": test_act_backward,
    "colsum_kernel": test_colsum,
    "reparam_kl_kernel": test_reparam_kl_and_backward,
    "reparam_kl_backward_kernel": test_reparam_kl_and_backward,
    "bernoulli_nll_kernel": test_bernoulli_nll,
    "bernoulli_nll_parallel_kernel": test_bernoulli_nll,
    "adam_kernel": test_adam,
    "adam_parallel_kernel": test_adam,
    "philox_kernel": test_philox_known_answers_and_oracle,
    "standard_normal_kernel": test_standard_normal_kernel_matches_oracle,
}


def test_docstring_lists_every_kernel_and_each_is_tested():
    listed = set(re.findall(r"^\s{4}(\w+_kernel)\b", cpu_fused.__doc__, re.M))
    defined = {n for n in dir(cpu_fused) if n.endswith("_kernel") and callable(getattr(cpu_fused, n))}
    assert listed == defined
    assert listed == set(KERNEL_TESTS)


def test_exp32_log1p32_sum64():
    x = np.concatenate([np.linspace(-110, 95, 200_001), [-1000, 1000, 0]]).astype(F32)
    out = np.empty_like(x)
    apply(cpu_fused.exp32, x, out)
    with np.errstate(over="ignore"):
        ref = np.exp(x.astype(np.float64)).astype(F32)  # the float32 of the true value
    finite = np.isfinite(ref)
    assert np.array_equal(np.isinf(out), ~finite)
    # 2 ulp relative for normal results; subnormal ones within one subnormal step
    r, o = ref[finite].astype(np.float64), out[finite].astype(np.float64)
    assert np.all(np.abs(o - r) <= 2.4e-7 * r + 1.5e-45)

    e = np.concatenate([np.linspace(0, 1, 100_001), np.logspace(-40, 0, 1000)]).astype(F32)
    out = np.empty_like(e)
    apply(cpu_fused.log1p32, e, out)
    ref = np.log1p(e.astype(np.float64))
    assert np.all(np.abs(out - ref) <= 3e-7 * ref + 1.5e-45)

    row = np.random.default_rng(0).standard_normal(1001).astype(F32)
    assert abs(cpu_fused.sum64(row) - row.astype(np.float64).sum()) < 1e-9


def test_adam_flushes_subnormal_moments():
    """A moment that would be subnormal is stored as 0, and θ is the oracle's float32 exactly.

    Zero gradients for 3,000 steps from a normal m and v: NumPy's float32 oracle gets stuck on a
    few subnormal steps (β₁m rounds back to m), the kernel reaches exactly 0."""
    P, steps = 64, 3000
    rng = np.random.default_rng(7)
    p = rand(rng, P) + F32(1.0)  # |θ| ~ 1: a 1e-32 change is far below half an ulp
    g = np.zeros(P, F32)
    m = rand(rng, P, scale=1e-3)
    v = (rng.random(P) * 1e-6 + 1e-7).astype(F32)
    v[::2] = 1e-37  # × 0.999³⁰⁰⁰ ≈ 0.05: these fall below 2⁻¹²⁶, the others stay normal
    m[::2] = 3e-19  # ~√v, as Adam's own moments would be
    ours, ref = [a.copy() for a in (p, g, m, v)], [a.copy() for a in (p, g, m, v)]
    tiny = np.finfo(F32).tiny
    for t in range(1, steps + 1):
        args = (1e-3, 0.9, 0.999, 1e-8, 1 - 0.9**t, 1 - 0.999**t)
        reference.adam(*ref, *args)
        ops.adam(*ours, *args)
    m_ref, v_ref = ref[2], ref[3]
    assert ((m_ref != 0) & (np.abs(m_ref) < tiny)).all()  # the oracle's m: stuck, subnormal
    np.testing.assert_array_equal(ours[2], 0)
    assert ((v_ref[::2] != 0) & (v_ref[::2] < tiny)).all()  # the oracle's small v: subnormal
    np.testing.assert_array_equal(ours[3][::2], 0)
    close(ours[3][1::2], v_ref[1::2])  # the normal ones: as the oracle computes them
    np.testing.assert_array_equal(ours[0], ref[0])  # θ: bit for bit the oracle's


def test_adam_keeps_normal_moments():
    """Moments at and just above the smallest normal float32 are kept as computed; just below it, 0."""
    tiny = np.finfo(F32).tiny
    m = np.array([tiny, -tiny, 2 * tiny, tiny * F32(1.2), tiny * F32(1.05), 1e-40], F32) / F32(0.9)
    p, g, v = np.ones(6, F32), np.zeros(6, F32), np.full(6, 1e-4, F32)
    ops.adam(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.5, 0.5)
    expect = np.array([tiny, -tiny, 2 * tiny, tiny * F32(1.2), tiny * F32(1.05), 0], F32)
    kept = np.abs(expect) >= tiny
    np.testing.assert_allclose(m[kept], expect[kept], rtol=2e-7)
    assert (np.abs(m[kept]) >= tiny).all() and m[~kept][0] == 0


def test_adam_keeps_a_nan_or_infinite_gradient_visible():
    """The flush of tiny moments must not swallow a NaN or ±∞ gradient: θ, m and v go non-finite
    where the oracle's do, and stay finite elsewhere."""
    g = np.array([np.nan, np.inf, -np.inf, 0.0, 1e-3], F32)
    ours = [np.ones(5, F32), g, np.zeros(5, F32), np.zeros(5, F32)]
    ref = [a.copy() for a in ours]
    args = (1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001)
    with np.errstate(invalid="ignore"):  # the oracle's ∞/∞ is NaN, as ours
        reference.adam(*ref, *args)
    ops.adam(*ours, *args)
    for o, r in zip(ours, ref, strict=True):
        np.testing.assert_array_equal(np.isfinite(o), np.isfinite(r))
        np.testing.assert_array_equal(np.isnan(o), np.isnan(r))
    assert not np.isfinite(ours[0][:3]).any() and np.isfinite(ours[0][3:]).all()
