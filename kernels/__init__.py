"""Fast implementations of the ops of one training step, each checked against its NumPy oracle.

:mod:`kernels.reference` states every op and is the oracle; the backends implement the same
ops object (see its docstring). Nothing here imports CuPy or Numba-CUDA at import time.
"""
