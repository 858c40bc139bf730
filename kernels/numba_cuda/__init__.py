"""Hand-written CUDA kernels in Numba-CUDA for the ops of one training step.

One file per op family, in the manner of llm.c's ``dev/cuda``: numbered kernel versions, each
with a one-line description in the file's docstring, a ``check()`` of every version against the
NumPy oracle of :mod:`kernels.reference`, and a benchmark under ``python -m``.

=====================  ==========================================================================
``matmul.py``          out = op(a)·op(b): v1 naive, v2 shared-memory tiles, v3 register-blocked
``bias_act.py``        act(a + b) and its backward dy ⊙ act′ (relu, tanh, identity)
``colsum.py``          Σ_batch dy, the bias gradient
``reparam_kl.py``      z = μ + σ⊙ε with the per-example KL, and the gradient into [μ | log σ²]
``bernoulli_nll.py``   per-example Bernoulli NLL from logits and its gradient
``adam.py``            one Adam step over the flat parameter buffer
``noise.py``           ε ~ N(0, I) on the device: Philox4x32-10 and Box–Muller (the cpu-fused stream)
``ops.py``             ``NumbaCudaOps``: the ops object (:class:`kernels.reference.Ops`)
=====================  ==========================================================================

Every file runs on the CUDA simulator too (``NUMBA_ENABLE_CUDASIM=1``), which is how the tests
check them on machines without a GPU. This package is imported only when the ``numba-cuda``
backend is asked for; ``import minivae`` never imports it.
"""
