"""One training engine for every fast backend: the VAE's step written once against the ops object.

:class:`minivae.vae.VAE` computes the negative ELBO and its gradient with small readable functions
that allocate new arrays at every call. :class:`Engine` runs exactly the same math through the ops
of :mod:`kernels.reference` (matrix products plus one fused pass per element-wise op), on buffers
that are allocated once:

- the parameters live in ONE flat buffer θ (P,), and the fast model's ``params``
  (:class:`kernels.flat.FlatParams`) is a dict of views into it (same keys, shapes and order as the
  reference's), so the model, the optimizer and a checkpoint all see the same memory; the gradients
  live in a second flat buffer of the same layout, and Adam (:class:`kernels.flat.FastAdam`, its
  moments flat too) is one pass over P numbers;
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
backward pass a second read of the logits. The noise comes from the backend's optional
``standard_normal`` op where it has one (cpu-fused, cupy, numba-cuda: Philox keyed by two words
from the model's generator, see :class:`kernels.reference.Ops`); where it is None, ε is drawn on
the host by the model's generator, as in the reference VAE.
"""

from __future__ import annotations

import numpy as np

from kernels.flat import FlatParams


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
    """Runs the step of ``model`` (a :class:`kernels.fast.FastVAE` or ``FastAE``) through ``ops``
    on flat, preallocated buffers.

    It reads the model's public description — ``latent``, ``data_dim``, ``dtype``, ``activation``,
    ``layer_names`` and the initial ``params`` (host arrays, layer order) — copies the parameters
    into one flat buffer (``self.params``, which the model then holds as its ``params``), and at
    each step uses the model's generator ``rng`` and KL weight ``beta`` and sets its ``last``.
    Its entry points (``forward``, ``encode``, ``decode_logits``, ``set_params``) trust their
    arguments: the model's public methods check them first (:class:`kernels.fast.FastModel`).
    """

    MAX_WORKSPACES = 4  # batch sizes kept at once (training B, the last short batch, evaluation B)

    def __init__(self, model, ops):
        self.model, self.ops = model, ops
        self.dtype = np.dtype(model.dtype)
        self.Z, self.D = model.latent, model.data_dim
        host = model.params  # name → (fan_in, fan_out) weights and (fan_out,) biases, layer order
        names = list(model.layer_names)
        n_enc = sum(name.startswith("enc") for name in names)
        # (name, fan_in, fan_out, activation) per dense layer, encoder first; each MLP's last is linear.
        last = {names[n_enc - 1], names[-1]}
        self.layers = [(n, *host[n + ".W"].shape, "identity" if n in last else model.activation) for n in names]
        self.enc_layers, self.dec_layers = self.layers[:n_enc], self.layers[n_enc:]
        # A VAE's encoder ends in 2Z numbers [μ | log σ²]; a plain autoencoder's (minivae.ae.AE)
        # in the code z itself (Z numbers): no noise, no KL, and ∂L/∂z goes straight to the encoder.
        self.variational = self.enc_layers[-1][2] == 2 * self.Z

        layout, offset = [], 0
        for k, p in host.items():
            layout.append((k, offset, p.size, p.shape))
            offset += p.size
        self.P = offset
        flat = np.concatenate([np.asarray(p, dtype=self.dtype).ravel() for p in host.values()])
        self.params = FlatParams(ops.to_device(flat), ops, layout)  # θ (P,)
        self.grads = self.params.views(ops.zeros((self.P,), self.dtype))  # ∂L/∂θ (P,)

        self._workspaces = {}  # B → _Workspace
        self._step = None  # (workspace, x, eps) of the last forward, for backward

    # ----------------------------------------------------------------------------------------
    # Buffers
    # ----------------------------------------------------------------------------------------

    def workspace(self, B):
        """The workspace of batch size B, allocated at its first use."""
        ws = self._workspaces.get(B)
        if ws is None:
            if len(self._workspaces) >= self.MAX_WORKSPACES:
                self._workspaces.pop(next(iter(self._workspaces)))  # the oldest
            enc = [n_out for _, _, n_out, _ in self.enc_layers]
            dec = [n_out for _, _, n_out, _ in self.dec_layers]
            ws = self._workspaces[B] = _Workspace(self.ops, self.dtype, B, self.Z, enc, dec)
        return ws

    def _mlp_forward(self, layers, h, ys):
        """yℓ = act(yℓ₋₁ · Wℓ + bℓ) for each layer, written into ys; returns the last."""
        ops, p = self.ops, self.params
        for (name, _, _, act), y in zip(layers, ys, strict=True):
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
        """The batch mean of the negative ELBO, as :meth:`minivae.vae.VAE.forward`; sets ``model.last``.

        x (B, D) and eps (B, Z) or None are device arrays of our dtype, checked by the model
        (:meth:`kernels.fast.FastModel.forward`): the engine trusts them.
        """
        model, ops, Z = self.model, self.ops, self.Z
        B = x.shape[0]
        ws = self.workspace(B)
        if not self.variational:
            self.forward_ops(ws, x, None)
            self._step = (ws, x, None)
            return self.record_loss(ops.to_host(ws.recon), np.zeros(B, self.dtype))
        if eps is None and ops.standard_normal is not None:
            ops.standard_normal(self.noise_key(), ws.eps)  # the backend makes ε from the key
            eps = ws.eps  # (B, Z)
        elif eps is None:
            eps = ops.to_device(model.rng.standard_normal((B, Z)).astype(self.dtype))  # (B, Z), drawn on the host
        self.forward_ops(ws, x, eps)
        self._step = (ws, x, eps)
        return self.record_loss(ops.to_host(ws.recon), ops.to_host(ws.kl))

    def forward_ops(self, ws, x, eps):
        """The ops of the forward pass on workspace ``ws``: z, KL, ℓ and ∂L/∂logits."""
        ops = self.ops
        h = self._mlp_forward(self.enc_layers, x, ws.enc_y)  # [μ | log σ²] (B, 2Z); AE: z (B, Z)
        z = h
        if self.variational:
            ops.reparam_kl(h, eps, ws.z, ws.kl)  # z (B, Z), KL (B,)
            z = ws.z
        logits = self._mlp_forward(self.dec_layers, z, ws.dec_y)  # (B, D)
        ops.bernoulli_nll(logits, x, 1.0 / ws.B, ws.recon, ws.dec_dy[-1])  # ℓ (B,), ∂L/∂a (B, D)

    def record_loss(self, recon, kl):
        """The batch mean of the negative ELBO from the host arrays ℓ and KL (B,); sets ``model.last``."""
        model = self.model
        loss = (recon + getattr(model, "beta", 0.0) * kl).mean()
        model.last = {"loss": float(loss), "recon": float(recon.mean()), "kl": float(kl.mean())}
        return float(loss)

    def noise_key(self):
        """The key of one step's noise for ``ops.standard_normal``: two 32-bit words drawn from the
        model's generator (so the generator's state, which a checkpoint saves, decides the noise)."""
        return self.model.rng.integers(0, 2**32, size=2, dtype=np.uint64)

    def backward(self):
        """Gradients of the last forward's loss: a :class:`FlatParams` of views into one buffer."""
        if self._step is None:
            raise RuntimeError("backward() needs a forward() first")
        self.backward_ops(*self._step)
        return self.grads

    def backward_ops(self, ws, x, eps):
        """The ops of the backward pass after ``forward_ops`` on ``ws``: the gradients in ``grads``."""
        if not self.variational:  # z is the encoder's output: ∂L/∂z lands in its ∂L/∂y directly
            self._mlp_backward(self.dec_layers, ws.enc_y[-1], ws.dec_y, ws.dec_dy, ws.enc_dy[-1])
            self._mlp_backward(self.enc_layers, x, ws.enc_y, ws.enc_dy, None)
            return
        self._mlp_backward(self.dec_layers, ws.z, ws.dec_y, ws.dec_dy, ws.dz)  # ∂L/∂z   (B, Z)
        h = ws.enc_y[-1]  # [μ | log σ²]
        self.ops.reparam_kl_backward(ws.dz, h, eps, self.model.beta / ws.B, ws.enc_dy[-1])  # (B, 2Z)
        self._mlp_backward(self.enc_layers, x, ws.enc_y, ws.enc_dy, None)

    # ----------------------------------------------------------------------------------------
    # Using the model (fresh arrays per call: these are not the hot path)
    # ----------------------------------------------------------------------------------------

    def _run(self, layers, h):
        ys = [self.ops.empty((h.shape[0], n_out), self.dtype) for _, _, n_out, _ in layers]
        return self._mlp_forward(layers, h, ys)

    def encode(self, x):
        """μ and log σ² of q(z | x) as host arrays.     x: (B, D), a checked device array → mu, logvar: (B, Z)"""
        h = self.ops.to_host(self._run(self.enc_layers, x))  # (B, 2Z); AE: (B, Z)
        if not self.variational:
            return h, None  # the autoencoder's code is a point
        return h[:, : self.Z], h[:, self.Z :]

    def decode_logits(self, z):
        """The decoder's logits as a host array.     z: (B, Z), a checked device array → (B, D)"""
        return self.ops.to_host(self._run(self.dec_layers, z))

    def get_params(self):
        """A host copy of every parameter."""
        return {k: np.array(self.ops.to_host(p), copy=True) for k, p in self.params.items()}

    def set_params(self, values):
        """Overwrite every parameter from a dict of host arrays checked by the model (one copy into
        the flat buffer)."""
        host = np.concatenate([np.asarray(values[k], dtype=self.dtype).ravel() for k in self.params])
        self.params.flat[...] = self.ops.to_device(host)
