"""Parameters in one flat buffer, and the Adam that steps such a buffer in one pass.

A model on a fast backend (:mod:`kernels.fast`) keeps its parameters in ONE flat buffer θ (P,)
on the backend's device, and its ``params`` is a :class:`FlatParams`: a dict of views into θ,
with the keys, shapes and order of the reference model's. Its gradients are a second buffer of
the same layout, and so are Adam's moments: :class:`FastAdam`, the Adam these parameters name
(``FlatParams.adam_class``, which :class:`minivae.optim.Adam` follows), updates all P numbers with
one pass of the backend's ``adam`` op.
"""

from __future__ import annotations

import numpy as np

from minivae.optim import Adam


class FlatParams(dict):
    """A dict name → view into one flat buffer (P,), in layer order.

    ``flat`` is the buffer, ``ops`` the ops object that owns it, and ``views(buf)`` gives the same
    dict of views into another buffer of the same layout (gradients, Adam's moments).
    ``minivae.Adam(params)`` gives ``adam_class`` (:class:`FastAdam`) for these parameters.
    """

    def __init__(self, flat, ops, layout):
        self.flat, self.ops, self.layout = flat, ops, layout
        super().__init__((k, flat[o : o + size].reshape(shape)) for k, o, size, shape in layout)

    def views(self, buf):
        return FlatParams(buf, self.ops, self.layout)

    @property
    def adam_class(self):
        """The Adam of parameters in a flat buffer."""
        return FastAdam


class FastAdam(Adam):
    """:class:`minivae.Adam` over a flat parameter buffer: the moments are flat buffers of the same
    layout (``m_flat``, ``v_flat``; ``m`` and ``v`` are dicts of views into them), and a step with
    flat gradients is one pass of the backend's ``adam`` kernel over P numbers. The arithmetic is
    that of :func:`minivae.optim.adam_update`."""

    def zeros_like_params(self):
        return self.params.views(self.params.ops.zeros(self.flat.shape, self.flat.dtype))  # (P,)

    @property
    def flat(self):
        """The parameters' flat buffer θ (P,)."""
        return self.params.flat

    @property
    def m_flat(self):
        return self.m.flat

    @property
    def v_flat(self):
        return self.v.flat

    def step(self, grads):
        """One update; ``grads`` a flat buffer of our layout (a fast model's backward), or a dict."""
        g = getattr(grads, "flat", None)
        if g is None:
            return super().step(grads)  # the reference update, on the views
        # One kernel over P numbers: the buffers must have our layout (O(1) checks).
        if (
            getattr(grads, "layout", None) != self.params.layout
            or g.shape != self.flat.shape
            or g.dtype != self.flat.dtype
            or not g.flags.c_contiguous
        ):
            raise ValueError(
                f"grads must have the layout of the parameters: a contiguous "
                f"{self.flat.dtype} buffer of shape {self.flat.shape}, got "
                f"{g.dtype} {g.shape}"
            )
        self.t += 1
        c1 = 1 - self.b1**self.t
        c2 = 1 - self.b2**self.t
        self.params.ops.adam(self.flat, g, self.m_flat, self.v_flat, self.lr, self.b1, self.b2, self.eps, c1, c2)

    def state_dict(self):
        to_host = self.params.ops.to_host
        state = {"t": np.array(self.t)}
        for k in self.params:
            state["m." + k] = np.array(to_host(self.m[k]))  # a copy: on the CPU to_host may share memory
            state["v." + k] = np.array(to_host(self.v[k]))
        return state

    def load_state_dict(self, state):
        to_device = self.params.ops.to_device
        self.t, moments = self.checked_state(state)
        for k in self.params:
            self.m[k][...] = to_device(moments["m." + k])
            self.v[k][...] = to_device(moments["v." + k])
