"""The ops of one training step as CuPy kernels, with cuBLAS for eager matrix products.

``sources.py`` holds every kernel's CUDA C as module-level strings (compiled by CuPy at run time,
and by NVRTC in the tests on machines without a GPU); ``ops.py`` has ``CupyOps``; ``graph.py``
captures a whole training step into a CUDA graph and replays it. Nothing here imports CuPy at
import time of this package.
"""
