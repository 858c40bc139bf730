"""Every backend's ops object against the contract, :class:`kernels.reference.Ops`.

The class of each backend is checked where it imports: every method of the protocol, with the
protocol's parameter names and defaults; the optional noise op either None or a method with the
protocol's parameters. An object of the class must be an instance of the runtime protocol
(numpy, cpu-fused, numba-cuda here — creating it touches no device; the simulator run in
tests/sim_numba_cuda.py checks the one a numba-cuda model holds); CuPy's needs CuPy.
"""

import importlib
import inspect

import numpy as np
import pytest

import minivae
from kernels import reference
from kernels.fast import FastVAE
from kernels.reference import NumpyOps, Ops
from minivae import backend

CLASSES = {
    "numpy": "kernels.reference:NumpyOps",
    "cpu-fused": "kernels.cpu_fused:CpuFusedOps",
    "cupy": "kernels.cupy.ops:CupyOps",
    "numba-cuda": "kernels.numba_cuda.ops:NumbaCudaOps",
}
OPTIONAL = {"standard_normal": reference.NoiseOp.__call__}
METHODS = {n: f for n, f in vars(Ops).items() if inspect.isfunction(f) and not n.startswith("_")}
MEMORY = ("empty", "zeros", "to_device", "to_host")


def _class(name):
    module, cls = CLASSES[name].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:
        pytest.skip(f"the {name} ops do not import here: {e}")


def _parameters(fn):
    """(name, default) of every parameter after self."""
    return [(p.name, p.default) for p in list(inspect.signature(fn).parameters.values())[1:]]


def test_every_backend_is_listed():
    assert set(CLASSES) == set(backend.BACKENDS) - {"auto"}


def test_the_protocol_names_the_oracle_of_every_op():
    assert set(Ops.__annotations__) == {"name", *OPTIONAL}
    for op in set(METHODS) - set(MEMORY):
        assert callable(getattr(reference, op, None)), f"no oracle reference.{op}"
    assert callable(reference.standard_normal_philox)  # the optional op's oracle


@pytest.mark.parametrize("name", CLASSES)
def test_ops_class_has_every_op_of_the_protocol(name):
    cls = _class(name)
    assert cls.name == name
    for op, proto in METHODS.items():
        method = getattr(cls, op, None)
        assert inspect.isfunction(method), f"{cls.__name__} lacks {op}"
        assert _parameters(method) == _parameters(proto), f"{cls.__name__}.{op}: {inspect.signature(method)}"
    for op, proto in OPTIONAL.items():
        method = getattr(cls, op)  # declared on every class: a method, or None
        if method is not None:
            assert _parameters(method) == _parameters(proto), f"{cls.__name__}.{op}: {inspect.signature(method)}"


@pytest.mark.parametrize("name", ["numpy", "cpu-fused", "numba-cuda", "cupy"])
def test_ops_object_satisfies_the_runtime_protocol(name):
    cls = _class(name)
    if name == "cupy":
        pytest.importorskip("cupy", reason="CupyOps() needs CuPy, which is not installed here")
    ops = cls()
    assert isinstance(ops, Ops)


def test_reference_ops_have_no_noise_op_and_the_fast_ones_do():
    assert NumpyOps.standard_normal is None
    for name in ("cpu-fused", "cupy", "numba-cuda"):
        assert _class(name).standard_normal is not None, name


class PhiloxNumpyOps(NumpyOps):
    """The reference ops with the optional noise op: the oracle's stream."""

    def standard_normal(self, key, out):
        out[...] = reference.standard_normal_philox(key, out.size).reshape(out.shape)


def test_the_optional_noise_op_decides_where_eps_comes_from():
    """Without the op ε is the model generator's (as on the numpy backend); with it, the op's
    stream for a key of two words from that generator."""
    kw = dict(data_dim=10, latent=3, hidden=(6,), seed=3, dtype="float64")
    x = np.random.default_rng(0).random((4, 10))
    ref, plain = minivae.VAE(**kw), FastVAE(**kw, ops=NumpyOps())
    assert plain.forward(x) == pytest.approx(ref.forward(x), rel=1e-12)
    np.testing.assert_array_equal(plain.engine._step[2], ref._cache[1])  # the same ε

    noisy = FastVAE(**kw, ops=PhiloxNumpyOps())
    key = np.random.default_rng([3, 1]).integers(0, 2**32, size=2, dtype=np.uint64)
    noisy.forward(x)
    np.testing.assert_array_equal(noisy.engine._step[2], reference.standard_normal_philox(key, 12).reshape(4, 3))
