"""The CuPy kernels: compiled with NVRTC everywhere, run against the oracles where a GPU is usable.

Without a GPU (CI) the CUDA C of every raw kernel, and every element-wise body inside a small
harness, is compiled with NVRTC (``cuda.bindings.nvrtc``, no driver needed) for sm_90 and sm_80,
and the PTX must hold no float64 instruction. With CuPy and a GPU, every op is compared with
:mod:`kernels.reference`, and a CUDA-graph training step with the eager step.
"""

import re

import numpy as np
import pytest

from kernels.cupy import sources

ARCHS = ("compute_80", "compute_90")
F64 = re.compile(r"\.f64\b")


# --------------------------------------------------------------------------------------------
# NVRTC (no GPU)
# --------------------------------------------------------------------------------------------


def _nvrtc():
    try:
        from cuda.bindings import nvrtc

        err, major, minor = nvrtc.nvrtcVersion()
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise RuntimeError(f"nvrtcVersion: {err}")
        return nvrtc
    except Exception as e:  # noqa: BLE001 - the wheel or its library is missing
        pytest.skip(f"NVRTC is not usable here (needs cuda-bindings and the nvrtc wheel): {e}")


def compile_ptx(source, name, arch):
    """Compile CUDA C to PTX with NVRTC; → (ok, log, ptx)."""
    nvrtc = _nvrtc()
    err, prog = nvrtc.nvrtcCreateProgram(source.encode(), f"{name}.cu".encode(), 0, [], [])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, err
    try:
        (err,) = nvrtc.nvrtcCompileProgram(prog, 2, [f"--gpu-architecture={arch}".encode(), b"--std=c++17"])
        _, n = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * n
        nvrtc.nvrtcGetProgramLog(prog, log)
        ptx = b""
        if err == nvrtc.nvrtcResult.NVRTC_SUCCESS:
            _, n = nvrtc.nvrtcGetPTXSize(prog)
            ptx = b" " * n
            nvrtc.nvrtcGetPTX(prog, ptx)
        return err == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace"), ptx.decode(errors="replace")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def _no_f64(ptx, what):
    lines = [ln.strip() for ln in ptx.splitlines() if F64.search(ln)]
    assert not lines, f"{what}: float64 in the PTX:\n" + "\n".join(lines[:10])


@pytest.mark.parametrize("arch", ARCHS)
def test_raw_kernels_compile_with_nvrtc(arch):
    ok, log, ptx = compile_ptx(sources.RAW_SOURCE, "raw", arch)
    assert ok, f"NVRTC failed for {arch}:\n{log}"
    for name in sources.RAW_KERNELS:
        assert re.search(rf"\.entry\s+{name}\s*\(", ptx), f"{name} missing from the PTX"
    _no_f64(ptx, "RAW_SOURCE")


@pytest.mark.parametrize("name", sorted(sources.ELEMENTWISE))
def test_elementwise_bodies_compile_with_nvrtc(name):
    ok, log, ptx = compile_ptx(sources.elementwise_harness(name), name, "compute_90")
    assert ok, f"NVRTC failed for {name}:\n{log}\n{sources.elementwise_harness(name)}"
    _no_f64(ptx, name)


def test_raw_source_constants_match_the_python_side():
    """The launch shapes CupyOps computes from GEMM_* and REDUCE_THREADS match the C #defines."""
    defines = dict(re.findall(r"#define (\w+) (\d+)\n", sources.RAW_SOURCE))
    assert {k: int(defines[k]) for k in ("BM", "BN", "BK", "TM", "TN", "REDUCE_THREADS")} == dict(
        BM=sources.GEMM_BM,
        BN=sources.GEMM_BN,
        BK=sources.GEMM_BK,
        TM=sources.GEMM_TM,
        TN=sources.GEMM_TN,
        REDUCE_THREADS=sources.REDUCE_THREADS,
    )
    assert sources.GEMM_THREADS == (sources.GEMM_BN // sources.GEMM_TN, sources.GEMM_BM // sources.GEMM_TM)


def test_nvrtc_reports_errors():
    """The compile helper is not vacuous: broken C fails with a log."""
    ok, log, _ = compile_ptx('extern "C" __global__ void k(float* x) { x[0] = undefined_name; }', "bad", "compute_90")
    assert not ok and "undefined_name" in log


def test_benchmark_without_gpu_exits_with_one_line():
    import subprocess
    import sys
    from pathlib import Path

    try:
        import cupy  # noqa: F401 - imported only to see whether it is installed

        pytest.skip("CuPy is installed: the benchmark might really run")
    except ImportError:
        pass
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.kernels"], cwd=root, capture_output=True, text=True)
    assert proc.returncode != 0
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and "no usable GPU" in lines[0], lines


# --------------------------------------------------------------------------------------------
# On a GPU
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cp():
    try:
        import cupy
    except ImportError as e:
        pytest.skip(f"CuPy is not installed: {e}")
    from minivae.backend import gpu_usable

    if not gpu_usable("cupy")[0]:
        pytest.skip("CuPy is installed but no CUDA device is usable")
    return cupy


@pytest.fixture(params=[False, True], ids=["cublas", "own-gemm"])
def ops(cp, request):
    from kernels.cupy.ops import CupyOps

    return CupyOps(own_gemm=request.param)


MODES = [(False, False), (True, False), (False, True), (True, True)]


@pytest.mark.parametrize("M, K, N", [(17, 29, 13), (1, 5, 3), (130, 70, 67)])
@pytest.mark.parametrize("ta, tb", MODES)
def test_matmul(ops, cp, M, K, N, ta, tb):
    from kernels.reference import matmul

    rng = np.random.default_rng(0)
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    out = cp.empty((M, N), np.float32)
    ops.matmul(cp.asarray(a), cp.asarray(b), out, ta, tb)
    # cuBLAS may use TF32 on some setups; our GEMM is plain float32
    np.testing.assert_allclose(cp.asnumpy(out), matmul(a, b, ta, tb), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("act", ["relu", "tanh", "identity"])
def test_bias_act_and_backward(ops, cp, act):
    from kernels import reference as ref

    rng = np.random.default_rng(1)
    a, b, dy = (
        rng.standard_normal((7, 13)).astype(np.float32),
        rng.standard_normal(13).astype(np.float32),
        rng.standard_normal((7, 13)).astype(np.float32),
    )
    d_a = cp.asarray(a)
    ops.bias_act(d_a, cp.asarray(b), act, d_a)  # in place
    y = ref.bias_act(a, b, act)
    np.testing.assert_allclose(cp.asnumpy(d_a), y, rtol=1e-5, atol=1e-6)
    d_dy = cp.asarray(dy)
    ops.act_backward(d_dy, cp.asarray(y), act, d_dy)
    np.testing.assert_allclose(cp.asnumpy(d_dy), ref.act_backward(dy, y, act), rtol=1e-5, atol=1e-6)


def test_fused_reductions_and_adam(ops, cp):
    from kernels import reference as ref

    rng = np.random.default_rng(2)
    B, Z, D = 5, 300, 777  # Z, D over one block's 256 threads: each thread strides
    dy = rng.standard_normal((B, 37)).astype(np.float32)
    out = cp.empty(37, np.float32)
    ops.colsum(cp.asarray(dy), out)
    np.testing.assert_allclose(cp.asnumpy(out), ref.colsum(dy), rtol=1e-5, atol=1e-5)

    h = rng.standard_normal((B, 2 * Z)).astype(np.float32)
    eps = rng.standard_normal((B, Z)).astype(np.float32)
    z, kl = cp.empty((B, Z), np.float32), cp.empty(B, np.float32)
    ops.reparam_kl(cp.asarray(h), cp.asarray(eps), z, kl)
    z_ref, kl_ref = ref.reparam_kl(h, eps)
    np.testing.assert_allclose(cp.asnumpy(z), z_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cp.asnumpy(kl), kl_ref, rtol=1e-4)
    dz = rng.standard_normal((B, Z)).astype(np.float32)
    dh = cp.empty((B, 2 * Z), np.float32)
    ops.reparam_kl_backward(cp.asarray(dz), cp.asarray(h), cp.asarray(eps), 0.3, dh)
    np.testing.assert_allclose(cp.asnumpy(dh), ref.reparam_kl_backward(dz, h, eps, 0.3), rtol=1e-5, atol=1e-5)

    a = (rng.standard_normal((B, D)) * 20).clip(-60, 60).astype(np.float32)
    x = rng.uniform(size=(B, D)).astype(np.float32)
    loss, da = cp.empty(B, np.float32), cp.empty((B, D), np.float32)
    ops.bernoulli_nll(cp.asarray(a), cp.asarray(x), 0.2, loss, da)
    loss_ref, da_ref = ref.bernoulli_nll(a, x, 0.2)
    np.testing.assert_allclose(cp.asnumpy(loss), loss_ref, rtol=1e-4)
    np.testing.assert_allclose(cp.asnumpy(da), da_ref, rtol=1e-5, atol=1e-6)

    p, g = rng.standard_normal(1001).astype(np.float32), rng.standard_normal(1001).astype(np.float32)
    m, v = np.full(1001, 0.1, np.float32), np.full(1001, 0.2, np.float32)
    dp, dm, dv = cp.asarray(p), cp.asarray(m), cp.asarray(v)
    ops.adam(dp, cp.asarray(g), dm, dv, 1e-3, 0.9, 0.999, 1e-8, 0.19, 0.002)
    ref.adam(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.19, 0.002)
    for got, want in ((dp, p), (dm, m), (dv, v)):
        np.testing.assert_allclose(cp.asnumpy(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [1, 3, 13, 128 * 1000 + 2])
def test_standard_normal_is_the_philox_stream(cp, n):
    from kernels.cupy.ops import CupyOps
    from kernels.reference import standard_normal_philox

    out = cp.full(n, cp.nan, np.float32)
    CupyOps().standard_normal((0x243F6A88, 0x85A308D3), out)
    np.testing.assert_allclose(
        cp.asnumpy(out), standard_normal_philox((0x243F6A88, 0x85A308D3), n), rtol=2e-6, atol=2e-6
    )


def test_graphed_step_matches_eager_step(cp):
    import minivae
    from kernels.cupy.graph import GraphedStep

    kw = dict(data_dim=40, hidden=(32,), latent=6, seed=3, beta=0.8, backend="cupy")
    eager, graphed = minivae.VAE(**kw), minivae.VAE(**kw)
    opt_e, opt_g = minivae.Adam(eager.params, lr=1e-2), minivae.Adam(graphed.params, lr=1e-2)
    step = GraphedStep(graphed, opt_g, batch_size=9)
    rng = np.random.default_rng(4)
    x = rng.random((9, 40)).astype(np.float32)
    for _ in range(3):
        eps = rng.standard_normal((9, 6)).astype(np.float32)
        loss_e = eager.forward(x, eps)
        opt_e.step(eager.backward())
        loss_g = step(x, eps)
        assert abs(loss_g - loss_e) <= 1e-4 * abs(loss_e), step.fallback_reason
    # ε made on the device from the same generator state: the same noise eagerly and graphed
    loss_e = eager.forward(x)
    opt_e.step(eager.backward())
    assert abs(step(x) - loss_e) <= 1e-4 * abs(loss_e)
    pe, pg = eager.get_params(), graphed.get_params()
    for k in pe:
        np.testing.assert_allclose(pg[k], pe[k], atol=1e-4)
    assert step.graph is not None, step.fallback_reason  # capture works on a current CuPy and driver
