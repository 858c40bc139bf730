"""One training step on flat buffers, for any ops object (see :mod:`kernels.reference`).

The readable model in :mod:`minivae.vae` allocates fresh arrays at every op. The fast backends
run the same math through this engine instead:

- parameters, gradients and the two Adam moments are each ONE flat float32 buffer of P values,
  with per-layer views (``vae.params["enc0.W"]`` is a (fan_in, fan_out) view into it), so the
  Adam update is a single pass over P numbers;
- every intermediate array of the step lives in a workspace allocated once per batch size and
  reused, so a step allocates nothing;
- the step is matrix products (``ops.matmul``) plus one fused pass per element-wise stage.

Forward, for the encoder layers ℓ = 0 … and the decoder likewise (``act`` is ReLU or tanh on hidden
layers, identity on the last layer of each network)::

    A_ℓ = act(A_{ℓ−1} · W_ℓ + b_ℓ)                 matmul, then bias_act in place    (B, fan_out)
    z, KL = μ + σ ⊙ ε, Σ ½(μ² + σ² − log σ² − 1)   reparam_kl on A_enc = [μ | log σ²]
    ℓ_b, ∂L/∂a = Σ softplus(a) − x·a, (σ(a) − x)/B  bernoulli_nll on the logits a

Backward, for each layer from the last (d = ∂L/∂ of the layer's pre-activation)::

    ∂L/∂b_ℓ = Σ_batch d        colsum                     (fan_out,)
    ∂L/∂W_ℓ = A_{ℓ−1}ᵀ · d     matmul(ta=True)            (fan_in, fan_out)
    d ← (d · W_ℓᵀ) ⊙ act′      matmul(tb=True), act_backward with the stored A_{ℓ−1}

and between the networks ``reparam_kl_backward`` turns ∂L/∂z into ∂L/∂[μ | log σ²] (adding the KL
term's own gradient, weighted β/B).
"""

from __future__ import annotations

import numpy as np


class FlatParams(dict):
    """name → view into one flat buffer; ``views(buf)`` lays another buffer out the same way."""

    def __init__(self, flat, layout, ops):
        self.flat, self.layout, self.ops = flat, layout, ops
        super().__init__(self.views(flat))

    def views(self, buf):
        return {name: buf[off:off + size].reshape(shape) for name, shape, off, size in self.layout}


class Engine:
    """Runs :class:`minivae.VAE`'s forward and backward on ``ops`` with flat buffers.

    The fast backends run float32 only (``ops.dtypes``); the reference ops also run float64,
    which lets the tests check this engine's bookkeeping against the readable model exactly.
    """

    def __init__(self, vae, ops):
        if vae.dtype not in ops.dtypes:
            raise ValueError(f"backend {ops.name!r} runs float32 only; use backend='numpy' for {vae.dtype}")
        self.ops, self.name, self.vae = ops, ops.name, vae
        layout, off = [], 0
        for name, p in vae.params.items():
            layout.append((name, p.shape, off, p.size))
            off += p.size
        host = np.concatenate([p.ravel() for p in vae.params.values()]).astype(vae.dtype)
        self.flat = ops.to_device(host)  # (P,)
        self.grad_flat = ops.zeros((off,), vae.dtype)  # (P,)
        self.params = FlatParams(self.flat, layout, ops)
        self.grads = FlatParams(self.grad_flat, layout, ops)
        vae.params = self.params

        act = vae.activation

        def layers(prefix, n):
            return [(self.params[f"{prefix}{i}.W"], self.params[f"{prefix}{i}.b"],
                     self.grads[f"{prefix}{i}.W"], self.grads[f"{prefix}{i}.b"],
                     act if i < n - 1 else "identity") for i in range(n)]

        self.enc = layers("enc", len(vae.encoder))
        self.dec = layers("dec", len(vae.decoder))
        self._ws_batch = None

    # ----------------------------------------------------------------------------------------

    def _workspace(self, B):
        """Every array a step of batch size B needs, allocated once (again only if B changes)."""
        if self._ws_batch == B:
            return
        e, f32 = self.ops.empty, self.vae.dtype
        D, Z = self.vae.data_dim, self.vae.latent
        self.x = e((B, D), f32)
        self.eps = e((B, Z), f32)
        self.enc_out = [e((B, W.shape[1]), f32) for W, *_ in self.enc]  # A_ℓ, last: [μ | log σ²]
        self.dec_out = [e((B, W.shape[1]), f32) for W, *_ in self.dec]  # last: the logits a
        self.z = e((B, Z), f32)
        self.kl = e((B,), f32)
        self.recon = e((B,), f32)
        # Gradients w.r.t. each layer's pre-activation (the last decoder one is ∂L/∂a).
        self.enc_d = [e((B, W.shape[1]), f32) for W, *_ in self.enc]
        self.dec_d = [e((B, W.shape[1]), f32) for W, *_ in self.dec]
        self.dz = e((B, Z), f32)
        self._ws_batch = B

    def _mlp_forward(self, net, h, outs):
        ops = self.ops
        for (W, b, _, _, act), out in zip(net, outs):
            ops.matmul(h, W, out)
            ops.bias_act(out, b, act, out)
            h = out
        return h

    def _mlp_backward(self, net, inp, outs, ds, dinp):
        """ds[-1] holds ∂L/∂(last pre-activation); writes ∂L/∂inp into dinp (if not None)."""
        ops = self.ops
        for i in range(len(net) - 1, -1, -1):
            W, _, dW, db, _ = net[i]
            d = ds[i]
            h_in = outs[i - 1] if i > 0 else inp
            ops.colsum(d, db)
            ops.matmul(h_in, d, dW, ta=True)
            if i > 0:
                ops.matmul(d, W, ds[i - 1], tb=True)
                ops.act_backward(ds[i - 1], outs[i - 1], net[i - 1][4], ds[i - 1])
            elif dinp is not None:
                ops.matmul(d, W, dinp, tb=True)

    # ----------------------------------------------------------------------------------------

    def forward(self, x, eps=None):
        vae, ops = self.vae, self.ops
        dt = vae.dtype
        x = np.ascontiguousarray(x, dtype=dt)  # (B, D)
        B, Z = x.shape[0], vae.latent
        if eps is None:
            eps = vae.rng.standard_normal((B, Z)).astype(dt)  # the same stream as the reference
        self._workspace(B)
        ops.upload(x, self.x)
        ops.upload(np.ascontiguousarray(eps, dtype=dt), self.eps)

        h = self._mlp_forward(self.enc, self.x, self.enc_out)  # (B, 2Z)
        ops.reparam_kl(h, self.eps, self.z, self.kl)  # z (B, Z), KL (B,)
        logits = self._mlp_forward(self.dec, self.z, self.dec_out)  # (B, D)
        ops.bernoulli_nll(logits, self.x, 1.0 / B, self.recon, self.dec_d[-1])  # ℓ (B,), ∂L/∂a

        recon = float(ops.to_host(self.recon).astype(np.float64).mean())
        kl = float(ops.to_host(self.kl).astype(np.float64).mean())
        loss = recon + vae.beta * kl
        vae.last = {"loss": loss, "recon": recon, "kl": kl}
        return loss

    def backward(self):
        if self._ws_batch is None:
            raise RuntimeError("backward() needs a forward() first")
        B = self._ws_batch
        self._mlp_backward(self.dec, self.z, self.dec_out, self.dec_d, self.dz)  # → ∂L/∂z
        self.ops.reparam_kl_backward(self.dz, self.enc_out[-1], self.eps, self.vae.beta / B,
                                     self.enc_d[-1])  # → ∂L/∂[μ | log σ²]
        self._mlp_backward(self.enc, self.x, self.enc_out, self.enc_d, None)
        return self.grads

    # ---------------------------------------------------------------------------------------- eval

    def _run(self, net, h):
        ops = self.ops
        dt = self.vae.dtype
        h = ops.to_device(np.ascontiguousarray(h, dtype=dt))
        outs = [ops.empty((h.shape[0], W.shape[1]), dt) for W, *_ in net]
        return ops.to_host(self._mlp_forward(net, h, outs))

    def encode(self, x):
        h = self._run(self.enc, x)
        Z = self.vae.latent
        return h[:, :Z], h[:, Z:]

    def decode_logits(self, z):
        return self._run(self.dec, z)

    def get_params(self):
        host = self.ops.to_host(self.flat)
        return {name: host[off:off + size].reshape(shape).copy()
                for name, shape, off, size in self.params.layout}

    def set_params(self, values):
        host = self.ops.to_host(self.flat).copy()
        for name, shape, off, size in self.params.layout:
            if tuple(values[name].shape) != tuple(shape):
                raise ValueError(f"{name}: shape {values[name].shape} does not match {shape}")
            host[off:off + size] = np.asarray(values[name], dtype=host.dtype).ravel()
        self.ops.upload(host, self.flat)
