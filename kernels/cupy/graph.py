"""A whole training step (forward, backward, Adam) captured once into a CUDA graph and replayed.

A step at batch 128 is a few dozen small kernels, and launching them from Python costs more than
running them. A CUDA graph records the launches once and replays them with one call. What a
replay needs:

- every buffer allocated before capture and never reallocated: the engine's parameters,
  gradients and workspace of this batch size, the optimizer's flat moments, and three inputs
  (x, ε and the bias corrections [c1, c2], which change every step) that are written before each
  replay;
- the noise ε made outside the graph, exactly as an eager step makes it: by the Philox kernel
  (``CupyOps.standard_normal``) on the step's stream, for a key drawn from the model's generator
  (the key changes every step; a captured kernel would replay the old one);
- no cuBLAS: CuPy refuses cuBLAS calls during capture (cupy/cupy#6290), so the step uses the
  tiled GEMM of :mod:`kernels.cupy.sources` (``CupyOps(own_gemm=True)``);
- no compilation during capture: one warm-up step compiles every kernel first; it updates the
  parameters, so they (and Adam's moments) are saved before and restored after it.

When capture is unavailable (an old driver, a failed capture) ``GraphedStep`` runs the same ops
eagerly on its stream and says why in ``fallback_reason``.

    step = GraphedStep(vae, opt, batch_size=128)   # vae = minivae.VAE(..., backend="cupy")
    for x in batches: loss = step(x)               # one replay per batch of exactly that size
"""

from __future__ import annotations

import numpy as np

from minivae import checks


class GraphedStep:
    """``loss = step(x, eps=None)``: forward, backward and ``opt.step`` of one batch, replayed."""

    def __init__(self, vae, opt, batch_size, capture=True):
        import cupy

        from kernels.cupy.ops import CupyOps

        eng = getattr(vae, "engine", None)
        if eng is None or not isinstance(eng.ops, CupyOps):
            raise ValueError("GraphedStep needs a model on the 'cupy' backend")
        if getattr(opt, "m_flat", None) is None or opt.params is not eng.params:
            raise ValueError("GraphedStep needs an Adam over the engine's flat parameters")
        eng.ops.own_gemm = True  # cuBLAS cannot be captured; our GEMM gives the same products
        self.opt, self.eng, self.ops, self.cupy = opt, eng, eng.ops, cupy
        B, self.B = batch_size, batch_size
        self.ws = eng.workspace(B)
        self.x = cupy.empty((B, eng.D), dtype=eng.dtype)  # (B, D), written before each replay
        self.eps = cupy.empty((B, eng.Z), dtype=eng.dtype)  # (B, Z)
        self.c = cupy.ones(2, dtype=np.float32)  # [c1, c2] of the current step
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.graph, self.fallback_reason = None, "capture not requested"
        if capture:
            self.graph, self.fallback_reason = self._capture()

    def _run(self):
        """The ops of one step, those of Engine.forward + Engine.backward + Adam, without host copies."""
        eng, opt = self.eng, self.opt
        eng.forward_ops(self.ws, self.x, self.eps)
        eng.backward_ops(self.ws, self.x, self.eps)
        self.ops.adam_device_c(
            opt.flat, eng.grads.flat, opt.m_flat, opt.v_flat, opt.lr, opt.b1, opt.b2, opt.eps, self.c
        )

    def _capture(self):
        opt = self.opt
        state = (opt.flat, opt.m_flat, opt.v_flat)
        self.cupy.cuda.Device().synchronize()  # our stream is non-blocking: finish earlier work first
        with self.stream:
            saved = [buf.copy() for buf in state]
            self._run()  # warm-up: compiles every kernel outside the capture
            for buf, s in zip(state, saved, strict=True):
                buf[...] = s
            self.stream.synchronize()
            try:
                self.stream.begin_capture()
                try:
                    self._run()
                finally:
                    graph = self.stream.end_capture()
            except Exception as e:  # noqa: BLE001 - any failure: fall back to eager replays
                self.stream.synchronize()
                return None, f"CUDA graph capture failed ({type(e).__name__}: {e}); running eagerly"
        return graph, None

    def __call__(self, x, eps=None):
        opt, cupy = self.opt, self.cupy
        # Checked as by the fast model's forward: a (B, 1) x would otherwise broadcast into the buffer.
        x = checks.batch("x", x, self.eng.D, self.eng.dtype, unit=True)
        if len(x) != self.B:
            raise ValueError(f"this step was captured for batch size {self.B}, got {len(x)}")
        if eps is not None:
            eps = checks.batch("eps", eps, self.eng.Z, self.eng.dtype, B=self.B)
        key = None
        if eps is None:  # made on the device below, from a key of the model's generator, as eagerly
            key = self.eng.noise_key()
        opt.t += 1
        c = np.array([1 - opt.b1**opt.t, 1 - opt.b2**opt.t], dtype=np.float32)
        cupy.cuda.Stream.null.synchronize()  # eager work on the default stream (e.g. encode) first
        with self.stream:
            self.x[...] = cupy.asarray(np.asarray(x, dtype=self.eng.dtype))
            if key is None:
                self.eps[...] = cupy.asarray(np.asarray(eps, dtype=self.eng.dtype))
            else:
                self.ops.standard_normal(key, self.eps)
            self.c[...] = cupy.asarray(c)
            if self.graph is not None:
                self.graph.launch(self.stream)
            else:
                self._run()
            recon = cupy.asnumpy(self.ws.recon, stream=self.stream)
            kl = cupy.asnumpy(self.ws.kl, stream=self.stream)
        self.stream.synchronize()
        return self.eng.record_loss(recon, kl)
