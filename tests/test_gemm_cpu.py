"""Our CPU matrix product (kernels.gemm_cpu) against np.matmul: every version, every transpose
mode, ragged shapes; the packing layouts, the micro-kernels on their own, the argument checks.

Tolerance: the reference is computed in float64 from the same float32 inputs; a float32 sum of K
products of N(0, 1) numbers has a rounding error of order √K ulp of its partial sums, so
|ours − ref| ≤ 1e-4·√K + 1e-4·|ref| (K ≤ 600 here: a few float32 ulps of the largest terms).
"""

import numba
import numpy as np
import pytest

from kernels import gemm_cpu
from kernels.gemm_cpu import KERNEL_YMM, KERNEL_ZMM, MODES, MR, MR_Z, NR, NR_Z, VERSIONS

# none a multiple of MR, NR, MC or KC: edge tiles on every side; K = 600 spans three KC blocks,
# M = 300 three MC blocks; 1 × 1 × 1 and K = 1 at the small end
SHAPES = ((1, 1, 1), (5, 7, 3), (6, 16, 16), (7, 3, 17), (13, 29, 35), (300, 37, 50), (20, 600, 33), (3, 1, 70))


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return []


def operands(rng, M, K, N, ta, tb):
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    ref = np.matmul(
        a.astype(np.float64).T if ta else a.astype(np.float64), b.astype(np.float64).T if tb else b.astype(np.float64)
    )
    return a, b, ref


def assert_product(out, ref, K):
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.all(np.isfinite(out)), "an element was not written (the output started as NaN)"
    err = np.abs(out - ref) - (1e-4 * max(K, 1) ** 0.5 + 1e-4 * np.abs(ref))
    assert err.max() <= 0, f"worst excess error {err.max()} at {np.unravel_index(err.argmax(), err.shape)}"


@pytest.mark.parametrize("version", sorted(VERSIONS))
@pytest.mark.parametrize("ta,tb", MODES)
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_matches_matmul(version, ta, tb, M, K, N):
    rng = np.random.default_rng(M * 10007 + K * 101 + N)
    a, b, ref = operands(rng, M, K, N, ta, tb)
    out = np.full((M, N), np.nan, np.float32)
    assert gemm_cpu.matmul(a, b, out, ta, tb, version=version) is out
    assert_product(out, ref, K)
    np.testing.assert_array_equal(
        a, operands(np.random.default_rng(M * 10007 + K * 101 + N), M, K, N, ta, tb)[0]
    )  # the inputs are left as they were


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_k_zero_gives_zeros(version):
    out = np.full((4, 5), np.nan, np.float32)
    gemm_cpu.matmul(np.zeros((4, 0), np.float32), np.zeros((0, 5), np.float32), out, version=version)
    np.testing.assert_array_equal(out, 0)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("M,K,N", [(130, 70, 50), (50, 70, 130), (7, 9, 5), (3, 9, 5), (64, 300, 33)])
def test_threaded_versions_any_thread_count(version, threads, M, K, N):
    """Strips along rows (M > N) and columns; (3, 9, 5) on 2 threads: one strip of 16 (or 32)
    columns covers N, the second thread has nothing to do."""
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"Numba has {numba.config.NUMBA_NUM_THREADS} threads")
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        for ta, tb in MODES:
            a, b, ref = operands(np.random.default_rng(threads), M, K, N, ta, tb)
            out = np.full((M, N), np.nan, np.float32)
            gemm_cpu.matmul(a, b, out, ta, tb, version=version)
            assert_product(out, ref, K)
    finally:
        numba.set_num_threads(before)


def test_accumulates_over_kc_blocks_on_a_dirty_output():
    """K over two KC blocks, the output full of garbage first: the first block must overwrite."""
    rng = np.random.default_rng(5)
    a, b, ref = operands(rng, 12, gemm_cpu.KC + 3, 32, False, False)
    out = rng.standard_normal((12, 32)).astype(np.float32) * 1e6
    gemm_cpu.matmul(a, b, out, version=3)
    assert_product(out, ref, a.shape[1])


@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (13, 29, 35), (300, 600, 50), (130, 128, 784), (3, 5, 4100)])
def test_zmm_versions_equal_v3_bit_for_bit(M, K, N):
    """v5 (12 × 32 tiles on 512-bit vectors) and v6 sum each element's K products in v3's order:
    the same float32 numbers, not merely close ones. N = 4100 crosses v5's NC block (4064 columns,
    a whole number of 32-wide panels); K = 600 three KC blocks; M = 300 three MC blocks."""
    for ta, tb in MODES:
        a, b, _ = operands(np.random.default_rng(M + K + N), M, K, N, ta, tb)
        outs = {}
        for version in (3, 4, 5, 6):
            outs[version] = np.full((M, N), np.nan, np.float32)
            gemm_cpu.matmul(a, b, outs[version], ta, tb, version=version)
        for version in (4, 5, 6):
            np.testing.assert_array_equal(outs[version], outs[3], err_msg=f"v{version} ta={ta} tb={tb}")


def test_best_version_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(gemm_cpu, "fastest_kernel", lambda: KERNEL_ZMM)
    assert (gemm_cpu.best_version(1), gemm_cpu.best_version(2)) == (5, 6)
    monkeypatch.setattr(gemm_cpu, "fastest_kernel", lambda: KERNEL_YMM)
    assert (gemm_cpu.best_version(1), gemm_cpu.best_version(2)) == (3, 4)


@pytest.mark.skipif(not {"avx2", "fma"} <= set(_cpu_flags()), reason="needs a CPU with AVX2 and FMA")
def test_fastest_kernel_is_zmm_exactly_with_avx512(monkeypatch):
    gemm_cpu.fastest_kernel.cache_clear()
    try:
        want = KERNEL_ZMM if "avx512f" in _cpu_flags() else KERNEL_YMM
        assert gemm_cpu.fastest_kernel() == want
        monkeypatch.setattr(numba.config, "CPU_NAME", "generic")
        gemm_cpu.fastest_kernel.cache_clear()
        assert gemm_cpu.fastest_kernel() == KERNEL_YMM  # code compiled for another CPU: no guess
    finally:
        gemm_cpu.fastest_kernel.cache_clear()


@pytest.mark.parametrize("MR", [MR, MR_Z])
@pytest.mark.parametrize("ta", [False, True])
def test_pack_a_layout(ta, MR):
    rng = np.random.default_rng(1)
    M, K, i0, mc, p0, kc = 20, 11, 3, 14, 2, 7
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    opa = a.T if ta else a
    panels = -(-mc // MR)  # ⌈14 / 6⌉ = 3 (the last: 2 real rows, 4 of zeros), ⌈14 / 12⌉ = 2
    Ap = np.full(panels * MR * kc + 5, np.nan, np.float32)
    gemm_cpu.pack_a(a, ta, i0, mc, p0, kc, Ap, MR)
    for q in range(panels):
        panel = Ap[q * MR * kc : (q + 1) * MR * kc].reshape(kc, MR)  # [k, r]
        want = np.zeros((MR, kc), np.float32)
        rows = min(MR, mc - q * MR)
        want[:rows] = opa[i0 + q * MR : i0 + q * MR + rows, p0 : p0 + kc]
        np.testing.assert_array_equal(panel.T, want)
    assert np.isnan(Ap[panels * MR * kc :]).all()  # nothing written past the panels


@pytest.mark.parametrize("NR", [NR, NR_Z])
@pytest.mark.parametrize("tb", [False, True])
def test_pack_b_layout(tb, NR):
    rng = np.random.default_rng(2)
    K, N, p0, kc, j0, nc = 9, 70, 1, 6, 5, 40
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    opb = b.T if tb else b
    panels = -(-nc // NR)  # ⌈40 / 16⌉ = 3 (the last: 8 real columns), ⌈40 / 32⌉ = 2
    Bp = np.full(panels * NR * kc + 5, np.nan, np.float32)
    gemm_cpu.pack_b(b, tb, p0, kc, j0, nc, Bp, NR)
    for q in range(panels):
        panel = Bp[q * NR * kc : (q + 1) * NR * kc].reshape(kc, NR)  # [k, c]
        want = np.zeros((kc, NR), np.float32)
        cols = min(NR, nc - q * NR)
        want[:, :cols] = opb[p0 : p0 + kc, j0 + q * NR : j0 + q * NR + cols]
        np.testing.assert_array_equal(panel, want)
    assert np.isnan(Bp[panels * NR * kc :]).all()


@numba.njit
def _call_fma(kc, Ap, a_off, Bp, b_off, c, c_off, ldc, add):
    gemm_cpu.ukernel_fma(kc, Ap, a_off, Bp, b_off, c, c_off, ldc, add)


@numba.njit
def _call_fma_zmm(kc, Ap, a_off, Bp, b_off, c, c_off, ldc, add):
    gemm_cpu.ukernel_fma_zmm(kc, Ap, a_off, Bp, b_off, c, c_off, ldc, add)


@pytest.mark.parametrize("kernel", ["fma", "loops", "fma_zmm"])
@pytest.mark.parametrize("add", [0, 1])
def test_micro_kernel(kernel, add):
    """One 6 × 16 tile (12 × 32 for the zmm kernel) written into a wider array (ldc = 21 + NR) at
    an offset, = and +=."""
    MR, NR = (MR_Z, NR_Z) if kernel == "fma_zmm" else (gemm_cpu.MR, gemm_cpu.NR)
    rng = np.random.default_rng(3 + add)
    kc, a_off, b_off, ldc = 13, 5, 3, 21 + NR
    c_off = 2 * ldc + 4
    Ap = rng.standard_normal(a_off + kc * MR + 4).astype(np.float32)
    Bp = rng.standard_normal(b_off + kc * NR + 4).astype(np.float32)
    c = rng.standard_normal(c_off + (MR - 1) * ldc + NR + 7).astype(np.float32)
    before = c.copy()
    A = Ap[a_off : a_off + kc * MR].reshape(kc, MR).T.astype(np.float64)  # (MR, kc)
    B = Bp[b_off : b_off + kc * NR].reshape(kc, NR).astype(np.float64)  # (kc, NR)
    want = before.copy()
    for r in range(MR):
        row = c_off + r * ldc
        want[row : row + NR] = (want[row : row + NR] if add else 0) + A[r] @ B
    if kernel == "fma":
        _call_fma(kc, Ap, a_off, Bp, b_off, c, c_off, ldc, add)
    elif kernel == "fma_zmm":
        _call_fma_zmm(kc, Ap, a_off, Bp, b_off, c, c_off, ldc, add)
    else:
        gemm_cpu.ukernel_loops(kc, Ap, a_off, Bp, b_off, c, c_off, ldc, add, np.empty(MR * NR, np.float32))
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)  # also: nothing else in c changed


@pytest.mark.skipif(not {"avx2", "fma"} <= set(_cpu_flags()), reason="needs a CPU with AVX2 and FMA")
def test_v3_micro_kernel_is_vector_fma():
    """The assembly of the v3 micro-kernel has the 12 ymm FMAs of a 6 × 16 tile (or a multiple,
    when LLVM unrolls the K loop) and broadcasts of the Ap numbers."""
    counts = gemm_cpu.count_instructions(gemm_cpu.micro_kernel_asm(3))
    assert counts["vfmadd on ymm"] >= 12 and counts["vfmadd on ymm"] % 12 == 0
    assert counts["vbroadcastss"] >= MR


@pytest.mark.skipif("avx512f" not in _cpu_flags(), reason="needs a CPU with AVX-512")
def test_v5_micro_kernel_is_zmm_fma():
    """With AVX-512 the v5 micro-kernel's assembly has the 24 zmm FMAs of a 12 × 32 tile (or a
    multiple) and no ymm FMA: LLVM did not split the 16-wide vectors."""
    counts = gemm_cpu.count_instructions(gemm_cpu.micro_kernel_asm(5))
    assert counts["vfmadd on zmm"] >= 24 and counts["vfmadd on zmm"] % 24 == 0
    assert counts["vfmadd on ymm"] == 0
    assert counts["vbroadcastss"] >= MR_Z


@pytest.mark.parametrize(
    "bad,message",
    [
        (lambda a, b, o: (a.astype(np.float64), b, o), "float32"),
        (lambda a, b, o: (a, b[:, ::2], np.empty((4, 3), np.float32)), "C-contiguous"),
        (lambda a, b, o: (a, b.T.copy(), o), "shapes"),
        (lambda a, b, o: (a, b, np.empty((4, 7), np.float32)), "shapes"),
        (lambda a, b, o: (a, b, o.ravel()), "2-D"),
    ],
)
def test_bad_arguments_are_refused_before_any_kernel(bad, message):
    a, b, o = np.ones((4, 5), np.float32), np.ones((5, 6), np.float32), np.empty((4, 6), np.float32)
    with pytest.raises(ValueError, match=message):
        gemm_cpu.matmul(*bad(a, b, o))


def test_overlap_and_read_only_and_non_array_refused():
    a = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        gemm_cpu.matmul(a, np.ones((4, 4), np.float32), a)
    ro = np.empty((4, 4), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        gemm_cpu.matmul(a, a, ro)
    with pytest.raises(TypeError, match="NumPy array"):
        gemm_cpu.matmul(a.tolist(), a, np.empty((4, 4), np.float32))
    with pytest.raises(ValueError, match="no version"):
        gemm_cpu.matmul(a, a, np.empty((4, 4), np.float32), version=7)


def test_step_shapes_are_the_gpu_benchmarks_at_z_1000():
    matmul = pytest.importorskip("kernels.numba_cuda.matmul", exc_type=ImportError)
    assert gemm_cpu.step_shapes(1000) == matmul.STEP_SHAPES


@pytest.mark.parametrize("Z", [2, 20, 1000])
def test_step_shapes_count_the_flops_of_the_throughput_benchmark(Z):
    """Two independent counts of one step's product FLOPs: the shapes here, the layer sizes there."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
    spec = importlib.util.spec_from_file_location("throughput", path)
    tp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tp)
    flops = sum(2 * M * K * N for M, K, N, _, _ in gemm_cpu.step_shapes(Z))
    assert flops == tp.sizes(Z, (512,), 128)["flops_per_step"]


# --------------------------------------------------------------------------------------------
# Fused epilogues
# --------------------------------------------------------------------------------------------


def _with_threads(threads, fn):
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"Numba has {numba.config.NUMBA_NUM_THREADS} threads")
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        fn()
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("kernel", [KERNEL_YMM, KERNEL_ZMM])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("act", ["relu", "tanh", "identity"])
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (13, 29, 35), (130, 7, 20), (20, 600, 33)])
def test_matmul_bias_act_matches_reference(kernel, threads, act, M, K, N, monkeypatch):
    """act(op(a)·op(b) + bias) against kernels.reference.bias_act of the float64 product; K = 600
    spans three KC blocks (the epilogue runs only after the last); M = 130 > N splits rows. With
    either micro-kernel, whatever this CPU has."""
    from kernels import reference

    monkeypatch.setattr(gemm_cpu, "fastest_kernel", lambda: kernel)

    def run():
        for ta, tb in MODES:
            rng = np.random.default_rng(M + K + N)
            a, b, prod = operands(rng, M, K, N, ta, tb)
            bias = rng.standard_normal(N).astype(np.float32)
            out = np.full((M, N), np.nan, np.float32)
            assert gemm_cpu.matmul_bias_act(a, b, bias, act, out, ta, tb) is out
            assert_product(out, reference.bias_act(prod, bias.astype(np.float64), act), K)

    _with_threads(threads, run)


def test_weight_grad_adam_stores_no_subnormal_moment():
    """As kernels.cpu_fused.adam_kernel: with a zero gradient, moments that β·m would take below
    2⁻¹²⁶ become 0 (in the tiles' Adam and in the bias's), and W and bias do not move."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 7)).astype(np.float32)
    dy = np.zeros((16, 23), np.float32)  # every gradient exactly 0
    W, bias = rng.standard_normal((7, 23)).astype(np.float32), rng.standard_normal(23).astype(np.float32)
    moments = [np.full(a.shape, 1e-38, np.float32) for a in (W, W, bias, bias)]  # × β: subnormal
    W0, bias0 = W.copy(), bias.copy()
    hp = dict(lr=1e-2, b1=0.9, b2=0.999, eps=1e-8, c1=1 - 0.9**3, c2=1 - 0.999**3)
    mW, vW, mb, vb = moments
    gemm_cpu.weight_grad_adam(x, dy, W, mW, vW, bias, mb, vb, db=np.empty(23, np.float32), **hp)
    for moment in moments:
        np.testing.assert_array_equal(moment, 0)
    np.testing.assert_array_equal(W, W0)
    np.testing.assert_array_equal(bias, bias0)


@pytest.mark.parametrize("kernel", [KERNEL_YMM, KERNEL_ZMM])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("fan_in,fan_out,B", [(1, 1, 1), (7, 23, 5), (130, 40, 128), (20, 300, 256)])
def test_weight_grad_adam_matches_reference(kernel, threads, fan_in, fan_out, B, monkeypatch):
    """W and bias after one fused step against kernels.reference.adam with the float64 gradients
    xᵀ·dy and Σ_batch dy; (130, 40) splits the rows over the threads (one strip sums the bias
    gradient), (20, 300) the columns. With either micro-kernel."""
    from kernels import reference

    monkeypatch.setattr(gemm_cpu, "fastest_kernel", lambda: kernel)

    def run():
        rng = np.random.default_rng(fan_in * 7 + fan_out * 3 + B)
        x = rng.standard_normal((B, fan_in)).astype(np.float32)
        dy = rng.standard_normal((B, fan_out)).astype(np.float32)
        W = rng.standard_normal((fan_in, fan_out)).astype(np.float32)
        bias = rng.standard_normal(fan_out).astype(np.float32)
        mW, mb = (
            (0.1 * rng.standard_normal(W.shape)).astype(np.float32),
            (0.1 * rng.standard_normal(fan_out)).astype(np.float32),
        )
        # second moments away from 0, so that √v does not amplify the rounding of g
        vW, vb = rng.uniform(0.5, 1.5, W.shape).astype(np.float32), rng.uniform(0.5, 1.5, fan_out).astype(np.float32)
        hp = dict(lr=1e-2, b1=0.9, b2=0.999, eps=1e-8, c1=1 - 0.9**3, c2=1 - 0.999**3)
        want = [arr.astype(np.float64) for arr in (W, mW, vW, bias, mb, vb)]
        g = x.astype(np.float64).T @ dy.astype(np.float64)
        gb = dy.astype(np.float64).sum(axis=0)
        reference.adam(want[0], g, want[1], want[2], **hp)
        reference.adam(want[3], gb, want[4], want[5], **hp)
        db = np.full(fan_out, np.nan, np.float32)
        assert gemm_cpu.weight_grad_adam(x, dy, W, mW, vW, bias, mb, vb, db=db, **hp) is db
        tol = 1e-4 * B**0.5
        np.testing.assert_allclose(db, gb, rtol=1e-5, atol=tol)
        for got, ref in zip((W, mW, vW, bias, mb, vb), want, strict=True):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=tol * 1e-1)

    _with_threads(threads, run)


def test_fused_epilogues_refuse_bad_arguments():
    a, b, o = np.ones((4, 5), np.float32), np.ones((5, 6), np.float32), np.empty((4, 6), np.float32)
    with pytest.raises(ValueError, match="bias"):
        gemm_cpu.matmul_bias_act(a, b, np.ones(5, np.float32), "relu", o)
    with pytest.raises(ValueError, match="act"):
        gemm_cpu.matmul_bias_act(a, b, np.ones(6, np.float32), "gelu", o)
    W, v6 = np.ones((5, 6), np.float32), np.ones(6, np.float32)
    hp = dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, c1=0.1, c2=0.001)
    big = np.ones((gemm_cpu.KC + 1, 5), np.float32), np.ones((gemm_cpu.KC + 1, 6), np.float32)
    with pytest.raises(ValueError, match="batch"):
        gemm_cpu.weight_grad_adam(*big, W, W.copy(), W.copy(), v6, v6.copy(), v6.copy(), db=v6.copy(), **hp)
    with pytest.raises(ValueError, match="mW"):
        gemm_cpu.weight_grad_adam(
            a, b[:4].copy(), W, W[:, :5].copy(), W.copy(), v6, v6.copy(), v6.copy(), db=v6.copy(), **hp
        )
