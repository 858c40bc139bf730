"""Fast implementations of the ops of one training step, each checked against its NumPy oracle.

:mod:`kernels.reference` states every op and is the oracle; each backend implements its ops
object, the protocol :class:`kernels.reference.Ops`. Nothing here imports CuPy or Numba-CUDA at import time.
"""
