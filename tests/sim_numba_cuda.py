"""Numba-CUDA kernels on the CUDA simulator: run by tests/test_numba_cuda.py in a subprocess.

NUMBA_ENABLE_CUDASIM must be set before Numba is first imported, and other test files import
Numba (CPU) in the main pytest process; so this file is not collected there (its name does not
start with ``test_``) but run as ``NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/sim_numba_cuda.py``.
The simulator runs one Python thread per CUDA thread: shapes stay small.

On a machine with a GPU the same tests run on the real device with ``MINIVAE_CUDA_DEVICE=1``
(and without NUMBA_ENABLE_CUDASIM): ``MINIVAE_CUDA_DEVICE=1 python -m pytest tests/sim_numba_cuda.py``
(what ``benchmarks/gpu_check.py`` does).
"""

import os

import numpy as np
import pytest

ON_DEVICE = os.environ.get("MINIVAE_CUDA_DEVICE") == "1" and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1"
if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" and not ON_DEVICE:
    pytest.skip(
        "needs NUMBA_ENABLE_CUDASIM=1 before numba is imported (run via test_numba_cuda.py), "
        "or MINIVAE_CUDA_DEVICE=1 on a machine with a GPU",
        allow_module_level=True,
    )

import minivae  # noqa: E402 - imported after the skip: numba must see NUMBA_ENABLE_CUDASIM first
from kernels.engine import FlatParams  # noqa: E402 - imported after the skip: numba must see NUMBA_ENABLE_CUDASIM first
from kernels.numba_cuda import adam, bernoulli_nll, bias_act, colsum, matmul, noise, reparam_kl  # noqa: E402 - imported after the skip: numba must see NUMBA_ENABLE_CUDASIM first


def test_runs_on_the_simulator_or_on_the_device_asked_for():
    """On the simulator unless MINIVAE_CUDA_DEVICE=1 asked for the real device, which must then be usable."""
    from numba import config

    from minivae.backend import gpu_usable

    if ON_DEVICE:
        ok, why = gpu_usable("numba-cuda")
        assert not config.ENABLE_CUDASIM and ok, why
    else:
        assert config.ENABLE_CUDASIM


@pytest.mark.parametrize("version", sorted(matmul.VERSIONS))
def test_matmul_version_every_transpose_ragged_shapes(version):
    # 17×29·29×13 and 1×5·5×3 in all four modes, outputs spanning two tiles, a one-block grid
    matmul.check(versions=[version])


@pytest.mark.parametrize(
    "module", [bias_act, colsum, reparam_kl, bernoulli_nll, adam, noise], ids=lambda m: m.__name__.rsplit(".", 1)[1]
)
def test_fused_kernels_match_reference(module):
    module.check()


def test_check_catches_a_wrong_kernel(monkeypatch):
    """The checks are not vacuous: a kernel that skips the last k of every dot product fails."""

    def wrong(a, b, out, ta=False, tb=False, version=3, blocks=None):
        K = a.shape[0] if ta else a.shape[1]
        a_, b_ = a.copy_to_host(), b.copy_to_host()
        op_a = (a_.T if ta else a_)[:, : K - 1]
        op_b = (b_.T if tb else b_)[: K - 1]
        out.copy_to_device(np.ascontiguousarray(op_a @ op_b))

    monkeypatch.setattr(matmul, "matmul", wrong)
    with pytest.raises(AssertionError, match="matmul_v1 ta=False tb=False 17×29·29×13"):
        matmul.check(versions=[1])


def _steps(vae, x, eps, n):
    opt = minivae.Adam(vae.params, lr=1e-2)
    losses = []
    for e in eps[:n]:
        losses.append(vae.forward(x, e))
        opt.step(vae.backward())
    return np.array(losses)


def test_training_step_matches_numpy_backend():
    """A whole step (forward, backward, Adam) on numba-cuda equals the numpy step to float32 rounding."""
    kw = dict(data_dim=12, hidden=(8,), latent=3, seed=0, beta=0.7, dtype="float32")
    ref, gpu = minivae.VAE(**kw), minivae.VAE(**kw, backend="numba-cuda")
    assert gpu.backend == "numba-cuda" and isinstance(gpu.params, FlatParams)
    rng = np.random.default_rng(1)
    x = rng.random((5, 12)).astype(np.float32)
    eps = rng.standard_normal((2, 5, 3)).astype(np.float32)
    loss_ref, loss = ref.forward(x, eps[0]), gpu.forward(x, eps[0])
    assert abs(loss - loss_ref) <= 1e-5 * abs(loss_ref)
    g_ref, g = ref.backward(), gpu.backward()
    for k in g_ref:  # float32: a few ulps of the largest gradient entry
        np.testing.assert_allclose(g[k].copy_to_host(), g_ref[k], rtol=1e-4, atol=1e-5 * np.abs(g_ref[k]).max())
    # two Adam steps from fresh models: the parameters stay together
    ref2, gpu2 = minivae.VAE(**kw), minivae.VAE(**kw, backend="numba-cuda")
    np.testing.assert_allclose(_steps(gpu2, x, eps, 2), _steps(ref2, x, eps, 2), rtol=1e-5)
    p = gpu2.get_params()
    for k, p_ref in ref2.params.items():
        np.testing.assert_allclose(p[k], p_ref, atol=1e-5)


def test_checkpoint_round_trip_on_device_arrays():
    """Parameters and Adam's flat moments go to the host and back (what a checkpoint does)."""
    kw = dict(data_dim=12, hidden=(8,), latent=3, seed=0, beta=0.7, backend="numba-cuda")
    vae = minivae.VAE(**kw)
    opt = minivae.Adam(vae.params, lr=1e-2)
    x = np.random.default_rng(1).random((5, 12)).astype(np.float32)
    vae.forward(x)
    opt.step(vae.backward())
    params, state = vae.get_params(), opt.state_dict()
    vae2 = minivae.VAE(**kw)
    opt2 = minivae.Adam(vae2.params, lr=1e-2)
    vae2.set_params(params)
    opt2.load_state_dict(state)
    for k, p in vae2.get_params().items():
        np.testing.assert_array_equal(p, params[k])
    for k, s in opt2.state_dict().items():
        np.testing.assert_array_equal(s, state[k])
    mu, logvar = vae2.encode(x)
    assert mu.shape == logvar.shape == (5, 3) and isinstance(mu, np.ndarray)


def test_engine_noise_is_the_philox_stream_of_a_key_from_the_model_generator():
    """On numba-cuda ε is made on the device: the stream of standard_normal_philox for the key the
    engine takes from the model's generator, as on cpu-fused (float32 rounding apart)."""
    import copy

    from kernels.reference import standard_normal_philox

    vae = minivae.VAE(data_dim=12, hidden=(8,), latent=3, seed=2, backend="numba-cuda")
    rng = copy.deepcopy(vae.rng)
    x = np.random.default_rng(1).random((5, 12)).astype(np.float32)
    vae.forward(x)
    eps = vae.engine._step[2].copy_to_host()
    key = rng.integers(0, 2**32, size=2, dtype=np.uint64)
    np.testing.assert_allclose(eps, standard_normal_philox(key, 15).reshape(5, 3), rtol=2e-6, atol=2e-6)


def test_ops_object_satisfies_the_contract():
    """The ops object a numba-cuda model runs on is a kernels.reference.Ops, with the optional noise op."""
    from kernels.reference import Ops

    vae = minivae.VAE(data_dim=12, hidden=(8,), latent=3, seed=2, backend="numba-cuda")
    assert isinstance(vae.engine.ops, Ops) and vae.engine.ops.standard_normal is not None
