"""Dense layers and activations, each op a forward/backward pair.

Notation (fixed in :mod:`minivae.vae`): B is the batch size, and a dense layer maps
``fan_in`` features to ``fan_out`` features. Every ``*_forward`` returns its output and an
explicit ``cache`` (the values its backward needs); every ``*_backward`` takes the gradient of
the loss with respect to the op's output and returns the gradient with respect to its input
(plus the parameter gradients, for Dense). Nothing is stored on the objects between calls.

Chain rule in one line: if y = f(x) and the loss is L, then ∂L/∂x = (∂y/∂x)ᵀ ∂L/∂y. For
element-wise f this is the element-wise product ∂L/∂x = ∂L/∂y ⊙ f′(x).
"""

from __future__ import annotations

import numpy as np

# --------------------------------------------------------------------------------------------
# Dense: y = x W + b
# --------------------------------------------------------------------------------------------


def dense_forward(x, W, b):
    """Affine map  y = x W + b.

    x: (B, fan_in)   W: (fan_in, fan_out)   b: (fan_out,)   →   y: (B, fan_out)
    """
    y = x @ W + b  # (B, fan_out)
    return y, x


def dense_backward(dy, cache, W):
    """Gradients of y = x W + b.

    ∂L/∂x = ∂L/∂y · Wᵀ            (B, fan_in)
    ∂L/∂W = xᵀ · ∂L/∂y            (fan_in, fan_out)   — a sum over the batch
    ∂L/∂b = Σ_batch ∂L/∂y         (fan_out,)
    """
    x = cache
    dx = dy @ W.T  # (B, fan_in)
    dW = x.T @ dy  # (fan_in, fan_out)
    db = dy.sum(axis=0)  # (fan_out,)
    return dx, dW, db


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------


def relu_forward(a):
    """y = max(a, 0), element-wise."""
    y = np.maximum(a, 0)
    return y, y


def relu_backward(dy, cache):
    """∂y/∂a = 1 where a > 0, else 0  ⇒  ∂L/∂a = ∂L/∂y ⊙ [y > 0].

    The cache is the output y: y > 0 exactly where a > 0, so the input need not be kept.
    """
    y = cache
    return dy * (y > 0)


def tanh_forward(a):
    """y = tanh(a), element-wise."""
    y = np.tanh(a)
    return y, y


def tanh_backward(dy, cache):
    """∂y/∂a = 1 − tanh²(a) = 1 − y²  ⇒  ∂L/∂a = ∂L/∂y ⊙ (1 − y²)."""
    y = cache
    return dy * (1 - y * y)


def identity_forward(a):
    """y = a (the activation of an output layer)."""
    return a, None


def identity_backward(dy, cache):
    """∂L/∂a = ∂L/∂y."""
    return dy


# --------------------------------------------------------------------------------------------
# The same ops as small objects, for building a network as a list of layers
# --------------------------------------------------------------------------------------------


class Dense:
    """A fully connected layer  y = x W + b  with W of shape (fan_in, fan_out).

    Initialisation keeps the variance of the activations roughly constant from layer to layer,
    so it depends on the activation that follows the layer:

    - ReLU (He et al. 2015): W ~ N(0, 2 / fan_in). ReLU zeroes half of its inputs, halving the
      second moment, and the factor 2 restores it.
    - Tanh or no activation (Glorot & Bengio 2010): W ~ U(−r, r), r = √(6 / (fan_in + fan_out)),
      i.e. Var W = 2 / (fan_in + fan_out), balancing the forward and the backward pass.

    Biases start at zero. ``init`` is "he" or "glorot".
    """

    def __init__(self, fan_in, fan_out, rng, init="he", dtype=np.float32):
        if init == "he":
            W = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
        elif init == "glorot":
            r = np.sqrt(6.0 / (fan_in + fan_out))
            W = rng.uniform(-r, r, size=(fan_in, fan_out))
        else:
            raise ValueError(f"unknown init {init!r}: use 'he' or 'glorot'")
        self.W = W.astype(dtype)
        self.b = np.zeros(fan_out, dtype=dtype)

    def forward(self, x):
        return dense_forward(x, self.W, self.b)

    def backward(self, dy, cache):
        """Returns (dx, {"W": dW, "b": db})."""
        dx, dW, db = dense_backward(dy, cache, self.W)
        return dx, {"W": dW, "b": db}


class ReLU:
    """y = max(a, 0); pairs with He initialisation of the Dense before it."""

    init = "he"

    def forward(self, a):
        return relu_forward(a)

    def backward(self, dy, cache):
        return relu_backward(dy, cache), {}


class Tanh:
    """y = tanh(a); pairs with Glorot initialisation of the Dense before it."""

    init = "glorot"

    def forward(self, a):
        return tanh_forward(a)

    def backward(self, dy, cache):
        return tanh_backward(dy, cache), {}


ACTIVATIONS = {"relu": ReLU, "tanh": Tanh}
