"""One training engine for every fast backend: the VAE's step written once against the ops object.

:class:`minivae.vae.VAE` computes the negative ELBO and its gradient with small readable functions
that allocate new arrays at every call. :class:`Engine` runs exactly the same math through the ops
of :mod:`kernels.reference` (matrix products plus one fused pass per element-wise op), on buffers
that are allocated once:

- the parameters live in ONE flat buffer θ (P,) and ``vae.params`` is rebound to a dict of views
  into it (same keys, shapes and order), so the model, the optimizer and a checkpoint all see the
  same memory; the gradients live in a second flat buffer of the same layout, and Adam (with its
  moments flat too, see :mod:`minivae.optim`) is one pass over P numbers;
- the activations and their gradients live in workspaces allocated once per batch size B and
  reused at every step (a new B, e.g. the short last batch of an epoch, gets its own workspace).

All device memory comes from the ops object (``empty``, ``zeros``, ``to_device``, ``to_host``), so
the same engine runs on NumPy (:class:`kernels.reference.NumpyOps`, which makes it testable in
float64 against the reference VAE), on the CPU with Numba kernels, and on a GPU.

One step, for an MLP of layers ℓ = 1 … L with y₀ = input, written as the ops it calls:

    noise       ε ~ N(0, I)                          standard_normal      # (B, Z)
    forward     aℓ = yℓ₋₁ · Wℓ                       matmul               # (B, Nℓ)
                yℓ = act(aℓ + bℓ)                    bias_act, in place   # (B, Nℓ)
                z, KL = reparam_kl([μ | log σ²], ε)                       # (B, Z), (B,)
                ℓ, ∂L/∂a = bernoulli_nll(logits, x, 1/B)                  # (B,), (B, D)
    backward    ∂L/∂aℓ = ∂L/∂yℓ ⊙ act′               act_backward, in place
                ∂L/∂Wℓ = yℓ₋₁ᵀ · ∂L/∂aℓ              matmul (ta)          # (Nℓ₋₁, Nℓ)
                ∂L/∂bℓ = Σ_batch ∂L/∂aℓ              colsum               # (Nℓ,)
                ∂L/∂yℓ₋₁ = ∂L/∂aℓ · Wℓᵀ              matmul (tb)          # (B, Nℓ₋₁)
                ∂L/∂[μ | log σ²] = reparam_kl_backward(∂L/∂z, …, β/B) between the two MLPs

The loss is computed on the way forward together with its gradient ∂L/∂a, which saves the
backward pass a second read of the logits. The noise comes from the backend's ``standard_normal``
op where it has one (cpu-fused, cupy, numba-cuda: Philox keyed by two words from the model's
generator, see :mod:`kernels.reference`); otherwise it is drawn on the host by the model's
generator, as in the reference VAE.
"""

from __future__ import annotations

import numpy as np

from minivae import checks


class FlatParams(dict):
    """A dict name → view into one flat buffer (P,), in layer order.

    ``flat`` is the buffer, ``ops`` the ops object that owns it, and ``views(buf)`` gives the same
    dict of views into another buffer of the same layout (gradients, Adam's moments).
    """

    def __init__(self, flat, ops, layout):
        self.flat, self.ops, self.layout = flat, ops, layout
        super().__init__((k, flat[o:o + size].reshape(shape)) for k, o, size, shape in layout)

    def views(self, buf):
        return FlatParams(buf, self.ops, self.layout)


class _Workspace:
    """The arrays of one training step at batch size B, allocated once."""

    def __init__(self, ops, dtype, B, Z, enc_widths, dec_widths):
        self.B = B
        self.enc_y = [ops.empty((B, n), dtype) for n in enc_widths]  # yℓ of the encoder; last = [μ | log σ²]
        self.dec_y = [ops.empty((B, n), dtype) for n in dec_widths]  # yℓ of the decoder; last = logits
        self.enc_dy = [ops.empty((B, n), dtype) for n in enc_widths]  # ∂L/∂yℓ, then ∂L/∂aℓ in place
        self.dec_dy = [ops.empty((B, n), dtype) for n in dec_widths]  # last = ∂L/∂logits
        self.eps = ops.empty((B, Z), dtype)  # ε, when the backend draws it (ops.standard_normal)
        self.z = ops.empty((B, Z), dtype)
        self.dz = ops.empty((B, Z), dtype)
        self.kl = ops.empty((B,), dtype)
        self.recon = ops.empty((B,), dtype)


class Engine:
    """Runs ``vae``'s forward and backward through ``ops`` on flat, preallocated buffers.

    On construction the VAE's current parameters are copied into the flat buffer and
    ``vae.params`` is rebound to a :class:`FlatParams` of views into it.
    """

    MAX_WORKSPACES = 4  # batch sizes kept at once (training B, the last short batch, evaluation B)

    def __init__(self, vae, ops):
        self.vae, self.ops = vae, ops
        self.dtype = np.dtype(vae.dtype)
        self.Z, self.D = vae.latent, vae.data_dim
        # A VAE's encoder ends in 2Z numbers [μ | log σ²]; a plain autoencoder's (minivae.ae.AE)
        # in the code z itself (Z numbers): no noise, no KL, and ∂L/∂z goes straight to the encoder.
        self.variational = vae.encoder[-1][0].W.shape[1] == 2 * vae.latent

        # (name, fan_in, fan_out, activation) per dense layer, encoder first.
        dense = [d for d, _ in vae.encoder + vae.decoder]
        acts = [vae.activation if a is not None else "identity" for _, a in vae.encoder + vae.decoder]
        self.layers = [(n, d.W.shape[0], d.W.shape[1], a) for n, d, a in zip(vae.layer_names, dense, acts)]
        n_enc = len(vae.encoder)
        self.enc_layers, self.dec_layers = self.layers[:n_enc], self.layers[n_enc:]

        layout, offset = [], 0
        for k, p in vae.params.items():
            layout.append((k, offset, p.size, p.shape))
            offset += p.size
        self.P = offset
        host = np.concatenate([np.asarray(p, dtype=self.dtype).ravel() for p in vae.params.values()])
        self.params = FlatParams(ops.to_device(host), ops, layout)  # θ (P,)
        self.grads = self.params.views(ops.zeros((self.P,), self.dtype))  # ∂L/∂θ (P,)
        vae.params = self.params

        self._workspaces = {}  # B → _Workspace
        self._step = None  # (workspace, x, eps) of the last forward, for backward

    # ----------------------------------------------------------------------------------------
    # Buffers
    # ----------------------------------------------------------------------------------------

    def _workspace(self, B):
        ws = self._workspaces.get(B)
        if ws is None:
            if len(self._workspaces) >= self.MAX_WORKSPACES:
                self._workspaces.pop(next(iter(self._workspaces)))  # the oldest
            enc = [n_out for _, _, n_out, _ in self.enc_layers]
            dec = [n_out for _, _, n_out, _ in self.dec_layers]
            ws = self._workspaces[B] = _Workspace(self.ops, self.dtype, B, self.Z, enc, dec)
        return ws

    def _input(self, name, a, width, unit=False, B=None):
        """A batch (B, width) checked by :func:`minivae.checks.batch` (shape, dtype, layout, values:
        the kernels trust all of them) as a C-contiguous device array of our dtype."""
        a = checks.batch(name, a, width, self.dtype, unit=unit, B=B, xp_convert=self._convert)
        return self.ops.to_device(a) if isinstance(a, np.ndarray) else a

    def _convert(self, a):
        """A device array of another dtype or layout as a C-contiguous one of ours."""
        if not hasattr(a, "astype"):
            raise ValueError(f"expected a C-contiguous {self.dtype.name} array, got {type(a).__name__} "
                             f"of {np.dtype(a.dtype).name}")
        return a.astype(self.dtype, order="C")

    def _mlp_forward(self, layers, h, ys):
        """yℓ = act(yℓ₋₁ · Wℓ + bℓ) for each layer, written into ys; returns the last."""
        ops, p = self.ops, self.params
        for (name, _, _, act), y in zip(layers, ys):
            ops.matmul(h, p[name + ".W"], y)  # aℓ   (B, Nℓ)
            ops.bias_act(y, p[name + ".b"], act, y)  # yℓ = act(aℓ + bℓ), in place
            h = y
        return h

    def _mlp_backward(self, layers, x, ys, dys, dx):
        """From ∂L/∂y of the last layer (in dys[-1]) to the weight and bias gradients, and to
        ∂L/∂x written into dx (skipped when dx is None)."""
        ops, p, g = self.ops, self.params, self.grads
        inputs = [x] + ys[:-1]
        outs = [dx] + dys[:-1]  # where ∂L/∂yℓ₋₁ goes
        for i in reversed(range(len(layers))):
            name, _, _, act = layers[i]
            da = dys[i]
            if act != "identity":
                ops.act_backward(da, ys[i], act, da)  # ∂L/∂aℓ = ∂L/∂yℓ ⊙ act′, in place
            ops.matmul(inputs[i], da, g[name + ".W"], ta=True)  # ∂L/∂Wℓ = yℓ₋₁ᵀ · ∂L/∂aℓ
            ops.colsum(da, g[name + ".b"])  # ∂L/∂bℓ = Σ_batch ∂L/∂aℓ
            if outs[i] is not None:
                ops.matmul(da, p[name + ".W"], outs[i], tb=True)  # ∂L/∂yℓ₋₁ = ∂L/∂aℓ · Wℓᵀ

    # ----------------------------------------------------------------------------------------
    # The training step
    # ----------------------------------------------------------------------------------------

    def forward(self, x, eps=None):
        """The batch mean of the negative ELBO, as :meth:`minivae.vae.VAE.forward`."""
        vae, ops, Z = self.vae, self.ops, self.Z
        x = self._input("x", x, self.D, unit=True)  # (B, D), checked before any kernel runs
        B = x.shape[0]
        ws = self._workspace(B)
        if not self.variational:
            self._forward_ops(ws, x, None)
            self._step = (ws, x, None)
            return self._record_loss(ops.to_host(ws.recon), np.zeros(B, self.dtype))
        if eps is None and hasattr(ops, "standard_normal"):
            ops.standard_normal(self.noise_key(), ws.eps)  # the backend makes ε from the key
            eps = ws.eps  # (B, Z)
        elif eps is None:
            eps = vae.rng.standard_normal((B, Z)).astype(self.dtype)  # (B, Z), drawn on the host
        else:
            eps = self._input("eps", eps, Z, B=B)  # (B, Z): the kernel reads B·Z numbers
        if isinstance(eps, np.ndarray):
            eps = ops.to_device(eps)
        self._forward_ops(ws, x, eps)
        self._step = (ws, x, eps)
        return self._record_loss(ops.to_host(ws.recon), ops.to_host(ws.kl))

    def _forward_ops(self, ws, x, eps):
        """The ops of the forward pass on workspace ``ws``: z, KL, ℓ and ∂L/∂logits."""
        ops = self.ops
        h = self._mlp_forward(self.enc_layers, x, ws.enc_y)  # [μ | log σ²] (B, 2Z); AE: z (B, Z)
        z = h
        if self.variational:
            ops.reparam_kl(h, eps, ws.z, ws.kl)  # z (B, Z), KL (B,)
            z = ws.z
        logits = self._mlp_forward(self.dec_layers, z, ws.dec_y)  # (B, D)
        ops.bernoulli_nll(logits, x, 1.0 / ws.B, ws.recon, ws.dec_dy[-1])  # ℓ (B,), ∂L/∂a (B, D)

    def _record_loss(self, recon, kl):
        """The batch mean of the negative ELBO from the host arrays ℓ and KL (B,); sets ``vae.last``."""
        vae = self.vae
        loss = (recon + getattr(vae, "beta", 0.0) * kl).mean()
        vae.last = {"loss": float(loss), "recon": float(recon.mean()), "kl": float(kl.mean())}
        return float(loss)

    def noise_key(self):
        """The key of one step's noise for ``ops.standard_normal``: two 32-bit words drawn from the
        model's generator (so the generator's state, which a checkpoint saves, decides the noise)."""
        return self.vae.rng.integers(0, 2**32, size=2, dtype=np.uint64)

    def backward(self):
        """Gradients of the last forward's loss: a :class:`FlatParams` of views into one buffer."""
        if self._step is None:
            raise RuntimeError("backward() needs a forward() first")
        self._backward_ops(*self._step)
        return self.grads

    def _backward_ops(self, ws, x, eps):
        """The ops of the backward pass after ``_forward_ops`` on ``ws``: the gradients in ``grads``."""
        if not self.variational:  # z is the encoder's output: ∂L/∂z lands in its ∂L/∂y directly
            self._mlp_backward(self.dec_layers, ws.enc_y[-1], ws.dec_y, ws.dec_dy, ws.enc_dy[-1])
            self._mlp_backward(self.enc_layers, x, ws.enc_y, ws.enc_dy, None)
            return
        self._mlp_backward(self.dec_layers, ws.z, ws.dec_y, ws.dec_dy, ws.dz)  # ∂L/∂z   (B, Z)
        h = ws.enc_y[-1]  # [μ | log σ²]
        self.ops.reparam_kl_backward(ws.dz, h, eps, self.vae.beta / ws.B, ws.enc_dy[-1])  # (B, 2Z)
        self._mlp_backward(self.enc_layers, x, ws.enc_y, ws.enc_dy, None)

    # ----------------------------------------------------------------------------------------
    # Using the model (fresh arrays per call: these are not the hot path)
    # ----------------------------------------------------------------------------------------

    def _run(self, layers, h):
        ys = [self.ops.empty((h.shape[0], n_out), self.dtype) for _, _, n_out, _ in layers]
        return self._mlp_forward(layers, h, ys)

    def encode(self, x):
        """μ and log σ² of q(z | x) as host arrays.     x: (B, D) → mu, logvar: (B, Z)"""
        h = self.ops.to_host(self._run(self.enc_layers, self._input("x", x, self.D, unit=True)))  # (B, 2Z); AE: (B, Z)
        if not self.variational:
            return h, None  # the autoencoder's code is a point
        return h[:, :self.Z], h[:, self.Z:]

    def decode_logits(self, z):
        """The decoder's logits as a host array.     z: (B, Z) → (B, D)"""
        return self.ops.to_host(self._run(self.dec_layers, self._input("z", z, self.Z)))

    def get_params(self):
        """A host copy of every parameter."""
        return {k: np.array(self.ops.to_host(p), copy=True) for k, p in self.params.items()}

    def set_params(self, values):
        """Overwrite every parameter from a dict of host arrays (one copy into the flat buffer)."""
        values = checks.params("values", values, self.params)
        host = np.concatenate([np.asarray(values[k], dtype=self.dtype).ravel() for k in self.params])
        self.params.flat[...] = self.ops.to_device(host)
